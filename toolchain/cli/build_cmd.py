"""``clip-debias build``: plan + calibration cache -> a saved ``DebiasedClassifier`` with the edits baked in."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from clip_debias.runtime.choices import DatasetFormat, Split
from clip_debias.toolchain.choices import (HeadName, LleRedraw, LleSchedule, LleShiftInit, PairEmbeddings, Protocol,
                                          Renorm, ZFrom)
from clip_debias.toolchain.cli.options import (DatasetOpt, ModelOpt, OptionalDataOpt, PretrainedOpt, ProtocolOpt,
                                               RandomWeightsOpt, TokenizerOpt, WeightsOpt, choice_option, load_model)

if TYPE_CHECKING:
    from clip_debias.toolchain.locate.ltc import LocatePlan

AblateOpt = Annotated[bool, typer.Option("--ablate/--no-ablate", help="Mean-ablate the spurious heads.")]
ProjectOpt = Annotated[bool, typer.Option(
    "--project/--no-project", help="Project the salient heads (RoboShot accept).")]
ContextsOpt = Annotated[str, typer.Option(
    "--contexts", metavar="NAME|FILE", help="PerceptionCLIP contexts: waterbirds | celeba | a YAML file | defaults "
                                            "(the plan's dataset).")]
PairsOpt = Annotated[str, typer.Option(
    "--attribute-pairs", metavar="FILE|defaults", help="(p+, p-) prompt pairs for the projection: a YAML file, or "
                                                       "defaults (the plan's dataset).")]
TauOpt = Annotated[float, typer.Option("--tau", metavar="T", min=1e-6, help="PerceptionCLIP temperature of P(z|x).")]
ZFromOpt = Annotated[ZFrom, choice_option(ZFrom, "--z-from", "PerceptionCLIP P(z|x): joint (sum over y) | "
                                                             "class-free.")]
RENORM_HELP = ("Norm of a projected head term: stepwise (unit norm after each basis vector, RoboShot's accept step as "
               "the reference code runs it) | keep (its original norm, restored once at the end) | unit-once (unit "
               "norm once at the end; this project's earlier default).")
RenormOpt = Annotated[Renorm, choice_option(Renorm, "--renorm", RENORM_HELP)]
PairEmbeddingsOpt = Annotated[Optional[PairEmbeddings], choice_option(
    PairEmbeddings, "--pair-embeddings", "Accept directions E(p+) - E(p-) from unit-norm text embeddings (unit; "
                                         "default protocol) or unnormalized ones (raw; the reference protocol).")]
AllowTestOpt = Annotated[bool, typer.Option(
    "--allow-test-calibration", help="Allow a test-split calibration cache (leaks test data; recorded in the model).")]
CalibrationOpt = Annotated[Optional[Path], typer.Option(
    "--calibration", metavar="CACHE", help="Cache whose per-head means replace the spurious heads (default: the "
                                           "cache the plan was located on).")]
PlanOpt = Annotated[Path, typer.Option("--plan", metavar="FILE", help="plan.json written by 'clip-debias locate'.")]
AugmentOpt = Annotated[str, typer.Option(
    "--augment", metavar="TYPES", help="--classifier lle: comma-separated shift types, one head each besides the "
                                       "originals': background-swap (needs fg masks, and object masks where the data "
                                       "has a co-object), object-swap (needs fg and object masks), watermark, texture "
                                       "(needs fg masks), edge-map, auto (the swaps the data has masks for, as the "
                                       "authors' UrbanCars LLE; watermark without masks), or your own function "
                                       "NAME=module:function / NAME=file.py:function.")]
LleCopiesOpt = Annotated[int, typer.Option("--lle-copies", metavar="N", min=1,
                                           help="LLE: augmented draws per image and type.")]
LleEpochsOpt = Annotated[Optional[int], typer.Option("--lle-epochs", metavar="N", min=1, help=(
    "LLE: SGD epochs (per (lr, wd) of a grid; default: the schedule's, urbancars 300, imagenet 90, grid 30)."))]
LleScheduleOpt = Annotated[LleSchedule, choice_option(
    LleSchedule, "--lle-schedule", "LLE: urbancars (the authors' UrbanCars: lr 1e-3 constant, 300 epochs, best val "
                                   "worst group), imagenet (theirs: cosine, lr x batch/256, 90 epochs, last epoch) or "
                                   "grid (ours: lr and weight decay chosen on val).")]
LleRedrawOpt = Annotated[LleRedraw, choice_option(
    LleRedraw, "--lle-redraw", "LLE swaps: cross (the authors': the other part from a random same-class image) or own "
                               "(ours: the image's own).")]
LleShiftInitOpt = Annotated[LleShiftInit, choice_option(
    LleShiftInit, "--lle-shift-init", "LLE shift classifier's start: random (the authors': nn.Linear's default) or "
                                      "zero (ours).")]
LleSeedOpt = Annotated[int, typer.Option("--lle-seed", metavar="N", min=0,
                                         help="LLE: seed of the augmentations and of SGD's order.")]
LleTrainSplitOpt = Annotated[Split, choice_option(Split, "--lle-train-split", "Split the LLE head trains on.")]
LleValSplitOpt = Annotated[Split, choice_option(
    Split, "--lle-val-split", "Split the LLE head's epoch (and grid entry) is chosen on.")]


def default_calibration(plan: "LocatePlan", calibration: Path | None, needed: bool, hint: str) -> Path | None:
    """``calibration`` when given, else the cache the plan was located on (``plan.cache_path``) when it exists.
    When mean ablation is ``needed`` and there is none, one line naming the recorded path and ``hint`` (the options
    of the calling command that fix it)."""
    from clip_debias.toolchain.errors import ClipDebiasError

    if calibration is not None:
        return calibration
    path = Path(plan.cache_path) if plan.cache_path else None
    if path is not None and path.is_file():
        return path
    if not needed:
        return None
    if path is None:
        raise ClipDebiasError(f"{plan.where()} records no calibration cache (field 'cache_path' is empty) for mean "
                              f"ablation of its {len(plan.spurious)} spurious head(s); pass {hint}")
    raise ClipDebiasError(f"{plan.where()} records calibration cache {path}, which does not exist; pass {hint}")


def lle_options(classifier: str, data: Path | None, dataset: str, augment: str, copies: int, epochs: int | None,
                seed: int, train_split: str, val_split: str, schedule: str = "urbancars", redraw: str = "cross",
                shift_init: str = "random") -> Any:
    """``LleOptions`` for ``--classifier lle`` (None for another head); one line when --data is missing, or given to
    another head."""
    from clip_debias.toolchain.errors import ClipDebiasError

    if classifier != "lle":
        if data is not None:
            raise ClipDebiasError(f"--data {data}: only --classifier lle trains on images (this build uses "
                                  f"--classifier {classifier})")
        return None
    if data is None:
        raise ClipDebiasError("--classifier lle trains its heads on images: pass --data DIR (and --dataset) of the "
                              "training set")
    from clip_debias.toolchain.correct.lle_fit import LleOptions

    options = LleOptions(data=data, dataset=dataset, train_split=train_split, val_split=val_split,
                         augment=tuple(a.strip() for a in augment.split(",") if a.strip()), copies=copies,
                         epochs=epochs, seed=seed, schedule=schedule, redraw=redraw, shift_init=shift_init)
    options.resolve_augmentations()  # a type the data has no masks for is refused before the model loads
    return options


def build(
    plan: PlanOpt,
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Output model directory.")],
    calibration: CalibrationOpt = None,
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    tokenizer: TokenizerOpt = None,
    ablate: AblateOpt = True,
    project: ProjectOpt = True,
    classifier: Annotated[HeadName, choice_option(
        HeadName, "--classifier", "Classifier head: zero-shot, PerceptionCLIP (--contexts), or lle (Last Layer "
                                    "Ensemble trained on this model's frozen embeddings of --data).")]
    = HeadName.ZEROSHOT,
    contexts: ContextsOpt = "defaults",
    attribute_pairs: PairsOpt = "defaults",
    tau: TauOpt = 1.0,
    z_from: ZFromOpt = ZFrom.JOINT,
    renorm: RenormOpt = Renorm.STEPWISE,
    pair_embeddings: PairEmbeddingsOpt = None,
    allow_test_calibration: AllowTestOpt = False,
    protocol: ProtocolOpt = Protocol.DEFAULT,
    data: OptionalDataOpt = None,
    dataset: DatasetOpt = DatasetFormat.WATERBIRDS,
    augment: AugmentOpt = "auto",
    lle_copies: LleCopiesOpt = 1,
    lle_epochs: LleEpochsOpt = None,
    lle_seed: LleSeedOpt = 0,
    lle_train_split: LleTrainSplitOpt = Split.TRAIN,
    lle_val_split: LleValSplitOpt = Split.VAL,
    lle_schedule: LleScheduleOpt = LleSchedule.URBANCARS,
    lle_redraw: LleRedrawOpt = LleRedraw.CROSS,
    lle_shift_init: LleShiftInitOpt = LleShiftInit.RANDOM,
) -> None:
    """Bake the plan's corrections (mean ablation, salient projection) and the classifier head into one model.
    --protocol reference takes the ablation means from the split you will evaluate on (--calibration, required):
    transductive, not deployable. --classifier lle trains the Last Layer Ensemble head on the embeddings of the model
    with the edits baked in, of the --lle-train-split of --data (a --dataset folder), and chooses its epoch (with
    --lle-schedule grid also its learning rate and weight decay) on its --lle-val-split."""
    from clip_debias.toolchain.correct.build import BuildOptions, build_classifier
    from clip_debias.toolchain.prompts.defaults import attribute_pairs_for, contexts_for
    from clip_debias.toolchain.decompose.cache import load_cache
    from clip_debias.toolchain.locate.ltc import LocatePlan

    from clip_debias.runtime.atomic_output import check_directory_target
    from clip_debias.toolchain.correct.classifier import MODEL_DIR_KIND

    from clip_debias.toolchain.errors import ClipDebiasError
    from clip_debias.toolchain.protocol import policy

    lle = lle_options(classifier, data, dataset, augment, lle_copies, lle_epochs, lle_seed, lle_train_split,
                      lle_val_split, lle_schedule, lle_redraw, lle_shift_init)
    check_directory_target(out, MODEL_DIR_KIND)  # before the build's minutes of work, not after
    located = LocatePlan.load(plan)
    rules = policy(protocol)
    if rules.transductive and calibration is None and ablate and located.spurious:
        raise ClipDebiasError(f"{rules.option} takes the ablation means from the evaluated split itself: pass "
                              "--calibration CACHE of the split you will evaluate on (transductive)")
    calibration = default_calibration(located, calibration, ablate and bool(located.spurious),
                                      "--calibration CACHE, or --no-ablate")
    calib = load_cache(calibration) if calibration is not None else None
    clip = load_model(model, pretrained, weights, random_weights=random_weights, tokenizer=tokenizer)
    options = BuildOptions(
        ablate=ablate, project=project, classifier=classifier,
        contexts=contexts_for(contexts, located.dataset) if classifier == "perception" else None,
        attribute_pairs=attribute_pairs_for(attribute_pairs, located.dataset) if project else None,
        tau=tau, z_from=z_from, renorm=renorm, pair_embeddings=pair_embeddings,
        allow_test_calibration=allow_test_calibration, protocol=protocol, lle=lle,
    )
    clf = build_classifier(located, calib, clip, options)
    clf.save(out)
    spec = clf.spec
    typer.echo(f"built {out}: {classifier} head, ablated {spec.ablated or 'none'}, projected {spec.salient or 'none'} "
               f"(basis rank {spec.basis_rank}, renorm {spec.renorm}); {spec.convention} terms, {protocol} protocol")
    if classifier == "lle":
        t = clf.head.training_record
        c = t["chosen"]
        typer.echo(f"  LLE heads {', '.join(clf.head.shifts)}: trained on {t['train']['dataset']}/"
                   f"{t['train']['split']} ({t['train']['n_embeddings']} embeddings; {t['schedule']['name']} "
                   f"schedule, redraw {t['redraw']}), chosen on {t['val']['split']}: lr {c['lr']}, wd "
                   f"{c['weight_decay']}, epoch {c['epoch']} (val worst group {100 * c['val_worst_group']:.1f} %, "
                   f"zero-shot {100 * t['val_zero_shot']['worst_group']:.1f} %)")
    if spec.plan.get("calibration"):
        c = spec.plan["calibration"]
        typer.echo(f"  ablation means from {c['dataset']}/{c['split']} ({c['n']} images)")
    if spec.plan.get("transductive"):
        typer.echo(f"  WARNING: {rules.note}. Recorded in config.json (plan.transductive).")
    elif spec.plan.get("test_calibration"):
        typer.echo("  WARNING: calibrated on the TEST split (--allow-test-calibration); test accuracy of this model "
                   "is optimistic. Recorded in config.json (plan.test_calibration).")


def register(app: typer.Typer) -> None:
    app.command("build", short_help="A debiased classifier with the plan's edits baked in: a model folder.")(build)
