"""The latency numbers of a verify pass.

Latency is **per model call on a batch of ``batch_size`` images** (``latency_batch_size``), in ms: the wall time of
the backend run alone, on an already decoded, preprocessed, validated batch; the first batch is run ``warmup`` extra
times untimed first. p50/p95/p99 by linear interpolation (``numpy.percentile``) over the full-size batches only (a
smaller last batch would mix another batch size into the statistic). A p-th percentile of n timed calls is an
observed tail value only when the (100 - p) % tail holds at least one call: n >= 20 for p95 (the gated one), 100 for
p99. So when the split gives fewer than ``latency_batches`` (default ``MIN_LATENCY_BATCHES`` = 20) full batches,
one full batch is run again, timed, until there are that many (``latency_extra_runs``; the model time of a ViT does
not depend on the pixel values, so a repeat measures the same call); a split smaller than one batch is timed at its
own size (the report says which). Percentiles that still rest on fewer calls than they need are listed in
``latency_warnings``. Throughput = images / summed model time of the pass (model-only); ``end_to_end_per_s`` adds
decoding and preprocessing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from clip_debias.runtime.verify.engine import Predictions

PERCENTILE_MIN_CALLS = {"p95": 20, "p99": 100}
log = logging.getLogger("clip_debias.verify")


@dataclass
class Timing:
    """The model calls the latency percentiles rest on: ``ms`` of calls on batches of ``batch_size`` images, of which
    ``extra_runs`` repeat one batch after the pass."""

    ms: np.ndarray
    batch_size: int
    extra_runs: int

    @property
    def unit(self) -> str:
        return f"ms per model call on a batch of {self.batch_size} image{'s' if self.batch_size != 1 else ''}"

    def warnings(self) -> list[str]:
        """One line per percentile that rests on fewer calls than it needs (``PERCENTILE_MIN_CALLS``)."""
        n = len(self.ms)
        return [f"{p} rests on {n} timed call{'s' if n != 1 else ''} of batch {self.batch_size}; it is an observed "
                f"tail value only from {need} calls on (an interpolation between the slowest ones below that)"
                for p, need in PERCENTILE_MIN_CALLS.items() if n < need]

    def percentiles(self) -> dict[str, float]:
        """p50, p95, p99 and the mean, in ms."""
        p50, p95, p99 = (float(v) for v in np.percentile(self.ms, [50, 95, 99]))
        return {"p50": p50, "p95": p95, "p99": p99, "mean": float(self.ms.mean())}


def time_calls(run: Predictions, at_least: int) -> Timing:
    """The pass's calls on its largest batch size (``batch_size`` unless the split is smaller), topped up to
    ``at_least`` calls with ``run.time_again`` where the engine can (module docstring)."""
    size = max(run.call_images)
    ms = [t for images, t in zip(run.call_images, run.latencies_ms) if images == size]
    extra = max(0, at_least - len(ms)) if run.time_again is not None else 0
    if extra:
        mean_s = float(np.mean(ms)) / 1e3 if ms else 0.0
        log.info("latency: timing %d more calls on a batch of %d images (at least %d timed calls for p95; about %.0f s;"
                 " --latency-batches 0 keeps the split's own %d)", extra, size, at_least, extra * mean_s, len(ms))
    ms += [run.time_again() for _ in range(extra)]
    return Timing(np.asarray(ms), size, extra)
