"""``clip-debias build``: plan + calibration cache -> a saved ``DebiasedClassifier`` with the edits baked in."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

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
    classifier: Annotated[str, typer.Option("--classifier", help="zeroshot | perception")] = "zeroshot",
    contexts: ContextsOpt = "defaults",
    attribute_pairs: PairsOpt = "defaults",
    tau: TauOpt = 1.0,
    z_from: ZFromOpt = "joint",
    renorm: RenormOpt = "stepwise",
    pair_embeddings: PairEmbeddingsOpt = None,
    allow_test_calibration: AllowTestOpt = False,
    protocol: ProtocolOpt = "default",
) -> None:
    """Bake the plan's corrections (mean ablation, salient projection) and the classifier head into one model.
    --protocol reference takes the ablation means from the split you will evaluate on (--calibration, required):
    transductive, not deployable."""
    from clip_debias.toolchain.correct.build import BuildOptions, build_classifier
    from clip_debias.toolchain.prompts.defaults import attribute_pairs_for, contexts_for
    from clip_debias.toolchain.decompose.cache import load_cache
    from clip_debias.toolchain.locate.ltc import LocatePlan

    from clip_debias.runtime.atomic_output import check_directory_target
    from clip_debias.toolchain.correct.classifier import MODEL_DIR_KIND

    from clip_debias.toolchain.errors import ClipDebiasError
    from clip_debias.toolchain.protocol import TRANSDUCTIVE_NOTE, check_protocol

    check_protocol(protocol)
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
        allow_test_calibration=allow_test_calibration, protocol=protocol,
    )
    clf = build_classifier(located, calib, clip, options)
    clf.save(out)
    spec = clf.spec
    typer.echo(f"built {out}: {classifier} head, ablated {spec.ablated or 'none'}, projected {spec.salient or 'none'} "
               f"(basis rank {spec.basis_rank}, renorm {spec.renorm}); {spec.convention} terms, {protocol} protocol")
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
