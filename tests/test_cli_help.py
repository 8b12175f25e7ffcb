"""The command line as a new user meets it (issue 16 items 3-4, issue 15 item 6): every command's --help at 80 and 60
columns shows every option name whole, metavars that say what goes there (never a type such as <str>), closed sets
as their values; one meaning per option across commands (--json a path, --split without a default, shared options
with one help text); choice options are the library's ``Choice`` sets, checked by Typer before the command runs."""

from __future__ import annotations

import re
from enum import Enum

import pytest
import typer
from typer.testing import CliRunner

from clip_debias.runtime.choices import Choice, Split
from clip_debias.toolchain.cli.app import app
from clip_debias.toolchain.cli.help import HelpCommand, HelpGroup


def _commands(group=None, path=()):  # noqa: ANN001, ANN202
    """(path, click command) of every command and group under the app."""
    group = group or typer.main.get_command(app)
    yield path, group
    for name, cmd in getattr(group, "commands", {}).items():
        yield from _commands(cmd, (*path, name)) if hasattr(cmd, "commands") else [((*path, name), cmd)]


COMMANDS = [(p, c) for p, c in _commands() if p]
LEAVES = [(p, c) for p, c in COMMANDS if not hasattr(c, "commands")]
IDS = [" ".join(p) for p, _ in COMMANDS]


def _options(cmd):  # noqa: ANN001, ANN202
    return [p for p in cmd.params if p.param_type_name == "option" and not getattr(p, "hidden", False)]


def _help(path: tuple[str, ...], columns: int, monkeypatch, capsys) -> str:  # noqa: ANN001
    """``clip-debias PATH --help`` in a terminal of ``columns`` (CliRunner fixes click's width at 80, so the command
    runs in this process with COLUMNS set, as a shell would)."""
    monkeypatch.setenv("COLUMNS", str(columns))
    rv = typer.main.get_command(app).main([*path, "--help"], prog_name="clip-debias", standalone_mode=False)
    assert rv in (None, 0)
    return capsys.readouterr().out


@pytest.mark.parametrize("columns", [80, 60])
@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=IDS)
def test_help_shows_every_option_whole_with_a_metavar(path, cmd, columns, monkeypatch, capsys) -> None:  # noqa: ANN001
    out = _help(path, columns, monkeypatch, capsys)
    assert "…" not in out and not re.search(r"<(str|bool|int|float|path|text|int range|float range)>", out), out
    for p in _options(cmd):
        for name in (*p.opts, *p.secondary_opts):
            assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", out), f"{name} cut or missing:\n{out}"
        if not p.is_flag:
            assert re.search(rf"{re.escape(p.opts[0])} {re.escape(p.metavar)}(\s|$)", out), (p.opts[0], out)
    for p in cmd.params:
        if p.param_type_name == "argument":
            assert re.search(rf"Usage: .*[ \[]{re.escape(p.metavar)}\b", out) and p.metavar.isupper(), out
    longest = max(len(line) for line in out.splitlines())
    assert longest <= max(columns - 2, 50), out  # click's width: the terminal's less 2, at least 50


def test_help_through_cli_runner() -> None:
    """The same help through Typer's CliRunner (output not a terminal; click's width fixed at 80)."""
    res = CliRunner().invoke(app, ["verify", "--help"])
    assert res.exit_code == 0 and "--min-worst-group FRACTION" in res.output and "<" not in res.output


# commands and options the tests above must reach (the walk finds every command; this says it found these)
COVERED = {
    ("serve",): ("--host", "--port", "--device", "--precision", "--max-batch-size", "--metrics-port"),
    ("verify",): ("--engine", "--address", "--ray-actors", "--latency-batches", "--json", "--split", "--target",
                  "--protected", "--shortcut-attributes", "--train-correlation", "--skew-k", "--max-gap",
                  "--max-flip-rate", "--max-skew", "--max-eo-gap", "--max-dp-gap"),
    ("evaluate",): ("--target", "--protected", "--shortcut-attributes", "--train-correlation", "--skew-k"),
    ("decompose",): ("--target", "--protected"),
    ("locate",): ("--from-pairs", "--protocol"),
    ("audit",): ("--out", "--per-source", "--corruptions", "--max-accuracy", "--convention", "--skip-bad"),
    ("lab", "make-data"): ("--shortcuts", "--counterfactual", "--signature", "--co-object-scale", "--masks"),
    ("lab", "train"): ("--p-object", "--model"),
    ("lab", "report"): ("--splits", "--model", "--whac-a-mole", "--json", "--lle-epochs", "--batch-size"),
    ("build",): ("--classifier", "--data", "--dataset", "--augment", "--lle-copies", "--lle-epochs", "--lle-seed",
                 "--lle-train-split", "--lle-val-split"),
    ("export", "triton"): ("--backend", "--precision", "--kind", "--max-queue-delay-us", "--server-cores"),
}


def test_the_walk_reaches_every_command_and_its_new_options() -> None:
    found = {p: {n for o in _options(c) for n in (*o.opts, *o.secondary_opts)} for p, c in LEAVES}
    for path, names in COVERED.items():
        assert path in found, path
        assert set(names) <= found[path], (path, set(names) - found[path])


def test_commands_and_groups_use_the_help_classes() -> None:
    for path, cmd in COMMANDS:
        assert isinstance(cmd, HelpGroup if hasattr(cmd, "commands") else HelpCommand), path


@pytest.mark.parametrize(("path", "cmd"), LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_every_value_option_says_what_goes_there(path, cmd) -> None:  # noqa: ANN001
    """A metavar on every option that takes a value: upper-case words (FILE, N, FRACTION ...) or a closed set's
    values; a Choice-typed option shows exactly its set."""
    for p in _options(cmd):
        if p.is_flag:
            continue
        assert p.metavar, (path, p.opts)
        choices = _choice_type(cmd, p)
        if choices is not None:
            assert p.metavar == choices.metavar(), (path, p.opts)
        else:
            assert re.fullmatch(r"[A-Z][A-Z0-9_,.|:=]*(\|[a-z]+)?|[A-Z]+\|defaults|PLAN\|L:H,\.\.\.|N,N,\.\.\.",
                                p.metavar), (path, p.opts, p.metavar)


def _choice_type(cmd, param):  # noqa: ANN001, ANN202
    """The ``Choice`` class of ``param``, from the command function's annotations."""
    import typing

    hints = typing.get_type_hints(cmd.callback, include_extras=True)
    hint = hints.get(param.name)
    for t in [hint, *typing.get_args(hint)]:
        for u in [t, *typing.get_args(t)]:
            if isinstance(u, type) and issubclass(u, Enum):
                assert issubclass(u, Choice), (param.name, u)
                return u
    return None


def test_one_meaning_per_option() -> None:
    """--json is a path everywhere; --split never has a default; the shared options (toolchain/cli/options.py) carry
    one help text wherever they appear."""
    helps: dict[str, set[str]] = {}
    for path, cmd in LEAVES:
        for p in _options(cmd):
            helps.setdefault(p.opts[0], set()).add(p.help)
            if p.opts[0] == "--json":
                assert not p.is_flag and p.metavar == "FILE", path
            if p.opts[0] == "--split":
                assert p.default is None and p.metavar == Split.metavar(), path
    assert len(helps["--json"]) == 1 and len(helps["--split"]) == 1
    for name in ("--dataset", "--data", "--batch-size", "--force", "--skip-bad", "--max-skipped", "--max-pixels",
                 "--allow-outside-root", "--weights", "--pretrained", "--random-weights", "--layers", "--protocol",
                 "--convention"):
        assert len(helps[name]) == 1, (name, helps[name])


def test_choices_are_checked_by_the_framework_before_any_work(tmp_path) -> None:  # noqa: ANN001
    res = CliRunner().invoke(app, ["verify", str(tmp_path), "--dataset", "imagenet", "--data", str(tmp_path),
                                   "--split", "test"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1].startswith("error: clip-debias verify: Invalid value for '--dataset'")
    assert "waterbirds" in res.output and len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(app, ["build", "--plan", str(tmp_path / "p.json"), "--model", "m", "--out",
                                   str(tmp_path / "o"), "--renorm", "unit"])
    assert res.exit_code == 2 and "'--renorm'" in res.output and "stepwise" in res.output


def test_library_sets_are_the_cli_sets() -> None:
    """The tables the library selects from list the same values as the sets the CLI offers."""
    from clip_debias.runtime.backends.selection import BACKEND_MODULES
    from clip_debias.runtime.choices import BackendName
    from clip_debias.toolchain.choices import HeadName
    from clip_debias.toolchain.correct.heads import HEAD_KINDS

    assert BackendName.values() == ("auto", *BACKEND_MODULES)
    assert HeadName.values() == tuple(HEAD_KINDS)
    from clip_debias.toolchain.choices import LabShortcuts
    from clip_debias.toolchain.lab.groups import SHORTCUTS

    assert LabShortcuts.values() == (",".join(SHORTCUTS[:1]), ",".join(SHORTCUTS))
    from clip_debias.runtime.choices import FairFaceColumn
    from clip_debias.runtime.datasets import FAIRFACE_VALUES

    assert FairFaceColumn.values() == tuple(FAIRFACE_VALUES)
    assert Split.parse("val", "--split") == "val" and f"{Split.VAL}" == "val"
    with pytest.raises(Exception, match=r"--split 'dev': expected one of train, val, test"):
        Split.parse("dev", "--split")
