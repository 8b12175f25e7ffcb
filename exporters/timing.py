"""Interleaved timing: callables take turns, round by round, so load from other processes hits all of them alike.

On a shared 2-core machine separate pytest-benchmark runs of two models can disagree by 2x from run to run; the
ratios we report (benchmarks) and the keep/drop decision for ``model.ort.onnx`` (export) come from ``interleaved``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence


SETTLE_S = 0.01  # pause before each timed call: torch's OpenMP threads spin a few ms after a call returns


def round_robin(fns: Sequence[Callable[[], Any]], rounds: int, warmup: int = 1,
                settle_s: float = SETTLE_S) -> tuple[list[list[float]], list[float]]:
    """Call ``fns`` in turn, ``rounds`` times each (after ``warmup`` calls of each), so that load from other
    processes hits all of them alike, pausing ``settle_s`` before each timed call so that no call shares the CPU
    with the previous one's spinning threads. Returns (wall seconds per call [fn][round], total process CPU seconds
    [fn]; the pauses excluded)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    wall: list[list[float]] = [[] for _ in fns]
    cpu = [0.0 for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            time.sleep(settle_s)
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[i].append(time.perf_counter() - t)
            cpu[i] += time.process_time() - c
    return wall, cpu


def interleaved(base: Callable[[], Any], other: Callable[[], Any], rounds: int, warmup: int = 1) -> dict[str, float]:
    """``base`` and ``other`` alternating ``rounds`` times each (after ``warmup`` calls of each).

    Returns min and median wall time of each (ms), ``ratio`` = min(other) / min(base), ``median_ratio`` = median of the
    per-round other/base wall ratios, ``median_speedup`` = median of the per-round base/other ratios, and ``cpu_ratio``
    = total process CPU time of other / base."""
    (wb, wo), (cb, co) = round_robin([base, other], rounds, warmup)
    pairs = list(zip(wb, wo))
    return {"base_ms": min(wb) * 1e3, "other_ms": min(wo) * 1e3, "ratio": min(wo) / min(wb),
            "base_median_ms": statistics.median(wb) * 1e3,
            "other_median_ms": statistics.median(wo) * 1e3,
            "median_ratio": statistics.median(o / b for b, o in pairs),
            "median_speedup": statistics.median(b / o for b, o in pairs),
            "cpu_ratio": co / max(cb, 1e-12)}


def describe(r: dict[str, float]) -> str:
    return (f"base {r['base_ms']:.1f} ms, other {r['other_ms']:.1f} ms: ratio {r['ratio']:.3f} "
            f"(median per-round {r['median_ratio']:.3f}, CPU-time {r['cpu_ratio']:.3f})")


def side_by_side(fns: dict[str, Callable[[], Any]], rounds: int = 30, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Named callables timed by ``round_robin`` (turn by turn, so load from other processes hits each alike). Per
    name, in ms: ``median``, ``p10``, ``p90`` (the spread over the rounds), ``min``; ``rounds``; and, for every name
    after the first, ``median_ratio``: the median over rounds of its time / the first's time in the same round."""
    wall, _ = round_robin(list(fns.values()), rounds, warmup)
    first = wall[0]
    out = {}
    for name, times in zip(fns, wall):
        ms = sorted(t * 1e3 for t in times)
        q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
        out[name] = {"median": statistics.median(ms), "p10": q[0], "p90": q[-1], "min": ms[0], "rounds": len(ms)}
        if times is not first:
            out[name]["median_ratio"] = statistics.median(t / b for t, b in zip(times, first))
    return out
