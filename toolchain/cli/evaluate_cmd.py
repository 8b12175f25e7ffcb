"""``clip-debias evaluate``: a built model on a dataset split, or (``--compare``) the methods side by side."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from clip_debias.runtime.choices import Dedupe
from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_ROWS
from clip_debias.toolchain.choices import Protocol, Renorm, ZFrom
from clip_debias.toolchain.cli.build_cmd import (RENORM_HELP, AllowTestOpt, ContextsOpt, PairEmbeddingsOpt, PairsOpt,
                                                 TauOpt, ZFromOpt, default_calibration)
from clip_debias.toolchain.cli.options import (AllowDuplicatesOpt, DedupeOpt, MaxRowsOpt, index_checks,
                                               AllowOutsideRootOpt, BatchOpt, CsvClassesOpt, DeviceOpt, ForceOpt,
                                               JsonOpt, MaxPixelsOpt, MaxSkippedOpt, OptionalDataOpt,
                                               OptionalDatasetOpt, OptionalSplitOpt, PretrainedOpt, ProtectedOpt,
                                               ProtocolOpt, RandomWeightsOpt, ShortcutAttributesOpt, SkewKOpt,
                                               SkipBadOpt, TargetOpt, TrainCorrelationOpt, WeightsOpt,
                                               check_json_target, choice_option, load_model, metric_options,
                                               need_split, reading_options)


def evaluate(
    model_dir: Annotated[Optional[Path], typer.Argument(
        metavar="MODEL_DIR", help="Model directory written by 'clip-debias build' (not with --compare).")] = None,
    dataset: OptionalDatasetOpt = None,
    data: OptionalDataOpt = None,
    split: OptionalSplitOpt = None,
    compare: Annotated[bool, typer.Option(
        "--compare", help="Rows zero-shot / ablate / ablate + project (stepwise renorm, keep norm) / PerceptionCLIP / "
                          "ablate + project + PerceptionCLIP from decomposed terms (needs --model, --plan; "
                          "--calibration defaults to the plan's cache).")] = False,
    model: Annotated[Optional[str], typer.Option("--model", metavar="NAME", help="--compare: open_clip model name.")]
    = None,
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    plan: Annotated[Optional[Path], typer.Option("--plan", metavar="FILE", help="--compare: plan.json.")] = None,
    calibration: Annotated[Optional[Path], typer.Option(
        "--calibration", metavar="CACHE", help="--compare: calibration cache (default: the plan's).")] = None,
    cache: Annotated[Optional[Path], typer.Option(
        "--cache", metavar="CACHE", help="--compare: a decomposition cache of the evaluated split (instead of "
                                         "--dataset/--data/--split).")] = None,
    contexts: ContextsOpt = "defaults",
    attribute_pairs: PairsOpt = "defaults",
    tau: TauOpt = 1.0,
    z_from: ZFromOpt = ZFrom.JOINT,
    renorm: Annotated[Optional[Renorm], choice_option(
        Renorm, "--renorm", "--compare: the ablate + project rows for this renorm only (default: stepwise and keep). "
                            + RENORM_HELP)] = None,
    pair_embeddings: PairEmbeddingsOpt = None,
    allow_test_calibration: AllowTestOpt = False,
    protocol: ProtocolOpt = Protocol.DEFAULT,
    classes: CsvClassesOpt = None,
    batch_size: BatchOpt = 32,
    device: DeviceOpt = "cpu",
    skip_bad: SkipBadOpt = False,
    json_out: JsonOpt = None,
    max_skipped: MaxSkippedOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    allow_outside_root: AllowOutsideRootOpt = False,
    max_rows: MaxRowsOpt = DEFAULT_MAX_ROWS,
    dedupe: DedupeOpt = Dedupe.PATH,
    allow_duplicates: AllowDuplicatesOpt = False,
    force: ForceOpt = False,
    target: TargetOpt = None,
    protected: ProtectedOpt = None,
    shortcut_attributes: ShortcutAttributesOpt = None,
    train_correlation: TrainCorrelationOpt = None,
    skew_k: SkewKOpt = "10,50,100",
) -> None:
    """Unweighted average accuracy, worst-group accuracy and the per-group table; and the bias metrics the data
    allows (Whac-A-Mole gaps, counterfactual flip rate, MaxSkew@k, EO / DP gaps), computed as verify does."""
    from clip_debias.runtime.atomic_output import write_atomic
    from clip_debias.runtime.tables import output_console
    from clip_debias.toolchain.errors import ClipDebiasError
    from clip_debias.toolchain.evaluate import compare_file, print_reports

    check_json_target(json_out, "compare-file", force)  # before any work
    need_split(split, data)
    reading = {**reading_options(skip_bad, max_skipped, max_pixels), "allow_outside_root": allow_outside_root}
    class_list = [c.strip() for c in classes.split(",")] if classes else None
    metrics = {"metric_options": metric_options(shortcut_attributes, train_correlation, skew_k),
               "protected": protected, "index_checks": index_checks(max_rows, dedupe, allow_duplicates)}
    if compare:
        rows, extra = _compare(CompareOptions(
            model=model, pretrained=pretrained, weights=weights, random_weights=random_weights, plan=plan,
            calibration=calibration, cache=cache, dataset=dataset, data=data, split=split, contexts=contexts,
            attribute_pairs=attribute_pairs, tau=tau, z_from=z_from, renorm=renorm, pair_embeddings=pair_embeddings,
            allow_test=allow_test_calibration, classes=class_list, batch_size=batch_size, device=device,
            skip_bad=skip_bad, protocol=protocol, reading=reading, target=target, metrics=metrics))
    else:
        from clip_debias.toolchain.correct.classifier import CONFIG_NAME, read_spec
        from clip_debias.toolchain.evaluate import evaluate_model

        if protocol != Protocol.DEFAULT:
            raise ClipDebiasError(f"--protocol {protocol}: only with --compare (a built model records its own "
                                  "protocol in config.json)")
        if model_dir is None or dataset is None or data is None:
            raise ClipDebiasError("evaluate needs MODEL_DIR, --dataset, --data and --split "
                                  "(or --compare with --model and --plan)")
        row = evaluate_model(model_dir, dataset, data, split, batch_size=batch_size, device=device,
                             skip_bad=skip_bad, classes=class_list, target=target, **metrics, **reading)
        provenance = read_spec(model_dir / CONFIG_NAME).plan
        rows, extra = [row], {"model_dir": str(model_dir), "dataset": dataset, "split": split,
                              "model_plan": provenance}
        if provenance.get("transductive"):
            from clip_debias.toolchain.protocol import TRANSDUCTIVE_NOTE

            typer.echo(f"WARNING: this model was built with --protocol reference. {TRANSDUCTIVE_NOTE}")
        elif provenance.get("test_calibration"):
            typer.echo("WARNING: this model was calibrated on the TEST split (--allow-test-calibration): "
                       "optimistic numbers")
    print_reports(rows, output_console())
    if json_out is not None:
        write_atomic(json_out, compare_file(rows, **extra).to_json(), "compare-file", force)
        typer.echo(f"wrote {json_out}")


@dataclass
class CompareOptions:
    """The options of ``evaluate --compare`` (see ``evaluate``'s); ``reading``: ``reading_options`` plus
    allow_outside_root; ``metrics``: ``compare_methods``' metric_options and protected, and ``index_checks`` (for
    ``load_index``)."""

    model: Optional[str]
    plan: Optional[Path]
    pretrained: Optional[str] = None
    weights: Optional[Path] = None
    random_weights: bool = False
    device: str = "cpu"
    calibration: Optional[Path] = None
    cache: Optional[Path] = None
    dataset: Optional[str] = None
    data: Optional[Path] = None
    split: Optional[str] = None
    classes: Optional[list[str]] = None
    target: Optional[str] = None
    batch_size: int = 32
    skip_bad: bool = False
    reading: dict[str, Any] | None = None
    contexts: str = "defaults"
    attribute_pairs: str = "defaults"
    tau: float = 1.0
    z_from: str = ZFrom.JOINT
    renorm: Optional[str] = None
    pair_embeddings: Optional[str] = None
    allow_test: bool = False
    protocol: str = Protocol.DEFAULT
    metrics: dict[str, Any] | None = None


def _compare(o: CompareOptions) -> tuple[list[Any], dict[str, Any]]:
    """Load or decompose the evaluated split, then ``compare_methods``; returns (rows, provenance)."""
    from clip_debias.toolchain.prompts.defaults import attribute_pairs_for, contexts_for
    from clip_debias.toolchain.decompose.cache import load_cache
    from clip_debias.toolchain.errors import ClipDebiasError
    from clip_debias.toolchain.evaluate import compare_methods
    from clip_debias.toolchain.locate.ltc import LocatePlan
    from clip_debias.toolchain.protocol import policy

    if o.model is None or o.plan is None:
        raise ClipDebiasError("evaluate --compare needs --model and --plan")
    rules = policy(o.protocol)
    metrics = dict(o.metrics or {})
    checks = metrics.pop("index_checks", None)
    if rules.transductive and o.calibration is not None:
        raise ClipDebiasError(f"--calibration: {rules.option} takes the ablation means from the evaluated split "
                              "itself (--cache or --dataset/--data)")
    located = LocatePlan.load(o.plan)
    calib = None
    if not rules.transductive:
        calibration = default_calibration(located, o.calibration, bool(located.spurious), "--calibration CACHE")
        calib = load_cache(calibration) if calibration is not None else None
    clip = load_model(o.model, o.pretrained, o.weights, o.device, random_weights=o.random_weights)
    if o.cache is not None:
        terms = load_cache(o.cache)
    elif o.dataset is not None and o.data is not None:
        from clip_debias.runtime.datasets import load_index
        from clip_debias.toolchain.decompose.run import decompose_dataset

        reading = dict(o.reading or {})
        index = load_index(o.dataset, o.data, o.split, classes=o.classes,
                           allow_outside_root=reading.pop("allow_outside_root", False), target=o.target,
                           protected=metrics.get("protected"), checks=checks)
        edited = sorted({l for l, _ in located.spurious_heads() + located.salient_heads()})
        terms = decompose_dataset(clip, index, layers=edited or [located.layers[-1]], batch_size=o.batch_size,
                                  device=o.device, skip_bad=o.skip_bad, convention=located.convention, **reading)
    else:
        raise ClipDebiasError("evaluate --compare needs the evaluated split: --cache CACHE, or --dataset, --data and "
                              "--split")
    ds = terms.dataset
    results = compare_methods(terms, located, calib, clip, contexts=contexts_for(o.contexts, ds),
                              attribute_pairs=attribute_pairs_for(o.attribute_pairs, ds), tau=o.tau, z_from=o.z_from,
                              renorms=(o.renorm,) if o.renorm else ("stepwise", "keep"),
                              pair_embeddings=o.pair_embeddings, allow_test_calibration=o.allow_test,
                              protocol=o.protocol, **metrics)
    if rules.transductive:
        calib_split = f"{terms.dataset}/{terms.split} itself"
    else:
        calib_split = f"{calib.dataset}/{calib.split}" if calib is not None else "none"
    typer.echo(f"{rules.name} protocol, {located.convention} terms: evaluated on {terms.dataset}/{terms.split} "
               f"({len(terms)} images); located on {located.dataset}/{located.split}; ablation means from "
               f"{calib_split}")
    if rules.note:
        typer.echo(f"WARNING: {rules.note}")
    elif calib is not None and calib.split == "test":
        typer.echo("WARNING: ablation means come from the TEST split (--allow-test-calibration): optimistic numbers")
    extra = {"protocol": str(rules.name), "convention": located.convention,
             "evaluated": {"dataset": terms.dataset, "split": terms.split, "n": len(terms)},
             "located": {"dataset": located.dataset, "split": located.split},
             "calibration": calib_split, "test_calibration": bool(calib is not None and calib.split == "test"),
             "transductive": rules.transductive, "edits": {r.method: r.edits for r in results}}
    return results, extra


def register(app: typer.Typer) -> None:
    app.command("evaluate", short_help="Average and worst-group accuracy of a model, or of the methods side by "
                                     "side (--compare).")(evaluate)
