"""What clip-debias wrote, and so may replace: output markers for folders, format headers for single files (stdlib).

**Folders.** Every output folder a command writes carries ``clip-debias-output.json`` (``MARKER_NAME``)::

    {"clip_debias_output": KIND, "format": 1, "state": "complete", "command": "clip-debias export onnx ...",
     "written_at": "2026-11-30T12:00:00Z", "host": "3f2a9c1b", "pid": 4242,
     "files": {"manifest.json": SHA256, "model.onnx": SHA256, ...},   # every file written, not the marker itself
     "check": SHA256}                                                   # of the canonical JSON of the fields above

A folder is *ours, of kind K, untouched* when its marker parses, its ``check`` matches, its kind is K and every file
in it is listed with that sha256 (``replaceable``). Only then may a command replace it, and replacing removes the
listed files only. ``files`` is ``null`` for a *container* written in place (the demo folder): it is never replaced
whole; the files a command writes into it are each checked as single files. A staging folder being written holds a
marker with ``state: "staging"``.

**Single files** are recognised by their own format (``FILE_KINDS``): a decomposition cache by its safetensors
metadata, a plan or a report by its JSON fields, a figure by the PNG ``Software`` text chunk we write, report.html by
its generator meta tag, a skipped-images list by its first line. A command replaces an existing file only when it is
of the kind it writes, or with ``--force``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from clip_debias.runtime.errors import ClipDebiasError

MARKER_NAME = "clip-debias-output.json"
MARKER_FORMAT = 1
MARKER_KEY = "clip_debias_output"

# folder kind -> (what it is, in refusals; the file a folder of that kind held before markers existed, for a hint)
FOLDER_KINDS: dict[str, tuple[str, str | None]] = {
    "model": ("a model directory written by 'clip-debias build'", "config.json"),
    "artifact": ("an artifact written by 'clip-debias export onnx'", "manifest.json"),
    "triton-model": ("a Triton model folder written by 'clip-debias export triton'", "config.pbtxt"),
    "lab-data": ("a lab data set written by 'clip-debias lab make-data'", "lab.json"),
    "explain": ("an explain folder written by 'clip-debias explain'", "descriptions.json"),
    "discover": ("a discover folder written by 'clip-debias discover'", "keywords.json"),
    "demo": ("a demo folder written by 'clip-debias demo'", "demo.json"),
    "audit": ("an audit folder written by 'clip-debias audit'", "audit.json"),
    "index": ("a search index written by 'clip-debias index'", "index.json"),
}
PNG_SOFTWARE = "clip-debias"  # the PNG 'Software' text chunk of every figure we write starts with this
HTML_GENERATOR = '<meta name="generator" content="clip-debias'
SKIPPED_HEADER = "# clip-debias: images left out by --skip-bad (path<TAB>reason)"
_command: list[str] = []  # set by the CLI (``set_command``); else the Python command line


class MarkerError(ClipDebiasError):
    """A marker file exists but is not a valid, unmodified clip-debias marker; ``reason`` says why (no path)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def set_command(argv: list[str]) -> None:
    """Record the command line that outputs of this process are written by (the CLI calls this)."""
    _command[:] = ["clip-debias", *argv]


def current_command() -> str:
    return " ".join(_command) if _command else " ".join(["python", *sys.argv])


def host_id() -> str:
    """8 hex digits naming this machine (staging names and markers say where their writer ran)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (hashlib releases the GIL: threads hash files in parallel)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_sum(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class OutputMarker:
    """The contents of ``MARKER_NAME`` (see the module docstring)."""

    kind: str
    files: dict[str, str] | None  # relative posix path -> sha256; None: a container written in place
    state: str = "complete"  # complete | staging
    command: str = ""
    written_at: str = ""
    host: str = ""
    pid: int = 0
    format: int = MARKER_FORMAT

    @property
    def what(self) -> str:
        return FOLDER_KINDS.get(self.kind, (f"a clip-debias '{self.kind}' folder", None))[0]

    def to_json(self) -> str:
        fields = {MARKER_KEY: self.kind, "format": self.format, "state": self.state, "command": self.command,
                  "written_at": self.written_at, "host": self.host, "pid": self.pid, "files": self.files}
        return json.dumps({**fields, "check": _check_sum(fields)}, indent=1) + "\n"

    def write(self, folder: Path) -> Path:
        path = folder / MARKER_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path


def new_marker(kind: str, files: dict[str, str] | None, state: str = "complete") -> OutputMarker:
    if kind not in FOLDER_KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return OutputMarker(kind, files, state, current_command(), now, host_id(), os.getpid())


def read_marker(folder: str | Path) -> OutputMarker | None:
    """The folder's marker; None when it has none; ``MarkerError`` (one line) when it is damaged or modified."""
    path = Path(folder) / MARKER_NAME
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        raise MarkerError(path, "not a regular file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MarkerError(path, f"not valid JSON ({e})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get(MARKER_KEY), str):
        raise MarkerError(path, f"not a clip-debias output marker (no '{MARKER_KEY}' field)")
    check = raw.pop("check", None)
    if check != _check_sum(raw):
        raise MarkerError(path, "modified after clip-debias wrote it (its check sum differs)")
    if raw.get("format") != MARKER_FORMAT:
        raise MarkerError(path, f"format {raw.get('format')!r}, expected {MARKER_FORMAT}")
    files = raw.get("files")
    if files is not None and not (isinstance(files, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
        raise MarkerError(path, "field 'files' must map paths to sha256 digests")
    return OutputMarker(raw[MARKER_KEY], files, str(raw.get("state", "")), str(raw.get("command", "")),
                        str(raw.get("written_at", "")), str(raw.get("host", "")), int(raw.get("pid") or 0))


def folder_files(folder: Path) -> list[str]:
    """Every non-directory entry under ``folder`` (symlinks included, not followed), as sorted posix paths, without
    the marker."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            p = (rel / name).as_posix()
            if p != MARKER_NAME:
                out.append(p)
    return sorted(out)


def hash_files(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every regular file under ``folder`` but the marker (hashed on up to 4 threads)."""
    from concurrent.futures import ThreadPoolExecutor

    names = folder_files(folder)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(lambda n: sha256_file(folder / n), names))
    return dict(zip(names, digests))


def _is_regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def replaceable(out: Path, kind: str) -> OutputMarker | None:
    """Why the non-empty directory ``out`` may not be replaced by an output of ``kind``, as a ``ClipDebiasError``;
    else its marker (None when ``out`` is missing or empty). Hashes every file it holds."""
    if not out.is_dir() or not any(out.iterdir()):
        return None
    what = FOLDER_KINDS[kind][0]
    try:
        marker = read_marker(out)
    except MarkerError as e:
        raise ClipDebiasError(f"{out}: not empty and its {MARKER_NAME} is damaged ({e.reason}); refusing to "
                              f"replace it (expected {what})") from None
    if marker is None:
        legacy = FOLDER_KINDS[kind][1]
        hint = (f"; if clip-debias wrote it before it marked its outputs, move it away or delete it yourself"
                if legacy and (out / legacy).exists() else "; choose a new path or empty it yourself")
        raise ClipDebiasError(f"{out}: exists, is not empty and has no {MARKER_NAME}: not {what}; refusing to "
                              f"replace it{hint}")
    if marker.kind != kind or marker.state != "complete":
        state = "" if marker.state == "complete" else f" ({marker.state})"
        raise ClipDebiasError(f"{out}: is {marker.what}{state}, not {what}; refusing to replace it")
    if marker.files is None:
        raise ClipDebiasError(f"{out}: is {marker.what}, written in place; refusing to replace it as a whole")
    present = folder_files(out)
    foreign = [p for p in present if p not in marker.files]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ClipDebiasError(f"{out}: holds {foreign[0]}{more}, which clip-debias did not write; refusing to replace "
                              "it (move those files away first)")
    for p in present:
        if not _is_regular(out / p) or sha256_file(out / p) != marker.files[p]:
            raise ClipDebiasError(f"{out / p}: changed since clip-debias wrote it; refusing to replace {out} "
                                  "(move the file away first)")
    return marker


def remove_listed(folder: Path, marker: OutputMarker) -> list[str]:
    """Delete the files ``marker`` lists (those still unchanged), then empty directories and the marker; returns what
    is left (files we did not write), in which case ``folder`` itself stays."""
    for rel, digest in (marker.files or {}).items():
        p = folder / rel
        if _is_regular(p) and sha256_file(p) == digest:
            p.unlink()
    for root, dirs, _ in os.walk(folder, topdown=False):
        for d in dirs:
            full = os.path.join(root, d)
            if not os.path.islink(full):
                try:
                    os.rmdir(full)
                except OSError:
                    pass
    left = folder_files(folder)
    if not left:
        (folder / MARKER_NAME).unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            left = sorted(p.name for p in folder.iterdir())
    return left


# ---- single files: recognised by their own format ------------------------------------------------------------------
def _json(path: Path, limit: int = 64 << 20) -> Any:
    if path.stat().st_size > limit:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _json_object_with(keys: set[str], tag: tuple[str, str] | None = None) -> Callable[[Path], bool]:
    """A JSON object whose ``tag`` field has that value, or (written before the tag existed) that has all ``keys``."""
    def ours(path: Path) -> bool:
        d = _json(path)
        if not isinstance(d, dict):
            return False
        return (tag is not None and d.get(tag[0]) == tag[1]) or keys <= set(d)
    return ours


def _compare_file(path: Path) -> bool:
    """evaluate's ``CompareFile``: an object whose ``rows`` are method rows."""
    d = _json(path)
    rows = d.get("rows") if isinstance(d, dict) else None
    return isinstance(rows, list) and bool(rows) and all(
        isinstance(r, dict) and {"method", "accuracy", "worst_group_accuracy"} <= set(r) for r in rows)


def safetensors_metadata(path: Path) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file's header (None if it is not one); reads the header only."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if not 2 <= n <= 100 << 20:
                return None
            header = json.loads(f.read(n).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, struct.error):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _cache(path: Path) -> bool:
    """A cache of format "2" (its convention's name and formula recorded) or an earlier one (a "textspan: ..."
    convention text)."""
    meta = safetensors_metadata(path)
    if not meta or "layers" not in meta:
        return False
    convention = str(meta.get("convention", ""))
    return convention.startswith("textspan:") or (convention in ("textspan", "centred")
                                                  and "convention_formula" in meta)


WEIGHTS_CACHE_FORMAT = "clip-debias weights cache 1"  # metadata 'format' of a weights-cache entry (toolchain/models/
#                                                        checkpoint.py)


def _weights_cache_entry(path: Path) -> bool:
    return (safetensors_metadata(path) or {}).get("format") == WEIGHTS_CACHE_FORMAT


def _lab_weights(path: Path) -> bool:
    meta = safetensors_metadata(path)  # the fields 'lab train' records (its bytes are pinned by recipe.json)
    return bool(meta) and {"model", "steps", "seed", "batch_size", "lr", "p_background"} <= set(meta)


def png_software(path: Path) -> str | None:
    """The ``Software`` tEXt chunk of a PNG before its image data (None if not a PNG or absent)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = f.read(8)
                if len(head) != 8:
                    return None
                n, ctype = struct.unpack(">I4s", head)
                if ctype in (b"IDAT", b"IEND") or n > 1 << 20:
                    return None
                data = f.read(n)
                f.read(4)  # crc
                if ctype == b"tEXt" and data.startswith(b"Software\x00"):
                    return data[9:].decode("latin-1")
    except OSError:
        return None


def _png(path: Path) -> bool:
    return (png_software(path) or "").startswith(PNG_SOFTWARE)


def _head(path: Path, n: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(n).decode("utf-8", errors="replace")
    except OSError:
        return ""


# single-file kind -> (what it is, recogniser)
FILE_KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "decomposition-cache": ("a decomposition cache written by 'clip-debias decompose'", _cache),
    "locate-plan": ("a plan written by 'clip-debias locate'",
                    _json_object_with({"spurious", "salient", "n_wrong_grid", "n_correct_grid", "threshold"})),
    "verify-report": ("a report written by 'clip-debias verify --json'",
                      _json_object_with({"accuracy", "worst_group_accuracy", "thresholds", "passed", "backend"},
                                        ("report", "clip-debias verify"))),
    "bench-report": ("a report written by 'clip-debias bench --json'",
                     _json_object_with({"rows", "machine", "left_out"}, ("report", "clip-debias bench"))),
    "compare-file": ("results written by 'clip-debias evaluate --json' (or the demo's compare.json)", _compare_file),
    "demo-summary": ("demo.json written by 'clip-debias demo'",
                     _json_object_with({"chosen", "val_rows", "test_rows", "verify"})),
    "search-report": ("a report written by 'clip-debias search --json'",
                      _json_object_with({"report"}, ("report", "clip-debias search"))),
    "figure": ("a PNG figure written by clip-debias", _png),
    "report-html": ("report.html written by 'clip-debias report'", lambda p: HTML_GENERATOR in _head(p)),
    "skipped-list": ("a skipped-images list written by clip-debias",
                     lambda p: _head(p, len(SKIPPED_HEADER)) == SKIPPED_HEADER),
    "lab-weights": ("lab weights written by 'clip-debias lab train'", _lab_weights),
    "weights-cache-entry": ("a weights-cache entry written by clip-debias", _weights_cache_entry),
}


def file_is_ours(path: Path, kind: str) -> bool:
    """``path`` is a regular file in the format of ``kind`` (see ``FILE_KINDS``)."""
    return _is_regular(path) and FILE_KINDS[kind][1](path)
