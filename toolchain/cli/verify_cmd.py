"""``clip-debias verify``: check an exported artifact on a dataset split with the torch-free runtime.

Exit codes: 0 all thresholds met, 1 a threshold failed, 2 bad input (one ``error: ...`` line). Never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS
from clip_debias.toolchain.cli.options import (MaxGapOpt, ProtectedOpt, ShortcutAttributesOpt, SkewKOpt, TargetOpt,
                                               TrainCorrelationOpt, max_gaps, metric_options)

DATASETS = ("waterbirds", "celeba", "fairface", "csv")
ENGINES = ("local", "ray")


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ClipDebiasError(f"option {name}: '{value}' is not one of {', '.join(allowed)}")
    return value


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.2f}%"


def _over(name: str, r) -> str:  # noqa: ANN001 (ThresholdResult)
    """What a threshold's value was computed over, in a few words."""
    o = r.over
    if name == "min_accuracy":
        return f"{o['images']} of {o['images_in_split']} images"
    if name == "min_worst_group":
        return f"{len(o['expected_groups'])} groups ({o['groups_from']})"
    if name == "max_latency_ms":
        return f"{o['batches']} batches of {o['batch_size']}"
    if name == "max_skipped":
        return f"{o['images_in_split']} images"
    if name.startswith("max_gap_") and o:
        return f"{len(o['groups'])} groups, p_agree {o['p_agree']:g}"
    if name == "max_flip_rate" and o:
        return f"{o['pairs']} of {o['pairs_in_split']} pairs"
    if name == "max_skew" and o:
        return f"'{o['attribute']}', k {','.join(map(str, o['k']))}, {o['images']} images"
    if name in ("max_eo_gap", "max_dp_gap") and o:
        return f"'{o['attribute']}', {o['classes']} classes"
    return ""


def _shown(name: str) -> tuple[str, object]:
    """(what the threshold bounds, how its numbers are written)."""
    from clip_debias.runtime.metric_tables import log_ratio

    if name.startswith("max_gap_"):
        return f"|{name[len('max_gap_'):]} gap| <= ", lambda v: "-" if v is None else f"{100 * v:.2f} pts"
    return {"max_latency_ms": ("p95 latency <= ", lambda v: f"{v:.2f} ms"), "min_accuracy": ("accuracy >= ", _pct),
            "min_worst_group": ("worst group >= ", _pct),
            "max_skipped": ("skipped <= ", lambda v: f"{v:.0f} images"),
            "max_flip_rate": ("flip rate <= ", _pct), "max_skew": ("MaxSkew@k <= ", log_ratio),
            "max_eo_gap": ("EO gap <= ", _pct), "max_dp_gap": ("DP gap <= ", _pct)}.get(name, ("", _pct))


def print_report(report, console) -> None:  # noqa: ANN001 (rich Console, VerifyReport: imported lazily)
    """Rich tables: per-group n/accuracy, average and worst group, latency, thresholds PASS/FAIL."""
    from rich.table import Table

    b = report.backend
    console.print(
        f"[bold]{report.artifact}[/bold] on {report.dataset} {report.split} ({report.n} images) -- "
        f"{b.get('backend')} {b.get('device')} {b.get('precision')} ({b.get('file')}), batch {report.batch_size}",
        highlight=False,
    )
    console.print(f"artifact digest {report.artifact_digest}", highlight=False, soft_wrap=True)
    gate = report.precision_gate
    if gate is not None:
        console.print(f"{gate['precision']} gate (against the artifact's fp32 graph on onnxruntime, gate batch): "
                      f"max |logit diff| {gate['max_logit_diff']:.3g} (tol "
                      f"{gate['logit_tolerance']:.3g}), min cosine {gate['min_cosine']:.5f}, argmax agree "
                      f"{100 * gate['argmax_agree']:.0f}% -- "
                      + ("[green]PASS[/green]" if gate["passed"] else f"[red]FAIL[/red] ({gate['reason']})"))
    if report.skipped:
        console.print(f"[yellow]warning:[/yellow] {len(report.skipped)} of {report.n_split} image(s) unreadable, left "
                      f"out (--skip-bad), e.g. {report.skipped[0]}; the full list is in the JSON report")
    if report.missing_groups:
        console.print(f"[yellow]warning:[/yellow] group(s) {', '.join(report.missing_groups)} have no image in this "
                      f"split (n = 0); the worst group is over the other groups only")
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
        t.add_row(name, str(g["n"]), _pct(g["accuracy"]) if g["n"] else "[red]no image[/red]")
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
    print_bias_sections(report, console)

    if report.thresholds:
        tt = Table(title="thresholds")
        for col in ("check", "threshold", "measured", "over", "result"):
            tt.add_column(col, justify="right" if col != "check" else "left")
        for name, r in report.thresholds.items():
            prefix, fmt = _shown(name)
            tt.add_row(name, prefix + fmt(r.threshold), fmt(r.value), _over(name, r),  # type: ignore[operator]
                       "[green]PASS[/green]" if r.passed else "[red]FAIL[/red]")
        console.print(tt)
        for name, r in report.thresholds.items():
            if not r.passed and r.reason:
                console.print(f"[red]FAIL[/red] {name}: {r.reason}", highlight=False)
    console.print("[bold green]PASSED[/bold green]" if report.passed else "[bold red]FAILED[/bold red]")


def print_bias_sections(report, console) -> None:  # noqa: ANN001 (a report with the bias sections; rich Console)
    """The bias sections' tables (``runtime.metric_tables``) and why a section is absent."""
    from rich.table import Table

    from clip_debias.runtime.metric_tables import not_computed_lines, tables

    if report.protected:
        console.print(f"protected attribute: {report.protected}", highlight=False)
    for t in tables(report):
        table = Table(title=t.title)
        for i, col in enumerate(t.header):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in t.rows:
            table.add_row(*row)
        console.print(table)
        for note in t.notes:
            console.print(f"  {note}", highlight=False, markup=False)
    for line in not_computed_lines(report):
        console.print(line, highlight=False, markup=False, style="dim")


def register(app: typer.Typer) -> None:
    @app.command("verify")
    def verify(
        artifact: Path = typer.Argument(..., help="Artifact directory (manifest.json + model files)."),
        dataset: str = typer.Option(..., "--dataset", help="Dataset format: waterbirds | celeba | fairface | csv."),
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
        max_skipped: Optional[str] = typer.Option(
            None, "--max-skipped", help="With --skip-bad: the most images that may be unreadable before verify FAILS: "
                                        "a count (5), a fraction (0.02) or a percentage (2%); default 1%."),
        groups: Optional[str] = typer.Option(
            None, "--groups", help="csv datasets with a 'group' column: comma-separated names of group ids 0, 1, ...; "
                                   "every one must have images, or the worst-group gate FAILS."),
        expect_digest: Optional[str] = typer.Option(
            None, "--expect-digest", help="Refuse the artifact unless its digest is this sha256:... (as export and "
                                          "verify print it): pins the exact model a CI tested."),
        allow_outside_root: bool = typer.Option(
            False, "--allow-outside-root", help="Read image paths that leave the data folder (absolute or '..')."),
        max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1,
                                       help="Refuse image files of more pixels than this, before decoding them."),
        force: bool = typer.Option(False, "--force", help="Let --json replace a file that is not a verify report."),
        engine: str = typer.Option("local", "--engine", help="local: this process | ray: a Ray Data pipeline, one "
                                                             "model per actor (the 'ray' extra); same report."),
        address: Optional[str] = typer.Option(None, "--address", help="--engine ray: a Ray cluster (ray://HOST:PORT "
                                              "or HOST:PORT; artifact and data at the same paths on every node); "
                                              "default: a local Ray on this machine."),
        ray_actors: int = typer.Option(2, "--ray-actors", help="--engine ray: actors in the pool (one model each)."),
        target: TargetOpt = None,
        protected: ProtectedOpt = None,
        shortcut_attributes: ShortcutAttributesOpt = None,
        train_correlation: TrainCorrelationOpt = None,
        skew_k: SkewKOpt = "10,50,100",
        max_gap: MaxGapOpt = None,
        max_flip_rate: Optional[float] = typer.Option(
            None, "--max-flip-rate", help="Counterfactual pairs: the largest fraction of pairs whose label flips "
                                          "(0..1). Data without pairs is refused."),
        max_skew: Optional[float] = typer.Option(
            None, "--max-skew", help="The largest MaxSkew@k (ln ratio, >= 0) over every class and --skew-k value, of "
                                     "the protected attribute."),
        max_eo_gap: Optional[float] = typer.Option(
            None, "--max-eo-gap", help="The largest equal-opportunity gap (recall difference between values of the "
                                       "protected attribute, max over classes; 0..1)."),
        max_dp_gap: Optional[float] = typer.Option(
            None, "--max-dp-gap", help="The largest demographic-parity gap (difference of P(pred = c) between values "
                                       "of the protected attribute, max over classes; 0..1)."),
    ) -> None:
        """Run ARTIFACT on a dataset split with the torch-free runtime; check accuracy, worst-group accuracy,
        latency and bias thresholds (Whac-A-Mole gaps, counterfactual flip rate, MaxSkew@k, EO / DP gaps). Exit 0 =
        all met, 1 = a threshold failed, 2 = bad input (also: a bias gate on data that lacks what it needs)."""
        from rich.console import Console

        try:
            from clip_debias.runtime.atomic_output import check_file_target
            from clip_debias.runtime.backends import BACKENDS, DEVICES, PRECISIONS
            from clip_debias.runtime.integrity import parse_digest
            from clip_debias.runtime.limits import MaxSkipped
            from clip_debias.runtime.verify import Thresholds, verify as run_verify

            _choice("--dataset", dataset, DATASETS)
            _choice("--backend", backend, BACKENDS)
            _choice("--device", device, DEVICES)
            _choice("--precision", precision, PRECISIONS)
            _choice("--engine", engine, ENGINES)
            if engine != "ray" and address is not None:
                raise ClipDebiasError("option --address: only with --engine ray")
            if engine == "ray" and cuda_graph:
                raise ClipDebiasError("option --cuda-graph: not with --engine ray")
            if workers is not None and workers <= 0:
                raise ClipDebiasError(f"option --workers: must be positive, got {workers}")
            if max_skipped is not None and not skip_bad:
                raise ClipDebiasError("--max-skipped applies with --skip-bad (without it any unreadable image stops "
                                      "verify)")
            limit = MaxSkipped.parse(max_skipped) if max_skipped is not None else None
            thresholds = Thresholds(min_accuracy, min_worst_group, max_latency_ms, limit, max_gaps(max_gap),
                                    max_flip_rate, max_skew, max_eo_gap, max_dp_gap)
            options = metric_options(shortcut_attributes, train_correlation, skew_k)
            group_list = [g.strip() for g in groups.split(",")] if groups is not None else None
            if group_list is not None and not all(group_list):
                raise ClipDebiasError(f"--groups {groups!r}: expected comma-separated group names")
            if expect_digest is not None:
                parse_digest(expect_digest, "--expect-digest")
            if json_path is not None and not json_path.parent.is_dir():
                raise ClipDebiasError(f"--json {json_path}: {json_path.parent} is not an existing folder")
            if json_path is not None and json_path.is_dir():
                raise ClipDebiasError(f"--json {json_path}: is a folder; expected a file path such as "
                                      f"{json_path / 'report.json'}")
            if json_path is not None:
                check_file_target(json_path, "verify-report", force)  # before the run, not after
            kwargs = dict(backend=backend, device=device, batch_size=batch_size, thresholds=thresholds,
                          precision=precision, cuda_graph=cuda_graph, workers=workers, progress=progress,
                          console=Console(stderr=True), skip_bad=skip_bad, groups=group_list,
                          expected_digest=expect_digest, allow_outside_root=allow_outside_root, max_pixels=max_pixels,
                          target=target, protected=protected, metric_options=options)
            if engine == "ray":
                from clip_debias.serving.ray_verify import RayEngine

                with RayEngine(artifact, backend, device, precision, actors=ray_actors, address=address,
                               progress=progress, expected_digest=expect_digest,
                               max_pixels=max_pixels) as ray_engine:
                    report = run_verify(artifact, dataset, data, split, engine=ray_engine, **kwargs)
            else:
                report = run_verify(artifact, dataset, data, split, **kwargs)
            if json_path is not None:
                report.write_json(json_path, force)
        except ClipDebiasError as e:  # one line, exit 2, also under typer's standalone mode / CliRunner
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        print_report(report, Console())
        if json_path is not None:
            typer.echo(f"report written to {json_path}")
        if not report.passed:
            raise typer.Exit(1)
