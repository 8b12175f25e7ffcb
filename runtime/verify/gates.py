"""verify's gates: ``Thresholds`` (one field per registered metric gate, generated from the metric registry, plus
the run's own point gates: ``max_latency_ms`` and ``max_skipped``), the refusal of a gate the data cannot feed, and
the judging of every set gate.

Metric gates are accuracy-type (interval-based; ``runtime.metrics.evidence``) except ``max_skew`` and
``max_retrieval_skew`` (point gates). The run's gates
are **point gates**: ``max_latency_ms`` bounds the measured p95 model time (a timing of this machine, not a sampled
proportion), ``max_skipped`` the count of unreadable images (a fact of the run).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from clip_debias.runtime.datasets import DatasetIndex
from clip_debias.runtime.errors import InputError
from clip_debias.runtime.limits import DEFAULT_MAX_SKIPPED, MaxSkipped
from clip_debias.runtime.metrics.bias import check_gates
from clip_debias.runtime.metrics.evidence import Decision, Direction, point_decision
from clip_debias.runtime.metrics.inputs import BiasInputs
from clip_debias.runtime.metrics.registry import family_of_gate, gates
from clip_debias.runtime.metrics.spec import GateContext, ThresholdResult, judged

RUN_GATES = ("max_latency_ms", "max_skipped")


def _post_init(self: Any) -> None:
    for gate in gates():
        limit = getattr(self, gate.name)
        if gate.is_set(limit):
            gate.check(limit)
    if self.max_latency_ms is not None and not self.max_latency_ms > 0:
        raise InputError(f"threshold max_latency_ms = {self.max_latency_ms} must be > 0")


def _metric_limits(self: Any) -> dict[str, Any]:
    """{metric gate name: limit} of the set metric gates."""
    return {g.name: getattr(self, g.name) for g in gates() if g.is_set(getattr(self, g.name))}


def _sections(self: Any) -> dict[str, str]:
    """{threshold: the metric family (bias section) it needs} for the set gates beyond accuracy."""
    return {name: family_of_gate(name).name for name in _metric_limits(self)
            if not family_of_gate(name).top_level}


def _fields() -> list[tuple[str, Any, Any]]:
    out: list[tuple[str, Any, Any]] = []
    for gate in gates():
        default = dataclasses.field(default_factory=dict) if gate.keys else None
        out.append((gate.name, dict[str, float] if gate.keys else float | None, default))
        if gate.name == "min_worst_group":  # the run's gates where the first release placed them (positional use)
            out += [("max_latency_ms", float | None, None), ("max_skipped", MaxSkipped | None, None)]
    return out


Thresholds = dataclasses.make_dataclass(
    "Thresholds", _fields(), namespace={
        "__post_init__": _post_init, "metric_limits": _metric_limits, "sections": _sections,
        "__doc__": "Pass criteria, ``None`` (a keyed gate: ``{}``) = not checked: one field per registered metric gate "
                   "(``runtime.metrics.registry``; accuracies and rates are fractions in [0, 1]), ``max_latency_ms`` "
                   "(p95 per batch in ms) and ``max_skipped`` (with ``skip_bad``; None there: 1 %)."})
Thresholds.__module__ = __name__


def require_gate_data(t: Any, inputs: BiasInputs, index: DatasetIndex) -> None:
    """Refuse (one ``InputError`` line) a metric gate the data cannot feed: the section it needs is missing from
    ``inputs``, or (``max_skew``, ``max_retrieval_skew``) the protected attribute has under two values in the split;
    ``max_retrieval_skew`` without text queries (``--queries``) or without a protected attribute."""
    for name, section in t.sections().items():
        option = next(g.option for g in gates() if g.name == name)
        if section in inputs.missing:
            raise InputError(f"threshold {name} ({option}): {inputs.missing[section]}")
        if section == "retrieval_skew" and inputs.queries is None:
            raise InputError(f"threshold {name} ({option}): needs --queries FILE (the text queries the split's "
                             "images are ranked for)")
        if section == "retrieval_skew" and inputs.protected is None:
            raise InputError(f"threshold {name} ({option}): {inputs.missing.get('skew', 'no protected attribute')}")
        if section in ("skew", "retrieval_skew") and inputs.protected is not None and np.unique(inputs.protected.ids).size < 2:
            raise InputError(f"threshold {name} ({option}): the protected attribute '{inputs.protected.name}' has "
                             f"{np.unique(inputs.protected.ids).size} value in split '{index.split}' of "
                             f"{index.root} (a skew compares at least two)")


def run_gates(t: Any, p95_ms: float, latency_over: dict[str, Any], skipped: int, n_split: int,
              skip_bad: bool) -> dict[str, ThresholdResult]:
    """The point gates of the run: p95 latency (when set) and, with ``skip_bad``, the skipped images."""
    out: dict[str, ThresholdResult] = {}
    if t.max_latency_ms is not None:
        out["max_latency_ms"] = judged(t.max_latency_ms, p95_ms,
                                       point_decision(p95_ms, t.max_latency_ms, Direction.AT_MOST), latency_over)
    if skip_bad:
        m = t.max_skipped or DEFAULT_MAX_SKIPPED
        limit = m.limit(n_split)
        decision = point_decision(skipped, limit, Direction.AT_MOST)
        out["max_skipped"] = judged(
            float(limit), float(skipped), decision,
            {"images_in_split": n_split, "max_skipped": m.to_dict(), "limit_images": limit},
            f"{skipped} of {n_split} images unreadable, over --max-skipped {m.describe()}"
            if decision is Decision.FAIL else "")
    return out


def judge(t: Any, sections: dict[str, Any], not_computed: dict[str, str], context: GateContext, *, p95_ms: float,
          latency_over: dict[str, Any], skipped: int, n_split: int, skip_bad: bool) -> dict[str, ThresholdResult]:
    """Every set gate, in the first release's order: accuracy gates, latency, skipped images, then the others."""
    metric = check_gates(t.metric_limits(), sections, not_computed, context)
    first = {k: metric.pop(k) for k in ("min_accuracy", "min_worst_group") if k in metric}
    return {**first, **run_gates(t, p95_ms, latency_over, skipped, n_split, skip_bad), **metric}


def overall(results: dict[str, ThresholdResult], allow_inconclusive: bool) -> Decision:
    """FAIL when a gate FAILs; INCONCLUSIVE when one is (PASS for the run with ``allow_inconclusive``); else PASS."""
    decisions = {r.decision for r in results.values()}
    if Decision.FAIL.value in decisions:
        return Decision.FAIL
    if Decision.INCONCLUSIVE.value in decisions and not allow_inconclusive:
        return Decision.INCONCLUSIVE
    return Decision.PASS
