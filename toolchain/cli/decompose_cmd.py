"""``clip-debias decompose``: dataset split -> per-head contributions cache (safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS
from clip_debias.toolchain.cli.options import (AllowOutsideRootOpt, BatchOpt, DataOpt, DatasetOpt, DeviceOpt, DtypeOpt,
                                               ForceOpt, MaxPixelsOpt, MaxSkippedOpt, ModelOpt, PretrainedOpt,
                                               RandomWeightsOpt, SplitOpt, WeightsOpt, load_model, reading_options)


def decompose(
    model: ModelOpt,
    dataset: DatasetOpt,
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Output .safetensors cache.")],
    split: SplitOpt = "train",
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    layers: Annotated[int, typer.Option("--layers", help="Decompose the last N layers.")] = 4,
    batch_size: BatchOpt = 32,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "fp32",
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Skip unreadable images; list them in OUT.skipped.txt.")] = False,
    classes: Annotated[Optional[str], typer.Option(
        "--classes", help="csv datasets: comma-separated class names.")] = None,
    max_skipped: MaxSkippedOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    allow_outside_root: AllowOutsideRootOpt = False,
    force: ForceOpt = False,
) -> None:
    """Write heads [N, L, H, D], rest [N, D], labels, groups (and attributes) of one split: the exact per-head
    decomposition of the normalized CLS embedding (heads.sum + rest == encode_image(x, normalize=True))."""
    from clip_debias.runtime.atomic_output import check_file_target
    from clip_debias.runtime.datasets import load_index
    from clip_debias.toolchain.decompose.cache import save_cache
    from clip_debias.toolchain.decompose.contributions import resolve_layers
    from clip_debias.toolchain.decompose.run import decompose_dataset

    skipped_log = out.with_suffix(".skipped.txt") if skip_bad else None
    check_file_target(out, "decomposition-cache", force)  # before any work: never over a file that is not ours
    if skipped_log is not None:
        check_file_target(skipped_log, "skipped-list", force)
    reading = reading_options(skip_bad, max_skipped, max_pixels)
    index = load_index(dataset, data, split, classes=classes.split(",") if classes else None,
                       allow_outside_root=allow_outside_root)
    clip = load_model(model, pretrained, weights, device, dtype, random_weights=random_weights)
    chosen = resolve_layers(len(clip.model.visual.transformer.resblocks), last=layers)
    cache = decompose_dataset(clip, index, chosen, batch_size=batch_size, device=device, skip_bad=skip_bad,
                              skipped_log=skipped_log, force=force, **reading)
    save_cache(out, cache, force=force)
    n, l, h, d = cache.heads.shape
    typer.echo(f"wrote {out}: {n} images of {dataset}/{split}, layers {chosen} x {h} heads, D={d} "
               f"({clip.identity.describe()})")


def register(app: typer.Typer) -> None:
    app.command("decompose")(decompose)
