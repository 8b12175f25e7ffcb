"""Metrics of a classifier's outputs (numpy only): the one place each number is computed, for ``verify`` (runtime),
``evaluate`` (torch, its logits as numpy) and, through their JSON, the report.

Rows are the images counted (an unreadable image skipped by ``--skip-bad`` is not a row). C classes, N images.

**Accuracy** (``accuracy_report``). Unweighted average accuracy = mean of per-image correctness over the split (every
image counts once). Worst-group accuracy = min over the groups present in the split of that group's accuracy.
``expected`` names the groups the split must hold (the dataset's definition): one with no image is still listed,
with n = 0 and accuracy None, and named in ``missing`` -- so a caller that gates on the worst group can refuse to
pass without it.

**Whac-A-Mole shortcut gaps** (``shortcut_gaps``; Li et al., CVPR 2023, the UrbanCars definitions). Two spurious
attributes, B (background) and O (co-occurring object), whose values are aligned with the classes: value v of an
attribute *agrees* with class y when v == y (the lab's place 0 = land goes with class 0 = landbird). For b, o in
{agree, disagree}: acc(b, o) = mean over the classes y of the accuracy of the images of class y whose background
agrees (b) / object agrees (o) with y. With p_agree = the train correlation and p_disagree = 1 - p_agree:
I.D. accuracy = sum_{b, o} acc(b, o) p_b p_o; BG gap = acc(disagree, agree) - I.D.; CoObj gap = acc(agree, disagree)
- I.D.; BG+CoObj gap = acc(disagree, disagree) - I.D. (negative: the model does worse when the cue disagrees).
Also the accuracy of each (class, background value, object value) group, and the worst of them.

**Counterfactual flip rate** (``counterfactual_flips``): over the pairs (two images sharing a pair id, same class,
differing in the protected attribute), the fraction whose predicted labels differ, and the mean over pairs of
|P(y | x) - P(y | x')| with y the pair's class and P = softmax(logits); overall and per class (the pair's class).

**MaxSkew@k / MinSkew@k** (``skew_at_k``; Geyik et al., KDD 2019): for each class c, the images are ranked by the
logit of c and the top k taken; Skew_a@k(c) = ln(share of value a of the protected attribute among the top k /
share of a in the whole set); MaxSkew@k(c) = max_a, MinSkew@k(c) = min_a, over the values present in the set.
Ties: images whose logit equals the k-th largest share the remaining places equally (each counts
(k - #above) / #tied), the expected composition under a uniformly random tie order -- independent of row order.
A value with no image in the top k has share 0 and Skew = -infinity: it is listed in ``empty`` and MinSkew is None
(reported as such, never as a number). k is capped at N.

**Equal opportunity / demographic parity** (``parity_gaps``): for each class c and value a of the protected
attribute, recall_a(c) = P(pred = c | y = c, A = a) and positive rate_a(c) = P(pred = c | A = a); EO gap(c) =
max_a recall - min_a recall, DP gap(c) = max_a rate - min_a rate, over the values with images (a (class, value)
cell with no image is named in ``missing``); max and mean over classes.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class AttributeColumn:
    """One attribute of the rows: its name, the value id of every row [N] (0..len(names)-1) and the value names."""

    name: str
    ids: np.ndarray
    names: tuple[str, ...]


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


# ---- Whac-A-Mole shortcut gaps ------------------------------------------------------------------------------------

GAP_NAMES = ("bg", "coobj", "bg+coobj")  # UrbanCars' BG gap, CoObj gap, BG+CoObj gap
AGREEMENT_CELLS = {  # key of ShortcutGaps.agreement_accuracy -> (background agrees, object agrees)
    "agree/agree": (True, True), "disagree/agree": (False, True),
    "agree/disagree": (True, False), "disagree/disagree": (False, False),
}
GAP_CELLS = {"bg": "disagree/agree", "coobj": "agree/disagree", "bg+coobj": "disagree/disagree"}
DEFAULT_P_AGREE = 0.95  # UrbanCars' train correlation, used when the data does not record its own


@dataclass
class ShortcutGaps:
    """The Whac-A-Mole numbers of two spurious attributes (module docstring). ``attributes``: [background-like,
    co-object-like] column names; ``agreement_accuracy``: acc(b, o) keyed ``background/object`` agreement; ``gaps``:
    keyed by ``GAP_NAMES``; None where a needed group has no image (named in ``missing``)."""

    attributes: list[str]
    p_agree: float
    p_agree_from: str
    groups: dict[str, GroupAccuracy]  # class/background value/object value
    worst_group: str | None
    worst_group_accuracy: float | None
    agreement_accuracy: dict[str, float | None]
    id_accuracy: float | None
    gaps: dict[str, float | None]
    missing: list[str] = field(default_factory=list)


def class_aligned(attribute: AttributeColumn, class_names: list[str] | tuple[str, ...]) -> bool:
    """True when the attribute's values can agree or disagree with the classes: one value per class (value v goes
    with class v)."""
    return len(attribute.names) == len(class_names)


def shortcut_gaps(predictions: np.ndarray, labels: np.ndarray, class_names: list[str], background: AttributeColumn,
                  co_object: AttributeColumn, p_agree: float = DEFAULT_P_AGREE, p_agree_from: str = "") -> ShortcutGaps:
    """See the module docstring. predictions, labels: [N] ints; both attributes must be ``class_aligned``."""
    predictions, labels = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    bg, obj = np.asarray(background.ids).reshape(-1), np.asarray(co_object.ids).reshape(-1)
    if not len(predictions) == len(labels) == len(bg) == len(obj):
        raise ValueError("shortcut_gaps: predictions, labels and attributes must have equal length")
    for a in (background, co_object):
        if not class_aligned(a, class_names):
            raise ValueError(f"shortcut_gaps: attribute '{a.name}' has {len(a.names)} values for "
                             f"{len(class_names)} classes (expected one value per class)")
    if not 0.0 <= p_agree <= 1.0:
        raise ValueError(f"shortcut_gaps: p_agree {p_agree} is not in [0, 1]")
    correct = predictions == labels
    groups: dict[str, GroupAccuracy] = {}
    for y, c in enumerate(class_names):
        for vb, nb in enumerate(background.names):
            for vo, no in enumerate(co_object.names):
                mask = (labels == y) & (bg == vb) & (obj == vo)
                groups[f"{c}/{nb}/{no}"] = GroupAccuracy(int(mask.sum()), _mean(correct[mask]))
    missing = [k for k, g in groups.items() if g.n == 0]
    present = {k: g.accuracy for k, g in groups.items() if g.accuracy is not None}
    worst = min(present, key=present.__getitem__) if present else None
    agreement: dict[str, float | None] = {}
    for key, (b_agrees, o_agrees) in AGREEMENT_CELLS.items():
        per_class = [_mean(correct[(labels == y) & ((bg == y) == b_agrees) & ((obj == y) == o_agrees)])
                     for y in range(len(class_names))]
        agreement[key] = None if any(a is None for a in per_class) else float(np.mean(per_class))
    p = {True: p_agree, False: 1.0 - p_agree}
    id_acc = (None if any(v is None for v in agreement.values()) else
              float(sum(agreement[k] * p[b] * p[o] for k, (b, o) in AGREEMENT_CELLS.items())))  # type: ignore
    gaps = {name: (None if id_acc is None or agreement[cell] is None else agreement[cell] - id_acc)  # type: ignore
            for name, cell in GAP_CELLS.items()}
    return ShortcutGaps(
        attributes=[background.name, co_object.name], p_agree=float(p_agree), p_agree_from=p_agree_from,
        groups=groups, worst_group=worst, worst_group_accuracy=present[worst] if worst is not None else None,
        agreement_accuracy=agreement, id_accuracy=id_acc, gaps=gaps, missing=missing,
    )


# ---- counterfactual flip rate -------------------------------------------------------------------------------------

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
    return FlipStats(int(flips.size), int(flips.sum()), _mean(flips.astype(np.float64)), _mean(diffs))


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


# ---- MaxSkew@k / MinSkew@k ----------------------------------------------------------------------------------------

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


# ---- equal opportunity / demographic parity -----------------------------------------------------------------------

@dataclass
class ClassParity:
    """One class c: per value a of the protected attribute, ``n`` images of class c, ``recall`` P(pred = c | y = c,
    A = a) and ``positive_rate`` P(pred = c | A = a) (None: no image); the EO and DP gaps (None: under two values
    with images)."""

    n: dict[str, int]
    recall: dict[str, float | None]
    eo_gap: float | None
    positive_rate: dict[str, float | None]
    dp_gap: float | None


@dataclass
class ParityReport:
    """EO and DP gaps of the protected ``attribute`` per class, with the max (and its class) and mean over the classes
    whose gap is defined; ``missing``: ``class/value`` cells with no image (their recall is undefined)."""

    attribute: str
    values: list[str]
    classes: dict[str, ClassParity]
    max_eo_gap: float | None
    max_eo_class: str | None
    mean_eo_gap: float | None
    max_dp_gap: float | None
    max_dp_class: str | None
    mean_dp_gap: float | None
    missing: list[str] = field(default_factory=list)


def _spread(values: dict[str, float | None]) -> float | None:
    defined = [v for v in values.values() if v is not None]
    return float(max(defined) - min(defined)) if len(defined) >= 2 else None


def _extremes(gaps: dict[str, float | None]) -> tuple[float | None, str | None, float | None]:
    defined = {c: g for c, g in gaps.items() if g is not None}
    if not defined:
        return None, None, None
    top = max(defined, key=defined.__getitem__)
    return defined[top], top, float(np.mean(list(defined.values())))


def parity_gaps(predictions: np.ndarray, labels: np.ndarray, class_names: list[str],
                protected: AttributeColumn) -> ParityReport:
    """See the module docstring. predictions, labels, ``protected.ids``: [N] ints."""
    predictions, labels = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    ids = np.asarray(protected.ids).reshape(-1)
    if not len(predictions) == len(labels) == len(ids):
        raise ValueError("parity_gaps: predictions, labels and the attribute must have equal length")
    classes, missing = {}, []
    for c, name in enumerate(class_names):
        n, recall, rate = {}, {}, {}
        for v, value in enumerate(protected.names):
            cell, group = (labels == c) & (ids == v), ids == v
            n[value] = int(cell.sum())
            recall[value] = _mean(predictions[cell] == c)
            rate[value] = _mean(predictions[group] == c)
            if not n[value]:
                missing.append(f"{name}/{value}")
        classes[name] = ClassParity(n, recall, _spread(recall), rate, _spread(rate))
    max_eo, eo_class, mean_eo = _extremes({c: p.eo_gap for c, p in classes.items()})
    max_dp, dp_class, mean_dp = _extremes({c: p.dp_gap for c, p in classes.items()})
    return ParityReport(protected.name, list(protected.names), classes, max_eo, eo_class, mean_eo, max_dp, dp_class,
                        mean_dp, missing)


# ---- all of the above from one call -------------------------------------------------------------------------------

SECTIONS = ("shortcut_gaps", "counterfactual", "skew", "parity")  # BiasMetrics fields, also verify's JSON keys


@dataclass
class BiasInputs:
    """What the metrics beyond accuracy need to know about the rows, each None when the data lacks it
    (``missing[section]`` then says why): the ``protected`` attribute (skew, parity; counterfactual pairs must
    differ in it), the two ``shortcuts`` (background-like, co-object-like) with the train correlation ``p_agree``
    (and where it comes from), the ``pairs`` ids [N] (-1: not in a pair) and the ``skew_k`` values."""

    class_names: list[str]
    protected: AttributeColumn | None = None
    shortcuts: tuple[AttributeColumn, AttributeColumn] | None = None
    pairs: np.ndarray | None = None
    p_agree: float = DEFAULT_P_AGREE
    p_agree_from: str = ""
    skew_k: tuple[int, ...] = DEFAULT_SKEW_K
    missing: dict[str, str] = field(default_factory=dict)

    def rows(self, keep: np.ndarray) -> "BiasInputs":
        """The same inputs restricted to the rows where ``keep`` [N] bool is True."""
        def cut(a: AttributeColumn | None) -> AttributeColumn | None:
            return None if a is None else AttributeColumn(a.name, np.asarray(a.ids)[keep], a.names)

        shortcuts = None if self.shortcuts is None else (cut(self.shortcuts[0]), cut(self.shortcuts[1]))
        return BiasInputs(self.class_names, cut(self.protected), shortcuts,  # type: ignore[arg-type]
                          None if self.pairs is None else np.asarray(self.pairs)[keep], self.p_agree,
                          self.p_agree_from, self.skew_k, dict(self.missing))


@dataclass
class BiasMetrics:
    """The sections ``bias_metrics`` computed (None: not computed, ``not_computed[section]`` says why)."""

    shortcut_gaps: ShortcutGaps | None = None
    counterfactual: CounterfactualReport | None = None
    skew: SkewReport | None = None
    parity: ParityReport | None = None
    not_computed: dict[str, str] = field(default_factory=dict)

    def sections(self) -> dict[str, object]:
        """The sections and ``not_computed`` as keyword arguments of a report that holds them (verify, evaluate)."""
        return {name: getattr(self, name) for name in (*SECTIONS, "not_computed")}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis, stably in float64 (``Prediction.probabilities`` is it cast to float32)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def bias_metrics(logits: np.ndarray, labels: np.ndarray, inputs: BiasInputs,
                 pairs_in_split: int | None = None) -> BiasMetrics:
    """Every section the inputs allow, from logits [N, C] and labels [N] of the rows counted (module docstring).
    ``pairs_in_split``: pair ids of the whole split, rows not read included (see ``counterfactual_flips``)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    predictions = logits.argmax(axis=1)
    names = inputs.class_names
    out = BiasMetrics(not_computed=dict(inputs.missing))
    if inputs.shortcuts is not None:
        out.shortcut_gaps = shortcut_gaps(predictions, labels, names, *inputs.shortcuts, p_agree=inputs.p_agree,
                                          p_agree_from=inputs.p_agree_from)
    if inputs.pairs is not None:
        out.counterfactual = counterfactual_flips(predictions, softmax(logits), labels, inputs.pairs, names,
                                                  inputs.protected, pairs_in_split)
    if inputs.protected is not None:
        present = np.unique(np.asarray(inputs.protected.ids)).size
        if present >= 2:
            out.skew = skew_at_k(logits, inputs.protected, names, inputs.skew_k)
        else:
            out.not_computed["skew"] = (f"the protected attribute '{inputs.protected.name}' has {present} value(s) "
                                        f"among the {len(labels)} images counted (a skew compares at least two)")
        out.parity = parity_gaps(predictions, labels, names, inputs.protected)
    return out
