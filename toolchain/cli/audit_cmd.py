"""``clip-debias audit``: can the model tell the sources apart, by which heads, and from what low-level signatures?
Exit codes: 0 done (and --max-accuracy met), 1 --max-accuracy exceeded, 2 bad input (one ``error: ...`` line)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from clip_debias.runtime.choices import Dedupe
from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_ROWS
from clip_debias.toolchain.cli.options import (AllowDuplicatesOpt, DedupeOpt, MaxRowsOpt, index_checks,
                                               AllowOutsideRootOpt, BatchOpt, DeviceOpt, LayersOpt, MaxPixelsOpt,
                                               MaxSkippedOpt, ModelOpt, OptionalConventionOpt, PretrainedOpt,
                                               RandomWeightsOpt, SkipBadOpt, WeightsOpt, load_model, reading_options)


def audit(
    sources: Annotated[list[str], typer.Argument(
        metavar="SOURCES", help="Two or more [NAME=]PATH[:SPLIT]: a folder of images, a CSV with a 'path' column, a "
                                  "Waterbirds or CelebA folder with :train|:val|:test, or a decomposition cache "
                                  "(.safetensors).", show_default=False)],
    model: ModelOpt,
    out: Annotated[Path, typer.Option(
        "--out", metavar="DIR", help="Output folder: audit.json, heads.png, accuracy.png; replaced only when it is an "
                                     "audit folder of ours.")],
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    per_source: Annotated[Optional[int], typer.Option(
        "--per-source", metavar="N", min=1, help="Images sampled from each source (default: the smallest source's "
                                                 "size, at most 1000).")] = None,
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", metavar="FRACTION", help="Share of each source's images held out for validation (also the "
                                                   "inner split that chooses the regularization).")] = 0.25,
    seeds: Annotated[int, typer.Option(
        "--seeds", metavar="N", min=1, help="Train/validation resplits (seeds --seed, --seed+1, ...).")] = 5,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the sampling, the splits and the "
                                                                  "corruptions.")] = 0,
    control: Annotated[Optional[str], typer.Option(
        "--control", metavar="NAME", help="Source divided at random into k pseudo-datasets for the control (default: "
                                          "the first).")] = None,
    corruptions: Annotated[Optional[str], typer.Option(
        "--corruptions", metavar="LIST", help="Comma-separated lowresN, blurR, noiseS, jitterS (README: Dataset-bias "
                                              "audit), 'all' (lowres64, lowres32, blur3, blur5, noise0.2, jitter1) or "
                                              "'none'.")] = None,
    model_dir: Annotated[Optional[Path], typer.Option(
        "--model-dir", metavar="DIR", help="A model built by 'clip-debias build': also audit its corrected "
                                           "embedding.")] = None,
    max_accuracy: Annotated[Optional[float], typer.Option(
        "--max-accuracy", metavar="FRACTION", help="Gate, a fraction 0..1: exit 1 when the embedding's (and with "
                                                   "--model-dir the corrected embedding's) mean validation accuracy "
                                                   "exceeds it.")] = None,
    layers: LayersOpt = None,
    convention: OptionalConventionOpt = None,
    top: Annotated[int, typer.Option("--top", metavar="N", min=1, help="Heads listed (and numbered in "
                                                                       "heads.png).")] = 5,
    batch_size: BatchOpt = 32,
    device: DeviceOpt = "cpu",
    skip_bad: SkipBadOpt = False,
    max_skipped: MaxSkippedOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    allow_outside_root: AllowOutsideRootOpt = False,
    max_rows: MaxRowsOpt = DEFAULT_MAX_ROWS,
    dedupe: DedupeOpt = Dedupe.PATH,
    allow_duplicates: AllowDuplicatesOpt = False,
    keep_caches: Annotated[bool, typer.Option(
        "--keep-caches", help="Keep the decomposition caches of the sampled images in OUT/caches/ (usable as "
                              "sources).")] = False,
) -> None:
    """Liu and He's dataset-classification test on the model's own features: a standardized multinomial logistic
    regression tells the sources apart from the image embedding, from each (layer, head) term alone, after low-level
    corruptions; a pseudo-dataset control (one source in random parts) must stay at chance. --convention defaults to
    the cache sources', else the --model-dir's, else textspan; with --skip-bad the unreadable images are listed in
    OUT/N-NAME.skipped.txt and every source is cut to the smallest number read."""
    from clip_debias.toolchain.audit.corruptions import parse_corruptions
    from clip_debias.toolchain.audit.run import AuditOptions, run_audit

    options = AuditOptions(
        per_source=per_source, val_fraction=val_fraction, seeds=seeds, seed=seed, control=control,
        corruptions=parse_corruptions(corruptions), model_dir=model_dir, max_accuracy=max_accuracy, layers=layers,
        convention=convention, top=top, batch_size=batch_size, device=device, skip_bad=skip_bad,
        reading=reading_options(skip_bad, max_skipped, max_pixels), allow_outside_root=allow_outside_root,
        keep_caches=keep_caches, index_checks=index_checks(max_rows, dedupe, allow_duplicates))
    doc = run_audit(sources, lambda: load_model(model, pretrained, weights, device, random_weights=random_weights),
                    out, options, log=lambda line: typer.echo(line, err=True))
    print_audit(doc, top)
    typer.echo(f"wrote {out / 'audit.json'}, {out / 'heads.png'} and {out / 'accuracy.png'}")
    if doc.gate is not None and not doc.gate.passed:
        raise typer.Exit(1)


def _acc(a) -> str:  # noqa: ANN001 (files.AccuracyRecord)
    return f"{100 * a.mean:5.1f}% ± {100 * a.std:.1f} (min {100 * a.min:.1f}, max {100 * a.max:.1f})"


def print_audit(doc, top: int) -> None:  # noqa: ANN001 (files.AuditFile)
    """The summary: sources, accuracies against chance, the control, corruptions, top heads, the gate."""
    echo = typer.echo
    echo(f"sources: " + "; ".join(f"{s.name} ({s.kind}, {s.size} images)" for s in doc.sources))
    e = doc.embedding
    echo(f"{doc.per_source} images per source, {e.n_val // len(doc.sources)} per source held out, {len(doc.seeds)} "
         f"seeds; chance {100 * e.chance:.1f}% (one split's standard error {100 * e.standard_error:.1f})")
    echo(f"  embedding            {_acc(e)}")
    if doc.corrected is not None:
        echo(f"  corrected embedding  {_acc(doc.corrected)}  ({doc.model_dir})")
    c = doc.control
    verdict = "at chance" if c.at_chance else "NOT AT CHANCE"
    echo(f"  control              {_acc(c.accuracy)}  ('{c.source}' in {c.parts} random parts of {c.per_part}: "
         f"{verdict}, limit {100 * c.limit:.1f}%)")
    for row in doc.corruptions:
        if row.noop:
            echo(f"  {row.name:<20} no change at this model's input size: not run")
            continue
        extra = f"; corrected {_acc(row.corrected)}" if row.corrected is not None else ""
        echo(f"  {row.name:<20} {_acc(row.embedding)}{extra}")
    echo("top heads (each head's term alone): " + ", ".join(
        f"L{h.layer}H{h.head} {100 * h.accuracy:.1f}%" for h in doc.heads.ranking[:top]))
    for w in doc.warnings:
        typer.secho(f"WARNING: {w}", err=True, fg="red", bold=True)
    if doc.gate is not None:
        values = ", ".join(f"{k} {100 * v:.1f}%" for k, v in doc.gate.values.items())
        echo(f"--max-accuracy {100 * doc.gate.max_accuracy:.1f}%: {values}: "
             + ("PASS" if doc.gate.passed else "FAIL (the sources are more separable than allowed)"))


def register(app: typer.Typer) -> None:
    app.command("audit", short_help="Can the model tell datasets apart, by which heads, from what signatures?")(audit)
