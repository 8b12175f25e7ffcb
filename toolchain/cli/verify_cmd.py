"""``clip-debias verify``: check an exported artifact on a dataset split with the torch-free runtime.

Exit codes: 0 all thresholds met, 1 a threshold failed, 2 bad input (one ``error: ...`` line). Never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from clip_debias.runtime.errors import ClipDebiasError

DATASETS = ("waterbirds", "celeba", "csv")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ClipDebiasError(f"option {name}: '{value}' is not one of {', '.join(allowed)}")
    return value


def _pct(x: float) -> str:
    return f"{100.0 * x:.2f}%"


def print_report(report, console) -> None:  # noqa: ANN001 (rich Console, VerifyReport: imported lazily)
    """Rich tables: per-group n/accuracy, average and worst group, latency, thresholds PASS/FAIL."""
    from rich.table import Table

    b = report.backend
    console.print(
        f"[bold]{report.artifact}[/bold] on {report.dataset} {report.split} ({report.n} images) -- "
        f"{b.get('backend')} {b.get('device')} {b.get('precision')} ({b.get('file')}), batch {report.batch_size}"
    )
    gate = report.precision_gate
    if gate is not None:
        console.print(f"{gate['precision']} gate (against the artifact's fp32 graph on onnxruntime, gate batch): "
                      f"max |logit diff| {gate['max_logit_diff']:.3g} (tol "
                      f"{gate['logit_tolerance']:.3g}), min cosine {gate['min_cosine']:.5f}, argmax agree "
                      f"{100 * gate['argmax_agree']:.0f}% -- "
                      + ("[green]PASS[/green]" if gate["passed"] else f"[red]FAIL[/red] ({gate['reason']})"))
    if report.skipped:
        console.print(f"[yellow]warning:[/yellow] {len(report.skipped)} unreadable image(s) left out (--skip-bad), "
                      f"e.g. {report.skipped[0]}; the full list is in the JSON report")
    if not report.class_names_match:
        console.print(
            f"[yellow]warning:[/yellow] dataset classes {report.dataset_class_names} differ in name from the "
            f"artifact's {report.class_names} (matched by index)"
        )
    t = Table(title="accuracy by group")
    t.add_column("group")
    t.add_column("n", justify="right")
    t.add_column("accuracy", justify="right")
    for name, g in report.groups.items():
        t.add_row(name, str(g["n"]), _pct(g["accuracy"]))
    t.add_section()
    t.add_row("[bold]average (unweighted)[/bold]", str(report.n), f"[bold]{_pct(report.accuracy)}[/bold]")
    t.add_row(f"[bold]worst group[/bold] ({report.worst_group})", str(report.groups[report.worst_group]["n"]),
              f"[bold]{_pct(report.worst_group_accuracy)}[/bold]")
    console.print(t)

    lat = report.latency_ms
    lt = Table(title=f"model latency per batch of {report.batch_size} ({report.n_batches} batches)")
    for col in ("p50 ms", "p95 ms", "p99 ms", "images/s (model)", "images/s (end to end)"):
        lt.add_column(col, justify="right")
    lt.add_row(f"{lat['p50']:.2f}", f"{lat['p95']:.2f}", f"{lat['p99']:.2f}", f"{report.throughput_per_s:.1f}",
               f"{report.end_to_end_per_s:.1f}")
    console.print(lt)

    if report.thresholds:
        tt = Table(title="thresholds")
        for col in ("check", "threshold", "measured", "result"):
            tt.add_column(col, justify="right" if col != "check" else "left")
        for name, r in report.thresholds.items():
            fmt = (lambda v: f"{v:.2f} ms") if name == "max_latency_ms" else _pct
            shown = "p95 latency <= " if name == "max_latency_ms" else ("accuracy >= " if name == "min_accuracy"
                                                                       else "worst group >= ")
            tt.add_row(name, shown + fmt(r.threshold), fmt(r.value),
                       "[green]PASS[/green]" if r.passed else "[red]FAIL[/red]")
        console.print(tt)
    console.print("[bold green]PASSED[/bold green]" if report.passed else "[bold red]FAILED[/bold red]")


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify(
        artifact: Path = typer.Argument(..., help="Artifact directory (manifest.json + model files)."),
        dataset: str = typer.Option(..., "--dataset", help="Dataset format: waterbirds | celeba | csv."),
        data: Path = typer.Option(..., "--data", help="Dataset folder (csv: folder with data.csv, or the CSV)."),
        split: str = typer.Option("test", "--split", help="train | val | test."),
        backend: str = typer.Option("auto", "--backend", help="auto | onnxruntime | tensorrt | openvino."),
        device: str = typer.Option("cpu", "--device", help="cpu | cuda | auto (only auto may fall back to cpu)."),
        precision: str = typer.Option(
            "fp32", "--precision", help="fp32 | fp16 | int8 (int8: CPU only) | bf16 (OpenVINO on a CPU with bf16 "
                                        "arithmetic; gated against the fp32 graph first, the gate's numbers printed)."),
        batch_size: int = typer.Option(32, "--batch-size", help="Images per model call."),
        cuda_graph: bool = typer.Option(False, "--cuda-graph", help="ONNX Runtime CUDA graphs (--device cuda only)."),
        min_accuracy: Optional[float] = typer.Option(None, "--min-accuracy", help="Fraction 0..1 (0.9 = 90%)."),
        min_worst_group: Optional[float] = typer.Option(None, "--min-worst-group", help="Fraction 0..1."),
        max_latency_ms: Optional[float] = typer.Option(None, "--max-latency-ms", help="Max p95 ms per batch."),
        json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON here."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Image decoding threads (default min(4, cpus))."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (stderr)."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out unreadable images (listed in the report "
                                                                "as 'skipped') instead of stopping."),
    ) -> None:
        """Run ARTIFACT on a dataset split with the torch-free runtime; check accuracy, worst-group accuracy and
        latency thresholds. Exit 0 = all met, 1 = a threshold failed, 2 = bad input."""
        from rich.console import Console

        try:
            from clip_debias.runtime.backends import BACKENDS, DEVICES, PRECISIONS
            from clip_debias.runtime.verify import Thresholds, verify as run_verify

            _choice("--dataset", dataset, DATASETS)
            _choice("--backend", backend, BACKENDS)
            _choice("--device", device, DEVICES)
            _choice("--precision", precision, PRECISIONS)
            if workers is not None and workers <= 0:
                raise ClipDebiasError(f"option --workers: must be positive, got {workers}")
            thresholds = Thresholds(min_accuracy, min_worst_group, max_latency_ms)
            if json_path is not None and not json_path.parent.is_dir():
                raise ClipDebiasError(f"--json {json_path}: {json_path.parent} is not an existing folder")
            if json_path is not None and json_path.is_dir():
                raise ClipDebiasError(f"--json {json_path}: is a folder; expected a file path such as "
                                      f"{json_path / 'report.json'}")
            report = run_verify(
                artifact, dataset, data, split, backend=backend, device=device, batch_size=batch_size,
                thresholds=thresholds, precision=precision, cuda_graph=cuda_graph, workers=workers, progress=progress,
                console=Console(stderr=True), skip_bad=skip_bad,
            )
            if json_path is not None:
                report.write_json(json_path)
        except ClipDebiasError as e:  # one line, exit 2, also under typer's standalone mode / CliRunner
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        print_report(report, Console())
        if json_path is not None:
            typer.echo(f"report written to {json_path}")
        if not report.passed:
            raise typer.Exit(1)
