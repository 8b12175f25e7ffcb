"""Confidence intervals and the decision rule of the accuracy-type gates (stdlib only: no scipy at run time).

- **Wilson score interval** of a proportion k / n at confidence 1 - alpha, z = Phi^-1(1 - alpha / 2)
  (``statistics.NormalDist``): centre (p + z^2 / 2n) / (1 + z^2 / n), half-width
  z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2), p = k / n. Defined for n >= 1; it stays inside [0, 1].
- **Linear combinations of independent proportions** sum_j w_j p_j (a difference p1 - p2, a Whac-A-Mole gap, a
  mean over classes): the MOVER interval (method of variance estimates recovery; Zou & Donner 2008) built from each
  proportion's Wilson interval [l_j, u_j]: L = E - sqrt(sum_j (w_j p_j - w_j b_j)^2) with b_j = l_j where w_j > 0 and
  u_j where w_j < 0, U likewise with the other ends. For p1 - p2 it *is* Newcombe's hybrid score interval (Newcombe
  1998, method 10).
- **|d|** of a difference with interval [L, U]: [0, max(|L|, |U|)] when L <= 0 <= U, else [min(|L|, |U|),
  max(|L|, |U|)]. **max / min** over several quantities: [max L_i, max U_i] / [min L_i, min U_i] (no multiplicity
  correction: each interval holds at the stated confidence on its own).

**Decision** of a gate "value >= limit" (``AT_LEAST``) on the interval [L, U]: PASS when L >= limit, FAIL when
U < limit, else INCONCLUSIVE; "value <= limit" (``AT_MOST``): PASS when U <= limit, FAIL when L > limit. A gate
whose statistic reads a group of fewer than ``min_group_size`` images is never PASS (at most INCONCLUSIVE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from statistics import NormalDist

from clip_debias.runtime.errors import InputError

DEFAULT_CONFIDENCE = 0.95
DEFAULT_MIN_GROUP_SIZE = 20  # a group of 20 at 95 %: a Wilson interval about +-0.2 wide at p = 0.5

Interval = tuple[float, float]


class Decision(str, Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


class Direction(str, Enum):
    AT_LEAST = ">="  # passes when the value is at least the limit
    AT_MOST = "<="


@dataclass(frozen=True)
class Evidence:
    """The decision rule's settings (``--confidence``, ``--min-group-size``)."""

    confidence: float = DEFAULT_CONFIDENCE
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise InputError(f"--confidence {self.confidence}: expected a fraction strictly between 0 and 1 (0.95)")
        if self.min_group_size < 1:
            raise InputError(f"--min-group-size {self.min_group_size}: expected an integer >= 1")

    @property
    def z(self) -> float:
        return z_value(self.confidence)


def z_value(confidence: float) -> float:
    """The two-sided normal quantile Phi^-1(1 - (1 - confidence) / 2): 1.95996... at 0.95."""
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> Interval:
    """The Wilson score interval of k successes in n trials (module docstring); n >= 1."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n and n >= 1, got k = {k}, n = {n}")
    z = z_value(confidence)
    p = k / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends: the rounding of centre - half is not 0 at k = 0
    return lo, 1.0 if k == n else min(1.0, centre + half)


@dataclass(frozen=True)
class Proportion:
    """k of n, with its Wilson interval at the confidence it was built with."""

    k: int
    n: int
    interval: Interval

    @classmethod
    def of(cls, k: int, n: int, confidence: float) -> "Proportion":
        return cls(int(k), int(n), wilson(int(k), int(n), confidence))

    @property
    def p(self) -> float:
        return self.k / self.n


def mover(terms: list[tuple[float, Proportion]]) -> Interval:
    """The MOVER interval of sum_j w_j p_j over ``terms`` (w_j, proportion j), independent proportions."""
    estimate = sum(w * q.p for w, q in terms)
    low = sum((w * q.p - w * (q.interval[0] if w > 0 else q.interval[1])) ** 2 for w, q in terms)
    high = sum((w * q.interval[1 if w > 0 else 0] - w * q.p) ** 2 for w, q in terms)
    return estimate - math.sqrt(low), estimate + math.sqrt(high)


def newcombe(a: Proportion, b: Proportion) -> Interval:
    """Newcombe's hybrid score interval of p_a - p_b (the MOVER interval of the difference)."""
    return mover([(1.0, a), (-1.0, b)])


def absolute(interval: Interval) -> Interval:
    """The interval of |d| from the interval of d (module docstring)."""
    lo, hi = interval
    ends = (abs(lo), abs(hi))
    return (0.0 if lo <= 0.0 <= hi else min(ends)), max(ends)


def maximum(intervals: list[Interval]) -> Interval:
    return max(i[0] for i in intervals), max(i[1] for i in intervals)


def minimum(intervals: list[Interval]) -> Interval:
    return min(i[0] for i in intervals), min(i[1] for i in intervals)


def decide(interval: Interval, limit: float, direction: Direction) -> Decision:
    """PASS / FAIL / INCONCLUSIVE of the interval against the limit (module docstring)."""
    lo, hi = interval
    if direction is Direction.AT_LEAST:
        return Decision.PASS if lo >= limit else Decision.FAIL if hi < limit else Decision.INCONCLUSIVE
    return Decision.PASS if hi <= limit else Decision.FAIL if lo > limit else Decision.INCONCLUSIVE


def point_decision(value: float, limit: float, direction: Direction) -> Decision:
    """A point gate (latency, skipped images, MaxSkew): PASS or FAIL on the value alone."""
    ok = value >= limit if direction is Direction.AT_LEAST else value <= limit
    return Decision.PASS if ok else Decision.FAIL
