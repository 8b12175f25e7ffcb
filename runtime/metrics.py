"""Group-robustness metrics (numpy only), shared by ``clip-debias evaluate`` (torch) and ``verify`` (runtime).

Unweighted average accuracy = mean of per-sample correctness over the split (every image counts once).
Worst-group accuracy = min over the groups present in the split of that group's accuracy. ``expected`` names the
groups the split must hold (the dataset's definition): one with no sample is still listed, with n = 0 and accuracy
None, and named in ``missing`` -- so a caller that gates on the worst group can refuse to pass without it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class GroupAccuracy:
    n: int
    accuracy: float | None  # None: no sample (n = 0)


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
