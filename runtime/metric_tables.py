"""The metric sections of a report as text tables (torch-free): one layout for verify's and evaluate's terminal
tables and the HTML report, driven by the metric registry (each family writes its own tables and summary cells:
``runtime.metrics.spec.MetricFamily``). A report is anything holding the sections (``runtime.metrics.SECTIONS``
attributes, ``metrics`` for families registered since, and ``not_computed``: ``VerifyReport``, an evaluate row, their
JSON read back); numbers are formatted here, never recomputed.

Accuracies and rates are percentages; gaps are signed percentage points; skews are natural logs (3 decimals).
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from clip_debias.runtime.metrics.bias import section_of
from clip_debias.runtime.metrics.registry import section_families
from clip_debias.runtime.metrics.shortcut_gaps import GAP_TITLES
from clip_debias.runtime.metrics.spec import MetricFamily
from clip_debias.runtime.metrics.text import TextTable, log_ratio, pct, points

__all__ = ["GAP_TITLES", "TextTable", "log_ratio", "not_computed_lines", "pct", "points", "summary", "tables"]


def _section(report: Any, family: MetricFamily) -> Any:
    """The family's section of ``report``, as its dataclass (a section read back from JSON as a dict is converted)."""
    section = section_of(report, family.name)
    if isinstance(section, dict) and family.section_type is not None:
        return TypeAdapter(family.section_type).validate_python(section)
    return section


def summary(report: Any) -> dict[str, str]:
    """One row's worth of the sections the report holds (each family's summary cells, in registry order): I.D.
    accuracy, the three gaps, the worst shortcut cell; flip rate, mean |dP(y)|; MaxSkew@k per k; max EO / DP gaps."""
    out: dict[str, str] = {}
    for family in section_families():
        section = _section(report, family)
        if section is not None:
            out.update(family.summary(section))
    return out


def tables(report: Any) -> list[TextTable]:
    """The detailed tables of the sections the report holds, in registry order."""
    out: list[TextTable] = []
    for family in section_families():
        section = _section(report, family)
        if section is not None:
            out += family.tables(section)
    return out


def not_computed_lines(report: Any) -> list[str]:
    """'SECTION: not computed (why)' for each section the data did not allow."""
    return [f"{name}: not computed ({why})" for name, why in report.not_computed.items()]
