"""How the command starts (issue 30 item 3 and 7): bare clip-debias prints the help (exit 0); --version names the
versions and extras without importing torch, open_clip or onnxruntime; the console script's lazy root group lists
the same commands with the same lines as Typer's eager one and converts only the command that runs."""

from __future__ import annotations

import subprocess
import sys

import typer

from clip_debias.toolchain.cli.app import app, lazy_group

SCRIPT = "import sys; from clip_debias.toolchain.cli.app import main; sys.argv = ['clip-debias', *sys.argv[1:]]; main()"


def run(*args: str, check_modules: str = "") -> subprocess.CompletedProcess:
    """The console script in a fresh interpreter; ``check_modules``: print, at exit, which of these were imported."""
    code = SCRIPT
    if check_modules:
        code = ("import atexit, sys; atexit.register(lambda: print('imported:', sorted(m for m in "
                f"{check_modules.split(',')!r} if m in sys.modules)))\n" + SCRIPT)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


def test_bare_command_prints_the_help_and_exits_0():
    bare, help_ = run(), run("--help")
    assert bare.returncode == 0 and bare.stderr == ""
    assert bare.stdout == help_.stdout and bare.stdout.startswith("Usage: clip-debias [OPTIONS] COMMAND [ARGS]...")
    assert "--version" in bare.stdout and "  select " in bare.stdout


def test_version_names_the_libraries_and_extras_without_importing_them():
    from importlib import metadata

    res = run("--version", check_modules="torch,open_clip,onnxruntime,pydantic")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"clip-debias {metadata.version('clip-debias')}"
    assert lines[1].startswith(f"Python {sys.version.split()[0]}")
    for module, dist in (("torch", "torch"), ("open_clip", "open_clip_torch"), ("onnxruntime", "onnxruntime")):
        assert f"{module} {metadata.version(dist)}" in lines
    assert any(line.startswith("extras installed: ") and "toolchain" in line for line in lines)
    assert lines[-1] == "imported: []"


def test_root_help_imports_no_heavy_library():
    """(numpy is imported: verify's gate options are built from the metric registry when the command registers.)"""
    res = run("--help", check_modules="torch,pydantic,open_clip,onnxruntime,PIL")
    assert res.returncode == 0 and res.stdout.splitlines()[-1] == "imported: []"


def test_lazy_group_lists_what_the_eager_group_lists(capsys):
    eager = typer.main.get_command(app)
    eager.main(["--help"], prog_name="clip-debias", standalone_mode=False)
    eager_help = capsys.readouterr().out
    group = lazy_group()
    group.main(["--help"], prog_name="clip-debias", standalone_mode=False)
    assert capsys.readouterr().out == eager_help
    assert group.commands == {}  # the root help converted none
    group.main(["select", "--help"], prog_name="clip-debias", standalone_mode=False)
    assert "--criterion" in capsys.readouterr().out and list(group.commands) == ["select"]
    group.main(["lab", "--help"], prog_name="clip-debias", standalone_mode=False)
    assert "make-data" in capsys.readouterr().out
