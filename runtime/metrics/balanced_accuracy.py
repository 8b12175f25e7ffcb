"""**Balanced accuracy** (``balanced_accuracy``): the unweighted mean over the classes with images of the class's
recall, P(pred = c | y = c) -- scikit-learn's ``balanced_accuracy_score`` (classes absent from the rows are left out
and named in ``missing``).

Gate ``min_balanced_accuracy``: the mean of independent proportions, so its interval is the MOVER interval of
sum_c (1/C) recall_c from each class's Wilson interval (``runtime.metrics.evidence``); a class under
``--min-group-size`` images makes it INCONCLUSIVE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clip_debias.runtime.metrics.base import GroupAccuracy
from clip_debias.runtime.metrics.evidence import Direction, Proportion, mover
from clip_debias.runtime.metrics.spec import (GateContext, GateSpec, MetricData, MetricFamily, ThresholdResult,
                                              interval_decision, judged)
from clip_debias.runtime.metrics.text import TextTable, pct


@dataclass
class BalancedAccuracy:
    """The mean over the classes with images of their recall; each class's n and recall (None: no image)."""

    balanced_accuracy: float
    classes: dict[str, GroupAccuracy]
    missing: list[str] = field(default_factory=list)


def balanced_accuracy(predictions: np.ndarray, labels: np.ndarray, class_names: list[str]) -> BalancedAccuracy:
    """See the module docstring. predictions, labels: [N] ints in 0..C-1."""
    predictions, labels = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    classes = {}
    for c, name in enumerate(class_names):
        rows = labels == c
        classes[name] = GroupAccuracy(int(rows.sum()), float((predictions[rows] == c).mean()) if rows.any() else None)
    present = [g.accuracy for g in classes.values() if g.accuracy is not None]
    return BalancedAccuracy(float(np.mean(present)), classes, [k for k, g in classes.items() if g.n == 0])


def _gate(b: BalancedAccuracy, limit: float, ctx: GateContext) -> dict[str, ThresholdResult]:
    ev = ctx.evidence
    present = {k: g for k, g in b.classes.items() if g.n}
    interval = mover([(1.0 / len(present), Proportion.of(g.correct, g.n, ev.confidence)) for g in present.values()])
    small = [f"class {k} ({g.n})" for k, g in present.items() if g.n < ev.min_group_size]
    decision, reason = interval_decision(interval, limit, Direction.AT_LEAST, small, ev)
    over = {"statistic": "mean over the classes with images of P(pred = c | y = c)",
            "classes": {k: g.n for k, g in b.classes.items()}, "missing": b.missing}
    return {"min_balanced_accuracy": judged(limit, b.balanced_accuracy, decision, over, reason, interval,
                                            min(g.n for g in present.values()))}


def _table(b: Any) -> list[TextTable]:
    rows = [[name, str(g.n), pct(g.accuracy) if g.n else "no image"] for name, g in b.classes.items()]
    rows.append(["balanced accuracy (mean over classes)", "", pct(b.balanced_accuracy)])
    return [TextTable("balanced accuracy (recall per class)", ["class", "n", "recall"], rows)]


def _compute(data: MetricData) -> BalancedAccuracy:
    return balanced_accuracy(data.predictions, data.labels, data.inputs.class_names)


FAMILY = MetricFamily(
    name="balanced_accuracy", needs=(), compute=_compute, order=5, section_type=BalancedAccuracy, tables=_table,
    summary=lambda b: {"balanced acc": pct(b.balanced_accuracy)},
    gates=(GateSpec("min_balanced_accuracy", "--min-balanced-accuracy", "FRACTION",
                    "Fail unless the balanced accuracy (mean over classes of the class's recall) is at least this.",
                    Direction.AT_LEAST, "balanced accuracy >= ", _gate,
                    over_text=lambda o: f"{len(o['classes'])} classes" if o else ""),),
)
