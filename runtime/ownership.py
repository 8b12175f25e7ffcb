"""What clip-debias wrote, and so may replace: output markers for folders, format headers for single files.

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

**Single files** are recognised by their own format, as the module that writes them declares it
(``register_file_kind``, built from the recognisers at the end of this module; ``FILE_KIND_WRITERS`` names that module,
imported on the first question about the kind): a decomposition cache by its safetensors metadata, a plan or a report
by its JSON fields, a figure by the PNG ``Software`` text chunk we write (read with Pillow), report.html by its
generator meta tag, a skipped-images list by its first line. A command replaces an existing file only when it is of
the kind it writes, or with ``--force``.
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


# ---- single files: recognised by their own format, as their writers declare it ----------------------------------
@dataclass(frozen=True)
class FileKind:
    """A single-file output kind: its name (``check_file_target``'s ``kind``), what it is (in refusals), and how a
    file of it is recognised (``recognise(path)``; reads as little of the file as it can, never raises)."""

    name: str
    what: str
    recognise: Callable[[Path], bool]


# kind -> the module that writes files of it and declares the kind there (``register_file_kind`` at its import).
# Ownership imports that module on the first question about the kind, so a check works whatever was imported
# before, and a runtime-only process knows the runtime's kinds without importing the toolchain.
FILE_KIND_WRITERS: dict[str, str] = {
    "decomposition-cache": "clip_debias.toolchain.decompose.cache",
    "locate-plan": "clip_debias.toolchain.locate.ltc",
    "verify-report": "clip_debias.runtime.verify.report",
    "bench-report": "clip_debias.exporters.bench",
    "compare-file": "clip_debias.toolchain.evaluate",
    "demo-summary": "clip_debias.toolchain.demo",
    "figure": "clip_debias.toolchain.figures",
    "report-html": "clip_debias.toolchain.explain.report",
    "skipped-list": "clip_debias.toolchain.datasets.loader",
    "lab-weights": "clip_debias.toolchain.lab.train",
    "weights-cache-entry": "clip_debias.toolchain.models.checkpoint",
    "search-report": "clip_debias.toolchain.cli.search_cmd",
}
FILE_KINDS: dict[str, FileKind] = {}  # filled by the writers (``register_file_kind``)
SKIPPED_HEADER = "# clip-debias: images left out by --skip-bad (path<TAB>reason)"  # first line of a skipped list


def register_file_kind(name: str, what: str, recognise: Callable[[Path], bool]) -> FileKind:
    """Declare the single-file kind ``name`` (called by the module that writes it, at import; that module is its
    ``FILE_KIND_WRITERS`` entry)."""
    if name not in FILE_KIND_WRITERS:
        raise ValueError(f"file kind {name!r}: add it to ownership.FILE_KIND_WRITERS with the module declaring it")
    FILE_KINDS[name] = kind = FileKind(name, what, recognise)
    return kind


def file_kind(name: str) -> FileKind:
    """The declared kind ``name``, importing its writer module first when it has not been imported yet."""
    if name not in FILE_KINDS:
        import importlib

        if name not in FILE_KIND_WRITERS:
            raise ValueError(f"unknown file kind {name!r}")
        importlib.import_module(FILE_KIND_WRITERS[name])
        if name not in FILE_KINDS:
            raise ValueError(f"file kind {name!r}: {FILE_KIND_WRITERS[name]} does not declare it")
    return FILE_KINDS[name]


def file_is_ours(path: Path, kind: str) -> bool:
    """``path`` is a regular file in the format of ``kind`` (``file_kind(kind).recognise``)."""
    return _is_regular(path) and file_kind(kind).recognise(path)


# ---- recognisers the writers build their declarations from --------------------------------------------------------
def _json(path: Path, limit: int = 64 << 20) -> Any:
    if path.stat().st_size > limit:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def json_object_with(keys: set[str], tag: tuple[str, str] | None = None) -> Callable[[Path], bool]:
    """A JSON object whose ``tag`` field has that value, or (written before the tag existed) that has all ``keys``."""
    def ours(path: Path) -> bool:
        d = _json(path)
        if not isinstance(d, dict):
            return False
        return (tag is not None and d.get(tag[0]) == tag[1]) or keys <= set(d)
    return ours


def json_rows_with(keys: set[str], field: str = "rows") -> Callable[[Path], bool]:
    """A JSON object whose ``field`` is a non-empty list of objects that each have all ``keys``."""
    def ours(path: Path) -> bool:
        d = _json(path)
        rows = d.get(field) if isinstance(d, dict) else None
        return isinstance(rows, list) and bool(rows) and all(isinstance(r, dict) and keys <= set(r) for r in rows)
    return ours


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


def safetensors_with(keys: set[str] = frozenset(), **values: str) -> Callable[[Path], bool]:
    """A safetensors file whose metadata has all ``keys`` and the given ``values``."""
    def ours(path: Path) -> bool:
        meta = safetensors_metadata(path)
        return bool(meta) and keys <= set(meta) and all(meta.get(k) == v for k, v in values.items())
    return ours


def png_text(path: Path, key: str) -> str | None:
    """The PNG text chunk ``key`` stored before the image data (Pillow's ``info``; None if not a PNG or absent)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            value = im.info.get(key) if im.format == "PNG" else None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    return value if isinstance(value, str) else None


def png_text_starting(key: str, prefix: str) -> Callable[[Path], bool]:
    """A PNG whose text chunk ``key`` starts with ``prefix``."""
    return lambda path: (png_text(path, key) or "").startswith(prefix)


def text_starting(prefix: str, contains: bool = False, n: int = 4096) -> Callable[[Path], bool]:
    """A file whose first bytes (UTF-8) start with ``prefix`` (``contains``: hold it within the first ``n``)."""
    def ours(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                head = f.read(n if contains else len(prefix.encode())).decode("utf-8", errors="replace")
        except OSError:
            return False
        return prefix in head if contains else head == prefix
    return ours
