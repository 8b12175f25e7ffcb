"""Limits on what a run accepts (stdlib only, cheap to import for CLI defaults).

``DEFAULT_MAX_PIXELS``: image files of more pixels are refused before decoding (``runtime.images``; ``--max-pixels``).

``MaxSkipped`` (``--max-skipped``): how many unreadable images a ``--skip-bad`` run may leave out before it fails.
Written as a count of images (``5``) or a percentage of the images of the split (``2%``), nothing else: a bare
``1.0`` or ``0.5`` is refused (``1.0`` once meant 100 % while ``1`` meant one image). The default is 1 %. The limit
is ``count``, or ``floor(fraction * total)``: with the default, a split of 40 images may lose none and one of 1,200
may lose 12.

``MIN_LATENCY_BATCHES`` (``verify --latency-batches``): the timed model calls verify's latency percentiles rest on at
least (``runtime.verify``: p95 needs 20 to be an observed tail value).

``IndexChecks`` (``--max-rows``, ``--dedupe``, ``--allow-duplicates``): what ``runtime.datasets.load_index`` refuses
in a split's rows (``DEFAULT_MAX_ROWS`` metadata rows per file; the same image file twice, ``runtime.duplicates``).

``MAX_LAB_IMAGE_SIZE`` / ``MAX_LAB_SPLIT`` (``lab make-data``): the bias lab's image side and images per split; with
``check_memory`` the memory a run would need against ``available_memory()`` (``/proc/meminfo`` MemAvailable).

Every limit is checked before the work it bounds allocates anything, and refused in one line (``InputError``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from clip_debias.runtime.choices import Dedupe
from clip_debias.runtime.errors import InputError

DEFAULT_MAX_PIXELS = 50_000_000  # 7071 x 7071; a 13000 x 13000 PNG can be 531 KB on disk and 737 MB decoded
MIN_LATENCY_BATCHES = 20
DEFAULT_MAX_ROWS = 1_000_000  # metadata rows per file; 10^6 rows of records take ~0.7 GB and minutes to read
MAX_LAB_IMAGE_SIZE = 1024  # lab make-data --image-size: the lab model reads 64 px; 1024 px is 3 MiB a decoded image
MAX_LAB_SPLIT = 1_000_000  # lab make-data --n-train / --n-val / --n-test
MEMINFO = Path("/proc/meminfo")


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


@dataclass(frozen=True)
class IndexChecks:
    """What ``load_index`` refuses in the rows of a split: a metadata file of more than ``max_rows`` rows (refused
    while it is read), and the same image file on two rows (``dedupe``: the same resolved path, or the same bytes;
    ``allow_duplicates``: keep the first row of each file instead and count the rows dropped)."""

    max_rows: int = DEFAULT_MAX_ROWS
    dedupe: Dedupe = Dedupe.PATH
    allow_duplicates: bool = False

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise InputError(f"--max-rows {self.max_rows}: expected a count of rows >= 1")
        object.__setattr__(self, "dedupe", Dedupe.parse(self.dedupe, "--dedupe"))


def available_memory() -> int | None:
    """Bytes the kernel says a new process can allocate without swapping (``MemAvailable`` of ``/proc/meminfo``),
    or None where that file is missing or unreadable (then no memory check is made)."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def size_text(n: float) -> str:
    """``n`` bytes as ``1.5 GiB`` / ``730 MiB`` / ``12 KiB``."""
    for unit, scale in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def check_memory(need: int, what: str) -> None:
    """Refuse (one line starting with ``what``) work estimated to need ``need`` bytes when that is more than the
    memory available now (``available_memory``)."""
    free = available_memory()
    if free is not None and need > free:
        raise InputError(f"{what}: needs about {size_text(need)} of memory, more than the {size_text(free)} "
                         "available now (MemAvailable)")


def check_at_most(value: int, limit: int, option: str, why: str) -> None:
    """Refuse ``option value`` above ``limit`` (one line saying ``why``)."""
    if value > limit:
        raise InputError(f"{option} {value:,}: at most {limit:,} ({why})")
