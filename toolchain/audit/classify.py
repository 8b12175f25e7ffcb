"""The dataset classifier: which of k sources an image came from, from one feature vector per image.

For each seed r: every source's n images are split at random (generator seeded by (seed, r)) into a validation part
of round(n * val_fraction) images and a train part (the same sizes for every source, so chance is 1/k); inside the
train part, an inner split of the same fraction chooses the regularization. The classifier is a multinomial logistic
regression (scikit-learn ``LogisticRegression``, lbfgs, L2; for k = 2 its binary form, the same model) on features
standardized with the mean and standard deviation of the part it is fitted on (``StandardScaler``). C is the value of
``C_GRID`` with the best inner-validation accuracy (ties: the smallest C, the strongest regularization); the model is
then refitted on the whole train part with that C and scored on the validation part. Reported: the validation
accuracy's mean, standard deviation (over seeds, ddof 1), min and max, the confusion matrix summed over seeds, and
chance 1/k with one validation split's binomial standard error sqrt(c (1 - c) / n_val).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
MAX_ITER = 1000


@dataclass(frozen=True)
class SeedSplit:
    """Row indices into the stacked features of all sources: train, validation, and the inner split of train."""

    seed: int
    train: np.ndarray
    val: np.ndarray
    inner_train: np.ndarray
    inner_val: np.ndarray


def part_sizes(n: int, fraction: float) -> tuple[int, int]:
    """(train, validation) images of a source of ``n`` images: validation round(n * fraction)."""
    val = int(round(n * fraction))
    return n - val, val


def make_splits(counts: list[int], val_fraction: float, seeds: list[int]) -> list[SeedSplit]:
    """One ``SeedSplit`` per seed for sources of ``counts`` images stacked in order (source c's rows follow
    sources 0..c-1's); every source is split with the same fractions (see the module docstring)."""
    offsets = np.cumsum([0, *counts])
    out = []
    for seed in seeds:
        parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "inner_train": [], "inner_val": []}
        for c, n in enumerate(counts):
            rng = np.random.default_rng([seed, 2, c])
            rows = offsets[c] + rng.permutation(n)
            n_train, n_val = part_sizes(n, val_fraction)
            train, val = rows[n_val:], rows[:n_val]
            inner = rng.permutation(train)
            k_val = max(1, int(round(n_train * val_fraction)))
            parts["train"].append(train)
            parts["val"].append(val)
            parts["inner_val"].append(inner[:k_val])
            parts["inner_train"].append(inner[k_val:])
        out.append(SeedSplit(seed, *(np.sort(np.concatenate(parts[k])) for k in
                                     ("train", "val", "inner_train", "inner_val"))))
    return out


def _fit(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=MAX_ITER))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence notes: the inner validation judges the fit
        return model.fit(x, y)


def choose_c(x: np.ndarray, y: np.ndarray, split: SeedSplit, grid: tuple[float, ...] = C_GRID) -> float:
    """The C of ``grid`` with the best accuracy on the inner validation part (ties: the smallest)."""
    best, best_acc = grid[0], -1.0
    for c in grid:
        acc = float((_fit(x[split.inner_train], y[split.inner_train], c).predict(x[split.inner_val])
                     == y[split.inner_val]).mean())
        if acc > best_acc:
            best, best_acc = c, acc
    return best


@dataclass
class SeedResult:
    """One seed: validation accuracy, the chosen C, and the validation predictions."""

    seed: int
    accuracy: float
    c: float
    truth: np.ndarray
    predicted: np.ndarray


def fit_seed(x: np.ndarray, y: np.ndarray, split: SeedSplit, grid: tuple[float, ...] = C_GRID) -> SeedResult:
    """C chosen on the inner split, refitted on train, scored on validation."""
    c = choose_c(x, y, split, grid)
    pred = _fit(x[split.train], y[split.train], c).predict(x[split.val])
    return SeedResult(split.seed, float((pred == y[split.val]).mean()), c, y[split.val], pred)


@dataclass
class Accuracy:
    """Validation accuracy over seeds (see the module docstring); ``confusion[i][j]``: images of source i predicted
    as source j, summed over seeds."""

    mean: float
    std: float
    min: float
    max: float
    per_seed: list[float]
    c: list[float]
    chance: float
    n_val: int  # validation images of one seed, all sources together
    standard_error: float  # of one seed's accuracy at chance: sqrt(chance (1 - chance) / n_val)
    confusion: list[list[int]] = field(default_factory=list)

    @classmethod
    def of(cls, results: list[SeedResult], k: int) -> "Accuracy":
        accs = np.array([r.accuracy for r in results])
        confusion = np.zeros((k, k), dtype=np.int64)
        for r in results:
            np.add.at(confusion, (r.truth, r.predicted), 1)
        n_val = len(results[0].truth)
        chance = 1.0 / k
        return cls(float(accs.mean()), float(accs.std(ddof=1)) if len(accs) > 1 else 0.0, float(accs.min()),
                   float(accs.max()), accs.tolist(), [r.c for r in results], chance, n_val,
                   math.sqrt(chance * (1 - chance) / n_val), confusion.tolist())


SMALL_FIT = 2**20  # features of fewer elements are fitted on one BLAS thread


def classify(x: np.ndarray, y: np.ndarray, splits: list[SeedSplit], k: int,
             grid: tuple[float, ...] = C_GRID) -> Accuracy:
    """The dataset classifier on features ``x`` [n, d] with source labels ``y`` [n] (0..k-1), every seed. Small
    problems run on one BLAS thread: lbfgs's many small products only pay the threads' synchronization (measured
    on our 2 cores: 300 x 64 features fitted 5x faster)."""
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=np.float64)
    with threadpool_limits(1 if x.size < SMALL_FIT else None):
        return Accuracy.of([fit_seed(x, y, s, grid) for s in splits], k)


CONTROL_SIGMAS = 3.0


def control_limit(acc: Accuracy) -> float:
    """The highest mean accuracy a control may reach and still be at chance: chance + 3 standard errors of one
    validation split (the mean over seeds varies less than one split, so a leak-free pipeline stays below it with
    probability above 99.8 %)."""
    return acc.chance + CONTROL_SIGMAS * acc.standard_error
