"""Text cells of the metric tables (stdlib only): accuracies and rates are percentages, gaps signed percentage
points, skews natural logs (3 decimals); ``TextTable`` is one titled table with notes under it."""

from __future__ import annotations

from dataclasses import dataclass, field


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
