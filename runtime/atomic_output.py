"""Write output directories and files atomically, never replacing something that is not ours (stdlib only).

``staged_directory(out, marker, what)``: a temp dir ``.OUT.tmp-XXXX`` beside ``out`` is yielded; on normal exit it
must hold ``marker`` (the file that marks a finished output of this kind, written last) and is renamed onto ``out``
(an existing ``out`` is renamed aside first, then removed). On any exception the temp dir is removed and ``out`` is
untouched. ``atomic_file(path)`` / ``write_atomic(path, data)`` do the same for one file.

Refused with one ``ClipDebiasError`` line, before any work and again right before the swap: ``out`` is a non-empty
directory without ``marker`` (not ours), a file (or, for a file output, a directory), the current directory or one of
its parents, or sits under a path that is a file. Outputs get the umask's permissions (files 0o666 & ~umask, dirs
0o777 & ~umask), like any file a shell command creates; ``mkstemp``/``mkdtemp`` and some writers use 0600/0700.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from clip_debias.runtime.errors import ClipDebiasError


def current_umask() -> int:
    """The process umask (read from /proc where possible: ``os.umask`` can only be read by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give ``path`` (and, for a directory, everything under it) the permissions the umask gives new files."""
    mask = current_umask()

    def fix(p: str, is_dir: bool) -> None:
        if os.path.islink(p):  # chmod would change the link's target
            return
        exe = is_dir or bool(os.stat(p).st_mode & 0o111)
        os.chmod(p, (0o777 if exe else 0o666) & ~mask)

    fix(str(path), path.is_dir())
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for d in dirs:
                fix(os.path.join(root, d), True)
            for f in files:
                fix(os.path.join(root, f), False)


def _absolute(path: str | Path) -> Path:
    """``path`` made absolute with ``.``/``..`` removed (so its name is a real directory entry)."""
    return Path(os.path.abspath(path))


def _check_parents(out: Path) -> None:
    """Refuse when the nearest existing ancestor of ``out`` is not a directory."""
    for parent in out.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ClipDebiasError(f"{parent}: is a file, not a directory (cannot write {out} under it)")
            return


def _make_parent(out: Path) -> None:
    """Create the parent directory of ``out`` (one clear line when that fails)."""
    _check_parents(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ClipDebiasError(f"{out.parent}: cannot create the directory ({e.strerror or e})") from e


def check_directory_target(out: str | Path, marker: str, what: str) -> Path:
    """``out`` as an absolute path, if a directory output may be written there; else ``ClipDebiasError``."""
    out = _absolute(out)
    cwd = Path.cwd().resolve()
    real = out.resolve()
    if real == cwd or real in cwd.parents:
        raise ClipDebiasError(f"{out}: is the current directory or one of its parents; refusing to replace it "
                              f"(expected the path of a new directory or of {what})")
    _check_parents(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ClipDebiasError(f"{out}: exists and is not a directory (expected a directory path for {what})")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise ClipDebiasError(f"{out}: exists, is not empty and has no {marker}; refusing to replace a directory "
                              f"that is not {what}")
    return out


def check_file_target(path: str | Path) -> Path:
    """``path`` as an absolute path, if a file may be written there; else ``ClipDebiasError``."""
    path = _absolute(path)
    _check_parents(path)
    if path.is_dir():
        raise ClipDebiasError(f"{path}: is a directory (expected a file path)")
    return path


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` onto ``out``; an existing ``out`` is moved aside first and removed after the swap."""
    old: Path | None = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rmdir(old)
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)  # put the previous output back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_directory(out: str | Path, marker: str, what: str) -> Iterator[Path]:
    """Yield a temp dir beside ``out``; on success (``marker`` written) it replaces ``out``. See module docstring."""
    out = check_directory_target(out, marker, what)
    _make_parent(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if not (tmp / marker).is_file():
            raise ClipDebiasError(f"{out}: finished without writing {marker}; nothing was replaced")
        apply_umask(tmp)
        check_directory_target(out, marker, what)  # nothing foreign appeared there meanwhile
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp file path beside ``path``; on success it is renamed onto ``path`` (else removed)."""
    path = check_file_target(path)
    _make_parent(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        apply_umask(tmp)
        check_file_target(path)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns the absolute path."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return _absolute(path)
