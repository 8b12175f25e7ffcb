"""Entry point of ``clip-debias``. Commands import torch lazily, so ``clip-debias verify`` works on the torch-free
base install.

Errors a user can cause print ONE line on stderr, never a traceback: ``ClipDebiasError`` (bad file, field or value)
and usage errors (missing option, unparsable value) as ``error: ...`` with exit code 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer

from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.ownership import set_command
from clip_debias.toolchain.cli.help import App, HelpGroup
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
    """Runs every command with ``standalone_mode=False`` and turns expected errors into one line + exit code."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
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
    no_args_is_help=True,
    epilog="Options mean the same in every command (README: Shared options): --json FILE writes a report, --split "
           "is always named, --device cpu|cuda|auto, --force replaces a file clip-debias did not write.",
)


@app.callback()
def _root() -> None:
    """Decompose, locate, correct, export and verify a debiased open_clip ViT classifier: decompose -> locate ->
    build -> export -> verify. Each command's --help says what it reads and writes; results go to stdout, what is
    being done to stderr."""


# One module per stage, each defining register(app: typer.Typer) -> None. Order = order in --help.
COMMAND_MODULES = (
    "clip_debias.toolchain.cli.decompose_cmd",
    "clip_debias.toolchain.cli.locate_cmd",
    "clip_debias.toolchain.cli.build_cmd",
    "clip_debias.toolchain.cli.evaluate_cmd",
    "clip_debias.toolchain.cli.export_cmd",
    "clip_debias.toolchain.cli.verify_cmd",
    "clip_debias.toolchain.cli.serve_cmd",
    "clip_debias.toolchain.cli.demo_cmd",
    "clip_debias.toolchain.cli.lab_cmd",
    "clip_debias.toolchain.cli.explain_cmd",
    "clip_debias.toolchain.cli.audit_cmd",
)

for _mod in COMMAND_MODULES:
    importlib.import_module(_mod).register(app)


def main() -> None:
    """Console script ``clip-debias``."""
    app()


if __name__ == "__main__":
    main()
