"""``clip-debias verify``: check an exported artifact on a dataset split with the torch-free runtime.

Exit codes: 0 all thresholds met, 1 a threshold failed, 2 bad input (one ``error: ...`` line). Never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from clip_debias.runtime.choices import BackendName, Dedupe, Precision, RuntimeDevice, VerifyEngine
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_ROWS, MIN_LATENCY_BATCHES
from clip_debias.runtime.tables import output_console, print_text_table, table
from clip_debias.toolchain.cli.options import (AllowDuplicatesOpt, AllowOutsideRootOpt, BatchOpt, DataOpt, DatasetOpt,
                                               DedupeOpt, ForceOpt, JsonOpt, MaxPixelsOpt, MaxRowsOpt, MaxSkippedOpt,
                                               ProtectedOpt, QueriesOpt, ShortcutAttributesOpt, SkewKOpt, SkipBadOpt, SplitOpt,
                                               TargetOpt, TrainCorrelationOpt, check_json_target, choice_option,
                                               gate_limits, index_checks, metric_options, with_gate_options)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.2f}%"


def _gate_specs() -> dict[str, Any]:
    """{threshold JSON key prefix: its ``GateSpec``} of the registered metric gates."""
    from clip_debias.runtime.metrics.registry import gates

    return {g.name: g for g in gates()}


def _over(name: str, r) -> str:  # noqa: ANN001 (ThresholdResult)
    """What a threshold's value was computed over, in a few words (a metric gate: its ``GateSpec.over_text``)."""
    o = r.over
    if name == "max_latency_ms":
        extra = f", {o['extra_runs']} of them repeats" if o.get("extra_runs") else ""
        return f"{o['batches']} calls on batches of {o['batch_size']}{extra}"
    if name == "max_skipped":
        return f"{o['images_in_split']} images"
    spec, _ = _spec_of(name)
    return spec.over_text(o) if spec is not None and o else ""


def _spec_of(name: str) -> tuple[Any, str]:
    """(the metric gate a threshold key belongs to, the key of a keyed gate), or (None, "")."""
    specs = _gate_specs()
    if name in specs:
        return specs[name], ""
    spec = next((g for g in specs.values() if g.keys and name.startswith(g.name + "_")), None)
    return spec, name[len(spec.name) + 1:] if spec is not None else ""


def _shown(name: str, latency_batch_size: int) -> tuple[str, Any]:
    """(what the threshold bounds, how its numbers are written); latency per call on a batch of that many images."""
    if name == "max_latency_ms":
        return "p95 latency <= ", lambda v: f"{v:.2f} ms per batch of {latency_batch_size}"
    if name == "max_skipped":
        return "skipped <= ", lambda v: f"{v:.0f} images"
    spec, key = _spec_of(name)
    return (spec.shown.format(key=key), spec.fmt) if spec is not None else ("", _pct)


DECISION_STYLE = {"PASS": "[green]PASS[/green]", "FAIL": "[red]FAIL[/red]",
                  "INCONCLUSIVE": "[yellow]INCONCLUSIVE[/yellow]"}


def print_report(report, console) -> None:  # noqa: ANN001 (rich Console, VerifyReport: imported lazily)
    """Tables: per-group n/accuracy, average and worst group, latency (with its unit), thresholds PASS/FAIL."""
    b = report.backend
    console.print(
        f"[bold]{report.artifact}[/bold] on {report.dataset} {report.split} ({report.n} images) -- "
        f"{b.get('backend')} {b.get('device')} {b.get('precision')} ({b.get('file')}), batch {report.batch_size}")
    console.print(f"artifact digest {report.artifact_digest}", soft_wrap=True)
    gate = report.precision_gate
    if gate is not None:
        console.print(f"{gate['precision']} gate (against the artifact's fp32 graph on onnxruntime, gate batch): "
                      f"max |logit diff| {gate['max_logit_diff']:.3g} (tol "
                      f"{gate['logit_tolerance']:.3g}), min cosine {gate['min_cosine']:.5f}, argmax agree "
                      f"{100 * gate['argmax_agree']:.0f}% -- "
                      + ("[green]PASS[/green]" if gate["passed"] else f"[red]FAIL[/red] ({gate['reason']})"))
    for w in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", soft_wrap=True)
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
    t = table(["group", "n", "accuracy"], title="accuracy by group", right={1, 2})
    for name, g in report.groups.items():
        t.add_row(name, str(g["n"]), _pct(g["accuracy"]) if g["n"] else "[red]no image[/red]")
    t.add_section()
    t.add_row("[bold]average (unweighted)[/bold]", str(report.n), f"[bold]{_pct(report.accuracy)}[/bold]")
    t.add_row(f"[bold]worst group[/bold] ({report.worst_group})", str(report.groups[report.worst_group]["n"]),
              f"[bold]{_pct(report.worst_group_accuracy)}[/bold]")
    console.print(t)

    lat = report.latency_ms
    repeats = f", {report.latency_extra_runs} of them repeats of one batch" if report.latency_extra_runs else ""
    lt = table(["p50", "p95", "p99", "images/s (model)", "images/s (end to end)"], right={0, 1, 2, 3, 4},
               title=f"model latency, {report.latency_unit} ({report.latency_batches} timed calls{repeats})")
    lt.add_row(f"{lat['p50']:.2f} ms", f"{lat['p95']:.2f} ms", f"{lat['p99']:.2f} ms",
               f"{report.throughput_per_s:.1f}", f"{report.end_to_end_per_s:.1f}")
    console.print(lt)
    for w in report.latency_warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    print_bias_sections(report, console)

    if report.thresholds:
        title = (f"thresholds ({100 * report.confidence:g}% intervals; a group under {report.min_group_size} images: "
                 "INCONCLUSIVE)")
        tt = table(["check", "threshold", "measured", "interval", "n", "over", "result"], title=title,
                   right={1, 2, 3, 4, 5, 6})
        for name, r in report.thresholds.items():
            prefix, fmt = _shown(name, report.latency_batch_size)
            interval = "point" if r.interval is None else f"[{fmt(r.interval[0])}, {fmt(r.interval[1])}]"
            tt.add_row(name, prefix + fmt(r.threshold), fmt(r.value), interval, "" if r.n is None else str(r.n),
                       _over(name, r), DECISION_STYLE[r.decision])
        console.print(tt)
        for name, r in report.thresholds.items():
            if r.decision != "PASS" and r.reason:
                console.print(f"{DECISION_STYLE[r.decision]} {name}: {r.reason}", soft_wrap=True)
    if report.passed and report.decision == "PASS" and any(r.decision == "INCONCLUSIVE"
                                                            for r in report.thresholds.values()):
        console.print("[yellow]INCONCLUSIVE gates allowed (--allow-inconclusive)[/yellow]")
    console.print("[bold green]PASSED[/bold green]" if report.passed else
                  "[bold yellow]INCONCLUSIVE[/bold yellow] (exit 1; --allow-inconclusive to accept)"
                  if report.decision == "INCONCLUSIVE" else "[bold red]FAILED[/bold red]")


def print_bias_sections(report, console) -> None:  # noqa: ANN001 (a report with the bias sections; rich Console)
    """The bias sections' tables (``runtime.metric_tables``) and why a section is absent."""
    from clip_debias.runtime.metric_tables import not_computed_lines, tables

    if report.protected:
        console.print(f"protected attribute: {report.protected}", highlight=False)
    for t in tables(report):
        print_text_table(t, console)
    for line in not_computed_lines(report):
        console.print(line, highlight=False, markup=False, style="dim")


def verify(
    artifact: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="Artifact directory (manifest.json + model "
                                                                      "files), written by 'clip-debias export onnx'.")],
    dataset: DatasetOpt,
    data: DataOpt,
    split: SplitOpt,
    backend: Annotated[BackendName, choice_option(BackendName, "--backend", "Inference backend (auto: TensorRT, "
                                                  "OpenVINO, ONNX Runtime, the first that runs the request).")]
    = BackendName.AUTO,
    device: Annotated[RuntimeDevice, choice_option(
        RuntimeDevice, "--device", "Runtime device (auto: cuda when available, the only one that may fall back to "
                                   "cpu).")] = RuntimeDevice.CPU,
    precision: Annotated[Precision, choice_option(
        Precision, "--precision", "Compute precision: int8 on the CPU only; bf16 on OpenVINO on a CPU with bf16 "
                                  "arithmetic, gated against the fp32 graph first (the gate's numbers printed).")]
    = Precision.FP32,
    batch_size: BatchOpt = 32,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="ONNX Runtime CUDA graphs (--device cuda only).")]
    = False,
    max_latency_ms: Annotated[Optional[float], typer.Option(
        "--max-latency-ms", metavar="MS", help="Fail unless the p95 model latency per call on a batch of "
                                               "--batch-size images is at most this many milliseconds.")] = None,
    latency_batches: Annotated[int, typer.Option(
        "--latency-batches", metavar="N", min=0, help="Time at least N model calls on full batches, repeating one "
                                                      "batch when the split has fewer (p95 needs 20 calls to be an "
                                                      "observed value, p99 100); 0: the split's batches only.")]
    = MIN_LATENCY_BATCHES,
    json_path: JsonOpt = None,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", metavar="N", min=1, help="Image decoding threads (default min(4, cpus)).")] = None,
    progress: Annotated[bool, typer.Option(
        "--progress/--no-progress", help="Progress on stderr: a bar on a terminal, else a line every tenth of the "
                                         "batches.")] = True,
    skip_bad: SkipBadOpt = False,
    max_skipped: MaxSkippedOpt = None,
    groups: Annotated[Optional[str], typer.Option(
        "--groups", metavar="NAMES", help="csv datasets with a 'group' column: comma-separated names of group ids 0, "
                                          "1, ...; every one must have images, or the worst-group gate FAILS.")]
    = None,
    expect_digest: Annotated[Optional[str], typer.Option(
        "--expect-digest", metavar="DIGEST", help="Refuse the artifact unless its digest is this sha256:... (as "
                                                  "export and verify print it): pins the exact model a CI tested.")]
    = None,
    allow_outside_root: AllowOutsideRootOpt = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    max_rows: MaxRowsOpt = DEFAULT_MAX_ROWS,
    dedupe: DedupeOpt = Dedupe.PATH,
    allow_duplicates: AllowDuplicatesOpt = False,
    force: ForceOpt = False,
    engine: Annotated[VerifyEngine, choice_option(
        VerifyEngine, "--engine", "local: this process | ray: a Ray Data pipeline, one model per actor (the 'ray' "
                                  "extra); the same report.")] = VerifyEngine.LOCAL,
    address: Annotated[Optional[str], typer.Option(
        "--address", metavar="ADDRESS", help="--engine ray: a Ray cluster (ray://HOST:PORT or HOST:PORT; artifact "
                                             "and data at the same paths on every node); default: a local Ray on "
                                             "this machine.")] = None,
    ray_actors: Annotated[int, typer.Option(
        "--ray-actors", metavar="N", min=1, help="--engine ray: actors in the pool (one model each).")] = 2,
    target: TargetOpt = None,
    protected: ProtectedOpt = None,
    shortcut_attributes: ShortcutAttributesOpt = None,
    train_correlation: TrainCorrelationOpt = None,
    skew_k: SkewKOpt = "10,50,100",
    queries: QueriesOpt = None,
    confidence: Annotated[float, typer.Option(
        "--confidence", metavar="FRACTION", help="Confidence of the gates' intervals (Wilson; gaps: Newcombe/MOVER).")]
    = 0.95,
    min_group_size: Annotated[int, typer.Option(
        "--min-group-size", metavar="N", help="A group (or cell, or set of pairs) under N images makes every gate "
                                              "that reads it INCONCLUSIVE.")] = 20,
    allow_inconclusive: Annotated[bool, typer.Option(
        "--allow-inconclusive", help="Exit 0 when gates are INCONCLUSIVE (interval straddles the limit, or a group "
                                     "under --min-group-size) and none FAILs.")] = False,
    gate_values: Optional[dict] = None,
) -> None:
    """Run ARTIFACT on a dataset split with the torch-free runtime; check accuracy, worst-group accuracy, latency and
    bias thresholds (Whac-A-Mole gaps, counterfactual flip rate, MaxSkew@k, retrieval skew of --queries, EO / DP
    gaps). A gate PASSES only when
    its whole confidence interval is on the passing side. Exit 0 = all PASS, 1 = a gate FAILED or is INCONCLUSIVE,
    2 = bad input (also: a bias gate on data that lacks what it needs)."""
    from clip_debias.runtime.integrity import parse_digest
    from clip_debias.runtime.limits import MaxSkipped
    from clip_debias.runtime.metrics.evidence import Evidence
    from clip_debias.runtime.verify import (DataOptions, GateOptions, LoadOptions, RunOptions, Thresholds,
                                            VerifyOptions, verify as run_verify)

    if engine != VerifyEngine.RAY and address is not None:
        raise ClipDebiasError("--address: only with --engine ray")
    if engine == VerifyEngine.RAY and cuda_graph:
        raise ClipDebiasError("--cuda-graph: not with --engine ray")
    if engine == VerifyEngine.RAY and queries is not None:
        raise ClipDebiasError("--queries: not with --engine ray (the retrieval skew embeds the queries and keeps the "
                              "split's image embeddings in this process)")
    if max_skipped is not None and not skip_bad:
        raise ClipDebiasError("--max-skipped applies with --skip-bad (without it any unreadable image stops verify)")
    limit = MaxSkipped.parse(max_skipped) if max_skipped is not None else None
    thresholds = Thresholds(**gate_limits(gate_values or {}), max_latency_ms=max_latency_ms, max_skipped=limit)
    group_list = [g.strip() for g in groups.split(",")] if groups is not None else None
    if group_list is not None and not all(group_list):
        raise ClipDebiasError(f"--groups {groups!r}: expected comma-separated group names")
    if expect_digest is not None:
        parse_digest(expect_digest, "--expect-digest")
    check_json_target(json_path, "verify-report", force)  # before the run, not after
    options = VerifyOptions(
        LoadOptions(backend, device, precision, cuda_graph, expect_digest, max_pixels),
        RunOptions(batch_size, workers=workers, progress=progress, console=output_console(stderr=True),
                   skip_bad=skip_bad, latency_batches=latency_batches),
        DataOptions(group_list, allow_outside_root, target, protected,
                    metric_options(shortcut_attributes, train_correlation, skew_k),
                    index_checks(max_rows, dedupe, allow_duplicates), queries),
        GateOptions(thresholds, Evidence(confidence, min_group_size), allow_inconclusive))
    if engine == VerifyEngine.RAY:
        from clip_debias.serving.ray_verify import RayEngine

        with RayEngine(artifact, backend, device, precision, actors=ray_actors, address=address, progress=progress,
                       expected_digest=expect_digest, max_pixels=max_pixels) as ray_engine:
            report = run_verify(artifact, dataset, data, split, options, engine=ray_engine)
    else:
        report = run_verify(artifact, dataset, data, split, options)
    if json_path is not None:
        report.write_json(json_path, force)
    print_report(report, output_console())
    if json_path is not None:
        typer.echo(f"wrote {json_path}")
    if not report.passed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("verify", short_help="Gate an artifact on a split with the torch-free runtime: accuracy, worst "
                                   "group, latency -> exit code.")(with_gate_options(verify))
