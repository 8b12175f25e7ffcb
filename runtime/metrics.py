"""Group-robustness metrics (numpy only), shared by ``clip-debias evaluate`` (torch) and ``verify`` (runtime).

Unweighted average accuracy = mean of per-sample correctness over the split (every image counts once).
Worst-group accuracy = min over groups present in the split of that group's accuracy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class GroupAccuracy:
    n: int
    accuracy: float


@dataclass
class AccuracyReport:
    accuracy: float
    worst_group_accuracy: float
    worst_group: str
    groups: dict[str, GroupAccuracy]

    def to_dict(self) -> dict:
        return asdict(self)


def accuracy_report(
    predictions: np.ndarray, labels: np.ndarray, groups: np.ndarray, group_names: list[str] | None = None
) -> AccuracyReport:
    """predictions, labels, groups: [N] ints. ``group_names[g]`` names group id g (default ``str(g)``).
    Groups with no samples are left out of the table and of the worst-group minimum."""
    predictions, labels, groups = (np.asarray(a).reshape(-1) for a in (predictions, labels, groups))
    if not (len(predictions) == len(labels) == len(groups)) or len(labels) == 0:
        raise ValueError("accuracy_report: predictions, labels and groups must be non-empty and of equal length")
    correct = predictions == labels
    table: dict[str, GroupAccuracy] = {}
    for g in np.unique(groups):
        mask = groups == g
        name = group_names[int(g)] if group_names is not None and 0 <= int(g) < len(group_names) else str(int(g))
        table[name] = GroupAccuracy(n=int(mask.sum()), accuracy=float(correct[mask].mean()))
    worst = min(table, key=lambda k: table[k].accuracy)
    return AccuracyReport(
        accuracy=float(correct.mean()),
        worst_group_accuracy=table[worst].accuracy,
        worst_group=worst,
        groups=table,
    )
