"""``clip-debias locate``: decomposition cache -> plan.json (spurious and salient heads) + plan.png heat map."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from clip_debias.toolchain.choices import MinoritySource, Protocol
from clip_debias.toolchain.cli.options import (ForceOpt, ModelOpt, PretrainedOpt, ProtocolOpt, RandomWeightsOpt,
                                               TokenizerOpt, WeightsOpt, choice_option, load_model)


def int_list(value: str | None, option: str) -> list[int] | None:
    """'1,2' -> [1, 2]; one clear line for anything else."""
    if not value:
        return None
    from clip_debias.toolchain.errors import ClipDebiasError

    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ClipDebiasError(f"{option} {value!r}: expected comma-separated group ids, e.g. 1,2") from None


def locate(
    cache: Annotated[Path, typer.Argument(metavar="CACHE", help="Decomposition cache (.safetensors) of the split to "
                                                                "locate on.")],
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="Output plan (.json; plan.png is written beside "
                                                                    "it).")],
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    tokenizer: TokenizerOpt = None,
    classes: Annotated[Optional[str], typer.Option(
        "--classes", metavar="NAMES", help="Comma-separated class names for the prompts (default: the dataset's "
                                           "defaults, else the cache's).")] = None,
    templates: Annotated[Optional[Path], typer.Option(
        "--templates", metavar="FILE", help="Template file (.txt one per line with {}, or YAML/JSON list); "
                                            "averaged.")] = None,
    attribute_prompts: Annotated[Optional[str], typer.Option(
        "--attribute-prompts", metavar="FILE|defaults", help="Predict groups zero-shot from attribute prompts: a "
                                                             "YAML file, or 'defaults' (the dataset's).")] = None,
    minority_groups: Annotated[Optional[str], typer.Option(
        "--minority-groups", metavar="IDS", help="Comma-separated minority group ids (default: derived, see "
                                                 "--minority-from).")] = None,
    minority_from: Annotated[MinoritySource, choice_option(
        MinoritySource, "--minority-from", "counts: per class all but the most frequent group (needs an imbalanced "
                                           "split); predictions: all but the group with the best zero-shot "
                                           "accuracy.")] = MinoritySource.COUNTS,
    max_spurious: Annotated[Optional[int], typer.Option(
        "--max-spurious", metavar="N", min=0, help="Keep at most N spurious heads.")] = None,
    max_salient: Annotated[Optional[int], typer.Option(
        "--max-salient", metavar="N", min=0, help="Keep at most N salient heads.")] = None,
    force: ForceOpt = False,
    protocol: ProtocolOpt = Protocol.DEFAULT,
    from_pairs: Annotated[bool, typer.Option(
        "--from-pairs", help="Heads whose margin changes most within counterfactual pairs (the cache needs pair ids): "
                             "LTC's rule with pairs for wrong images, n_P > 1/K; mean |d(x) - d(x')| reported. No "
                             "group labels, no salient heads.")] = False,
) -> None:
    """Score every cached head on the minority groups: spurious if n(W) - n(C) > 1/K, salient if n(C) - n(W) > 1/K
    (the argmax runs over every cached layer's heads; decompose's default caches them all). With --from-pairs: by
    the change of each head's margin within counterfactual pairs (toolchain.locate.pairs)."""
    from clip_debias.toolchain.prompts.defaults import attribute_prompts_for, classes_for, templates_for
    from clip_debias.toolchain.decompose.cache import load_cache
    from clip_debias.toolchain.locate.heatmap import save_heatmap
    from clip_debias.runtime.atomic_output import check_file_target
    from clip_debias.toolchain.figures import check_figure_target
    from clip_debias.toolchain.locate.ltc import locate_cache

    from clip_debias.toolchain.errors import ClipDebiasError

    if out.suffix.lower() == ".png":
        raise ClipDebiasError(f"--out {out}: expected a .json path (the heat map is written beside it as .png)")
    check_file_target(out, "locate-plan", force)  # both outputs, before any work
    check_figure_target(out.with_suffix(".png"), force)
    if from_pairs:
        given = [option for option, value in (("--attribute-prompts", attribute_prompts),
                                              ("--minority-groups", minority_groups),
                                              ("--minority-from", minority_from != "counts" or None),
                                              ("--max-salient", max_salient),
                                              ("--protocol", protocol != Protocol.DEFAULT or None))
                 if value is not None]
        if given:
            raise ClipDebiasError(f"{given[0]}: not with --from-pairs (pairs need no groups and give no salient "
                                  "heads)")
    terms = load_cache(cache)
    clip = load_model(model, pretrained, weights, random_weights=random_weights, tokenizer=tokenizer)
    if from_pairs:
        from clip_debias.toolchain.locate.pairs import locate_pairs

        plan = locate_pairs(terms, clip, class_names=classes_for(classes, terms.dataset),
                            templates=templates_for(templates, terms.dataset), max_spurious=max_spurious)
        _save_and_say_pairs(plan, cache, out, force)
        return
    plan = locate_cache(
        terms, clip, class_names=classes_for(classes, terms.dataset), templates=templates_for(templates, terms.dataset),
        attribute_prompts=attribute_prompts_for(attribute_prompts, terms.dataset),
        minority_groups=int_list(minority_groups, "--minority-groups"), minority_from=minority_from,
        max_spurious=max_spurious, max_salient=max_salient, protocol=protocol,
    )
    plan.cache_path = str(cache.resolve())
    plan.save(out, force)
    png = save_heatmap(plan, out.with_suffix(".png"), force)
    if not plan.all_layers:
        of = f" of {plan.tower_layers}" if plan.tower_layers else ""
        typer.echo(f"note: scored the heads of layers {plan.layers}{of} only; the published method's argmax runs over "
                   "every layer (decompose with --layers all)")
    typer.echo(f"{plan.protocol} protocol, {plan.convention} terms")
    typer.echo(f"located on {plan.dataset}/{plan.split} ({plan.n} images, {plan.group_source} groups): minority groups "
               f"{plan.minority_group_names} ({plan.minority_source}), {plan.n_wrong} wrong / {plan.n_correct} "
               f"correct; K={plan.k}, threshold {plan.threshold:.4f}")
    for kind, found in (("spurious", plan.spurious), ("salient", plan.salient)):
        heads = ", ".join(f"L{s.head[0]}H{s.head[1]} ({s.score:+.3f})" for s in found) or "none"
        typer.echo(f"  {kind}: {heads}")
    typer.echo(f"wrote {out} and {png}")


def _save_and_say_pairs(plan, cache: Path, out: Path, force: bool) -> None:  # noqa: ANN001 (a LocatePlan)
    from clip_debias.toolchain.locate.heatmap import save_heatmap

    plan.cache_path = str(cache.resolve())
    plan.save(out, force)
    png = save_heatmap(plan, out.with_suffix(".png"), force)
    typer.echo(f"located from pairs on {plan.dataset}/{plan.split}: {plan.minority_note}; K={plan.k}, threshold "
               f"1/K = {plan.threshold:.4f} on n_P")
    heads = ", ".join(f"L{s.head[0]}H{s.head[1]} (n_P {s.score:.3f}, mean |dd| {s.pair_change:.4f})"
                      for s in plan.spurious) or "none"
    typer.echo(f"  spurious: {heads}")
    typer.echo(f"wrote {out} and {png}")


def register(app: typer.Typer) -> None:
    app.command("locate", short_help="Spurious and salient heads of a cache (LTC scoring): plan.json.")(locate)
