"""**Whac-A-Mole shortcut gaps** (``shortcut_gaps``; Li et al., CVPR 2023, as their UrbanCars ``_eval_split`` computes
them, for any number of classes). Two spurious attributes, B (background) and O (co-occurring object), whose values
are aligned with the classes: value v of an attribute *agrees* with class y when v == y (the lab's place 0 = land
goes with class 0 = landbird). Cells: (class y, background value vb, object value vo), each with its accuracy. For
b, o in {agree, disagree}: acc(b, o) = the unweighted mean of the accuracies of the cells whose background agrees (b)
and object agrees (o) with their class (undefined when one of them has no image). With the train correlations
p_B (background) and p_O (object), p_agree = p, p_disagree = 1 - p: I.D. accuracy = sum_{b, o} acc(b, o) p_B,b p_O,o;
BG gap = acc(disagree, agree) - I.D.; CoObj gap = acc(agree, disagree) - I.D.; BG+CoObj gap = acc(disagree,
disagree) - I.D. (negative: the model does worse when the cue disagrees). With two classes each agreement set holds
one cell per class, so acc(b, o) is also the mean over classes of the class's accuracy in that set.

Gate ``max_gap`` (``--max-gap NAME=VALUE``): |gap| <= VALUE. A gap is a linear combination of the cell accuracies,
so its interval is the MOVER interval from each cell's Wilson interval (``runtime.metrics.evidence``), then |.|.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clip_debias.runtime.metrics.base import AttributeColumn, GroupAccuracy, mean_or_none
from clip_debias.runtime.metrics.evidence import Decision, Direction, Proportion, absolute, mover
from clip_debias.runtime.metrics.spec import (GateContext, GateSpec, MetricData, MetricFamily, ThresholdResult,
                                              interval_decision, judged)
from clip_debias.runtime.metrics.text import TextTable, pct, points

GAP_NAMES = ("bg", "coobj", "bg+coobj")  # UrbanCars' BG gap, CoObj gap, BG+CoObj gap
GAP_TITLES = {"bg": "BG gap", "coobj": "CoObj gap", "bg+coobj": "BG+CoObj gap"}
AGREEMENT_CELLS = {  # key of ShortcutGaps.agreement_accuracy -> (background agrees, object agrees)
    "agree/agree": (True, True), "disagree/agree": (False, True),
    "agree/disagree": (True, False), "disagree/disagree": (False, False),
}
GAP_CELLS = {"bg": "disagree/agree", "coobj": "agree/disagree", "bg+coobj": "disagree/disagree"}
DEFAULT_P_AGREE = 0.95  # UrbanCars' train correlation (both attributes), used when the data does not record its own


@dataclass
class ShortcutGaps:
    """The Whac-A-Mole numbers of two spurious attributes (module docstring). ``attributes``: [background-like,
    co-object-like] column names; ``p_agree``: the background's train correlation, ``p_agree_object`` the object's
    (None in files written before it existed: the same as ``p_agree``); ``agreement_accuracy``: acc(b, o) keyed
    ``background/object`` agreement; ``gaps``: keyed by ``GAP_NAMES``; None where a needed cell has no image (named
    in ``missing``)."""

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
    p_agree_object: float | None = None
    definition: str = "Whac-A-Mole _eval_split: unweighted mean over (class, background, object) cells"


def class_aligned(attribute: AttributeColumn, class_names: list[str] | tuple[str, ...]) -> bool:
    """True when the attribute's values can agree or disagree with the classes: one value per class (value v goes
    with class v)."""
    return len(attribute.names) == len(class_names)


def _cells(n_classes: int) -> list[tuple[int, int, int]]:
    """(y, vb, vo) in the order of ``ShortcutGaps.groups``."""
    return list(itertools.product(range(n_classes), repeat=3))


def _agreement(cell: tuple[int, int, int]) -> str:
    y, vb, vo = cell
    return next(k for k, (b, o) in AGREEMENT_CELLS.items() if (vb == y) == b and (vo == y) == o)


def _ratios(p_background: float, p_object: float) -> dict[str, float]:
    """{agreement key: p_B,b * p_O,o}, the I.D. weight of each agreement set."""
    pb, po = {True: p_background, False: 1.0 - p_background}, {True: p_object, False: 1.0 - p_object}
    return {k: pb[b] * po[o] for k, (b, o) in AGREEMENT_CELLS.items()}


def shortcut_gaps(predictions: np.ndarray, labels: np.ndarray, class_names: list[str], background: AttributeColumn,
                  co_object: AttributeColumn, p_agree: float = DEFAULT_P_AGREE, p_agree_from: str = "",
                  p_agree_object: float | None = None) -> ShortcutGaps:
    """See the module docstring. predictions, labels: [N] ints; both attributes must be ``class_aligned``;
    ``p_agree_object`` None: the same as ``p_agree``."""
    predictions, labels = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    bg, obj = np.asarray(background.ids).reshape(-1), np.asarray(co_object.ids).reshape(-1)
    if not len(predictions) == len(labels) == len(bg) == len(obj):
        raise ValueError("shortcut_gaps: predictions, labels and attributes must have equal length")
    for a in (background, co_object):
        if not class_aligned(a, class_names):
            raise ValueError(f"shortcut_gaps: attribute '{a.name}' has {len(a.names)} values for "
                             f"{len(class_names)} classes (expected one value per class)")
    p_object = p_agree if p_agree_object is None else p_agree_object
    for p in (p_agree, p_object):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"shortcut_gaps: train correlation {p} is not in [0, 1]")
    correct = predictions == labels
    groups: dict[str, GroupAccuracy] = {}
    by_agreement: dict[str, list[float | None]] = {k: [] for k in AGREEMENT_CELLS}
    for y, vb, vo in _cells(len(class_names)):
        mask = (labels == y) & (bg == vb) & (obj == vo)
        g = GroupAccuracy(int(mask.sum()), mean_or_none(correct[mask]))
        groups[f"{class_names[y]}/{background.names[vb]}/{co_object.names[vo]}"] = g
        by_agreement[_agreement((y, vb, vo))].append(g.accuracy)
    missing = [k for k, g in groups.items() if g.n == 0]
    present = {k: g.accuracy for k, g in groups.items() if g.accuracy is not None}
    worst = min(present, key=present.__getitem__) if present else None  # type: ignore[arg-type]
    agreement = {k: None if any(a is None for a in v) else float(np.mean(v))  # type: ignore[arg-type]
                 for k, v in by_agreement.items()}
    ratio = _ratios(p_agree, p_object)
    id_acc = (None if any(v is None for v in agreement.values()) else
              float(sum(agreement[k] * ratio[k] for k in AGREEMENT_CELLS)))  # type: ignore[operator]
    gaps = {name: (None if id_acc is None or agreement[cell] is None else agreement[cell] - id_acc)  # type: ignore
            for name, cell in GAP_CELLS.items()}
    return ShortcutGaps(
        attributes=[background.name, co_object.name], p_agree=float(p_agree), p_agree_from=p_agree_from,
        groups=groups, worst_group=worst, worst_group_accuracy=present[worst] if worst is not None else None,
        agreement_accuracy=agreement, id_accuracy=id_acc, gaps=gaps, missing=missing, p_agree_object=float(p_object),
    )


def gap_interval(g: ShortcutGaps, name: str, confidence: float) -> tuple[float, float]:
    """The MOVER interval of gap ``name`` (every cell must have images): gap = sum over cells of w_cell * acc_cell with
    w = [cell in the gap's set] / |set| - p_B,b p_O,o / |cell's own set|."""
    n_classes = round(len(g.groups) ** (1 / 3))
    cells = _cells(n_classes)
    sets = {k: [c for c in cells if _agreement(c) == k] for k in AGREEMENT_CELLS}
    ratio = _ratios(g.p_agree, g.p_agree if g.p_agree_object is None else g.p_agree_object)
    target = GAP_CELLS[name]
    terms = []
    for cell, group in zip(cells, g.groups.values()):
        k = _agreement(cell)
        w = (1.0 / len(sets[target]) if k == target else 0.0) - ratio[k] / len(sets[k])
        if w != 0.0:
            terms.append((w, Proportion.of(group.correct, group.n, confidence)))
    return mover(terms)


def _gap_gates(g: ShortcutGaps, limits: dict[str, float], ctx: GateContext) -> dict[str, ThresholdResult]:
    out = {}
    small = [f"cell {k} ({v.n})" for k, v in g.groups.items() if 0 < v.n < ctx.evidence.min_group_size]
    for name, limit in limits.items():
        value = g.gaps[name]
        over = {"statistic": f"|acc({GAP_CELLS[name]}) - I.D. accuracy| (background/object agreement)",
                "attributes": g.attributes, "p_agree": g.p_agree, "p_agree_object": g.p_agree_object,
                "p_agree_from": g.p_agree_from, "groups": {k: v.n for k, v in g.groups.items()}, "missing": g.missing}
        n = min(v.n for v in g.groups.values())
        if value is None:
            out[f"max_gap_{name}"] = judged(limit, None, Decision.FAIL, over,
                                            f"group(s) {', '.join(g.missing)} have no image", None, n)
            continue
        interval = absolute(gap_interval(g, name, ctx.evidence.confidence))
        decision, reason = interval_decision(interval, limit, Direction.AT_MOST, small, ctx.evidence)
        if decision is Decision.FAIL and not reason:
            reason = f"|{value:.4f}| > {limit}"
        out[f"max_gap_{name}"] = judged(limit, value, decision, over, reason, interval, n)
    return out


def gap_table(g: Any) -> list[TextTable]:
    rows = [[name, str(cell.n), pct(cell.accuracy) if cell.n else "no image"] for name, cell in g.groups.items()]
    rows.append([f"worst of {len(g.groups)} ({g.worst_group})", "", pct(g.worst_group_accuracy)])
    rows += [[f"acc({key}) (mean over cells)", "", pct(g.agreement_accuracy[key])] for key in AGREEMENT_CELLS]
    p_object = g.p_agree if g.p_agree_object is None else g.p_agree_object
    ratios = f"{g.p_agree:g}" if p_object == g.p_agree else f"background {g.p_agree:g}, object {p_object:g}"
    rows.append([f"I.D. accuracy (p_agree {ratios})", "", pct(g.id_accuracy)])
    rows += [[GAP_TITLES[n], "", points(g.gaps[n])] for n in GAP_NAMES]
    notes = [f"background-like attribute '{g.attributes[0]}', co-object-like '{g.attributes[1]}'; p_agree from "
             f"{g.p_agree_from}"]
    if g.missing:
        notes.append(f"group(s) {', '.join(g.missing)} have no image: the numbers that need them are '-'")
    return [TextTable("Whac-A-Mole shortcut gaps (agreement: background/object)", ["group", "n", "accuracy"], rows,
                      notes)]


def gap_summary(g: Any) -> dict[str, str]:
    return {"I.D. acc": pct(g.id_accuracy), **{GAP_TITLES[n]: points(g.gaps[n]) for n in GAP_NAMES},
            f"worst of {len(g.groups)}": pct(g.worst_group_accuracy)}


def gap_points(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.2f} pts"


def _compute(data: MetricData) -> ShortcutGaps | None:
    i = data.inputs
    if i.shortcuts is None:
        return None
    return shortcut_gaps(data.predictions, data.labels, i.class_names, *i.shortcuts, p_agree=i.p_agree,
                         p_agree_from=i.p_agree_from, p_agree_object=i.p_agree_object)


def _over(o: dict[str, Any]) -> str:
    if not o:
        return ""
    p_object = o.get("p_agree_object")
    ratios = f"{o['p_agree']:g}" if p_object in (None, o["p_agree"]) else f"{o['p_agree']:g}/{p_object:g}"
    return f"{len(o['groups'])} groups, p_agree {ratios}"


FAMILY = MetricFamily(
    name="shortcut_gaps", needs=("shortcuts",), compute=_compute, order=10, section_type=ShortcutGaps,
    tables=gap_table, summary=gap_summary,
    gates=(GateSpec("max_gap", "--max-gap", "NAME=VALUE",
                    "Repeatable: the largest |gap| allowed, NAME bg | coobj | bg+coobj (Whac-A-Mole; VALUE a "
                    "fraction, 0.05 = 5 points).", Direction.AT_MOST, "|{key} gap| <= ", _gap_gates, fmt=gap_points,
                    over_text=_over, keys=GAP_NAMES, key_noun="gap", bound_hint="must be a fraction in [0, 1] (the largest |gap|)"),),
)
