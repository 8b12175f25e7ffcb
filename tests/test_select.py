"""select: the winner of hand-built caches whose answer is known; the test split never read for the choice; the
CLI builds the chosen row (the built model's logits equal that row's), with the model taken from the plan."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clip_debias.runtime.metrics import accuracy_report
from clip_debias.toolchain.decompose.cache import DecompositionCache, save_cache
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.evaluate import MethodResult
from clip_debias.toolchain.locate.ltc import HeadScore, locate_terms
from clip_debias.toolchain.prompts.text import class_text_matrix
from clip_debias.toolchain.select import Criterion, select_correction

CLASSES = ["landbird", "waterbird"]
GROUPS = ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
SPURIOUS = (3, 1)


@pytest.fixture(scope="module")
def clip():
    from clip_debias.toolchain.models.loading import load_clip

    torch.manual_seed(0)  # the CLI test loads the plan's (random-init) model anew under the same seed
    return load_clip("clipdebias-tiny", random_weights=True)


def lab_cache(clip, split: str, labels: list[int], places: list[int]) -> DecompositionCache:
    """Terms whose answer is known: rest = 0.5 t_label (the object), head SPURIOUS = t_place (the background, as a
    class direction: land -> landbird, water -> waterbird), every other head 0. Zero-shot is right exactly where
    place == label; mean-ablating SPURIOUS over a split with as many land as water images adds (t_0 + t_1) / 2,
    which moves no margin (unit t), so 'ablate' is right everywhere."""
    text = class_text_matrix(clip, CLASSES).float()
    n, d = len(labels), text.shape[1]
    heads = torch.zeros(n, 1, 4, d)
    heads[:, 0, SPURIOUS[1]] = text[torch.tensor(places)]
    y, a = torch.tensor(labels), torch.tensor(places)
    return DecompositionCache(heads, 0.5 * text[y], y, 2 * y + a, [3], clip.identity, "waterbirds", split, CLASSES,
                              GROUPS, a, ["land", "water"])


def val_cache(clip, split: str = "val") -> DecompositionCache:
    """Balanced places (4 land, 4 water), 2 of 8 images in minority groups (place != label)."""
    return lab_cache(clip, split, [0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 0, 1])


def plan_of(cache: DecompositionCache):
    plan = locate_terms(cache, torch.eye(2, cache.heads.shape[-1]), templates=["a photo of a {}."])
    plan.spurious, plan.salient = [HeadScore(list(SPURIOUS), 0.5, 0.0, 0.5)], []
    return plan


def row(name: str, avg: float, worst: float) -> MethodResult:
    """A row whose average and worst-group accuracies are exactly ``avg`` and ``worst`` (two groups of 20 images)."""
    hits = [round(40 * avg - 20 * worst), round(20 * worst)]
    preds = [1 if i < hits[0] else 0 for i in range(20)] + [1 if i < hits[1] else 0 for i in range(20)]
    report = accuracy_report(torch.tensor(preds).numpy(), torch.ones(40, dtype=torch.long).numpy(),
                             torch.tensor([0] * 20 + [1] * 20).numpy(), ["g0", "g1"])
    assert report.accuracy == pytest.approx(avg) and report.worst_group_accuracy == pytest.approx(worst)
    return MethodResult(name, "", report)


ROWS = [row("zero-shot", 0.75, 0.5), row("ablate", 0.7, 0.65), row("PerceptionCLIP", 0.8, 0.6),
        row("ablate + project, keep norm", 0.675, 0.65)]


@pytest.mark.parametrize("criterion,winner", [
    (Criterion(), "ablate"),  # worst group 0.65 twice: the better average wins
    (Criterion("average"), "PerceptionCLIP"),
    (Criterion(max_average_drop=0.02), "PerceptionCLIP"),  # ablate is 5 points below zero-shot
    (Criterion(max_average_drop=0.05), "ablate"),
    (Criterion(min_average=0.76), "PerceptionCLIP"),
    (Criterion("average", min_average=0.1), "PerceptionCLIP"),
])
def test_criterion_picks_the_known_winner(criterion, winner):
    assert criterion.choose(ROWS) == winner
    assert criterion.describe().startswith("best val ")


def test_ties_go_to_the_first_row_and_no_eligible_row_is_one_line():
    assert Criterion().choose([row("zero-shot", 0.75, 0.5), row("ablate", 0.75, 0.5)]) == "zero-shot"
    with pytest.raises(ClipDebiasError, match=r"no candidate reaches --min-average 0.9 on val \(the best average"):
        Criterion(min_average=0.9).choose(ROWS)


def test_select_on_hand_built_caches_chooses_ablation(clip):
    val = val_cache(clip)
    plan = plan_of(val)
    sel = select_correction(val, plan, val, clip)
    rows = {r.method: r.report for r in sel.val}
    assert list(rows) == ["zero-shot", "ablate"]  # no salient heads, no contexts: the other rows are not candidates
    assert rows["zero-shot"].worst_group_accuracy == 0.0 and rows["zero-shot"].accuracy == pytest.approx(6 / 8)
    assert rows["ablate"].accuracy == 1.0 and rows["ablate"].worst_group_accuracy == 1.0
    assert sel.chosen == "ablate" and sel.options == {"ablate": True, "project": False, "classifier": "zeroshot"}


def test_the_test_split_is_never_read_for_the_choice(clip):
    """On this test split zero-shot ties with ablate (every image has place == label) and so would win; the choice
    is the val one all the same, with any test cache or none. A val cache of the test split is refused."""
    val = val_cache(clip)
    plan = plan_of(val)
    easy = lab_cache(clip, "test", [0, 1, 0, 1], [0, 1, 0, 1])
    assert Criterion().choose(select_correction(easy.__class__(**{**easy.__dict__, "split": "val"}), plan, val,
                                                clip).val) == "zero-shot"
    chosen = {select_correction(val, plan, val, clip, test=t).chosen for t in (None, easy, val_cache(clip, "test"))}
    assert chosen == {"ablate"}
    sel = select_correction(val, plan, val, clip, test=easy)
    assert [r.method for r in sel.test] == [r.method for r in sel.val] and len(sel.rows()) == 4
    with pytest.raises(ClipDebiasError, match="is a TEST split; select chooses on a validation split"):
        select_correction(val_cache(clip, "test"), plan, val, clip)


def test_cli_select_builds_the_winner_with_the_plans_model(clip, tmp_path: Path):
    """No --model: the plan's recorded model (random init here, so --random-weights is implied). The default contexts
    add the PerceptionCLIP row; 'ablate' is right on every val image and comes first. The JSON holds the val rows,
    then the test rows, and the choice; the model folder holds the chosen edits."""
    from clip_debias.toolchain.cli.app import app
    from clip_debias.toolchain.correct.classifier import DebiasedClassifier

    val = val_cache(clip)
    save_cache(tmp_path / "val.safetensors", val)
    save_cache(tmp_path / "test.safetensors", val_cache(clip, "test"))
    plan = plan_of(val)
    plan.cache_path = str(tmp_path / "val.safetensors")
    plan.save(tmp_path / "plan.json")
    torch.manual_seed(0)
    res = CliRunner().invoke(app, ["select", "--plan", str(tmp_path / "plan.json"), "--val",
                                   str(tmp_path / "val.safetensors"), "--test", str(tmp_path / "test.safetensors"),
                                   "--out", str(tmp_path / "model"), "--json", str(tmp_path / "select.json")])
    assert res.exit_code == 0, res.output
    assert "selected: ablate (best val worst-group accuracy (ties: average))" in res.stdout
    assert "recorded in" in res.output and "RANDOM weights" in res.output
    doc = json.loads((tmp_path / "select.json").read_text())
    assert doc["selected"] == "ablate"
    assert [r["method"] for r in doc["rows"]] == [f"{m} [{s}]" for s in ("val", "test")
                                                  for m in ("zero-shot", "ablate", "PerceptionCLIP")]
    model = DebiasedClassifier.load(tmp_path / "model")
    assert model.spec.ablated == [list(SPURIOUS)] and model.spec.salient == []
    assert model.spec.plan["calibration"]["split"] == "val"
