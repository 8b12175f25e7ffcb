"""``clip-debias lab``: the bias lab — a synthetic Waterbirds-style data set with a planted background shortcut, and a
tiny CLIP (``clipdebias-lab``) trained on it. torch is imported inside the commands only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from clip_debias.toolchain.choices import LabLoss, LabShortcuts
from clip_debias.toolchain.cli.help import App
from clip_debias.toolchain.choices import LleRedraw, LleSchedule, LleShiftInit
from clip_debias.toolchain.cli.build_cmd import (LleCopiesOpt, LleEpochsOpt, LleRedrawOpt, LleScheduleOpt, LleSeedOpt,
                                                 LleShiftInitOpt)
from clip_debias.toolchain.cli.options import (BATCH_HELP, BatchOpt, DataOpt, DeviceOpt, ForceOpt, JsonOpt, WeightsOpt,
                                               choice_option)

lab_app = App(help="Bias lab: make the synthetic land/water bird data, train the tiny lab CLIP, report.",
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
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Output data folder (Waterbirds layout: "
                                                                   "metadata.csv + PNGs).")],
    n_train: Annotated[int, typer.Option("--n-train", metavar="N", help="Train images.")] = 4800,
    correlation: Annotated[float, typer.Option(
        "--correlation", metavar="FRACTION", help="Fraction of train images whose background agrees with the "
                                                  "class.")] = 0.85,
    image_size: Annotated[int, typer.Option("--image-size", metavar="PX", help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed; the same seed gives the same bytes.")] = 0,
    n_val: Annotated[int, typer.Option(
        "--n-val", metavar="N", help="Val images, a multiple of the groups (4, or 8 with two shortcuts; "
                                     "balanced).")] = 600,
    n_test: Annotated[int, typer.Option(
        "--n-test", metavar="N", help="Test images, a multiple of the groups (4 or 8; 16 for two-shortcut "
                                      "pairs).")] = 1200,
    object_scale: Annotated[str, typer.Option(
        "--object-scale", metavar="MIN,MAX", help="Bird radius range as fractions of the image side.")]
    = "0.15,0.22",
    class_texture: Annotated[float, typer.Option(
        "--class-texture", metavar="PROB", help="Probability in [0, 1] that the bird's texture follows its "
                                                "class.")] = 0.75,
    shortcuts: Annotated[LabShortcuts, choice_option(
        LabShortcuts, "--shortcuts", "Planted shortcuts: background (today's data) or background,object (a "
                                     "co-occurring flower/boat beside the bird; 8 groups).")]
    = LabShortcuts.BACKGROUND,
    co_object_scale: Annotated[str, typer.Option(
        "--co-object-scale", metavar="MIN,MAX", help="Co-object radius range as fractions of the image side.")]
    = "0.08,0.11",
    counterfactual: Annotated[bool, typer.Option(
        "--counterfactual", help="Make the test split of counterfactual pairs (one bird twice, only the place or "
                                 "the object swapped; a 'pair' column).")] = False,
    signature: Annotated[str, typer.Option(
        "--signature", metavar="SIGNATURE", help="Planted low-level signature on every image: none, "
                                                 "colour-cast[:S] (+S red, -S blue; default 16) or jpeg[:Q] (JPEG "
                                                 "round trip at quality Q; default 15).")] = "none",
    masks: Annotated[Optional[bool], typer.Option(
        "--masks/--no-masks", help="Write bird/object coverage masks (default: with two shortcuts or "
                                   "--counterfactual).", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", metavar="N", min=1, help="Processes (default: all cores).")] = None,
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
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="Output weights (.safetensors).")],
    steps: Annotated[int, typer.Option("--steps", metavar="N", min=1, help="Optimizer steps.")] = 3000,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed (init, batches, captions, augmentation).")]
    = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", min=2, help=BATCH_HELP)] = 64,
    lr: Annotated[float, typer.Option("--lr", metavar="RATE", help="Peak AdamW learning rate, > 0 (cosine "
                                                                   "schedule).")] = 3e-4,
    p_background: Annotated[float, typer.Option(
        "--p-background", metavar="PROB", min=0.0, max=1.0, help="Probability that a caption also names the "
                                                                 "background.")] = 0.3,
    p_object: Annotated[float, typer.Option(
        "--p-object", metavar="PROB", min=0.0, max=1.0, help="Probability that a caption also names the co-object "
                                                             "(two-shortcut data; independent of "
                                                             "--p-background).")] = 0.3,
    model: Annotated[str, typer.Option(
        "--model", metavar="NAME", help="open_clip config to train (clipdebias-lab; clipdebias-lab2: the same "
                                        "architecture, the two-shortcut lab model's name).")] = "clipdebias-lab",
    loss: Annotated[LabLoss, choice_option(
        LabLoss, "--loss", "clip: open_clip's ClipLoss (softmax); sigmoid: SigLIP's pairwise sigmoid loss (a config "
                           "with a logit bias, e.g. clipdebias-lab-map).")] = LabLoss.CLIP,
    device: DeviceOpt = "cpu",
    threads: Annotated[Optional[int], typer.Option(
        "--threads", metavar="N", min=1, help="torch CPU threads (default: torch's).")] = None,
    fp32: Annotated[bool, typer.Option("--fp32", help="Save fp32 weights (default fp16).")] = False,
    eval_every: Annotated[int, typer.Option(
        "--eval-every", metavar="N", min=0, help="Val zero-shot every N steps (0: never).")] = 0,
    force: ForceOpt = False,
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
                          log=typer.echo, model_name=model, loss=loss.value, force=force)
    typer.echo(f"saved {out} ({res.steps} steps in {res.seconds:.0f}s, final loss {res.final_loss:.4f})")
    zero_shot_report(out, data, "val", model_name=model, log=typer.echo)


@lab_app.command("report")
def report(
    data: DataOpt,
    weights: WeightsOpt = None,
    splits: Annotated[str, typer.Option("--splits", metavar="SPLITS", help="Comma-separated splits to report: "
                                                                           "train,val,test.")] = "val,test",
    model: Annotated[str, typer.Option("--model", metavar="NAME", help="open_clip model name (clipdebias-lab2: the "
                                                                       "two-shortcut lab model).")]
    = "clipdebias-lab",
    whac_a_mole: Annotated[bool, typer.Option(
        "--whac-a-mole", help="Instead: the Whac-A-Mole table on the test split of two-shortcut data (zero-shot, LTC, "
                              "PerceptionCLIP with contexts for both attributes, LLE, LTC + LLE: I.D. accuracy, BG / "
                              "CoObj / BG+CoObj gaps, worst of 8).")] = False,
    json_out: JsonOpt = None,
    force: ForceOpt = False,
    lle_epochs: LleEpochsOpt = None,
    lle_copies: LleCopiesOpt = 1,
    lle_seed: LleSeedOpt = 0,
    lle_schedule: LleScheduleOpt = LleSchedule.URBANCARS,
    lle_redraw: LleRedrawOpt = LleRedraw.CROSS,
    lle_shift_init: LleShiftInitOpt = LleShiftInit.RANDOM,
    batch_size: BatchOpt = 64,
) -> None:
    """Print zero-shot average, per-group and worst-group accuracy per split (8 groups and the shortcut cells on
    two-shortcut data; default weights: those shipped for --model); with --whac-a-mole, the five methods side by side
    on the test split (--json: its rows as evaluate's JSON, read by 'clip-debias report'; the --lle-* options and
    --batch-size apply to it)."""
    from clip_debias.runtime.choices import Split
    from clip_debias.toolchain.cli.options import check_json_target
    from clip_debias.toolchain.errors import ClipDebiasError
    from clip_debias.toolchain.lab.train import zero_shot_report
    from clip_debias.toolchain.lab.whac_a_mole import LleSettings

    if whac_a_mole:
        check_json_target(json_out, "compare-file", force)  # before the minutes of work
        settings = LleSettings(epochs=lle_epochs, copies=lle_copies, seed=lle_seed, schedule=lle_schedule,
                               redraw=lle_redraw, shift_init=lle_shift_init)
        _whac_a_mole(data, weights, model, json_out, force, settings, batch_size)
        return
    if json_out is not None:
        raise ClipDebiasError(f"--json {json_out}: only with --whac-a-mole (the per-split report is printed)")
    names = tuple(s.strip() for s in splits.split(",") if s.strip())
    bad = [s for s in names if s not in Split.values()]
    if bad or not names:
        raise ClipDebiasError(f"--splits {splits}: expected a comma-separated list of {', '.join(Split.values())}")
    zero_shot_report(weights, data, names, model_name=model, log=typer.echo)


def _whac_a_mole(data: Path, weights: Path | None, model: str, json_out: Path | None, force: bool,
                 settings: Any, batch_size: int) -> None:
    """``lab report --whac-a-mole``: the table (``toolchain.lab.whac_a_mole``), optionally saved as JSON."""
    from clip_debias.runtime.atomic_output import write_atomic
    from clip_debias.runtime.tables import output_console
    from clip_debias.toolchain.evaluate import compare_file
    from clip_debias.toolchain.lab.whac_a_mole import print_table, whac_a_mole
    from clip_debias.toolchain.models.loading import load_clip

    console = output_console(stderr=True)
    clip = load_clip(model, weights=weights)  # default: the weights shipped for --model
    result = whac_a_mole(data, clip, settings, batch_size=batch_size,
                         say=lambda m: console.print(m, markup=False, highlight=False))
    print_table(result, output_console())
    if json_out is not None:
        write_atomic(json_out, compare_file(result.rows, evaluated={"dataset": "waterbirds", "split": "test"},
                                            located={"dataset": "waterbirds", "split": "val"}).to_json(),
                     "compare-file", force)
        typer.echo(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    """Add the ``lab`` sub-app."""
    app.add_typer(lab_app, name="lab", short_help="Bias lab: synthetic planted-bias data, the tiny lab CLIP.")
