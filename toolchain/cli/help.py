"""``--help`` as the ecosystem's command-line tools write it (click, pip, git): plain text in the terminal's width, one
definition list per section, each option as ``--name METAVAR`` (the metavar says what goes there: FILE, DIR, N,
FRACTION, ``a|b|c`` for a closed set) with its help beside or below it, wrapped, never cut. Flags show no metavar.

Every command of ``clip-debias`` is a ``HelpCommand`` (``App.command`` makes it so) and every group a ``HelpGroup``;
both write through the ``formatter`` click hands them, whose width is the terminal's (``COLUMNS``), at most 80 (click's
rule), and wrap at spaces only.
"""

from __future__ import annotations

import inspect
import textwrap
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup


def option_names(param: Any) -> str:
    """``--name`` / ``--name, -n`` / ``--flag / --no-flag``, then the metavar for an option that takes a value."""
    names = ", ".join(param.opts)
    if getattr(param, "secondary_opts", None):
        names += " / " + ", ".join(param.secondary_opts)
    if not getattr(param, "is_flag", False):
        names += f" {metavar(param)}"
    return names


def metavar(param: Any) -> str:
    """The parameter's metavar (every option of clip-debias sets one; ``tests/test_cli_help.py`` checks), else its
    name upper-cased: never a type name such as ``<str>``."""
    return param.metavar or param.name.upper()


def default_text(param: Any) -> str | None:
    """What ``[default: ...]`` shows: None for no default, a lone flag that is off, or an empty value."""
    value = param.default
    if not getattr(param, "show_default", True) or value is None or callable(value):
        return None
    if getattr(param, "is_flag", False):
        if getattr(param, "secondary_opts", None):
            return (param.opts if value else param.secondary_opts)[0]
        return None
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    return None if value == "" else str(value)


def number_range(param: Any) -> str | None:
    """``>= 1``, ``0 to 1`` ... from the option's ``min`` / ``max``."""
    lo, hi = getattr(param, "min", None), getattr(param, "max", None)
    if lo is not None and hi is not None:
        return f"{lo} to {hi}"
    if lo is not None:
        return f">= {lo}"
    if hi is not None:
        return f"<= {hi}"
    return None


def help_record(param: Any) -> tuple[str, str]:
    """(first column, help) of one parameter: the help, then ``[default: X; >= 1; required]``."""
    first = metavar(param) if param.param_type_name == "argument" else option_names(param)
    extra = [f"default: {d}" for d in [default_text(param)] if d is not None]
    extra += [r for r in [number_range(param)] if r is not None]
    if param.required:
        extra.append("required")
    text = getattr(param, "help", None) or ""
    if extra:
        text = f"{text}  [{'; '.join(extra)}]" if text else f"[{'; '.join(extra)}]"
    return first, text


def usage_pieces(command: Any, ctx: Any) -> list[str]:
    """``[OPTIONS] ARTIFACT [MODEL_DIR]``: arguments by metavar, optional ones in brackets."""
    pieces = ["[OPTIONS]"]
    for p in command.get_params(ctx):
        if p.param_type_name == "argument" and not getattr(p, "hidden", False):
            pieces.append(metavar(p) if p.required else f"[{metavar(p)}]")
    return pieces


def wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` (at least 20) characters, broken at spaces only: an option name such
    as ``--batch-size`` or a path is never split, a word longer than the line stays whole."""
    return textwrap.wrap(text, max(width, 20), break_on_hyphens=False, break_long_words=False) or [""]


def write_text(formatter: Any, text: str, indent: int = 2) -> None:
    """Paragraphs (separated by blank lines) wrapped to the formatter's width, indented."""
    for i, para in enumerate(p for p in inspect.cleandoc(text).split("\n\n") if p.strip()):
        if i:
            formatter.write("\n")
        for line in wrap(" ".join(para.split()), formatter.width - indent):
            formatter.write(" " * indent + line + "\n")


def write_rows(formatter: Any, rows: list[tuple[str, str]], indent: int = 2) -> None:
    """A definition list: the first column (at most a third of the width; a longer entry gets its own line), then
    its text wrapped beside it."""
    col = min(max(len(first) for first, _ in rows), max(12, formatter.width // 3)) + 2
    for first, text in rows:
        lines = wrap(text, formatter.width - indent - col) if text else []
        if len(first) + 2 > col:
            formatter.write(" " * indent + first + "\n")
        else:
            head = lines.pop(0) if lines else ""
            formatter.write(" " * indent + first.ljust(col) + head + "\n")
        for line in lines:
            formatter.write(" " * (indent + col) + line + "\n")


def write_help(command: Any, ctx: Any, formatter: Any, usage: list[str], sections: list[tuple[str, list]]) -> None:
    """Usage line, the command's help text, then each non-empty section as a definition list."""
    prefix = "Usage: "
    pieces = f"{ctx.command_path} {' '.join(usage)}"
    formatter.write(prefix + ("\n" + " " * len(prefix)).join(wrap(pieces, formatter.width - len(prefix))) + "\n")
    if command.help:
        formatter.write("\n")
        write_text(formatter, command.help)
    for title, rows in sections:
        if rows:
            formatter.write(f"\n{title}:\n")
            write_rows(formatter, rows)
    if command.epilog:
        formatter.write("\n")
        write_text(formatter, command.epilog)


class HelpCommand(TyperCommand):
    """A command whose ``--help`` is plain, wrapped, never cut (module docstring)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        params = [p for p in self.get_params(ctx) if not getattr(p, "hidden", False)]
        write_help(self, ctx, formatter, usage_pieces(self, ctx), [
            ("Arguments", [help_record(p) for p in params if p.param_type_name == "argument"]),
            ("Options", [help_record(p) for p in params if p.param_type_name == "option"]),
        ])


class HelpGroup(TyperGroup):
    """A group whose ``--help`` lists its commands with the first sentence of their help (module docstring)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if hasattr(self, "summary"):  # a lazy group (toolchain.cli.app): its commands are not built for this
                rows.append((name, self.summary(name)))
                continue
            cmd = self.get_command(ctx, name)
            if cmd is not None and not getattr(cmd, "hidden", False):
                rows.append((name, cmd.short_help or first_sentence(cmd.help or "")))
        options = [help_record(p) for p in self.get_params(ctx) if not getattr(p, "hidden", False)]
        write_help(self, ctx, formatter, ["[OPTIONS]", "COMMAND [ARGS]..."],
                   [("Options", options), ("Commands", rows)])


def first_sentence(text: str) -> str:
    """The help's first sentence (up to '. ' or the first blank line), on one line."""
    para = " ".join(text.strip().split("\n\n")[0].split())
    end = para.find(". ")
    return para if end < 0 else para[: end + 1]


class App(typer.Typer):
    """``typer.Typer`` whose commands are ``HelpCommand`` and whose groups are ``HelpGroup`` (plain help, no rich
    panels; errors are printed by ``toolchain.cli.app``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", HelpGroup)
        kwargs.setdefault("rich_markup_mode", None)
        kwargs.setdefault("pretty_exceptions_enable", False)
        kwargs.setdefault("add_completion", False)
        super().__init__(**kwargs)

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(name, cls=cls or HelpCommand, **kwargs)
