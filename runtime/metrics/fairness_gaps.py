"""**Equal opportunity / demographic parity gaps** (``fairness_gaps``; the report's JSON section is ``parity``): for
each class c and value a of the protected attribute, recall_a(c) = P(pred = c | y = c, A = a) and positive
rate_a(c) = P(pred = c | A = a); EO gap(c) = max_a recall - min_a recall, DP gap(c) = max_a rate - min_a rate, over
the values with images (a (class, value) cell with no image is named in ``missing``); max and mean over classes.

Gates ``max_eo_gap`` / ``max_dp_gap``: each gap(c) = max over value pairs (a, b) of |p_a - p_b|; the interval of
p_a - p_b is Newcombe's hybrid score interval (``runtime.metrics.evidence``), then |.|, then max over the pairs and
over the classes. A cell (EO) or value (DP) with fewer than ``--min-group-size`` images: INCONCLUSIVE.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clip_debias.runtime.metrics.base import AttributeColumn, mean_or_none
from clip_debias.runtime.metrics.evidence import Decision, Direction, Interval, Proportion, absolute, maximum, newcombe
from clip_debias.runtime.metrics.spec import (GateContext, GateSpec, MetricData, MetricFamily, ThresholdResult,
                                              interval_decision, judged)
from clip_debias.runtime.metrics.text import TextTable, pct


@dataclass
class ClassFairness:
    """One class c: per value a of the protected attribute, ``n`` images of class c, ``recall`` P(pred = c | y = c,
    A = a) and ``positive_rate`` P(pred = c | A = a) (None: no image); the EO and DP gaps (None: under two values
    with images)."""

    n: dict[str, int]
    recall: dict[str, float | None]
    eo_gap: float | None
    positive_rate: dict[str, float | None]
    dp_gap: float | None


@dataclass
class FairnessGaps:
    """EO and DP gaps of the protected ``attribute`` per class, with the max (and its class) and mean over the classes
    whose gap is defined; ``missing``: ``class/value`` cells with no image (their recall is undefined);
    ``value_n``: images of each value (the positive rates' denominators)."""

    attribute: str
    values: list[str]
    classes: dict[str, ClassFairness]
    max_eo_gap: float | None
    max_eo_class: str | None
    mean_eo_gap: float | None
    max_dp_gap: float | None
    max_dp_class: str | None
    mean_dp_gap: float | None
    missing: list[str] = field(default_factory=list)
    value_n: dict[str, int] = field(default_factory=dict)


def _spread(values: dict[str, float | None]) -> float | None:
    defined = [v for v in values.values() if v is not None]
    return float(max(defined) - min(defined)) if len(defined) >= 2 else None


def _extremes(gaps: dict[str, float | None]) -> tuple[float | None, str | None, float | None]:
    defined = {c: g for c, g in gaps.items() if g is not None}
    if not defined:
        return None, None, None
    top = max(defined, key=defined.__getitem__)  # type: ignore[arg-type]
    return defined[top], top, float(np.mean(list(defined.values())))


def fairness_gaps(predictions: np.ndarray, labels: np.ndarray, class_names: list[str],
                  protected: AttributeColumn) -> FairnessGaps:
    """See the module docstring. predictions, labels, ``protected.ids``: [N] ints."""
    predictions, labels = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    ids = np.asarray(protected.ids).reshape(-1)
    if not len(predictions) == len(labels) == len(ids):
        raise ValueError("fairness_gaps: predictions, labels and the attribute must have equal length")
    classes, missing = {}, []
    for c, name in enumerate(class_names):
        n, recall, rate = {}, {}, {}
        for v, value in enumerate(protected.names):
            cell, group = (labels == c) & (ids == v), ids == v
            n[value] = int(cell.sum())
            recall[value] = mean_or_none(predictions[cell] == c)
            rate[value] = mean_or_none(predictions[group] == c)
            if not n[value]:
                missing.append(f"{name}/{value}")
        classes[name] = ClassFairness(n, recall, _spread(recall), rate, _spread(rate))
    max_eo, eo_class, mean_eo = _extremes({c: p.eo_gap for c, p in classes.items()})
    max_dp, dp_class, mean_dp = _extremes({c: p.dp_gap for c, p in classes.items()})
    value_n = {value: int((ids == v).sum()) for v, value in enumerate(protected.names)}
    return FairnessGaps(protected.name, list(protected.names), classes, max_eo, eo_class, mean_eo, max_dp, dp_class,
                        mean_dp, missing, value_n)


def _range_interval(props: dict[str, Proportion]) -> Interval | None:
    """The interval of max_a p_a - min_a p_a = max over pairs |p_a - p_b| (module docstring)."""
    pairs = [absolute(newcombe(a, b)) for a, b in itertools.combinations(props.values(), 2)]
    return maximum(pairs) if pairs else None


def _gap_gate(p: FairnessGaps, limit: float, ctx: GateContext, label: str) -> ThresholdResult:
    ev = ctx.evidence
    value, where = getattr(p, f"max_{label}_gap"), getattr(p, f"max_{label}_class")
    intervals, small = [], []
    for name, cp in p.classes.items():
        if label == "eo":
            counts = {v: (round((cp.recall[v] or 0.0) * cp.n[v]), cp.n[v]) for v in p.values if cp.n[v]}
        else:
            counts = {v: (round((cp.positive_rate[v] or 0.0) * p.value_n[v]), p.value_n[v]) for v in p.values
                      if p.value_n.get(v)}
        small += [f"{name}/{v} ({n})" if label == "eo" else f"{v} ({n})" for v, (_, n) in counts.items()
                  if n < ev.min_group_size]
        interval = _range_interval({v: Proportion.of(k, n, ev.confidence) for v, (k, n) in counts.items()})
        if interval is not None:
            intervals.append(interval)
    if label == "eo":
        statistic, empty = "max over classes of max_a recall - min_a recall", p.missing
    else:
        statistic = "max over classes of max_a P(pred = c | A = a) - min_a P(pred = c | A = a)"
        empty = [v for v in p.values if all(cp.positive_rate[v] is None for cp in p.classes.values())]
        small = list(dict.fromkeys(small))
    over = {"statistic": statistic, "attribute": p.attribute, "values": p.values, "classes": len(p.classes),
            "worst_class": where, "missing": empty}
    n = (min(p.classes[where].n.values()) if label == "eo" else min(p.value_n.values())) if where else 0
    if empty or value is None or not intervals:
        reason = (f"{'cell(s)' if label == 'eo' else 'value(s)'} {', '.join(empty[:6])} have no image" if empty
                  else "no class has images of two values")
        return judged(limit, value, Decision.FAIL, over, reason, maximum(intervals) if intervals else None, n)
    interval = maximum(intervals)
    decision, reason = interval_decision(interval, limit, Direction.AT_MOST, small, ev)
    return judged(limit, value, decision, over, reason, interval, n)


def fairness_table(p: Any) -> list[TextTable]:
    header = ["class", *(f"recall {v}" for v in p.values), "EO gap", *(f"rate {v}" for v in p.values), "DP gap"]
    rows = [[name, *(pct(cp.recall[v]) for v in p.values), pct(cp.eo_gap),
             *(pct(cp.positive_rate[v]) for v in p.values), pct(cp.dp_gap)] for name, cp in p.classes.items()]
    rows.append(["max over classes", *([""] * len(p.values)), f"{pct(p.max_eo_gap)} ({p.max_eo_class})",
                 *([""] * len(p.values)), f"{pct(p.max_dp_gap)} ({p.max_dp_class})"])
    notes = [f"cell(s) {', '.join(p.missing)} have no image"] if p.missing else []
    return [TextTable(f"equal opportunity / demographic parity of '{p.attribute}'", header, rows, notes)]


def fairness_summary(p: Any) -> dict[str, str]:
    return {"EO gap": pct(p.max_eo_gap), "DP gap": pct(p.max_dp_gap)}


def _compute(data: MetricData) -> FairnessGaps | None:
    i = data.inputs
    return None if i.protected is None else fairness_gaps(data.predictions, data.labels, i.class_names, i.protected)


def _over(o: dict[str, Any]) -> str:
    return f"'{o['attribute']}', {o['classes']} classes" if o else ""


FAMILY = MetricFamily(
    name="parity", needs=("protected",), compute=_compute, order=40, section_type=FairnessGaps,
    tables=fairness_table, summary=fairness_summary,
    gates=(
        GateSpec("max_eo_gap", "--max-eo-gap", "FRACTION",
                 "The largest equal-opportunity gap (recall difference between values of the protected attribute, "
                 "max over classes; 0..1).", Direction.AT_MOST, "EO gap <= ",
                 lambda p, limit, ctx: {"max_eo_gap": _gap_gate(p, limit, ctx, "eo")}, over_text=_over),
        GateSpec("max_dp_gap", "--max-dp-gap", "FRACTION",
                 "The largest demographic-parity gap (difference of P(pred = c) between values of the protected "
                 "attribute, max over classes; 0..1).", Direction.AT_MOST, "DP gap <= ",
                 lambda p, limit, ctx: {"max_dp_gap": _gap_gate(p, limit, ctx, "dp")}, over_text=_over),
    ),
)
