"""``clip-debias demo``: the main job, offline, on the embedded bias-lab model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clip_debias.toolchain.cli.options import BatchOpt


def demo(
    out: Annotated[Path, typer.Option(
        "--out", metavar="DIR", help="Folder for data, caches, plan, models, artifacts, reports (a rerun reuses its "
                                     "lab data and the decomposition caches whose inputs are unchanged).")]
    = Path("clip-debias-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="Small train/val/test splits (CI smoke run).")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Make the lab data and the decomposition caches anew even "
                                                        "when --out holds them made with the same inputs.")] = False,
    batch_size: BatchOpt = 64,
    model: Annotated[str, typer.Option(
        "--model", metavar="NAME", help="The shipped lab model: clipdebias-lab (class token) or clipdebias-lab-map "
                                        "(the same data; SigLIP's layout: attention-pool readout, sigmoid loss).")]
    = "clipdebias-lab",
) -> None:
    """Generate lab data, then decompose -> locate -> select (the correction chosen on val, built) -> export ONNX ->
    verify on the shipped lab model, and print the before/after table (zero-shot vs LTC vs PerceptionCLIP vs both)
    and the two artifacts' latency, timed in turns. The last line names report.html, the page with everything."""
    from clip_debias.runtime.tables import output_console
    from clip_debias.toolchain.demo import run_demo

    console = output_console()
    summary = run_demo(out, quick=quick, batch_size=batch_size, console=console, fresh=fresh, model=model)
    console.print(f"shipped correction: {summary.chosen}; artifacts, plans and demo.json in {out}/")
    console.print(f"report: {out / 'report.html'} (open it in a browser)")


def register(app: typer.Typer) -> None:
    app.command("demo", short_help="The whole pipeline, offline, on the shipped bias-lab model.")(demo)
