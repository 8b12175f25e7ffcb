"""Entry point of ``clip-debias``. Commands import torch lazily, so ``clip-debias verify`` works on the torch-free
base install. Expected errors (``ClipDebiasError``) print one line and exit 2."""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="clip-debias",
    help="Decompose, locate, correct, export and verify a debiased open_clip ViT classifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """decompose -> locate -> build -> export -> verify. Each command's --help says what it reads and writes."""


# One module per stage, each defining register(app: typer.Typer) -> None. Order = order in --help.
COMMAND_MODULES = (
    "toolchain.cli.decompose_cmd",
    "toolchain.cli.locate_cmd",
    "toolchain.cli.build_cmd",
    "toolchain.cli.evaluate_cmd",
    "toolchain.cli.export_cmd",
    "toolchain.cli.verify_cmd",
    "toolchain.cli.lab_cmd",
    "toolchain.cli.explain_cmd",
)

for _mod in COMMAND_MODULES:
    try:
        importlib.import_module(_mod).register(app)
    except ModuleNotFoundError as _e:  # a stage whose module is not written yet
        if _e.name != _mod:
            raise


def main() -> None:
    """Run the app; expected errors become one line on stderr and exit code 2."""
    from toolchain.errors import ClipDebiasError

    try:
        rc = app(standalone_mode=False)
    except ClipDebiasError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors etc.
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise
    if isinstance(rc, int) and rc:
        sys.exit(rc)


if __name__ == "__main__":
    main()
