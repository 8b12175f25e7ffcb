"""``clip-debias decompose``: dataset split -> per-head contributions cache (safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from clip_debias.runtime.choices import Dedupe
from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_ROWS
from clip_debias.toolchain.choices import ComputeDtype, Convention, TermsDtype
from clip_debias.toolchain.cli.options import (AllowDuplicatesOpt, DedupeOpt, MaxRowsOpt, index_checks,
                                               AllowOutsideRootOpt, BatchOpt, ConventionOpt, CsvClassesOpt, DataOpt,
                                               DatasetOpt, DeviceOpt, DtypeOpt, ForceOpt, LayersOpt, MaxPixelsOpt,
                                               MaxSkippedOpt, ModelOpt, PretrainedOpt, ProtectedOpt,
                                               RandomWeightsOpt, SkipBadOpt, SplitOpt, TargetOpt, WeightsOpt,
                                               choice_option, load_model, reading_options, say)


def decompose(
    model: ModelOpt,
    dataset: DatasetOpt,
    data: DataOpt,
    split: SplitOpt,
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="Output cache (.safetensors).")],
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    layers: LayersOpt = "all",
    convention: ConventionOpt = Convention.TEXTSPAN,
    terms_dtype: Annotated[TermsDtype, choice_option(
        TermsDtype, "--terms-dtype", "Storage of the head terms (fp16: half the disk; embeddings and means stay "
                                     "fp32/fp64).")] = TermsDtype.FP32,
    batch_size: BatchOpt = 32,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = ComputeDtype.FP32,
    skip_bad: SkipBadOpt = False,
    classes: CsvClassesOpt = None,
    max_skipped: MaxSkippedOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    allow_outside_root: AllowOutsideRootOpt = False,
    max_rows: MaxRowsOpt = DEFAULT_MAX_ROWS,
    dedupe: DedupeOpt = Dedupe.PATH,
    allow_duplicates: AllowDuplicatesOpt = False,
    force: ForceOpt = False,
    target: TargetOpt = None,
    protected: ProtectedOpt = None,
) -> None:
    """Write heads [N, L, H, D], rest [N, D], embeddings, per-head means, labels, groups (and attributes) of one split:
    the exact per-head decomposition of the normalized CLS embedding (heads.sum + rest == encode_image(x,
    normalize=True)), streamed to OUT batch by batch."""
    from clip_debias.runtime.atomic_output import check_file_target
    from clip_debias.runtime.datasets import load_index
    from clip_debias.toolchain.decompose.layers import resolve_layers
    from clip_debias.toolchain.decompose.run import decompose_dataset

    skipped_log = out.with_suffix(".skipped.txt") if skip_bad else None
    check_file_target(out, "decomposition-cache", force)  # before any work: never over a file that is not ours
    if skipped_log is not None:
        check_file_target(skipped_log, "skipped-list", force)
    reading = reading_options(skip_bad, max_skipped, max_pixels)
    index = load_index(dataset, data, split, classes=classes.split(",") if classes else None,
                       allow_outside_root=allow_outside_root, target=target, protected=protected,
                       checks=index_checks(max_rows, dedupe, allow_duplicates))
    clip = load_model(model, pretrained, weights, device, dtype, random_weights=random_weights)
    chosen = resolve_layers(layers, clip.tower.layers)
    say(f"decomposing {len(index)} images of {dataset}/{split} (layers {chosen}, {convention} convention) into {out}")
    cache = decompose_dataset(clip, index, chosen, batch_size=batch_size, device=device, skip_bad=skip_bad,
                              skipped_log=skipped_log, convention=convention, out=out,
                              terms_dtype=terms_dtype.torch, force=force, **reading)
    n, l, h, d = cache.heads.shape
    typer.echo(f"wrote {out}: {n} images of {dataset}/{split}, layers {chosen} x {h} heads, D={d}, {convention} "
               f"convention, {cache.heads.row_bytes() / 2**20:.2f} MiB of terms per image "
               f"({clip.identity.describe()})")


def register(app: typer.Typer) -> None:
    app.command("decompose", short_help="A split's CLS embeddings as exact per-(layer, head) terms: a cache.")(
        decompose)
