"""**MaxSkew@k / MinSkew@k** (``skew_at_k``; Geyik et al., KDD 2019): for each class c, the images are ranked by the
logit of c and the top k taken; Skew_a@k(c) = ln(share of value a of the protected attribute among the top k /
share of a in the whole set); MaxSkew@k(c) = max_a, MinSkew@k(c) = min_a, over the values present in the set.
Ties: images whose logit equals the k-th largest share the remaining places equally (each counts
(k - #above) / #tied), the expected composition under a uniformly random tie order -- independent of row order.
A value with no image in the top k has share 0 and Skew = -infinity: it is listed in ``empty`` and MinSkew is None
(reported as such, never as a number). k is capped at N.

Gate ``max_skew``: a **point** gate (a log ratio of ranked shares, not a proportion: no interval is claimed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from clip_debias.runtime.metrics.base import AttributeColumn
from clip_debias.runtime.metrics.evidence import Direction, point_decision
from clip_debias.runtime.metrics.spec import GateContext, GateSpec, MetricData, MetricFamily, ThresholdResult, judged
from clip_debias.runtime.metrics.text import TextTable, log_ratio, pct

DEFAULT_SKEW_K = (10, 50, 100)


@dataclass
class ClassSkew:
    """One class at one k: MaxSkew and the value that has it; MinSkew and its value (None with ``empty`` values:
    their share of the top k is 0, their skew -infinity); the share of each value among the top k."""

    max_skew: float
    max_value: str
    min_skew: float | None
    min_value: str
    empty: list[str]
    top_shares: dict[str, float]


@dataclass
class SkewAtK:
    """Every class at one k, with the mean and max of MaxSkew over classes (``max_class`` has the max) and the mean
    and min of MinSkew (None when a class has an empty value; ``min_class`` then names such a class)."""

    k: int
    classes: dict[str, ClassSkew]
    mean_max_skew: float
    max_max_skew: float
    max_class: str
    mean_min_skew: float | None
    min_min_skew: float | None
    min_class: str


@dataclass
class SkewReport:
    """MaxSkew@k / MinSkew@k of the protected ``attribute`` (module docstring) over ``n`` rows: ``values`` present
    in the set with their ``shares``; ``absent`` values of the attribute with no image in the set (not skewed: they
    are no part of the reference); ``requested_k`` as asked, ``at_k`` for each distinct min(k, n)."""

    attribute: str
    n: int
    values: list[str]
    shares: dict[str, float]
    absent: list[str]
    requested_k: list[int]
    at_k: list[SkewAtK]
    ties: str = "tied images at the k-th logit share the remaining places equally"


def top_k_weights(scores: np.ndarray, k: int) -> np.ndarray:
    """[N] weight of each row in the top ``k`` of ``scores`` (1 above the k-th largest score, 0 below; the rows equal
    to it share the remaining places equally). Sums to k."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not 1 <= k <= scores.size:
        raise ValueError(f"top_k_weights: k = {k} outside 1..{scores.size}")
    kth = np.partition(scores, scores.size - k)[scores.size - k]
    above, tied = scores > kth, scores == kth
    weights = above.astype(np.float64)
    weights[tied] = (k - int(above.sum())) / int(tied.sum())
    return weights


def skew_at_k(logits: np.ndarray, protected: AttributeColumn, class_names: list[str],
              ks: list[int] | tuple[int, ...] = DEFAULT_SKEW_K) -> SkewReport:
    """See the module docstring. logits [N, C]; ``protected.ids`` [N]; at least two of its values must be present
    (else ValueError)."""
    logits = np.asarray(logits, dtype=np.float64)
    ids = np.asarray(protected.ids).reshape(-1)
    n = logits.shape[0]
    if ids.shape[0] != n or logits.ndim != 2 or logits.shape[1] != len(class_names):
        raise ValueError("skew_at_k: logits must be [N, C] and the attribute [N]")
    counts = np.bincount(ids, minlength=len(protected.names)).astype(np.float64)
    present = [v for v in range(len(protected.names)) if counts[v] > 0]
    if len(present) < 2:
        raise ValueError(f"skew_at_k: attribute '{protected.name}' has {len(present)} value(s) among the {n} images "
                         "(a skew compares at least two)")
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"skew_at_k: k must be >= 1, got {list(ks)}")
    shares = counts / n
    onehot = ids[:, None] == np.asarray(present)[None, :]  # [N, V]
    at_k = []
    for k in sorted({min(int(k), n) for k in ks}):
        classes = {}
        for c, name in enumerate(class_names):
            top = top_k_weights(logits[:, c], k) @ onehot / k  # [V] share of each present value in the top k
            ratios = {protected.names[v]: top[i] / shares[v] for i, v in enumerate(present)}
            empty = [a for a, r in ratios.items() if r == 0.0]
            finite = {a: math.log(r) for a, r in ratios.items() if r > 0.0}
            max_value = max(finite, key=finite.__getitem__)
            min_value = empty[0] if empty else min(finite, key=finite.__getitem__)
            classes[name] = ClassSkew(finite[max_value], max_value, None if empty else finite[min_value], min_value,
                                      empty, {protected.names[v]: float(top[i]) for i, v in enumerate(present)})
        maxes = {c: s.max_skew for c, s in classes.items()}
        mins = {c: s.min_skew for c, s in classes.items()}
        max_class = max(maxes, key=maxes.__getitem__)
        unbounded = [c for c, v in mins.items() if v is None]
        min_class = unbounded[0] if unbounded else min(mins, key=mins.__getitem__)  # type: ignore[arg-type]
        at_k.append(SkewAtK(k, classes, float(np.mean(list(maxes.values()))), maxes[max_class], max_class,
                            None if unbounded else float(np.mean(list(mins.values()))),  # type: ignore[arg-type]
                            None if unbounded else mins[min_class], min_class))
    return SkewReport(protected.name, n, [protected.names[v] for v in present],
                      {protected.names[v]: float(shares[v]) for v in present},
                      [protected.names[v] for v in range(len(protected.names)) if counts[v] == 0], [int(k) for k in ks],
                      at_k)



def _skew_gate(s: SkewReport, limit: float, ctx: GateContext) -> dict[str, ThresholdResult]:
    worst = max(s.at_k, key=lambda a: a.max_max_skew)
    over = {"statistic": "max over classes and k of MaxSkew@k", "attribute": s.attribute, "values": s.values,
            "k": [a.k for a in s.at_k], "images": s.n,
            "worst": {"class": worst.max_class, "k": worst.k, "value": worst.classes[worst.max_class].max_value}}
    return {"max_skew": judged(limit, worst.max_max_skew, point_decision(worst.max_max_skew, limit,
                                                                         Direction.AT_MOST), over)}


def skew_tables(s: Any) -> list[TextTable]:
    out = []
    for a in s.at_k:
        rows = [[name, f"{log_ratio(cs.max_skew)} ({cs.max_value})",
                 f"{log_ratio(cs.min_skew)} ({cs.min_value})" if cs.min_skew is not None
                 else f"-inf: {', '.join(cs.empty)} not in the top {a.k}"]
                for name, cs in a.classes.items()]
        rows.append(["mean over classes", log_ratio(a.mean_max_skew), log_ratio(a.mean_min_skew)])
        rows.append(["max / min over classes", f"{log_ratio(a.max_max_skew)} ({a.max_class})",
                     f"{log_ratio(a.min_min_skew)} ({a.min_class})" if a.min_min_skew is not None
                     else f"-inf ({a.min_class})"])
        out.append(TextTable(f"MaxSkew@{a.k} / MinSkew@{a.k} of '{s.attribute}' ({s.n} images)",
                             ["class", f"MaxSkew@{a.k}", f"MinSkew@{a.k}"], rows))
    shares = ", ".join(f"{v} {pct(x)}" for v, x in s.shares.items())
    out[-1].notes.append(f"shares in the set: {shares}" + (f"; no image: {', '.join(s.absent)}" if s.absent else "")
                         + f"; k asked {','.join(map(str, s.requested_k))}, capped at {s.n}; {s.ties}")
    return out


def skew_summary(s: Any) -> dict[str, str]:
    return {f"MaxSkew@{a.k}": f"{a.max_max_skew:.3f}" for a in s.at_k}


def _compute(data: MetricData) -> SkewReport | None:
    i = data.inputs
    if i.protected is None or np.unique(np.asarray(i.protected.ids)).size < 2:
        return None
    return skew_at_k(data.logits, i.protected, i.class_names, i.skew_k)


def _unavailable(data: MetricData) -> str | None:
    p = data.inputs.protected
    if p is None:
        return None
    present = np.unique(np.asarray(p.ids)).size
    return (f"the protected attribute '{p.name}' has {present} value(s) among the {len(data.labels)} images counted "
            "(a skew compares at least two)")


def _over(o: dict[str, Any]) -> str:
    return f"'{o['attribute']}', k {','.join(map(str, o['k']))}, {o['images']} images" if o else ""


FAMILY = MetricFamily(
    name="skew", needs=("protected",), compute=_compute, unavailable=_unavailable, order=30, section_type=SkewReport,
    tables=skew_tables, summary=skew_summary,
    gates=(GateSpec("max_skew", "--max-skew", "LN_RATIO",
                    "The largest MaxSkew@k (ln ratio, >= 0) over every class and --skew-k value, of the protected "
                    "attribute (a point gate).", Direction.AT_MOST, "MaxSkew@k <= ", _skew_gate, fmt=log_ratio,
                    over_text=_over, upper=None, evidence=False,
                    bound_hint="must be >= 0 (MaxSkew is a log ratio, >= 0)"),),
)
