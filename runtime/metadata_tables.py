"""Metadata tables of the datasets: CSV and whitespace-separated listings read with a row limit and progress, their
values parsed with one-line errors naming the file, line and column (``runtime.datasets`` builds its indexes on them).
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from clip_debias.runtime.choices import Split
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.progress import Heartbeat

log = logging.getLogger("clip_debias.datasets")
SPLITS = Split.values()


@dataclass
class Table:
    """Rows of a text table as ``(line number, {column: value})``, values stripped; ``path`` names it in errors."""

    path: Path
    columns: list[str]
    rows: list[tuple[int, dict[str, str]]]

    def where(self, line: int, column: str) -> str:
        """``FILE line N: column 'C'``, the start of an error about one value."""
        return f"{self.path} line {line}: column '{column}'"


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ClipDebiasError(f"{path}: not found (expected {what})")
    return path


def _first_existing(folder: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of ``folder/name`` that exists."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ClipDebiasError(f"{folder}: neither {' nor '.join(names)} found (expected {what})")


def _check_columns(table: Table, required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ClipDebiasError(
            f"{table.path}: missing column '{missing[0]}' (expected columns {', '.join(required)}; "
            f"found {', '.join(table.columns[:8]) or 'none'}{', ...' if len(table.columns) > 8 else ''})"
        )


def _table(path: Path, columns: list[str], lines: list[tuple[int, list[str]]]) -> Table:
    """A ``Table`` from split lines; every line must have one value per column."""
    rows = []
    for line, values in lines:
        if len(values) != len(columns):
            raise ClipDebiasError(f"{path} line {line}: expected {len(columns)} fields, got {len(values)}")
        rows.append((line, dict(zip(columns, values))))
    return Table(path, columns, rows)


def _too_many_rows(path: Path, max_rows: int) -> ClipDebiasError:
    return ClipDebiasError(f"{path}: more than {max_rows:,} rows, over the limit of --max-rows {max_rows:,} (raise "
                           "it to read a larger file)")


def read_csv(path: Path, required: tuple[str, ...], max_rows: int | None = None) -> Table:
    """A comma-separated file with a header line holding at least the ``required`` columns; more than ``max_rows``
    rows below the header are refused as soon as they are read."""
    limit = max_rows + 1 if max_rows is not None else None  # + the header line
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            lines = []
            beat = Heartbeat(f"reading {path}", "rows", log)
            for row in reader:
                if not row:
                    continue
                lines.append((reader.line_num, [v.strip() for v in row]))
                beat.tick(len(lines))
                if limit is not None and len(lines) > limit:
                    raise _too_many_rows(path, max_rows)  # type: ignore[arg-type]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ClipDebiasError(f"{path}: cannot read CSV ({e})") from e
    if not lines:
        raise ClipDebiasError(f"{path}: empty file (expected a header line with columns {', '.join(required)})")
    table = _table(path, lines[0][1], lines[1:])
    _check_columns(table, required)
    return table


def read_whitespace(path: Path, required: tuple[str, ...], *, columns: list[str] | None = None,
                    skip: int = 0, max_rows: int | None = None) -> Table:
    """A whitespace-separated file whose rows start with an image file name (column ``filename``): ``skip`` lines
    ignored, then a header line naming the other columns unless ``columns`` names them; more than ``max_rows`` rows
    are refused as soon as they are read."""
    limit = None if max_rows is None else max_rows + (columns is None)
    lines = []
    beat = Heartbeat(f"reading {path}", "rows", log)
    try:
        with open(path, encoding="utf-8-sig") as f:
            for n, text in enumerate(f, 1):
                if n > skip and text.strip():
                    lines.append((n, text.split()))
                    beat.tick(len(lines))
                    if limit is not None and len(lines) > limit:
                        raise _too_many_rows(path, max_rows)  # type: ignore[arg-type]
    except (OSError, UnicodeDecodeError) as e:
        raise ClipDebiasError(f"{path}: cannot read ({e})") from e
    if columns is None:
        if not lines:
            raise ClipDebiasError(f"{path}: empty file (expected a header line naming the columns)")
        columns, lines = lines[0][1], lines[1:]
    table = _table(path, ["filename", *columns], lines)
    _check_columns(table, required)
    return table


def parse_int(table: Table, line: int, column: str, value: str, allowed: tuple[int, ...] | None = None) -> int:
    """``value`` as an int (one of ``allowed`` when given; else >= 0), or an error naming file, line and column."""
    try:
        n = int(value)
        if n in allowed if allowed is not None else n >= 0:
            return n
    except ValueError:
        pass
    expected = " or ".join(map(str, allowed)) if allowed is not None else "an integer >= 0"
    raise ClipDebiasError(f"{table.where(line, column)} must be {expected}, got '{value}'")


def parse_partition(table: Table, line: int, column: str, value: str) -> str:
    """A 0/1/2 partition value as the split name train/val/test."""
    return SPLITS[parse_int(table, line, column, value, (0, 1, 2))]


def image_path(root: Path, table: Table, line: int, column: str, value: str, allow_outside_root: bool) -> Path:
    """``root / value``; an absolute ``value`` or one whose ``..`` leave ``root`` is refused unless
    ``allow_outside_root``."""
    if "\0" in value:
        raise ClipDebiasError(f"{table.where(line, column)} holds a NUL character (not a file path)")
    norm = os.path.normpath(value)
    if not allow_outside_root and (os.path.isabs(value) or norm == os.pardir or norm.startswith(os.pardir + os.sep)):
        raise ClipDebiasError(f"{table.where(line, column)} '{value}' leaves the data folder {root} (an absolute "
                              "path or '..'); pass --allow-outside-root to read it")
    return root / value
