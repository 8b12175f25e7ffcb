"""What every metric family shares (numpy only): the attribute column of the rows, a group's accuracy, the mean of a
possibly empty selection and the softmax."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GroupAccuracy:
    n: int
    accuracy: float | None  # None: no sample (n = 0)

    @property
    def correct(self) -> int:
        """The images counted right: accuracy * n, exact (accuracy is k / n in float64)."""
        return 0 if self.accuracy is None else int(round(self.accuracy * self.n))


@dataclass(frozen=True)
class AttributeColumn:
    """One attribute of the rows: its name, the value id of every row [N] (0..len(names)-1) and the value names."""

    name: str
    ids: np.ndarray
    names: tuple[str, ...]


def mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis, stably in float64 (``Prediction.probabilities`` is it cast to float32)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)
