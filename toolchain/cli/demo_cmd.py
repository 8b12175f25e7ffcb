"""``clip-debias demo``: the main job, offline, on the embedded bias-lab model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for data, caches, plan, models, artifacts, reports.")]
    = Path("clip-debias-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="Small val/test splits (CI smoke run).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
) -> None:
    """Generate lab data, then decompose -> locate -> build -> export ONNX -> verify on the shipped lab model, and
    print the before/after table (zero-shot vs LTC vs PerceptionCLIP vs both) and the artifact's latency."""
    from rich.console import Console

    from clip_debias.toolchain.demo import run_demo

    console = Console()
    summary = run_demo(out, quick=quick, batch_size=batch_size, console=console)
    console.print(f"artifacts, plan.png and demo.json in {out}/ (shipped correction: {summary.chosen})")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
