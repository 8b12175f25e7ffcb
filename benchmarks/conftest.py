"""Benchmarks (pytest-benchmark). Not part of the test run: `python -m pytest benchmarks --benchmark-only`.

A benchmark that sets ``benchmark.extra_info["baseline"] = "<name of another benchmark in this run>"`` gets its
median-time ratio to that baseline printed in the terminal summary (and in ``--benchmark-json`` extra_info), so
every speed target is a ratio measured in one run on one machine.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _medians(config) -> dict[str, object]:
    session = getattr(config, "_benchmarksession", None)
    return {b.name: b for b in (session.benchmarks if session else []) if getattr(b, "stats", None)}


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    benches = _medians(config)
    rows = []
    for name, b in benches.items():
        base = b.extra_info.get("baseline")
        if base in benches:
            ratio = b.stats.median / benches[base].stats.median
            b.extra_info["ratio_to_baseline"] = ratio
            target = b.extra_info.get("target", "")
            rows.append(f"{name:<55} {ratio:6.3f}x of {base}  {target}")
    if rows:
        terminalreporter.section("clip-debias ratios (median time / baseline median time, same run)")
        for r in rows:
            terminalreporter.write_line(r)
