"""The audit's sources: what ``clip-debias audit SOURCE SOURCE ...`` reads, each named, opened and sampled.

A SOURCE is ``[NAME=]PATH[:SPLIT]``:

- a folder of images: every file below it (recursively) whose suffix is one of ``IMAGE_SUFFIXES``, sorted by path,
  except in folders clip-debias wrote (an earlier audit's ``--out`` inside it);
- a CSV: a ``.csv`` file, or a folder holding ``data.csv``, with a ``path`` column (the csv dataset format's, paths
  relative to the CSV; other columns ignored); ``:SPLIT`` keeps the rows whose ``split`` column is SPLIT;
- a Waterbirds layout (a folder with ``metadata.csv``) or a CelebA layout (``img_align_celeba/``), with ``:SPLIT``
  (train, val or test) required;
- a decomposition cache (a ``.safetensors`` file written by ``clip-debias decompose``): its rows are the images.

NAME defaults to the folder or file name (with ``:SPLIT`` when given). Images are opened later by the one loader
(``runtime.images.load_image`` via ``toolchain.datasets.iter_batches``); dataset image paths that leave their data
folder are refused unless ``allow_outside_root``. Every problem is one ``ClipDebiasError`` line naming the source.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from clip_debias.runtime.datasets import SPLITS, DatasetIndex, ImageRecord, dedupe, image_path, load_index, read_csv
from clip_debias.runtime.image_folder import IMAGE_SUFFIXES, folder_images
from clip_debias.runtime.limits import IndexChecks
from clip_debias.runtime.ownership import file_is_ours
from clip_debias.toolchain.decompose.cache import DecompositionCache, load_cache
from clip_debias.toolchain.errors import ClipDebiasError

KINDS = ("folder", "csv", "waterbirds", "celeba", "cache")
_NAME = re.compile(r"[A-Za-z0-9_.:+-]+")


@dataclass
class Source:
    """One opened source: its images (``index``) or its decomposed rows (``cache``)."""

    name: str
    text: str  # as given on the command line
    kind: str  # one of KINDS
    path: Path
    split: str | None = None
    index: DatasetIndex | None = None
    cache: DecompositionCache | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.cache) if self.cache is not None else len(self.index.records)  # type: ignore[union-attr]

    def image_index(self, rows: np.ndarray | list[int] | None = None) -> DatasetIndex:
        """The images of ``rows`` (all when None) of an image source, as a ``DatasetIndex`` named after it."""
        if self.index is None:
            raise ValueError(f"source {self.text} is a cache: its images are its recorded paths")
        records = self.index.records if rows is None else [self.index.records[int(i)] for i in rows]
        return replace(self.index, dataset=self.name, records=records)


def split_source_text(text: str) -> tuple[str | None, str, str | None]:
    """``[NAME=]PATH[:SPLIT]`` -> (name or None, path, split or None). ``=`` names only when what precedes it is a
    plain name (no path separator); ``:SPLIT`` is read only when the whole text is not an existing path."""
    name, path = None, text
    head, eq, tail = text.partition("=")
    if eq and head and _NAME.fullmatch(head) and os.sep not in head:
        name, path = head, tail
    stem, colon, split = path.rpartition(":")
    if colon and split in SPLITS and stem and not os.path.exists(path):
        return name, stem, split
    return name, path, None


def _kind(path: Path) -> str:
    if path.is_file() and path.suffix == ".safetensors":
        return "cache"
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    if path.is_dir():
        if (path / "metadata.csv").is_file():
            return "waterbirds"
        if (path / "img_align_celeba").is_dir():
            return "celeba"
        if (path / "data.csv").is_file():
            return "csv"
        return "folder"
    raise ClipDebiasError(f"{path}: expected a folder of images, a .csv, a Waterbirds or CelebA folder, or a "
                          ".safetensors decomposition cache")


def _folder_records(root: Path, max_images: int) -> list[ImageRecord]:
    """Every image file below ``root``, sorted by path (``runtime.image_folder``: folders clip-debias wrote are left
    out; more than ``max_images`` files refused while walking)."""
    return [ImageRecord(p, 0, 0) for p in folder_images(root, max_images)]


def _csv_records(path: Path, split: str | None, allow_outside_root: bool, max_rows: int) -> list[ImageRecord]:
    table = read_csv(path, ("path",), max_rows)
    if split is not None and "split" not in table.columns:
        raise ClipDebiasError(f"{path}: no 'split' column, so ':{split}' selects nothing (drop ':{split}' to audit "
                              "every row)")
    records = []
    for line, row in table.rows:
        if split is not None and row["split"] != split:
            continue
        if not row["path"]:
            raise ClipDebiasError(f"{table.where(line, 'path')} is empty (expected an image path)")
        records.append(ImageRecord(image_path(path.parent, table, line, "path", row["path"], allow_outside_root), 0, 0))
    return records


def open_source(text: str, allow_outside_root: bool = False, checks: IndexChecks | None = None) -> Source:
    """The ``Source`` a SOURCE argument names (see the module docstring); one line for anything unusable.
    ``checks``: the row limit and duplicate rule of a dataset or csv source (``runtime.datasets.load_index``)."""
    checks = checks or IndexChecks()
    name, raw, split = split_source_text(text)
    path = Path(raw)
    if not path.exists():
        raise ClipDebiasError(f"source {text}: {path} not found")
    kind = _kind(path)
    default = (path.stem if path.is_file() and path.name != "data.csv" else path.resolve().name)
    name = name or (f"{default}:{split}" if split else default)
    if kind == "cache":
        if split is not None:
            raise ClipDebiasError(f"source {text}: a decomposition cache holds one split already; drop ':{split}'")
        if not file_is_ours(path, "decomposition-cache"):
            raise ClipDebiasError(f"source {text}: {path} is not a decomposition cache written by 'clip-debias "
                                  "decompose'")
        return Source(name, text, kind, path, None, cache=load_cache(path))
    if kind in ("waterbirds", "celeba"):
        if split is None:
            raise ClipDebiasError(f"source {text}: a {kind} folder holds several splits; name one: {raw}:train, "
                                  f"{raw}:val or {raw}:test")
        index = load_index(kind, path, split, allow_outside_root=allow_outside_root, checks=checks)
        return Source(name, text, kind, path, split, index=index)
    if kind == "folder":
        if split is not None:
            raise ClipDebiasError(f"source {text}: a folder of images has no splits; drop ':{split}'")
        records = _folder_records(path, checks.max_rows)
        what = "image files (" + ", ".join(IMAGE_SUFFIXES) + ")"
    else:
        csv_path = path / "data.csv" if path.is_dir() else path
        records = _csv_records(csv_path, split, allow_outside_root, checks.max_rows)
        what = "rows" + (f" of split '{split}'" if split else "")
    if not records:
        raise ClipDebiasError(f"source {text}: no {what}")
    index = DatasetIndex(name, path, split or "all", records, ["image"], ["image"], group_source="labels")
    if kind != "folder":  # a folder lists each file once
        dedupe(index, checks)
    return Source(name, text, kind, path, split, index=index)


def open_sources(texts: list[str], allow_outside_root: bool = False,
                 checks: IndexChecks | None = None) -> list[Source]:
    """Every SOURCE opened, at least two, with distinct names."""
    if len(texts) < 2:
        raise ClipDebiasError(f"audit needs at least two sources to tell apart, got {len(texts)} "
                              "(clip-debias audit SOURCE SOURCE [SOURCE ...])")
    sources = [open_source(t, allow_outside_root, checks) for t in texts]
    seen: dict[str, str] = {}
    for s in sources:
        if s.name in seen:
            raise ClipDebiasError(f"sources {seen[s.name]} and {s.text} are both named '{s.name}'; name them: "
                                  "NAME=PATH")
        seen[s.name] = s.text
    return sources


def sample_rows(size: int, n: int, seed: int, position: int) -> np.ndarray:
    """``n`` distinct rows of ``0..size-1`` drawn at random for the source at ``position`` (its own generator,
    seeded by (``seed``, position): adding a source does not change the others' samples)."""
    return np.random.default_rng([seed, 1, position]).choice(size, size=n, replace=False)
