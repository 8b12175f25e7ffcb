"""MkDocs hook: give mkdocstrings a static view of the ``clip_debias`` namespace.

The repository installs its top-level folders as ``clip_debias.runtime`` / ``.serving`` / ``.exporters`` /
``.toolchain`` (setuptools ``package-dir``), so no ``clip_debias/`` folder exists on disk for griffe's static
analysis. This hook lays one out of symbolic links under ``.docs-src/`` (git-ignored) before the pages are built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PACKAGES = ("runtime", "serving", "exporters", "toolchain")


def lay_out(root: Path) -> None:
    """``root/.docs-src/clip_debias/<package>`` -> ``root/<package>`` for each installed package folder."""
    ns = root / ".docs-src" / "clip_debias"
    ns.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        link = ns / name
        if not link.is_symlink():
            link.symlink_to(root / name, target_is_directory=True)


# At import: MkDocs loads hooks while it reads the configuration, before mkdocstrings sets up its search paths.
lay_out(Path(__file__).resolve().parents[1])


CLI_MARKER = "<!-- cli-reference -->"


def cli_reference() -> str:
    """Markdown for every command of the Typer app, by Typer's own documentation generator (``typer ... utils docs``)."""
    import typer
    import typer.cli
    import typer.main

    from clip_debias.toolchain.cli.app import app

    command = typer.main.get_command(app)
    text = typer.cli.get_docs_for_click(obj=command, ctx=typer.Context(command), name="clip-debias")
    return text.split("\n", 1)[1]  # the page has its own title


def on_page_markdown(markdown: str, **_: Any) -> str:
    return markdown.replace(CLI_MARKER, cli_reference()) if CLI_MARKER in markdown else markdown
