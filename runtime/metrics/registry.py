"""The registry of metric families: every module of this package that defines ``FAMILY`` (a
``runtime.metrics.spec.MetricFamily``) is one, found by name at first use -- adding a metric is writing one module.
``families()`` in their ``order``; ``gates()`` every gate of every family; ``family_of_gate``."""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from pathlib import Path

from clip_debias.runtime.metrics.spec import GateSpec, MetricFamily

PACKAGE = "clip_debias.runtime.metrics"


@lru_cache(maxsize=1)
def families() -> tuple[MetricFamily, ...]:
    """Every registered family, by ``order`` then name."""
    found = []
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        module = importlib.import_module(f"{PACKAGE}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if isinstance(family, MetricFamily):
            found.append(family)
    names = [f.name for f in found]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two metric families share a name: {sorted(names)}")  # a programming error
    return tuple(sorted(found, key=lambda f: (f.order, f.name)))


def gates() -> tuple[GateSpec, ...]:
    """Every gate of every family, in family order."""
    return tuple(g for f in families() for g in f.gates)


def family_of_gate(name: str) -> MetricFamily:
    return next(f for f in families() if any(g.name == name for g in f.gates))


def section_families() -> tuple[MetricFamily, ...]:
    """The families with a JSON section of their own (all but the top-level accuracy)."""
    return tuple(f for f in families() if not f.top_level)
