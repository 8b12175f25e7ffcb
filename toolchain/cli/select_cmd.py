"""``clip-debias select``: the candidate corrections side by side on a validation cache, the winner under a stated
criterion built into a model folder; the same rows on a test cache for the table only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from clip_debias.toolchain.choices import Renorm, SelectRule
from clip_debias.toolchain.cli.build_cmd import RENORM_HELP, CalibrationOpt, ContextsOpt, PairsOpt, PlanOpt
from clip_debias.toolchain.cli.evaluate_cmd import load_plan_inputs
from clip_debias.toolchain.cli.options import (ForceOpt, JsonOpt, PretrainedOpt, RandomWeightsOpt, RecordedModelOpt,
                                               WeightsOpt, check_json_target, choice_option)



def select(
    plan: PlanOpt,
    val: Annotated[Path, typer.Option("--val", metavar="CACHE", help="Decomposition cache of the VALIDATION split: "
                                                                     "the choice reads these rows only.")],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Model directory of the winner (as 'build' "
                                                                   "writes it).")],
    test: Annotated[Optional[Path], typer.Option(
        "--test", metavar="CACHE", help="Decomposition cache of the test split: its rows are printed (and in --json) "
                                        "after the choice, never used for it.")] = None,
    criterion: Annotated[SelectRule, choice_option(
        SelectRule, "--criterion", "Rank on val by worst-group accuracy (ties: average) or by average accuracy "
                                   "(ties: worst group).")] = SelectRule.WORST_GROUP,
    max_average_drop: Annotated[Optional[float], typer.Option(
        "--max-average-drop", metavar="FRACTION", min=0.0, max=1.0,
        help="Only rows whose val average accuracy is at most this below zero-shot's (e.g. 0.02).")] = None,
    min_average: Annotated[Optional[float], typer.Option(
        "--min-average", metavar="FRACTION", min=0.0, max=1.0,
        help="Only rows whose val average accuracy is at least this (e.g. 0.75).")] = None,
    calibration: CalibrationOpt = None,
    model: RecordedModelOpt = None,
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    contexts: ContextsOpt = "defaults",
    attribute_pairs: PairsOpt = "defaults",
    renorm: Annotated[Optional[Renorm], choice_option(
        Renorm, "--renorm", "The ablate + project candidates for this renorm only (default: stepwise and keep). "
                            + RENORM_HELP)] = None,
    json_out: JsonOpt = None,
    force: ForceOpt = False,
) -> None:
    """Compare zero-shot, ablate, ablate + project (per renorm), PerceptionCLIP and their combinations on --val
    (ablation means from --calibration, default the plan's cache), choose the row with the best val worst-group
    accuracy (ties: average; --criterion, --max-average-drop and --min-average change the rule), and build it into
    --out. --test adds the same rows on test to the table; the test split is never read for the choice."""
    from clip_debias.runtime.atomic_output import check_directory_target, write_atomic
    from clip_debias.runtime.tables import output_console
    from clip_debias.toolchain.correct.classifier import MODEL_DIR_KIND
    from clip_debias.toolchain.decompose.cache import load_cache
    from clip_debias.toolchain.evaluate import compare_file, print_reports
    from clip_debias.toolchain.prompts.defaults import attribute_pairs_for, contexts_for
    from clip_debias.toolchain.select import RENORMS, Criterion, build_selection, select_correction

    check_json_target(json_out, "compare-file", force)  # both outputs, before any work
    check_directory_target(out, MODEL_DIR_KIND)
    rule = Criterion(criterion.value, max_average_drop, min_average)
    located, calib, clip = load_plan_inputs(plan, calibration, model, pretrained, weights, random_weights)
    val_cache = load_cache(val)
    test_cache = load_cache(test) if test is not None else None
    given = {"contexts": contexts_for(contexts, located.dataset),
             "attribute_pairs": attribute_pairs_for(attribute_pairs, located.dataset)}
    selection = select_correction(val_cache, located, calib, clip, criterion=rule, test=test_cache,
                                  renorms=(renorm.value,) if renorm else RENORMS, **given)
    console = output_console()
    for split, cache, rows in (("val", val_cache, selection.val), ("test", test_cache, selection.test)):
        if rows:
            typer.echo(f"{split}: {cache.dataset}/{cache.split} ({len(cache)} images)"
                       + (", chooses" if split == "val" else ", for the table only (not read by the choice)"))
            print_reports(rows, console)
    typer.echo(f"selected: {selection.chosen} ({rule.describe()})")
    build_selection(selection, located, calib, clip, **given).save(out)
    typer.echo(f"built {out}")
    if json_out is not None:
        write_atomic(json_out, compare_file(
            selection.rows(), evaluated={"dataset": val_cache.dataset, "split": val_cache.split, "n": len(val_cache)},
            located={"dataset": located.dataset, "split": located.split}, selected=selection.chosen,
            criterion=rule.describe(),
            calibration=f"{calib.dataset}/{calib.split}" if calib is not None else "none").to_json(),
            "compare-file", force)
        typer.echo(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    app.command("select", short_help="Choose the correction on a validation split and build it (test: table "
                                     "only).")(select)
