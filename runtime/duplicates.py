"""Duplicate rows of a split: the same image file listed twice.

Two rows of one split are duplicates when they name the same file: with ``Dedupe.PATH`` (the default) the same
resolved path (``os.path.realpath``: ``.``, ``..`` and symbolic links followed), with ``Dedupe.CONTENT`` the same bytes
(sha256 of the file; a file that cannot be read is keyed by its resolved path, and its error comes when it is
decoded). The two images of a counterfactual pair (one ``pair`` id, two different paths) are never duplicates of
each other, even when their bytes are equal; the same path is a duplicate whatever its pair.

A duplicate row would count one image twice in every mean (accuracy, per-group accuracy, skew), so a split holding
one is refused (``find_duplicates`` + ``duplicates_error``: one line naming the first two rows of one file and the
count) unless it is allowed; then ``drop_duplicates`` keeps the first row of each file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from clip_debias.runtime.choices import Dedupe
from clip_debias.runtime.errors import InputError
from clip_debias.runtime.ownership import sha256_file

HASH_THREADS = 4  # files hashed at once with --dedupe content (hashlib releases the GIL)


@dataclass(frozen=True)
class Duplicates:
    """``rows``: positions of the rows that repeat an earlier row's file (ascending); ``first``: for each, the
    position of that earlier row."""

    rows: list[int]
    first: list[int]

    def __len__(self) -> int:
        return len(self.rows)


def resolved_path(path: Path, folders: dict[str, str] | None = None) -> str:
    """``os.path.realpath(path)``, resolving each folder once (``folders`` caches them across calls: realpath walks
    every component with an ``lstat``, 0.1 ms a row; here a row costs one ``lstat`` of its own name)."""
    folder, name = os.path.split(os.fspath(path))
    if name in ("", ".", ".."):
        return os.path.realpath(path)
    folders = {} if folders is None else folders
    real = folders.get(folder)
    if real is None:
        real = folders[folder] = os.path.realpath(folder or ".")
    full = os.path.join(real, name)
    return os.path.realpath(full) if os.path.islink(full) else full


def file_key(path: Path, mode: Dedupe, folders: dict[str, str] | None = None) -> str:
    """What names ``path``'s file under ``mode``: its resolved path (``resolved_path``), or ``sha256:HEX`` of its
    bytes."""
    try:
        resolved = resolved_path(path, folders)
    except (OSError, ValueError):  # e.g. a NUL in the name: no file of that name, its read says so
        resolved = str(path)
    if mode == Dedupe.PATH:
        return resolved
    try:
        return f"sha256:{sha256_file(resolved)}"
    except OSError:
        return resolved


def find_duplicates(paths: Sequence[Path], pairs: Sequence[int | None], mode: Dedupe) -> Duplicates:
    """The rows (by position) whose file (``file_key``) an earlier row already names; ``pairs[i]`` is row i's
    counterfactual pair id (None: none): a row of the same pair as the earlier one, with another path, is kept."""
    seen: dict[str, int] = {}
    rows: list[int] = []
    first: list[int] = []
    if mode == Dedupe.CONTENT:
        with ThreadPoolExecutor(min(HASH_THREADS, os.cpu_count() or 1)) as pool:
            keys = list(pool.map(lambda p: file_key(p, mode), paths))
    else:
        folders: dict[str, str] = {}
        keys = [file_key(p, mode, folders) for p in paths]
    for i, (path, key) in enumerate(zip(paths, keys)):
        j = seen.setdefault(key, i)
        if j == i:
            continue
        if mode == Dedupe.CONTENT and pairs[i] is not None and pairs[i] == pairs[j] and \
                file_key(path, Dedupe.PATH) != file_key(paths[j], Dedupe.PATH):
            continue  # the two images of one counterfactual pair
        rows.append(i)
        first.append(j)
    return Duplicates(rows, first)


def duplicates_error(found: Duplicates, paths: Sequence[Path], where: str, mode: Dedupe) -> InputError:
    """The one-line refusal of a split with duplicate rows (``where`` names the data and split)."""
    i, j = found.rows[0], found.first[0]
    same = "the same file" if mode == Dedupe.PATH else "the same bytes"
    distinct = len(paths) - len(found)
    return InputError(f"{where}: {len(found):,} row(s) repeat an image file already listed ({distinct:,} distinct of "
                      f"{len(paths):,} rows; --dedupe {mode}); first: row {i + 1} '{paths[i]}' is {same} as row "
                      f"{j + 1} '{paths[j]}'. Remove them, or count each file once with --allow-duplicates (verify, "
                      "evaluate, decompose, audit)")


def drop_rows(items: list, rows: list[int]) -> list:
    """``items`` without the positions ``rows``."""
    drop = set(rows)
    return [x for k, x in enumerate(items) if k not in drop]
