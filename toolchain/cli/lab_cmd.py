"""``clip-debias lab``: the bias lab — a synthetic Waterbirds-style data set with a planted background shortcut, and a
tiny CLIP (``clipdebias-lab``) trained on it. torch is imported inside the commands only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from clip_debias.toolchain.cli.options import DeviceOpt

lab_app = typer.Typer(help="Bias lab: make the synthetic land/water bird data, train the tiny lab CLIP, report.",
                      no_args_is_help=True)


def _scale_pair(text: str, option: str = "--object-scale") -> tuple[float, float]:
    """'0.15,0.22' -> (0.15, 0.22)."""
    from clip_debias.toolchain.errors import ClipDebiasError

    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as e:
        raise ClipDebiasError(f"{option} {text!r}: expected MIN,MAX (fractions of the image side)") from e
    return lo, hi


@lab_app.command("make-data")
def make_data(
    out: Annotated[Path, typer.Option("--out", help="Output data dir (Waterbirds layout: metadata.csv + PNGs).")],
    n_train: Annotated[int, typer.Option("--n-train", help="Train images.")] = 4800,
    correlation: Annotated[float, typer.Option(
        "--correlation", help="Fraction of train images whose background agrees with the class.")] = 0.85,
    image_size: Annotated[int, typer.Option("--image-size", help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed; the same seed gives the same bytes.")] = 0,
    n_val: Annotated[int, typer.Option(
        "--n-val", help="Val images, a multiple of the groups (4, or 8 with two shortcuts; balanced).")] = 600,
    n_test: Annotated[int, typer.Option(
        "--n-test", help="Test images, a multiple of the groups (4 or 8; 16 for two-shortcut pairs).")] = 1200,
    object_scale: Annotated[str, typer.Option(
        "--object-scale", help="Bird radius range MIN,MAX as fractions of the image side.")] = "0.15,0.22",
    class_texture: Annotated[float, typer.Option(
        "--class-texture", help="Prob. in [0, 1] that the bird's texture follows its class.")] = 0.75,
    shortcuts: Annotated[str, typer.Option(
        "--shortcuts", help="Planted shortcuts: background (today's data) or background,object (a co-occurring "
        "flower/boat beside the bird; 8 groups).")] = "background",
    co_object_scale: Annotated[str, typer.Option(
        "--co-object-scale", help="Co-object radius range MIN,MAX (fractions of the image side).")] = "0.08,0.11",
    counterfactual: Annotated[bool, typer.Option(
        "--counterfactual", help="Make the test split of counterfactual pairs (one bird twice, only the place or "
        "the object swapped; a 'pair' column).")] = False,
    signature: Annotated[str, typer.Option(
        "--signature", help="Planted low-level signature on every image: none, colour-cast[:S] (+S red, -S blue; "
        "default 16) or jpeg[:Q] (JPEG round trip at quality Q; default 15).")] = "none",
    masks: Annotated[Optional[bool], typer.Option(
        "--masks/--no-masks", help="Write bird/object coverage masks (default: with two shortcuts or "
        "--counterfactual).", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=1, help="Processes (default: all cores).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing non-empty --out that is a lab data set of ours (never another "
                            "folder).")] = False,
) -> None:
    """Generate the synthetic landbird/waterbird data set (deterministic for a seed)."""
    import time

    from clip_debias.toolchain.lab.data import make_lab_data, parse_shortcuts
    from clip_debias.toolchain.lab.groups import cell_counts, group_counts

    t0 = time.perf_counter()
    names = parse_shortcuts(shortcuts)
    path = make_lab_data(out, n_train=n_train, correlation=correlation, image_size=image_size, seed=seed,
                         n_val=n_val, n_test=n_test, overwrite=overwrite, workers=workers,
                         object_scale=_scale_pair(object_scale), class_texture=class_texture, shortcuts=names,
                         co_object_scale=_scale_pair(co_object_scale, "--co-object-scale"),
                         counterfactual=counterfactual, signature=signature, masks=masks)
    counts = (cell_counts if "object" in names else group_counts)(n_train, correlation)
    pairs = ", test in counterfactual pairs" if counterfactual else ""
    typer.echo(f"wrote {n_train + n_val + n_test} images to {path} in {time.perf_counter() - t0:.1f}s "
               f"(train groups {counts}, val/test balanced{pairs})")


@lab_app.command("train")
def train(
    data: Annotated[Path, typer.Option("--data", help="Data dir from 'clip-debias lab make-data'.")],
    out: Annotated[Path, typer.Option("--out", help="Output weights (.safetensors).")],
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps.")] = 3000,
    seed: Annotated[int, typer.Option("--seed", help="Seed (init, batches, captions, augmentation).")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Images per step.")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Peak AdamW learning rate, > 0 (cosine schedule).")] = 3e-4,
    p_background: Annotated[float, typer.Option(
        "--p-background", min=0.0, max=1.0, help="Prob. that a caption also names the background.")] = 0.3,
    p_object: Annotated[float, typer.Option(
        "--p-object", min=0.0, max=1.0, help="Prob. that a caption also names the co-object (two-shortcut data; "
        "independent of --p-background).")] = 0.3,
    model: Annotated[str, typer.Option(
        "--model", help="open_clip config to train (clipdebias-lab; clipdebias-lab2: the same architecture, the "
        "two-shortcut lab model's name).")] = "clipdebias-lab",
    device: DeviceOpt = "cpu",
    threads: Annotated[Optional[int], typer.Option(
        "--threads", min=1, help="torch CPU threads (default: torch's).")] = None,
    fp32: Annotated[bool, typer.Option("--fp32", help="Save fp32 weights (default fp16).")] = False,
    eval_every: Annotated[int, typer.Option(
        "--eval-every", min=0, help="Val zero-shot every N steps (0: never).")] = 0,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace --out even when it is not lab weights clip-debias wrote.")] = False,
) -> None:
    """Train the tiny lab CLIP contrastively (open_clip ClipLoss) and report its val zero-shot accuracy."""
    from clip_debias.toolchain.lab.train import train_lab_model, zero_shot_report

    if out.suffix != ".safetensors":
        from clip_debias.toolchain.errors import ClipDebiasError

        raise ClipDebiasError(f"--out {out}: expected a .safetensors file name")
    from clip_debias.runtime.atomic_output import check_file_target

    check_file_target(out, "lab-weights", force)  # before the training, not after
    res = train_lab_model(data, out, steps=steps, seed=seed, batch_size=batch_size, lr=lr, p_background=p_background,
                          p_object=p_object, half=not fp32, device=device, threads=threads, eval_every=eval_every,
                          log=typer.echo, model_name=model, force=force)
    typer.echo(f"saved {out} ({res.steps} steps in {res.seconds:.0f}s, final loss {res.final_loss:.4f})")
    zero_shot_report(out, data, "val", model_name=model, log=typer.echo)


@lab_app.command("report")
def report(
    data: Annotated[Path, typer.Option("--data", help="Lab data dir.")],
    weights: Annotated[Optional[Path], typer.Option(
        "--weights", help="Lab CLIP weights (.safetensors; default: the weights shipped for --model).")] = None,
    split: Annotated[str, typer.Option("--split", help="Comma-separated splits: train,val,test.")] = "val,test",
    model: Annotated[str, typer.Option(
        "--model", help="open_clip model name (clipdebias-lab2: the two-shortcut lab model).")] = "clipdebias-lab",
    whac_a_mole: Annotated[bool, typer.Option(
        "--whac-a-mole", help="Instead: the Whac-A-Mole table on the test split of two-shortcut data (zero-shot, LTC, "
                              "PerceptionCLIP with contexts for both attributes, LLE, LTC + LLE: I.D. accuracy, BG / "
                              "CoObj / BG+CoObj gaps, worst of 8).")] = False,
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", help="--whac-a-mole: also write the rows as evaluate's JSON (read by 'clip-debias report').")] = None,
    lle_epochs: Annotated[int, typer.Option("--lle-epochs", min=1, help="--whac-a-mole: LLE epochs per (lr, wd).")]
    = 30,
    lle_copies: Annotated[int, typer.Option(
        "--lle-copies", min=1, help="--whac-a-mole: augmented draws per image and type.")] = 1,
    lle_seed: Annotated[int, typer.Option("--lle-seed", min=0, help="--whac-a-mole: seed of the LLE fit.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="--whac-a-mole: images per batch.")] = 64,
) -> None:
    """Print zero-shot average, per-group and worst-group accuracy per split (8 groups and the shortcut cells on
    two-shortcut data); with --whac-a-mole, the five methods side by side on the test split."""
    from clip_debias.toolchain.errors import ClipDebiasError
    from clip_debias.toolchain.lab.train import zero_shot_report

    if whac_a_mole:
        _whac_a_mole(data, weights, model, json_out, lle_epochs, lle_copies, lle_seed, batch_size)
        return

    splits = tuple(s.strip() for s in split.split(",") if s.strip())
    bad = [s for s in splits if s not in ("train", "val", "test")]
    if bad or not splits:
        raise ClipDebiasError(f"--split {split}: expected a comma-separated list of train, val, test")
    zero_shot_report(weights, data, splits, model_name=model, log=typer.echo)


def _whac_a_mole(data: Path, weights: Path | None, model: str, json_out: Path | None, epochs: int, copies: int,
                 seed: int, batch_size: int) -> None:
    """``lab report --whac-a-mole``: the table (``toolchain.lab.whac_a_mole``), optionally saved as JSON."""
    from rich.console import Console

    from clip_debias.runtime.atomic_output import check_file_target, write_atomic
    from clip_debias.toolchain.evaluate import compare_file
    from clip_debias.toolchain.lab.whac_a_mole import LleSettings, print_table, whac_a_mole
    from clip_debias.toolchain.models.loading import load_clip

    if json_out is not None:
        check_file_target(json_out, "compare-file", False)  # before the minutes of work
    console = Console(stderr=True)
    clip = load_clip(model, weights=weights)  # default: the weights shipped for --model
    result = whac_a_mole(data, clip, LleSettings(epochs=epochs, copies=copies, seed=seed), batch_size=batch_size,
                         say=lambda m: console.print(m, markup=False, highlight=False))
    print_table(result, Console())
    if json_out is not None:
        write_atomic(json_out, compare_file(result.rows, evaluated={"dataset": "waterbirds", "split": "test"},
                                            located={"dataset": "waterbirds", "split": "val"}).to_json(),
                     "compare-file")
        typer.echo(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    """Add the ``lab`` sub-app."""
    app.add_typer(lab_app, name="lab")
