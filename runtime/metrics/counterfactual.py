"""**Counterfactual flip rate** (``counterfactual_flips``): over the pairs (two images sharing a pair id, same class,
differing in the protected attribute), the fraction whose predicted labels differ, and the mean over pairs of
|P(y | x) - P(y | x')| with y the pair's class and P = softmax(logits); overall and per class (the pair's class).

Gate ``max_flip_rate``: the Wilson interval of flipped / pairs; fewer than ``--min-group-size`` pairs:
INCONCLUSIVE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clip_debias.runtime.metrics.base import AttributeColumn, mean_or_none, softmax
from clip_debias.runtime.metrics.evidence import Decision, Direction, Proportion
from clip_debias.runtime.metrics.spec import (GateContext, GateSpec, MetricData, MetricFamily, ThresholdResult,
                                              interval_decision, judged)
from clip_debias.runtime.metrics.text import TextTable, log_ratio, pct

@dataclass
class FlipStats:
    """Over ``pairs`` pairs: how many changed their predicted label, the fraction (None: no pair), and the mean
    |P(y | x) - P(y | x')| of the pair's class y."""

    pairs: int
    flipped: int
    flip_rate: float | None
    mean_abs_prob_diff: float | None


@dataclass
class CounterfactualReport:
    """Flip rate over the counted pairs and per class (module docstring). ``protected``: the attribute the pairs
    must differ in (None: every pair counts); ``pairs_in_split``: pairs with a pair id among the rows read or left
    out; ``excluded``: pairs not counted, by reason (``incomplete``: an image of it was not read; ``not_protected``:
    its two images have the same value of the protected attribute)."""

    protected: str | None
    pairs: int
    flipped: int
    flip_rate: float | None
    mean_abs_prob_diff: float | None
    classes: dict[str, FlipStats]
    pairs_in_split: int = 0
    excluded: dict[str, int] = field(default_factory=dict)


def pair_rows(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(first rows [P], second rows [P], incomplete) of the pair ids ``pairs`` [N] (-1: not in a pair), pairs in
    order of their id. A pair id on one row only is ``incomplete``; on three or more rows: ValueError."""
    pairs = np.asarray(pairs).reshape(-1)
    ids, counts = np.unique(pairs[pairs >= 0], return_counts=True)
    if (counts > 2).any():
        raise ValueError(f"pair id {int(ids[counts > 2][0])} is on {int(counts[counts > 2][0])} images (a "
                         "counterfactual pair is two images)")
    first, second = [], []
    for pid in ids[counts == 2]:
        rows = np.flatnonzero(pairs == pid)
        first.append(rows[0])
        second.append(rows[1])
    return np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64), int((counts == 1).sum())


def _flip_stats(flips: np.ndarray, diffs: np.ndarray) -> FlipStats:
    return FlipStats(int(flips.size), int(flips.sum()), mean_or_none(flips.astype(np.float64)), mean_or_none(diffs))


def counterfactual_flips(predictions: np.ndarray, probabilities: np.ndarray, labels: np.ndarray, pairs: np.ndarray,
                         class_names: list[str], protected: AttributeColumn | None = None,
                         pairs_in_split: int | None = None) -> CounterfactualReport:
    """See the module docstring. predictions, labels, pairs: [N] ints (pairs: -1 = not in a pair); probabilities
    [N, C] (softmax of the logits). ``protected``: count only the pairs whose two images differ in it.
    ``pairs_in_split``: pair ids of the split, read or not (default: those among the rows)."""
    predictions, labels = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    first, second, incomplete = pair_rows(pairs)
    if (labels[first] != labels[second]).any():
        bad = int(np.asarray(pairs)[first[labels[first] != labels[second]][0]])
        raise ValueError(f"pair id {bad}: its two images have different labels (a counterfactual pair shares its "
                         "class)")
    excluded = {"incomplete": incomplete}
    if protected is not None:
        ids = np.asarray(protected.ids).reshape(-1)
        differs = ids[first] != ids[second]
        excluded["not_protected"] = int((~differs).sum())
        first, second = first[differs], second[differs]
    y = labels[first]
    flips = predictions[first] != predictions[second]
    diffs = np.abs(probabilities[first, y] - probabilities[second, y])
    overall = _flip_stats(flips, diffs)
    classes = {c: _flip_stats(flips[y == k], diffs[y == k]) for k, c in enumerate(class_names)}
    total = len(np.unique(np.asarray(pairs)[np.asarray(pairs) >= 0])) if pairs_in_split is None else pairs_in_split
    return CounterfactualReport(protected.name if protected is not None else None, overall.pairs, overall.flipped,
                                overall.flip_rate, overall.mean_abs_prob_diff, classes, total, excluded)



def _flip_gate(c: CounterfactualReport, limit: float, ctx: GateContext) -> dict[str, ThresholdResult]:
    over = {"statistic": "fraction of pairs whose predicted labels differ", "pairs": c.pairs,
            "pairs_in_split": c.pairs_in_split, "excluded": c.excluded, "protected": c.protected}
    if c.flip_rate is None:
        reason = "no complete pair" + (f" differing in '{c.protected}'" if c.protected else "") + " was read"
        return {"max_flip_rate": judged(limit, None, Decision.FAIL, over, reason, None, 0)}
    rate = Proportion.of(c.flipped, c.pairs, ctx.evidence.confidence)
    small = [f"the {c.pairs} pairs"] if c.pairs < ctx.evidence.min_group_size else []
    decision, reason = interval_decision(rate.interval, limit, Direction.AT_MOST, small, ctx.evidence)
    return {"max_flip_rate": judged(limit, c.flip_rate, decision, over, reason, rate.interval, c.pairs)}


def flip_table(c: Any) -> list[TextTable]:
    rows = [[name, str(s.pairs), str(s.flipped), pct(s.flip_rate), log_ratio(s.mean_abs_prob_diff)]
            for name, s in c.classes.items()]
    rows.append(["all pairs", str(c.pairs), str(c.flipped), pct(c.flip_rate), log_ratio(c.mean_abs_prob_diff)])
    excluded = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in c.excluded.items() if v)
    notes = [f"{c.pairs} of {c.pairs_in_split} pairs counted"
             + (f" (pairs differing in '{c.protected}')" if c.protected else "")
             + (f"; left out: {excluded}" if excluded else "")]
    return [TextTable("counterfactual pairs", ["class", "pairs", "flipped", "flip rate", "mean |P(y|x)-P(y|x')|"],
                      rows, notes)]


def flip_summary(c: Any) -> dict[str, str]:
    return {"flip rate": f"{pct(c.flip_rate)} of {c.pairs}",
            "mean |dP(y)|": "-" if c.mean_abs_prob_diff is None else f"{c.mean_abs_prob_diff:.3f}"}


def _compute(data: MetricData) -> CounterfactualReport | None:
    i = data.inputs
    if i.pairs is None:
        return None
    return counterfactual_flips(data.predictions, softmax(data.logits), data.labels, i.pairs, i.class_names,
                                i.protected, data.pairs_in_split)


def _over(o: dict[str, Any]) -> str:
    return f"{o['pairs']} of {o['pairs_in_split']} pairs" if o else ""


FAMILY = MetricFamily(
    name="counterfactual", needs=("pairs",), compute=_compute, order=20, section_type=CounterfactualReport,
    tables=flip_table, summary=flip_summary,
    gates=(GateSpec("max_flip_rate", "--max-flip-rate", "FRACTION",
                    "Counterfactual pairs: the largest fraction of pairs whose label flips (0..1). Data without pairs "
                    "is refused.", Direction.AT_MOST, "flip rate <= ", _flip_gate, over_text=_over),),
)
