"""``clip-debias --version``: the package's version, Python's, the versions of the libraries a result depends on, and
which extras are installed — from the installed distributions' metadata (``importlib.metadata``): nothing heavy is
imported, so it answers in a fraction of a second even where torch is installed."""

from __future__ import annotations

import platform
import re
from importlib import metadata

DIST = "clip-debias"
LIBRARIES = (("torch", "torch"), ("open_clip", "open_clip_torch"), ("onnxruntime", "onnxruntime"))


def installed(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _satisfied(requirement: str) -> bool:
    """Whether a requirement line (``name[extra]>=1; extra == "x"``) is met: the distribution installed, at a version
    its specifier allows (when ``packaging`` is there to read the specifier)."""
    spec = requirement.split(";")[0].strip()
    name = re.match(r"[A-Za-z0-9_.-]+", spec)
    version = installed(name.group(0)) if name else None
    if version is None:
        return False
    try:
        from packaging.requirements import Requirement

        return Requirement(spec).specifier.contains(version, prereleases=True)
    except Exception:  # no packaging, or a line it cannot read: installed is enough
        return True


def extras() -> dict[str, bool]:
    """Each extra of clip-debias -> whether every distribution it requires is installed (at an allowed version)."""
    try:
        requires = metadata.requires(DIST) or []
    except metadata.PackageNotFoundError:
        return {}
    by_extra: dict[str, list[str]] = {}
    for line in requires:
        m = re.search(r"""extra\s*==\s*["']([^"']+)["']""", line)
        if m:
            by_extra.setdefault(m.group(1), []).append(line)
    return {extra: all(_satisfied(r) for r in reqs) for extra, reqs in by_extra.items()}


def version_lines() -> list[str]:
    """``clip-debias 0.1.0``, then Python and each library (``not installed`` when absent), then the extras."""
    lines = [f"clip-debias {installed(DIST) or 'unknown (not installed as a distribution)'}",
             f"Python {platform.python_version()} ({platform.python_implementation()})"]
    lines += [f"{module} {installed(dist) or 'not installed'}" for module, dist in LIBRARIES]
    found = extras()
    if found:
        yes = [e for e, ok in found.items() if ok]
        no = [e for e, ok in found.items() if not ok]
        lines.append(f"extras installed: {', '.join(yes) or 'none'}; not installed: {', '.join(no) or 'none'}")
    return lines
