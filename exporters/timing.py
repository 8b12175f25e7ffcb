"""Interleaved timing: two callables alternate, round by round, so load from other processes hits both alike.

On a shared 2-core machine separate pytest-benchmark runs of two models can disagree by 2x from run to run; the
ratios we report (benchmarks) and the keep/drop decision for ``model.ort.onnx`` (export) come from ``interleaved``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def interleaved(base: Callable[[], Any], other: Callable[[], Any], rounds: int, warmup: int = 1) -> dict[str, float]:
    """``base`` and ``other`` alternating ``rounds`` times each (after ``warmup`` calls of each).

    Returns min and median wall time of each (ms), ``ratio`` = min(other) / min(base), ``median_ratio`` = median of the
    per-round other/base wall ratios, ``median_speedup`` = median of the per-round base/other ratios, and ``cpu_ratio``
    = total process CPU time of other / base."""
    for _ in range(warmup):
        base(), other()
    wall: dict[str, list[float]] = {"base": [], "other": []}
    cpu = {"base": 0.0, "other": 0.0}
    for _ in range(rounds):
        for name, fn in (("base", base), ("other", other)):
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t)
            cpu[name] += time.process_time() - c
    tb, to = min(wall["base"]), min(wall["other"])
    pairs = list(zip(wall["base"], wall["other"]))
    return {"base_ms": tb * 1e3, "other_ms": to * 1e3, "ratio": to / tb,
            "base_median_ms": statistics.median(wall["base"]) * 1e3,
            "other_median_ms": statistics.median(wall["other"]) * 1e3,
            "median_ratio": statistics.median(o / b for b, o in pairs),
            "median_speedup": statistics.median(b / o for b, o in pairs),
            "cpu_ratio": cpu["other"] / max(cpu["base"], 1e-12)}


def describe(r: dict[str, float]) -> str:
    return (f"base {r['base_ms']:.1f} ms, other {r['other_ms']:.1f} ms: ratio {r['ratio']:.3f} "
            f"(median per-round {r['median_ratio']:.3f}, CPU-time {r['cpu_ratio']:.3f})")
