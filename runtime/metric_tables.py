"""The bias sections of a report as text tables (torch-free): one layout for verify's and evaluate's terminal tables
and the HTML report. A report is anything with the ``runtime.metrics.SECTIONS`` attributes and ``not_computed``
(``VerifyReport``, an evaluate row, their JSON read back); numbers are formatted here, never recomputed.

Accuracies and rates are percentages; gaps are signed percentage points; skews are natural logs (3 decimals).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clip_debias.runtime.metrics import AGREEMENT_CELLS, GAP_NAMES

GAP_TITLES = {"bg": "BG gap", "coobj": "CoObj gap", "bg+coobj": "BG+CoObj gap"}


@dataclass
class TextTable:
    """A titled table of text cells, with lines to print under it."""

    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.2f}%"


def points(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:+.2f} pts"


def log_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def summary(report: Any) -> dict[str, str]:
    """One row's worth of the bias sections the report holds: I.D. accuracy, the three gaps, the worst group of the
    shortcut cells; flip rate, mean |dP(y)|; MaxSkew@k (max over classes) per k; max EO and DP gaps."""
    out: dict[str, str] = {}
    g = report.shortcut_gaps
    if g is not None:
        out["I.D. acc"] = pct(g.id_accuracy)
        out.update({GAP_TITLES[n]: points(g.gaps[n]) for n in GAP_NAMES})
        out[f"worst of {len(g.groups)}"] = pct(g.worst_group_accuracy)
    c = report.counterfactual
    if c is not None:
        out["flip rate"] = f"{pct(c.flip_rate)} of {c.pairs}"
        out["mean |dP(y)|"] = "-" if c.mean_abs_prob_diff is None else f"{c.mean_abs_prob_diff:.3f}"
    s = report.skew
    if s is not None:
        out.update({f"MaxSkew@{a.k}": f"{a.max_max_skew:.3f}" for a in s.at_k})
    p = report.parity
    if p is not None:
        out["EO gap"] = pct(p.max_eo_gap)
        out["DP gap"] = pct(p.max_dp_gap)
    return out


def gap_table(g: Any) -> TextTable:
    rows = [[name, str(cell.n), pct(cell.accuracy) if cell.n else "no image"] for name, cell in g.groups.items()]
    rows.append([f"worst of {len(g.groups)} ({g.worst_group})", "", pct(g.worst_group_accuracy)])
    rows += [[f"acc({key}) (mean over classes)", "", pct(g.agreement_accuracy[key])] for key in AGREEMENT_CELLS]
    rows.append([f"I.D. accuracy (p_agree {g.p_agree:g})", "", pct(g.id_accuracy)])
    rows += [[GAP_TITLES[n], "", points(g.gaps[n])] for n in GAP_NAMES]
    notes = [f"background-like attribute '{g.attributes[0]}', co-object-like '{g.attributes[1]}'; p_agree from "
             f"{g.p_agree_from}"]
    if g.missing:
        notes.append(f"group(s) {', '.join(g.missing)} have no image: the numbers that need them are '-'")
    return TextTable("Whac-A-Mole shortcut gaps (agreement: background/object)", ["group", "n", "accuracy"], rows,
                     notes)


def flip_table(c: Any) -> TextTable:
    rows = [[name, str(s.pairs), str(s.flipped), pct(s.flip_rate), log_ratio(s.mean_abs_prob_diff)]
            for name, s in c.classes.items()]
    rows.append(["all pairs", str(c.pairs), str(c.flipped), pct(c.flip_rate), log_ratio(c.mean_abs_prob_diff)])
    excluded = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in c.excluded.items() if v)
    notes = [f"{c.pairs} of {c.pairs_in_split} pairs counted"
             + (f" (pairs differing in '{c.protected}')" if c.protected else "")
             + (f"; left out: {excluded}" if excluded else "")]
    return TextTable("counterfactual pairs", ["class", "pairs", "flipped", "flip rate", "mean |P(y|x)-P(y|x')|"],
                     rows, notes)


def skew_tables(s: Any) -> list[TextTable]:
    out = []
    for a in s.at_k:
        rows = [[name, f"{log_ratio(cs.max_skew)} ({cs.max_value})",
                 f"{log_ratio(cs.min_skew)} ({cs.min_value})" if cs.min_skew is not None
                 else f"-inf: {', '.join(cs.empty)} not in the top {a.k}"]
                for name, cs in a.classes.items()]
        rows.append(["mean over classes", log_ratio(a.mean_max_skew), log_ratio(a.mean_min_skew)])
        rows.append([f"max / min over classes", f"{log_ratio(a.max_max_skew)} ({a.max_class})",
                     f"{log_ratio(a.min_min_skew)} ({a.min_class})" if a.min_min_skew is not None
                     else f"-inf ({a.min_class})"])
        out.append(TextTable(f"MaxSkew@{a.k} / MinSkew@{a.k} of '{s.attribute}' ({s.n} images)",
                             ["class", f"MaxSkew@{a.k}", f"MinSkew@{a.k}"], rows))
    shares = ", ".join(f"{v} {pct(x)}" for v, x in s.shares.items())
    out[-1].notes.append(f"shares in the set: {shares}" + (f"; no image: {', '.join(s.absent)}" if s.absent else "")
                         + f"; k asked {','.join(map(str, s.requested_k))}, capped at {s.n}; {s.ties}")
    return out


def parity_table(p: Any) -> TextTable:
    header = ["class", *(f"recall {v}" for v in p.values), "EO gap", *(f"rate {v}" for v in p.values), "DP gap"]
    rows = [[name, *(pct(cp.recall[v]) for v in p.values), pct(cp.eo_gap),
             *(pct(cp.positive_rate[v]) for v in p.values), pct(cp.dp_gap)] for name, cp in p.classes.items()]
    rows.append(["max over classes", *([""] * len(p.values)), f"{pct(p.max_eo_gap)} ({p.max_eo_class})",
                 *([""] * len(p.values)), f"{pct(p.max_dp_gap)} ({p.max_dp_class})"])
    notes = [f"cell(s) {', '.join(p.missing)} have no image"] if p.missing else []
    return TextTable(f"equal opportunity / demographic parity of '{p.attribute}'", header, rows, notes)


def tables(report: Any) -> list[TextTable]:
    """The detailed tables of the sections the report holds, in ``SECTIONS`` order."""
    out: list[TextTable] = []
    if report.shortcut_gaps is not None:
        out.append(gap_table(report.shortcut_gaps))
    if report.counterfactual is not None:
        out.append(flip_table(report.counterfactual))
    if report.skew is not None:
        out += skew_tables(report.skew)
    if report.parity is not None:
        out.append(parity_table(report.parity))
    return out


def not_computed_lines(report: Any) -> list[str]:
    """'SECTION: not computed (why)' for each section the data did not allow."""
    return [f"{name}: not computed ({why})" for name, why in report.not_computed.items()]
