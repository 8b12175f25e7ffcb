"""Tables and the console that prints results, readable at any width and through a pipe.

``output_console()``: on a terminal, the terminal's width; elsewhere (``> file``, ``| less``, CI logs) no width to
fit, so tables take their natural width and lines are never wrapped or cut (``COLUMNS``, when set, still wins).
``table(...)``: a rich table whose every column folds a cell that does not fit instead of cutting it with '…', so a
narrow terminal wraps names such as ``waterbird/land`` but never loses a character.
"""

from __future__ import annotations

import os
import sys
from typing import Any

PIPE_WIDTH = 1000  # "no limit" for output that is not a terminal


def output_console(stderr: bool = False) -> Any:
    """The rich console of a command's results (stdout) or notes (``stderr``)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = hasattr(stream, "isatty") and stream.isatty()
    width = None if tty or os.environ.get("COLUMNS") else PIPE_WIDTH
    return Console(stderr=stderr, width=width, highlight=False)


def table(columns: list[str], *, title: str | None = None, right: set[int] | None = None, **kwargs: Any) -> Any:
    """A rich ``Table`` with ``columns`` (indices in ``right`` right-justified), cells folded, never cut."""
    from rich.table import Table

    t = Table(title=title, **kwargs)
    for i, name in enumerate(columns):
        t.add_column(name, justify="right" if right and i in right else "left", overflow="fold")
    return t


def print_text_table(t: Any, console: Any) -> None:
    """A ``runtime.metrics.text.TextTable`` on ``console``: its first column left, the others right, its notes under
    it."""
    rich_table = table(t.header, title=t.title, right=set(range(1, len(t.header))))
    for row in t.rows:
        rich_table.add_row(*row)
    console.print(rich_table)
    for note in t.notes:
        console.print(f"  {note}", highlight=False, markup=False)
