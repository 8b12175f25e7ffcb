"""``HeadTerms``: the per-head terms [N, L, H, D] of a cache, in memory or in its file, read in pieces.

A ViT-L/14 cache of 20,000 images holds 24 x 16 x 768 float32 per image (1.2 MB): 23.6 GB. Nothing here holds all of
it at once unless asked (``tensor``): whole-cache passes (locate's margins, means) read consecutive rows in chunks of
about ``CHUNK_BYTES``; the terms of a few heads over all images (build, evaluate, explain) are gathered through a
read-only memory map, which reads only the pages those heads occupy. Everything comes back as float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

CHUNK_BYTES = 64 * 2**20
NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16}


@dataclass
class FileSlot:
    """Where a row-major tensor lies in a file: byte ``offset`` of its first element, storage ``dtype``."""

    path: Path
    offset: int
    dtype: torch.dtype


class HeadTerms:
    """[N, L, H, D] head terms backed by a tensor or by a ``FileSlot`` (see module doc). Positions are (row of the
    cache's ``layers``, head), not absolute layer numbers."""

    def __init__(self, tensor: torch.Tensor | None = None, *, slot: FileSlot | None = None,
                 shape: tuple[int, int, int, int] | None = None):
        if (tensor is None) == (slot is None):
            raise ValueError("HeadTerms needs a tensor or a file slot")
        if tensor is not None and tensor.dim() != 4:
            raise ValueError(f"head terms must be [N, L, H, D], got shape {list(tensor.shape)}")
        self._tensor, self._slot = tensor, slot
        dims = tensor.shape if tensor is not None else shape
        self.shape: tuple[int, int, int, int] = tuple(dims)  # type: ignore[arg-type, assignment]

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype (float32, or float16 for a cache decomposed with --terms-dtype fp16)."""
        return self._tensor.dtype if self._tensor is not None else self._slot.dtype  # type: ignore[union-attr]

    @property
    def in_memory(self) -> bool:
        return self._tensor is not None

    def __len__(self) -> int:
        return self.shape[0]

    def row_bytes(self) -> int:
        """Bytes one image's terms take in storage."""
        n, l, h, d = self.shape
        return l * h * d * torch.tensor([], dtype=self.dtype).element_size()

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Images start..stop-1: [stop - start, L, H, D] float32."""
        stop = min(stop, self.shape[0])
        if self._tensor is not None:
            return self._tensor[start:stop].float()
        slot, count = self._slot, max(stop - start, 0)
        per_row = self.row_bytes() // torch.tensor([], dtype=slot.dtype).element_size()
        with open(slot.path, "rb") as f:
            f.seek(slot.offset + start * self.row_bytes())
            data = np.fromfile(f, dtype=NUMPY_DTYPES[slot.dtype], count=count * per_row)
        return torch.from_numpy(data.astype(np.float32, copy=False)).reshape(count, *self.shape[1:])

    def chunks(self, rows: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, [b, L, H, D] float32) over all images, ``rows`` at a time (default: about CHUNK_BYTES)."""
        rows = rows or max(1, CHUNK_BYTES // max(self.row_bytes(), 1))
        for start in range(0, self.shape[0], rows):
            yield start, self.rows(start, start + rows)

    def select(self, positions: list[tuple[int, int]], images: Sequence[int] | None = None) -> torch.Tensor:
        """[N, len(positions), D] float32: the terms of the given (layer row, head) positions over all images, or
        over the images (row numbers) ``images`` only, in that order ([len(images), len(positions), D]; from a file
        only their pages are read)."""
        n, _, _, d = self.shape
        if images is not None:
            n = len(images)
        if not positions:
            return torch.zeros(n, 0, d)
        rows = [p[0] for p in positions]
        heads = [p[1] for p in positions]
        if self._tensor is not None:
            t = self._tensor if images is None else self._tensor[torch.as_tensor(np.asarray(images, dtype=np.int64))]
            return t[:, rows, heads].float()
        slot = self._slot
        view = np.memmap(slot.path, dtype=NUMPY_DTYPES[slot.dtype], mode="r", offset=slot.offset, shape=self.shape)
        try:
            if images is None:
                picked = view[:, rows, heads]
            else:  # one broadcast index: [n, 1] images x [1, P] (layer row, head) pairs
                picked = view[np.asarray(images, dtype=np.int64)[:, None], np.asarray(rows)[None],
                              np.asarray(heads)[None]]
            return torch.from_numpy(np.ascontiguousarray(picked).astype(np.float32, copy=False))
        finally:
            del view

    def tensor(self) -> torch.Tensor:
        """All terms [N, L, H, D] float32 in memory (small caches, tests)."""
        return self._tensor.float() if self._tensor is not None else self.rows(0, self.shape[0])

    def sum(self) -> torch.Tensor:
        """[N, D] sum over every (layer, head), float32, accumulated chunk by chunk."""
        return torch.cat([c.sum(dim=(1, 2)) for _, c in self.chunks()]) if self.shape[0] else \
            torch.zeros(0, self.shape[-1])

    def mean(self) -> torch.Tensor:
        """[L, H, D] float64 mean over images of every head's term."""
        total = torch.zeros(self.shape[1:], dtype=torch.float64)
        for _, c in self.chunks():
            total += c.double().sum(dim=0)
        return total / max(self.shape[0], 1)
