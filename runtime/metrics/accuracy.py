"""**Accuracy** (``accuracy_report``). Unweighted average accuracy = mean of per-image correctness over the split
(every image counts once). Worst-group accuracy = min over the groups present in the split of that group's accuracy.
``expected`` names the groups the split must hold (the dataset's definition): one with no image is still listed,
with n = 0 and accuracy None, and named in ``missing`` -- so a caller that gates on the worst group can refuse to
pass without it.

Gates: ``min_accuracy`` (the Wilson interval of correct / n) and ``min_worst_group`` (each group's Wilson interval;
the interval of the minimum is [min of the lower ends, min of the upper ends]; a missing group FAILs; a group under
``--min-group-size`` makes it INCONCLUSIVE unless a group of enough images already FAILs it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from clip_debias.runtime.metrics.base import GroupAccuracy
from clip_debias.runtime.metrics.evidence import Decision, Direction, Proportion, minimum
from clip_debias.runtime.metrics.spec import (GateContext, GateSpec, MetricData, MetricFamily, ThresholdResult,
                                              interval_decision, judged)


@dataclass
class AccuracyReport:
    accuracy: float
    worst_group_accuracy: float
    worst_group: str
    groups: dict[str, GroupAccuracy]
    missing: list[str] = field(default_factory=list)  # expected groups with no sample

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy_report(
    predictions: np.ndarray, labels: np.ndarray, groups: np.ndarray, group_names: list[str] | None = None,
    expected: list[str] | None = None,
) -> AccuracyReport:
    """predictions, labels, groups: [N] ints. ``group_names[g]`` names group id g (default ``str(g)``).
    ``expected``: group names that must be present; the table lists them first, in that order, then any other
    group present. Groups with no samples are left out of the worst-group minimum (see the module docstring)."""
    predictions, labels, groups = (np.asarray(a).reshape(-1) for a in (predictions, labels, groups))
    if not (len(predictions) == len(labels) == len(groups)) or len(labels) == 0:
        raise ValueError("accuracy_report: predictions, labels and groups must be non-empty and of equal length")
    correct = predictions == labels
    present: dict[str, GroupAccuracy] = {}
    for g in np.unique(groups):
        mask = groups == g
        name = group_names[int(g)] if group_names is not None and 0 <= int(g) < len(group_names) else str(int(g))
        present[name] = GroupAccuracy(n=int(mask.sum()), accuracy=float(correct[mask].mean()))
    expected = list(dict.fromkeys(expected or []))
    missing = [name for name in expected if name not in present]
    table = {name: present.get(name, GroupAccuracy(0, None)) for name in expected}
    table.update({k: v for k, v in present.items() if k not in table})
    worst = min(present, key=lambda k: present[k].accuracy)  # type: ignore[arg-type, return-value]
    return AccuracyReport(
        accuracy=float(correct.mean()),
        worst_group_accuracy=float(present[worst].accuracy),  # type: ignore[arg-type]
        worst_group=worst,
        groups=table,
        missing=missing,
    )


def _accuracy_gate(acc: AccuracyReport, limit: float, ctx: GateContext) -> dict[str, ThresholdResult]:
    n = sum(g.n for g in acc.groups.values())
    correct = Proportion.of(sum(g.correct for g in acc.groups.values()), n, ctx.evidence.confidence)
    over = {"images": n, "images_in_split": ctx.split.get("images_in_split", n),
            "skipped": ctx.split.get("skipped", 0),
            "statistic": "mean over the images read of [argmax logits == label]"}
    small = [f"the {n} images read"] if n < ctx.evidence.min_group_size else []
    decision, reason = interval_decision(correct.interval, limit, Direction.AT_LEAST, small, ctx.evidence)
    return {"min_accuracy": judged(limit, acc.accuracy, decision, over, reason, correct.interval, n)}


def _worst_group_gate(acc: AccuracyReport, limit: float, ctx: GateContext) -> dict[str, ThresholdResult]:
    ev = ctx.evidence
    over = {"groups": {k: g.n for k, g in acc.groups.items()},
            "expected_groups": ctx.split.get("expected_groups", list(acc.groups)),
            "groups_from": ctx.split.get("groups_from", ""), "missing": acc.missing,
            "statistic": "min over the groups with images of the group's accuracy"}
    present = {k: Proportion.of(g.correct, g.n, ev.confidence) for k, g in acc.groups.items() if g.n}
    interval = minimum([q.interval for q in present.values()])
    n = acc.groups[acc.worst_group].n
    if acc.missing:
        reason = (f"group(s) {', '.join(acc.missing)} have no image (absent from the split, or every image of them "
                  "skipped)")
        return {"min_worst_group": judged(limit, acc.worst_group_accuracy, Decision.FAIL, over, reason, interval, n)}
    failing = [k for k, q in present.items() if q.n >= ev.min_group_size and q.interval[1] < limit]
    if failing:
        return {"min_worst_group": judged(limit, acc.worst_group_accuracy, Decision.FAIL, over,
                                          f"group(s) {', '.join(failing)}: the whole interval is under {limit:g}",
                                          interval, n)}
    small = [f"group {k} ({q.n})" for k, q in present.items() if q.n < ev.min_group_size]
    decision, reason = interval_decision(interval, limit, Direction.AT_LEAST, small, ev)
    return {"min_worst_group": judged(limit, acc.worst_group_accuracy, decision, over, reason, interval, n)}


def _compute(data: MetricData) -> AccuracyReport:
    return accuracy_report(data.predictions, data.labels, data.groups, data.group_names,  # type: ignore[arg-type]
                           expected=data.expected_groups)


def _over_accuracy(o: dict[str, Any]) -> str:
    return f"{o['images']} of {o['images_in_split']} images"


def _over_worst(o: dict[str, Any]) -> str:
    return f"{len(o['expected_groups'])} groups ({o['groups_from']})"


FAMILY = MetricFamily(
    name="accuracy", needs=("groups",), compute=_compute, order=0, top_level=True, section_type=AccuracyReport,
    gates=(
        GateSpec("min_accuracy", "--min-accuracy", "FRACTION",
                 "Fail unless the average accuracy is at least this (0.9 = 90%): PASS when its whole confidence "
                 "interval is at or above it.", Direction.AT_LEAST, "accuracy >= ", _accuracy_gate,
                 over_text=_over_accuracy),
        GateSpec("min_worst_group", "--min-worst-group", "FRACTION",
                 "Fail unless the worst group's accuracy is at least this (every group's interval at or above it).",
                 Direction.AT_LEAST, "worst group >= ", _worst_group_gate, over_text=_over_worst),
    ),
)
