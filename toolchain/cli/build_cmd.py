"""``clip-debias build``: plan + calibration cache -> a saved ``DebiasedClassifier`` with the edits baked in."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from clip_debias.toolchain.cli.options import (ModelOpt, PretrainedOpt, ProtocolOpt, RandomWeightsOpt, WeightsOpt,
                                               load_model)

if TYPE_CHECKING:
    from clip_debias.toolchain.locate.ltc import LocatePlan

AblateOpt = Annotated[bool, typer.Option("--ablate/--no-ablate", help="Mean-ablate the spurious heads.")]
ProjectOpt = Annotated[bool, typer.Option(
    "--project/--no-project", help="Project the salient heads (RoboShot accept).")]
ContextsOpt = Annotated[str, typer.Option(
    "--contexts", help="PerceptionCLIP contexts: waterbirds | celeba | FILE.yaml | defaults (the plan's dataset).")]
PairsOpt = Annotated[str, typer.Option(
    "--attribute-pairs", help="(p+, p-) prompt pairs for the projection: FILE.yaml or defaults (the plan's dataset).")]
TauOpt = Annotated[float, typer.Option("--tau", min=1e-6, help="PerceptionCLIP temperature of P(z|x).")]
ZFromOpt = Annotated[str, typer.Option("--z-from", help="PerceptionCLIP P(z|x): joint (sum over y) | class-free.")]
RenormOpt = Annotated[str, typer.Option(
    "--renorm", help="Norm of a projected head term: stepwise (unit norm after each basis vector, RoboShot's accept "
                     "step as the reference code runs it) | keep (its original norm, restored once at the end) | "
                     "unit-once (unit norm once at the end; this project's earlier default).")]
PairEmbeddingsOpt = Annotated[Optional[str], typer.Option(
    "--pair-embeddings", help="Accept directions E(p+) - E(p-) from unit-norm text embeddings (unit; default protocol) "
                              "or unnormalized ones (raw; the reference protocol).")]
AllowTestOpt = Annotated[bool, typer.Option(
    "--allow-test-calibration", help="Allow a test-split calibration cache (leaks test data; recorded in the model).")]
LleDataOpt = Annotated[Optional[Path], typer.Option(
    "--data", help="--classifier lle: the dataset root the LLE head trains on (its --lle-train-split) and is chosen on "
                   "(its --lle-val-split).")]
LleDatasetOpt = Annotated[str, typer.Option("--dataset", help="--classifier lle: waterbirds | celeba | csv")]
AugmentOpt = Annotated[str, typer.Option(
    "--augment", help="--classifier lle: comma-separated shift types, one head each besides the originals': "
                      "background-swap (needs fg masks, and object masks where the data has a co-object), object-swap "
                      "(needs fg and object masks), watermark, auto (every built-in type the data has masks for), or "
                      "your own function NAME=module:function / NAME=file.py:function.")]
LleCopiesOpt = Annotated[int, typer.Option("--lle-copies", min=1, help="Augmented draws per image and type.")]
LleEpochsOpt = Annotated[int, typer.Option("--lle-epochs", min=1, help="SGD epochs per (lr, wd) of the LLE grid.")]
LleSeedOpt = Annotated[int, typer.Option("--lle-seed", min=0, help="Seed of the augmentations and of SGD's order.")]
LleTrainSplitOpt = Annotated[str, typer.Option("--lle-train-split", help="Split the LLE head trains on.")]
LleValSplitOpt = Annotated[str, typer.Option(
    "--lle-val-split", help="Split the LLE head's learning rate, weight decay and epoch are chosen on.")]


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


def lle_options(classifier: str, data: Path | None, dataset: str, augment: str, copies: int, epochs: int, seed: int,
                train_split: str, val_split: str) -> Any:
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
                         epochs=epochs, seed=seed)
    options.resolve_augmentations()  # a type the data has no masks for is refused before the model loads
    return options


def build(
    plan: Annotated[Path, typer.Option("--plan", help="plan.json written by 'clip-debias locate'.")],
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", help="Output model directory.")],
    calibration: Annotated[Optional[Path], typer.Option(
        "--calibration", help="Cache whose per-head means replace the spurious heads (default: the cache the plan was "
                              "located on).")] = None,
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    ablate: AblateOpt = True,
    project: ProjectOpt = True,
    classifier: Annotated[str, typer.Option(
        "--classifier", help="zeroshot | perception | lle (Last Layer Ensemble trained on this model's frozen "
                             "embeddings of --data)")] = "zeroshot",
    contexts: ContextsOpt = "defaults",
    attribute_pairs: PairsOpt = "defaults",
    tau: TauOpt = 1.0,
    z_from: ZFromOpt = "joint",
    renorm: RenormOpt = "stepwise",
    pair_embeddings: PairEmbeddingsOpt = None,
    allow_test_calibration: AllowTestOpt = False,
    protocol: ProtocolOpt = "default",
    data: LleDataOpt = None,
    dataset: LleDatasetOpt = "waterbirds",
    augment: AugmentOpt = "auto",
    lle_copies: LleCopiesOpt = 1,
    lle_epochs: LleEpochsOpt = 30,
    lle_seed: LleSeedOpt = 0,
    lle_train_split: LleTrainSplitOpt = "train",
    lle_val_split: LleValSplitOpt = "val",
) -> None:
    """Bake the plan's corrections (mean ablation, salient projection) and the classifier head into one model.
    --protocol reference takes the ablation means from the split you will evaluate on (--calibration, required):
    transductive, not deployable. --classifier lle trains the Last Layer Ensemble head on the embeddings of the model
    with the edits baked in (train split of --data; chosen on its val split)."""
    from clip_debias.toolchain.correct.build import BuildOptions, build_classifier
    from clip_debias.toolchain.prompts.defaults import attribute_pairs_for, contexts_for
    from clip_debias.toolchain.decompose.cache import load_cache
    from clip_debias.toolchain.locate.ltc import LocatePlan

    from clip_debias.runtime.atomic_output import check_directory_target
    from clip_debias.toolchain.correct.classifier import MODEL_DIR_KIND

    from clip_debias.toolchain.errors import ClipDebiasError
    from clip_debias.toolchain.protocol import TRANSDUCTIVE_NOTE, check_protocol

    check_protocol(protocol)
    lle = lle_options(classifier, data, dataset, augment, lle_copies, lle_epochs, lle_seed, lle_train_split,
                      lle_val_split)
    check_directory_target(out, MODEL_DIR_KIND)  # before the build's minutes of work, not after
    located = LocatePlan.load(plan)
    if protocol == "reference" and calibration is None and ablate and located.spurious:
        raise ClipDebiasError("--protocol reference takes the ablation means from the evaluated split itself: pass "
                              "--calibration CACHE of the split you will evaluate on (transductive)")
    calibration = default_calibration(located, calibration, ablate and bool(located.spurious),
                                      "--calibration CACHE, or --no-ablate")
    calib = load_cache(calibration) if calibration is not None else None
    clip = load_model(model, pretrained, weights, random_weights=random_weights)
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
                   f"{t['train']['split']} ({t['train']['n_embeddings']} embeddings), chosen on {t['val']['split']}: "
                   f"lr {c['lr']}, wd {c['weight_decay']}, epoch {c['epoch']} (val worst group "
                   f"{100 * c['val_worst_group']:.1f} %, zero-shot {100 * t['val_zero_shot']['worst_group']:.1f} %)")
    if spec.plan.get("calibration"):
        c = spec.plan["calibration"]
        typer.echo(f"  ablation means from {c['dataset']}/{c['split']} ({c['n']} images)")
    if spec.plan.get("transductive"):
        typer.echo(f"  WARNING: {TRANSDUCTIVE_NOTE}. Recorded in config.json (plan.transductive).")
    elif spec.plan.get("test_calibration"):
        typer.echo("  WARNING: calibrated on the TEST split (--allow-test-calibration); test accuracy of this model "
                   "is optimistic. Recorded in config.json (plan.test_calibration).")


def register(app: typer.Typer) -> None:
    app.command("build")(build)
