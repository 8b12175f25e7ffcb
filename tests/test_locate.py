"""Locate: planted spurious/salient heads on hand-built terms, minority groups, predicted groups, plan I/O, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from toolchain.decompose.cache import DecompositionCache, save_cache
from toolchain.errors import ClipDebiasError
from toolchain.locate.groups import minority_from_counts
from toolchain.locate.heatmap import save_heatmap
from toolchain.locate.ltc import LocatePlan, locate_terms, select_heads
from toolchain.models.loading import ModelIdentity

LAYERS = [6, 7]  # absolute indices of the cached layers
SPURIOUS, SALIENT = (7, 2), (6, 1)
D = 6
IDENTITY = ModelIdentity("clipdebias-tiny")
GROUP_NAMES = ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]


def unit(i: int) -> torch.Tensor:
    return torch.eye(D)[i]


def planted_cache(n_major: int = 20, n_wrong: int = 6, n_right: int = 4, seed: int = 0) -> DecompositionCache:
    """Two classes (text t_y = e_y), attribute a along e_{2+a} in ``rest``; group = 2y + a.

    Majority images (a = y): class evidence in ``rest``, right. Minority (a != y): the wrong ones get 2 t_{1-y} from
    head SPURIOUS (so it has the largest margin toward the wrong prediction), the right ones 2 t_y from head SALIENT.
    Every other head holds small noise."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for y in (0, 1):
        rows += [(y, y, "major")] * n_major + [(y, 1 - y, "wrong")] * n_wrong + [(y, 1 - y, "right")] * n_right
    heads = 0.01 * torch.randn(len(rows), len(LAYERS), 3, D, generator=g)
    rest = torch.zeros(len(rows), D)
    for i, (y, a, kind) in enumerate(rows):
        rest[i] = 0.5 * unit(y) + 0.5 * unit(2 + a)
        if kind == "wrong":
            heads[i, LAYERS.index(SPURIOUS[0]), SPURIOUS[1]] += 2 * unit(1 - y)
        elif kind == "right":
            heads[i, LAYERS.index(SALIENT[0]), SALIENT[1]] += 2 * unit(y)
    labels = torch.tensor([r[0] for r in rows])
    attrs = torch.tensor([r[1] for r in rows])
    return DecompositionCache(heads, rest, labels, 2 * labels + attrs, LAYERS, IDENTITY, "waterbirds", "train",
                              ["landbird", "waterbird"], GROUP_NAMES, attrs, ["land", "water"])


TEXT = torch.stack([unit(0), unit(1)])


def test_planted_heads_are_found_exactly():
    plan = locate_terms(planted_cache(), TEXT)
    assert [s.head for s in plan.spurious] == [list(SPURIOUS)]
    assert [s.head for s in plan.salient] == [list(SALIENT)]
    assert plan.k == 2 and plan.threshold == pytest.approx(0.5)
    assert plan.minority_groups == [1, 2] and plan.minority_source == "counts"
    assert (plan.n_wrong, plan.n_correct, plan.n_minority) == (12, 8, 20)
    assert plan.spurious[0].n_wrong == 1.0 and plan.spurious[0].n_correct == 0.0
    assert plan.layers == LAYERS


def test_predicted_groups_give_the_same_plan():
    cache = planted_cache()
    cache.groups = torch.zeros_like(cache.groups)  # no usable group labels
    attribute_text = torch.stack([unit(2), unit(3)])
    plan = locate_terms(cache, TEXT, attribute_text=attribute_text, attribute_names=["land", "water"])
    assert plan.group_source == "predicted"
    assert plan.minority_group_names == ["landbird/water", "waterbird/land"]
    assert [s.head for s in plan.spurious] == [list(SPURIOUS)] and [s.head for s in plan.salient] == [list(SALIENT)]


def test_minority_sources_and_caps():
    cache = planted_cache()
    by_pred = locate_terms(cache, TEXT, minority_from="predictions")
    assert by_pred.minority_groups == [1, 2] and by_pred.minority_source == "predictions"
    user = locate_terms(cache, TEXT, minority_groups=[1])
    assert user.minority_groups == [1] and user.minority_source == "user"
    capped = locate_terms(cache, TEXT, max_spurious=0, max_salient=0)
    assert capped.spurious == [] and capped.salient == []


def test_balanced_counts_are_refused_with_a_clear_line():
    cache = planted_cache(n_major=10, n_wrong=6, n_right=4)  # 10 vs 10 per class
    with pytest.raises(ClipDebiasError, match="balanced within every class.*--minority-groups"):
        locate_terms(cache, TEXT)
    known = locate_terms(cache, TEXT, known_minority=[1, 2])  # a shipped dataset's train-split minority groups
    assert known.minority_groups == [1, 2] and known.minority_source == "defaults"
    with pytest.raises(ClipDebiasError, match="not in the split"):
        locate_terms(cache, TEXT, minority_groups=[7])


def test_select_heads_threshold_and_order():
    n_w = torch.tensor([[0.5, 0.0, 0.3], [0.2, 0.0, 0.0]])
    n_c = torch.tensor([[0.0, 0.0, 0.1], [0.1, 0.8, 0.0]])
    spurious, salient, k, thr = select_heads(n_w, n_c, [10, 11])
    assert k == 4 and thr == 0.25
    assert [s.head for s in spurious] == [[10, 0]]  # 0.5 > 0.25; 0.2 and 0.1 are not
    assert [s.head for s in salient] == [[11, 1]]


def test_counts_helper_names_majorities():
    labels = torch.tensor([0] * 9 + [0] + [1] * 2 + [1] * 8)
    groups = torch.tensor([0] * 9 + [1] + [2] * 2 + [3] * 8)
    choice = minority_from_counts(labels, groups, GROUP_NAMES)
    assert choice.groups == [1, 2] and choice.names == ["landbird/water", "waterbird/land"]


def test_plan_roundtrip_and_heatmap(tmp_path: Path):
    plan = locate_terms(planted_cache(), TEXT, templates=["a photo of a {}."])
    path = plan.save(tmp_path / "plan.json")
    again = LocatePlan.load(path)
    assert again == plan
    png = save_heatmap(again, tmp_path / "plan.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    raw = json.loads(path.read_text())
    assert raw["spurious"][0]["head"] == list(SPURIOUS) and {"n_wrong", "n_correct", "score"} <= set(raw["spurious"][0])
    (tmp_path / "bad.json").write_text(json.dumps({"spurious": []}))
    with pytest.raises(ClipDebiasError, match="bad.json: malformed plan"):
        LocatePlan.load(tmp_path / "bad.json")


def test_cli_locate_smoke_and_identity_refusal(tmp_path: Path):
    from toolchain.cli.app import app

    cache = planted_cache()
    # hand-built terms live in D=6; the tiny model's text is D=32: give the CLI a cache of the model's width
    cache.heads = torch.nn.functional.pad(cache.heads, (0, 32 - D))
    cache.rest = torch.nn.functional.pad(cache.rest, (0, 32 - D))
    save_cache(tmp_path / "train.safetensors", cache)
    runner = CliRunner()
    out = tmp_path / "plan.json"
    args = ["locate", str(tmp_path / "train.safetensors"), "--model", "clipdebias-tiny", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert out.is_file() and (tmp_path / "plan.png").is_file()
    plan = LocatePlan.load(out)
    assert plan.minority_groups == [1, 2] and plan.cache_path.endswith("train.safetensors")
    assert plan.templates == ["a photo of a {}."]  # waterbirds defaults
    res = runner.invoke(app, ["locate", str(tmp_path / "train.safetensors"), "--model", "clipdebias-tiny-ls",
                              "--out", str(out)])
    assert res.exit_code == 2
    assert "comes from clipdebias-tiny (random init), but the model is clipdebias-tiny-ls" in res.output
