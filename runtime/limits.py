"""Limits on what a run accepts (stdlib only, cheap to import for CLI defaults).

``DEFAULT_MAX_PIXELS``: image files of more pixels are refused before decoding (``runtime.images``; ``--max-pixels``).

``MaxSkipped`` (``--max-skipped``): how many unreadable images a ``--skip-bad`` run may leave out before it fails.
Written as a count of images (``5``) or a percentage of the images of the split (``2%``), nothing else: a bare
``1.0`` or ``0.5`` is refused (``1.0`` once meant 100 % while ``1`` meant one image). The default is 1 %. The limit
is ``count``, or ``floor(fraction * total)``: with the default, a split of 40 images may lose none and one of 1,200
may lose 12.

``MIN_LATENCY_BATCHES`` (``verify --latency-batches``): the timed model calls verify's latency percentiles rest on at
least (``runtime.verify``: p95 needs 20 to be an observed tail value).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from clip_debias.runtime.errors import InputError

DEFAULT_MAX_PIXELS = 50_000_000  # 7071 x 7071; a 13000 x 13000 PNG can be 531 KB on disk and 737 MB decoded
MIN_LATENCY_BATCHES = 20


@dataclass(frozen=True)
class MaxSkipped:
    """At most ``count`` images, or at most ``fraction`` of them (exactly one is set)."""

    count: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.fraction is None):
            raise InputError("max_skipped: give a count or a fraction")
        if self.count is not None and self.count < 0:
            raise InputError(f"max_skipped: count {self.count} must be >= 0")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise InputError(f"max_skipped: fraction {self.fraction} must be in [0, 1]")

    @classmethod
    def parse(cls, text: str, option: str = "--max-skipped") -> "MaxSkipped":
        """'5' -> 5 images; '2%' -> 2 %; anything else (a bare fraction such as '0.02' or '1.0') is refused."""
        t = str(text).strip()
        try:
            if t.endswith("%"):
                return cls(fraction=float(t[:-1]) / 100.0)
            if re.fullmatch(r"\d+", t):
                return cls(count=int(t))
        except (ValueError, InputError):
            pass
        raise InputError(f"{option} {text!r}: expected N (a count of images, e.g. 5) or P% (a percentage of the "
                         "split, e.g. 2%); a bare fraction such as 1.0 is not accepted")

    def limit(self, total: int) -> int:
        """The most images that may be skipped out of ``total``."""
        return self.count if self.count is not None else math.floor(self.fraction * total + 1e-9)  # type: ignore

    def describe(self) -> str:
        return f"{self.count} image(s)" if self.count is not None else f"{100 * self.fraction:g}% of the images"

    def to_dict(self) -> dict[str, float | int | None]:
        return {"count": self.count, "fraction": self.fraction}


DEFAULT_MAX_SKIPPED = MaxSkipped(fraction=0.01)
