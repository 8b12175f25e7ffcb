"""Entry point of ``clip-debias``. Commands import torch lazily, so ``clip-debias verify`` works on the torch-free
base install.

Errors a user can cause print ONE line on stderr, never a traceback: ``ClipDebiasError`` (bad file, field or value)
and usage errors (missing option, unparsable value) as ``error: ...`` with exit code 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Any

import typer

from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.ownership import set_command
from clip_debias.toolchain.cli.help import App, HelpGroup, first_sentence
from clip_debias.toolchain.cli.stderr import logs_on_stderr


# modules of the optional extras -> the extra that installs them
OPTIONAL_MODULES = {m: "toolchain" for m in ("torch", "torchvision", "open_clip", "onnx", "onnxscript", "safetensors",
                                             "matplotlib", "yaml", "sklearn", "threadpoolctl")} | {
    "yake": "explain", "tensorrt": "tensorrt"}


def _quiet_pil_bomb_warning() -> None:
    """PIL warns on opening an image over 89.5 MP; ``runtime.images`` then refuses it in one line (--max-pixels,
    default 50 MP), so the warning is noise on a command's stderr. Filtered by message, so PIL stays unimported."""
    import warnings

    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")


class OneLineErrorsGroup(HelpGroup):
    """Runs every command with ``standalone_mode=False`` and turns expected errors into one line + exit code. Bare
    ``clip-debias`` prints the help (exit 0)."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args) or ["--help"]
        command = next((a for a in argv if not a.startswith("-")), "")
        set_command(argv)  # recorded in the marker of every output folder this run writes
        _quiet_pil_bomb_warning()
        try:
            with logs_on_stderr("clip_debias"):  # what the library is doing: loading, progress, export steps, notices
                rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except ClipDebiasError as e:
            typer.echo(f"error: {e}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as e:  # a toolchain command on the torch-free base install
            extra = OPTIONAL_MODULES.get((e.name or "").split(".")[0])
            if extra is None:
                raise
            typer.echo(f"error: clip-debias {command} needs the '{extra}' extra (missing module '{e.name}'): "
                       f"pip install 'clip-debias[{extra}]'", err=True)
            sys.exit(2)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(130)
        except typer.TyperException as e:  # click usage errors (typer vendors click)
            msg = " ".join(str(e.format_message()).split()).replace("Value error, ", "")
            where = f"clip-debias {command}".strip()
            typer.echo(f"error: {where}: {msg} (see {where} --help)", err=True)
            sys.exit(getattr(e, "exit_code", 2))
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


app = App(
    name="clip-debias",
    cls=OneLineErrorsGroup,
    epilog="Options mean the same in every command (README: Shared options): --json FILE writes a report, --split "
           "is always named, --device cpu|cuda|auto, --force replaces a file clip-debias did not write.",
)


def _print_versions(value: bool) -> None:
    if value:
        from clip_debias.toolchain.cli.versions import version_lines

        typer.echo("\n".join(version_lines()))
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_versions,
        help="Print the versions of clip-debias, Python, torch, open_clip and onnxruntime, and which extras are "
             "installed (imports none of them).")] = False) -> None:
    """Decompose, locate, correct, export and verify a debiased open_clip ViT classifier: decompose -> locate ->
    build -> export -> verify. Each command's --help says what it reads and writes; results go to stdout, what is
    being done to stderr."""


# One module per stage, each defining register(app: typer.Typer) -> None. Order = order in --help.
COMMAND_MODULES = (
    "clip_debias.toolchain.cli.decompose_cmd",
    "clip_debias.toolchain.cli.locate_cmd",
    "clip_debias.toolchain.cli.build_cmd",
    "clip_debias.toolchain.cli.evaluate_cmd",
    "clip_debias.toolchain.cli.select_cmd",
    "clip_debias.toolchain.cli.export_cmd",
    "clip_debias.toolchain.cli.verify_cmd",
    "clip_debias.toolchain.cli.search_cmd",
    "clip_debias.toolchain.cli.serve_cmd",
    "clip_debias.toolchain.cli.demo_cmd",
    "clip_debias.toolchain.cli.lab_cmd",
    "clip_debias.toolchain.cli.explain_cmd",
    "clip_debias.toolchain.cli.audit_cmd",
)

for _mod in COMMAND_MODULES:
    importlib.import_module(_mod).register(app)


class LazyGroup(OneLineErrorsGroup):
    """The root group whose commands are converted from Typer on first use: ``clip-debias --help`` reads each
    command's short help from its registration, and ``clip-debias build ...`` converts ``build`` alone (Typer's
    conversion reads every parameter's annotations, about 1 s for all commands on a busy core)."""

    infos: dict[str, Any] = {}

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.infos)

    def get_command(self, ctx: Any, name: str) -> Any:
        if name not in self.commands and name in self.infos:
            self.commands[name] = _convert(self.infos[name])
        return self.commands.get(name)

    def summary(self, name: str) -> str:
        """One command's line in the root help, without converting it."""
        info = self.infos[name]
        help_ = getattr(info, "short_help", None) or getattr(info, "help", None) or ""
        if not help_ and getattr(info, "callback", None) is not None:
            help_ = info.callback.__doc__ or ""
        return help_ if getattr(info, "short_help", None) else first_sentence(help_)


def _convert(info: Any) -> Any:
    """The click command (or group) of one Typer registration."""
    from typer.main import get_command_from_info, get_group_from_info

    if isinstance(info, typer.models.CommandInfo):
        return get_command_from_info(info, pretty_exceptions_short=app.pretty_exceptions_short,
                                     rich_markup_mode=app.rich_markup_mode)
    return get_group_from_info(info, pretty_exceptions_short=app.pretty_exceptions_short,
                               rich_markup_mode=app.rich_markup_mode, suggest_commands=app.suggest_commands)


def lazy_group() -> LazyGroup:
    """``app``'s root group (its callback and options) with the commands converted on first use."""
    from copy import copy

    from typer.main import get_command_name, get_group

    shell = copy(app)
    shell.registered_commands, shell.registered_groups = [], []
    shell.info = copy(app.info)
    shell.info.cls = LazyGroup
    group = get_group(shell)
    group.infos = {(c.name or get_command_name(c.callback.__name__)): c for c in app.registered_commands}
    group.infos.update({g.name: g for g in app.registered_groups})
    return group


def main() -> None:
    """Console script ``clip-debias``."""
    lazy_group().main(prog_name="clip-debias")


if __name__ == "__main__":
    main()
