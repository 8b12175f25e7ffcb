"""Batches of preprocessed images for a ``DatasetIndex`` (torch).

Each image is decoded by the runtime's loader (``runtime.images.load_image``: pixel limit, 16-bit images scaled to
8 bits) and passed through the model's own ``preprocess`` (open_clip's eval transform, which converts to RGB
itself). Unreadable images stop the run with one line, or with ``skip_bad`` are left out, listed in ``skipped_log``
and counted on stderr; more than ``max_skipped`` of them stop it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from rich.console import Console
from torch.utils.data import DataLoader, Dataset

from clip_debias.runtime.atomic_output import write_atomic
from clip_debias.runtime.datasets import DatasetIndex, ImageRecord
from clip_debias.runtime.images import ImageError, load_image
from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SKIPPED, MaxSkipped
from clip_debias.runtime.ownership import SKIPPED_HEADER, register_file_kind, text_starting
from clip_debias.runtime.progress import Progress
from clip_debias.toolchain.errors import ClipDebiasError

register_file_kind("skipped-list", "a skipped-images list written by clip-debias", text_starting(SKIPPED_HEADER))


def eval_transform(preprocess: dict[str, Any]) -> Any:
    """open_clip's eval transform (PIL image -> [3, H, W] tensor) of a model's recorded preprocessing (a saved
    model's ``spec.preprocess``: open_clip's ``PreprocessCfg`` fields)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    keys = PreprocessCfg.__dataclass_fields__
    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in preprocess.items() if k in keys}
    return image_transform_v2(PreprocessCfg(**cfg), is_train=False)


@dataclass
class Batch:
    """Preprocessed images [B, 3, H, W] with their labels, groups and attributes (None when the dataset has none),
    image paths, and ``indices`` into ``index.records``."""

    images: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    attributes: torch.Tensor | None
    paths: list[str]
    indices: torch.Tensor

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class _Item:
    """One image: its position in the index, the preprocessed tensor, or why it could not be read."""

    index: int
    image: torch.Tensor | None
    error: str | None


@dataclass
class _Chunk:
    """A DataLoader batch: the items that loaded and the (index, reason) of those that did not."""

    indices: list[int]
    images: torch.Tensor | None
    failures: list[tuple[int, str]]


class _ImageDataset(Dataset):
    """Item i = record i of the index, read and preprocessed (or the reason it could not be read)."""

    def __init__(self, records: list[ImageRecord], preprocess: Callable, max_pixels: int | None) -> None:
        self.records = records
        self.preprocess = preprocess
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> _Item:
        try:
            image = load_image(self.records[i].path, self.max_pixels)
        except ImageError as e:
            return _Item(i, None, e.reason)
        try:
            return _Item(i, self.preprocess(image), None)
        except (ValueError, OSError) as e:  # e.g. a LAB image PIL cannot convert to RGB
            return _Item(i, None, f"cannot preprocess a {image.mode} {image.width}x{image.height} image ({e})")


def _collate(items: list[_Item]) -> _Chunk:
    ok = [it for it in items if it.image is not None]
    return _Chunk(
        indices=[it.index for it in ok],
        images=torch.stack([it.image for it in ok]) if ok else None,
        failures=[(it.index, it.error) for it in items if it.image is None],
    )


@dataclass
class BatchIterator(Iterator[Batch]):
    """Iterates the batches of one pass over ``index``; afterwards ``kept``/``skipped`` say which records loaded."""

    index: DatasetIndex
    preprocess: Callable
    batch_size: int = 32
    skip_bad: bool = False
    skipped_log: Path | None = None
    progress: bool = True
    what: str = "read"  # what the pass is for, in its progress lines ("decompose", ...)
    workers: int = 0
    max_skipped: MaxSkipped = DEFAULT_MAX_SKIPPED
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    force: bool = False  # replace a ``skipped_log`` that is not a skipped list of ours
    kept: list[int] = field(default_factory=list, init=False)  # indices into index.records, in batch order
    skipped: list[tuple[str, str]] = field(default_factory=list, init=False)  # (path, reason)

    def __post_init__(self) -> None:
        self._batches = self._run()

    def __next__(self) -> Batch:
        return next(self._batches)

    def loaded_records(self) -> list[ImageRecord]:
        """The records whose images were loaded so far, in the order of the batches."""
        return [self.index.records[i] for i in self.kept]

    def _run(self) -> Iterator[Batch]:
        records = self.index.records
        loader = DataLoader(
            _ImageDataset(records, self.preprocess, self.max_pixels), batch_size=self.batch_size, shuffle=False,
            num_workers=self.workers, collate_fn=_collate,
        )
        console = Console(stderr=True)
        what = f"{self.what} {self.index.dataset}/{self.index.split}"
        with Progress(what, len(records), len(loader), enabled=self.progress, console=console) as bar:
            for chunk in loader:
                for i, reason in chunk.failures:
                    path = str(records[i].path)
                    if not self.skip_bad:
                        raise ClipDebiasError(f"{path}: cannot read image ({reason})")
                    self.skipped.append((path, reason))
                if len(self.skipped) > self.max_skipped.limit(len(records)):  # stop now: the run cannot pass
                    self._write_log()
                    raise ClipDebiasError(
                        f"{self.index.root}: {len(self.skipped)} unreadable image(s) of {len(records)} in split "
                        f"'{self.index.split}' so far, over --max-skipped {self.max_skipped.describe()} "
                        f"({self.max_skipped.limit(len(records))} image(s)){self._where()}; first: "
                        f"{self.skipped[0][0]} ({self.skipped[0][1]})")
                if chunk.images is not None:
                    self.kept.extend(chunk.indices)
                    yield self._batch(chunk)
                bar.advance(len(chunk.indices) + len(chunk.failures))
        self._finish(console)

    def _batch(self, chunk: _Chunk) -> Batch:
        kept = [self.index.records[i] for i in chunk.indices]
        has_attributes = all(r.attribute is not None for r in kept)
        return Batch(
            images=chunk.images,
            labels=torch.tensor([r.label for r in kept], dtype=torch.long),
            groups=torch.tensor([r.group for r in kept], dtype=torch.long),
            attributes=torch.tensor([r.attribute for r in kept], dtype=torch.long) if has_attributes else None,
            paths=[str(r.path) for r in kept],
            indices=torch.tensor(chunk.indices, dtype=torch.long),
        )

    def _where(self) -> str:
        return f" (listed in {self.skipped_log})" if self.skipped_log is not None and self.skip_bad else ""

    def _write_log(self) -> None:
        """The skipped list: a header line (``ownership.SKIPPED_HEADER``), then ``path<TAB>reason`` lines."""
        if self.skipped_log is not None and self.skip_bad:
            lines = "".join(f"{p}\t{r}\n" for p, r in self.skipped)
            write_atomic(self.skipped_log, f"{SKIPPED_HEADER}\n{lines}", "skipped-list", self.force)

    def _finish(self, console: Console) -> None:
        """Write the skipped list and report its length; no image at all is an error."""
        self._write_log()
        where = self._where()
        if self.skipped:
            console.print(f"skipped {len(self.skipped)} unreadable image(s) of {len(self.index)}{where}",
                          highlight=False, markup=False, soft_wrap=True)
        if self.index.records and not self.kept:
            raise ClipDebiasError(
                f"{self.index.root}: none of the {len(self.index)} images of split '{self.index.split}' "
                f"could be read{where}"
            )


def iter_batches(
    index: DatasetIndex,
    preprocess: Callable,
    batch_size: int = 32,
    skip_bad: bool = False,
    skipped_log: Path | None = None,
    progress: bool = True,
    workers: int = 0,
    max_skipped: MaxSkipped = DEFAULT_MAX_SKIPPED,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    force: bool = False,
    what: str = "read",
) -> BatchIterator:
    """Batches of ``index`` in record order, each image decoded by ``runtime.images.load_image`` (at most
    ``max_pixels`` pixels) and passed through ``preprocess``.

    An unreadable image raises ``ClipDebiasError("<path>: cannot read image (<reason>)")``; with ``skip_bad`` it is
    left out, and at the end the skipped ``path<TAB>reason`` lines go to ``skipped_log`` (when given; replacing only
    a list of ours unless ``force``) and their count to stderr. More skipped images than ``max_skipped`` allows stop
    the run with one line as soon as they are. The returned iterator's ``kept``/``loaded_records()`` align outputs
    with records. Progress (``runtime.progress``): a bar on a terminal, else a log line every tenth of the batches,
    naming ``what`` the pass is for."""
    if batch_size < 1:
        raise ClipDebiasError(f"batch size must be >= 1, got {batch_size}")
    return BatchIterator(index, preprocess, batch_size, skip_bad, Path(skipped_log) if skipped_log else None,
                         progress=progress, what=what, workers=workers, max_skipped=max_skipped,
                         max_pixels=max_pixels, force=force)
