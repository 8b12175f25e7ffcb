"""Write outputs atomically, and never replace or delete what clip-debias did not write (stdlib only).

Ownership is decided by ``runtime.ownership``: a folder by its ``clip-debias-output.json`` marker (kind, format,
command, and the sha256 of every file it holds), a single file by its own format. Never by a common file name.

``staged_directory(out, kind)``: a staging folder ``.OUT.tmp-HOST-PID-XXXX`` beside ``out`` (holding a ``staging``
marker) is yielded; on normal exit the marker is completed with the sha256 of every file written, and the folder is
renamed onto ``out``. An existing ``out`` is replaced only when it is ours, of the same kind and untouched
(``ownership.replaceable``): it is renamed aside to ``.OUT.old-HOST-PID-XXXX`` and only the files its marker lists are
deleted. On any exception the staging folder is removed and ``out`` is untouched. Stale staging and set-aside folders
of ours (a killed run: same host, writer's process gone) are removed on the next run into the same target -- a
set-aside output whose target is missing is put back instead -- and a line on the ``clip_debias.output`` logger
says so (the CLI prints it on stderr). ``claim_directory(out, kind)``: a folder written in place (the demo's),
created with a marker, or reused when it carries one of that kind.

``atomic_file(path, kind)`` / ``write_atomic(path, data, kind)``: the same for one file (temp file + rename); an
existing file is replaced only when it is in the format of ``kind`` (``ownership.file_kind``: as its writer declares
it), or with ``force``.

Refused with one ``ClipDebiasError`` line, before any work (``check_directory_target`` / ``check_file_target``) and
again right before the swap: an ``out`` that is not ours (above), a file where a folder goes or the reverse, a
symlink, the current directory or one of its parents, a path under a file. Outputs get the umask's permissions
(files 0o666 & ~umask, dirs 0o777 & ~umask), like any file a shell command creates.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.ownership import (FOLDER_KINDS, MARKER_NAME, MarkerError, OutputMarker, file_is_ours,
                                           file_kind, hash_files, host_id, new_marker, read_marker, remove_listed,
                                           replaceable)

log = logging.getLogger("clip_debias.output")
_STAGE = re.compile(r"\.(?P<name>.+)\.(?P<role>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}")


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


def _stage_name(out: Path, role: str) -> Path:
    """``.NAME.ROLE-HOST-PID-RANDOM`` beside ``out`` (role tmp | old): who wrote it, so a later run can tell a stale
    one (its writer gone) from one still being written."""
    return out.with_name(f".{out.name}.{role}-{host_id()}-{os.getpid()}-{secrets.token_hex(4)}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _sweep_stale(out: Path, kind: str | None) -> None:
    """Remove what a killed run into ``out`` left beside it (see the module docstring). ``kind`` None: ``out`` is a
    file output, whose temp files are ours by their name alone (a partial file can hold no marker)."""
    if not out.parent.is_dir():
        return
    for entry in sorted(out.parent.iterdir()):
        m = _STAGE.fullmatch(entry.name)
        if m is None or m["name"] != out.name or m["host"] != host_id() or entry.is_symlink():
            continue
        if _alive(int(m["pid"])):
            log.warning("note: %s is being written by a running process (pid %s); left as it is", entry, m["pid"])
            continue
        if kind is None:
            if entry.is_file():
                entry.unlink()
                log.warning("removed %s, a partial file left by a killed run (pid %s)", entry, m["pid"])
            continue
        if not entry.is_dir():
            continue
        try:
            marker = read_marker(entry)
        except MarkerError:
            marker = None
        if marker is None and not any(entry.iterdir()):
            entry.rmdir()
            continue
        if marker is None or marker.kind != kind:
            continue  # not ours to judge: leave it
        if m["role"] == "tmp":
            shutil.rmtree(entry)  # a staging folder: everything in it was written by the killed run
            log.warning("removed %s, the staging folder of a killed run (pid %s) into %s", entry, m["pid"], out)
        elif not out.exists() and not out.is_symlink():
            os.replace(entry, out)
            log.warning("restored %s from %s (a run was killed while replacing it)", out, entry.name)
        else:
            left = remove_listed(entry, marker)
            log.warning("removed %s, an output set aside by a killed run (pid %s)%s", entry, m["pid"],
                        f"; left {left[:3]} there: clip-debias did not write them" if left else "")


def _refuse_cwd_or_link(out: Path, what: str) -> None:
    cwd = Path.cwd().resolve()
    real = out.resolve()
    if real == cwd or real in cwd.parents:
        raise ClipDebiasError(f"{out}: is the current directory or one of its parents; refusing to replace it "
                              f"(expected the path of a new directory or of {what})")
    _check_parents(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ClipDebiasError(f"{out}: exists and is not a directory (expected a directory path for {what})")


def check_directory_target(out: str | Path, kind: str) -> Path:
    """``out`` as an absolute path, if an output folder of ``kind`` may be written there (new, empty, or ours of that
    kind and untouched); else one ``ClipDebiasError`` line. Call it before the work starts."""
    out = _absolute(out)
    _refuse_cwd_or_link(out, FOLDER_KINDS[kind][0])
    replaceable(out, kind)
    return out


def _snapshot(out: Path) -> dict[str, tuple[int, int, int]]:
    """(size, mtime_ns, inode) of every entry under ``out``: what the pre-swap check compares against."""
    snap = {}
    if out.is_dir():
        for root, dirs, files in os.walk(out):
            for name in dirs + files:
                st = os.lstat(os.path.join(root, name))
                snap[os.path.join(root, name)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return snap


def _swap_into_place(tmp: Path, out: Path, old_marker: OutputMarker | None) -> None:
    """Rename ``tmp`` onto ``out``; an existing ``out`` is set aside first, then only the files it listed are
    deleted."""
    old: Path | None = None
    if out.exists():
        old = _stage_name(out, "old")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)  # put the previous output back
        raise
    if old is None:
        return
    left = remove_listed(old, old_marker) if old_marker is not None else []
    if old_marker is None:
        try:
            old.rmdir()  # it was empty when checked
        except OSError:
            left = sorted(p.name for p in old.iterdir())
    if left:
        log.warning("left %s: it holds %s, which clip-debias did not write", old, ", ".join(left[:3]))


@contextmanager
def staged_directory(out: str | Path, kind: str, complete: str | None = None) -> Iterator[Path]:
    """Yield a staging folder beside ``out``; on success (``complete``, the file that marks a finished output of
    this kind, written) it replaces ``out``. See the module docstring."""
    out = _absolute(out)
    _refuse_cwd_or_link(out, FOLDER_KINDS[kind][0])
    _make_parent(out)
    _sweep_stale(out, kind)
    old_marker = replaceable(out, kind)
    snap = _snapshot(out)
    tmp = _stage_name(out, "tmp")
    tmp.mkdir(mode=0o700)
    try:
        new_marker(kind, None, state="staging").write(tmp)
        yield tmp
        if complete is not None and not (tmp / complete).is_file():
            raise ClipDebiasError(f"{out}: finished without writing {complete}; nothing was replaced")
        new_marker(kind, hash_files(tmp)).write(tmp)
        apply_umask(tmp)
        _refuse_cwd_or_link(out, FOLDER_KINDS[kind][0])
        if _snapshot(out) != snap:  # something changed there meanwhile: judge it again
            old_marker = replaceable(out, kind)
        _swap_into_place(tmp, out, old_marker)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def claim_directory(out: str | Path, kind: str) -> Path:
    """A folder written in place (files into it one by one, each checked as a single file): ``out`` when it carries
    a marker of ``kind`` written in place; else, when it is missing or empty, created with one; else refused in one
    line. Returns the absolute path."""
    out = _absolute(out)
    what = FOLDER_KINDS[kind][0]
    _refuse_cwd_or_link(out, what)
    if out.is_dir() and any(out.iterdir()):
        try:
            marker = read_marker(out)
        except MarkerError as e:
            raise ClipDebiasError(f"{out}: not empty and its {MARKER_NAME} is damaged ({e.reason}); refusing to "
                                  f"write into it (expected {what})") from None
        if marker is None or marker.kind != kind or marker.files is not None:
            found = "has no " + MARKER_NAME if marker is None else f"is {marker.what}"
            raise ClipDebiasError(f"{out}: exists, is not empty and {found}: not {what}; refusing to write into it "
                                  "(choose a new path or empty it yourself)")
        return out
    _make_parent(out)
    out.mkdir(exist_ok=True)
    apply_umask(new_marker(kind, None).write(out))
    return out


def check_file_target(path: str | Path, kind: str, force: bool = False) -> Path:
    """``path`` as an absolute path, if a file of ``kind`` may be written there: new, or an existing file in that
    format (``ownership.file_kind``: as its writer declares it), or anything but a directory with ``force``; else
    one ``ClipDebiasError``."""
    path = _absolute(path)
    _check_parents(path)
    if path.is_dir():
        raise ClipDebiasError(f"{path}: is a directory (expected a file path)")
    if (path.exists() or path.is_symlink()) and not force and not file_is_ours(path, kind):
        raise ClipDebiasError(f"{path}: exists and is not {file_kind(kind).what}; refusing to overwrite it "
                              "(choose another path, or pass --force to replace it)")
    return path


@contextmanager
def atomic_file(path: str | Path, kind: str, force: bool = False) -> Iterator[Path]:
    """Yield a temp file path beside ``path``; on success it is renamed onto ``path`` (else removed)."""
    path = check_file_target(path, kind, force)
    _make_parent(path)
    _sweep_stale(path, None)
    tmp = _stage_name(path, "tmp")
    tmp.touch(mode=0o600)
    try:
        yield tmp
        apply_umask(tmp)
        check_file_target(path, kind, force)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes, kind: str, force: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns the absolute path."""
    with atomic_file(path, kind, force) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return _absolute(path)
