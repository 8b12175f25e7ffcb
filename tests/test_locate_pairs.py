"""``locate --from-pairs``: the pair change equals a float64 transcription of mean |d(x) - d(x')| on hand-built terms;
a head planted to carry the attribute is found without group labels; pairs count as the flip rate counts them; one
line for a cache without pairs and for options that do not apply."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clip_debias.toolchain.decompose.cache import DecompositionCache, save_cache
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.locate.ltc import LocatePlan
from clip_debias.toolchain.locate.pairs import locate_pairs_terms
from clip_debias.toolchain.models.loading import ModelIdentity

LAYERS, H, D = [2, 3], 3, 5
IDENTITY = ModelIdentity("clipdebias-tiny")
PLANTED = (3, 1)  # the head whose term moves with the attribute


def pair_cache(seed: int = 0, classes: int = 3, n_pairs: int = 12, protected: bool = True,
               noise: float = 0.6) -> DecompositionCache:
    """``n_pairs`` pairs (2 rows each, same class) plus 3 unpaired rows. Attribute a (0/1) flips within a pair except in
    the last pair; head PLANTED adds 1.5 a * (t_0 - t_1) to its term; every term also has noise."""
    g = torch.Generator().manual_seed(seed)
    n = 2 * n_pairs + 3
    labels = torch.tensor([(i // 2) % classes for i in range(2 * n_pairs)] + [0, 1, 2][:3])
    attrs = torch.tensor([i % 2 for i in range(2 * n_pairs)] + [0, 1, 0])
    attrs[2 * n_pairs - 1] = attrs[2 * n_pairs - 2]  # the last pair: the same attribute on both images
    pairs = torch.tensor([i // 2 for i in range(2 * n_pairs)] + [-1, -1, -1])
    heads = noise * torch.randn(n, len(LAYERS), H, D, generator=g, dtype=torch.float64).float()
    text = torch.eye(classes, D)
    heads[:, LAYERS.index(PLANTED[0]), PLANTED[1]] += 1.5 * attrs[:, None].float() * (text[0] - text[1])
    rest = 0.2 * torch.randn(n, D, generator=g)
    return DecompositionCache(heads, rest, labels, labels, LAYERS, IDENTITY, "csv", "test",
                              [f"c{i}" for i in range(classes)], [f"c{i}" for i in range(classes)],
                              attribute_table=attrs[:, None], attribute_columns=["a"], attribute_values=[["0", "1"]],
                              pairs=pairs, protected="a" if protected else None)


def direct_change(cache: DecompositionCache, text: torch.Tensor, counted: list[tuple[int, int]]) -> np.ndarray:
    """|c(x).(t_y - t_r) - c(x').(t_y - t_r)| [P, L, H] in float64, written out pair by pair."""
    heads = cache.heads.tensor().double().numpy()
    emb = cache.embeddings().double().numpy()
    t = text.double().numpy()
    out = []
    for i, j in counted:
        y = int(cache.labels[i])
        mean = (emb[i] @ t.T + emb[j] @ t.T) / 2
        r = max((c for c in range(t.shape[0]) if c != y), key=lambda c: mean[c])
        out.append(np.abs(heads[i] @ (t[y] - t[r]) - heads[j] @ (t[y] - t[r])))
    return np.stack(out)


@pytest.mark.parametrize("classes", [2, 3])
def test_pair_change_equals_direct_computation(classes):
    cache = pair_cache(classes=classes)
    text = torch.eye(classes, D)
    plan = locate_pairs_terms(cache, text)
    counted = [(2 * p, 2 * p + 1) for p in range(11)]  # pair 11 has the same attribute on both images
    delta = direct_change(cache, text, counted)
    assert np.allclose(np.array(plan.pair_change_grid), delta.mean(axis=0), atol=1e-6)
    votes = np.zeros(delta.shape[1:])
    for pair in delta:  # the head whose margin moves most, per pair
        votes[np.unravel_index(pair.argmax(), pair.shape)] += 1 / len(delta)
    assert np.allclose(np.array(plan.n_wrong_grid), votes) and not np.any(plan.n_correct_grid)
    assert plan.n_pairs == 11 and "1 with the same a" in plan.minority_note
    k = int((votes > 0).sum())
    chosen = sorted(((LAYERS[i], j) for i, j in zip(*np.nonzero(votes > 1 / k))),
                    key=lambda h: (-votes[LAYERS.index(h[0]), h[1]], h))
    assert k > 1 and plan.threshold == pytest.approx(1 / k)  # the noise wins a few pairs
    assert [tuple(s.head) for s in plan.spurious] == chosen == [PLANTED]  # the planted head moves most within pairs
    assert plan.spurious[0].pair_change == pytest.approx(delta.mean(axis=0)[LAYERS.index(PLANTED[0]), PLANTED[1]])
    assert plan.method == "pairs" and plan.salient == [] and plan.k == k
    everything = locate_pairs_terms(pair_cache(classes=classes, protected=False), text)
    assert everything.n_pairs == 12  # without a protected attribute every complete pair counts


def test_one_head_winning_every_pair_is_kept():
    """K = 1 (one head moves most in every pair): n_P = 1 is not > 1/K, but that head is the answer."""
    plan = locate_pairs_terms(pair_cache(noise=0.01), torch.eye(3, D))  # noise far below the planted change
    assert plan.k == 1 and [tuple(s.head) for s in plan.spurious] == [PLANTED]


def test_pairs_plan_roundtrip_and_cap(tmp_path):
    plan = locate_pairs_terms(pair_cache(), torch.eye(3, D), max_spurious=0)
    assert plan.spurious == []
    plan = locate_pairs_terms(pair_cache(), torch.eye(3, D))
    plan.save(tmp_path / "plan.json")
    back = LocatePlan.load(tmp_path / "plan.json")
    assert back.method == "pairs" and back.pair_change_grid == plan.pair_change_grid
    assert back.spurious[0].pair_change == pytest.approx(plan.spurious[0].pair_change)
    data = json.loads((tmp_path / "plan.json").read_text())
    data["salient"] = data["spurious"]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ClipDebiasError, match="field 'salient': a pairs plan has no salient heads"):
        LocatePlan.load(tmp_path / "bad.json")


def test_cache_without_pairs_is_refused():
    cache = pair_cache()
    cache.pairs = None
    with pytest.raises(ClipDebiasError, match="--from-pairs: cache csv/test has no counterfactual pairs"):
        locate_pairs_terms(cache, torch.eye(3, D))
    odd = pair_cache()
    odd.labels[1] = 2  # pair 0 with two labels
    with pytest.raises(ClipDebiasError, match="pair 0 has two labels"):
        locate_pairs_terms(odd, torch.eye(3, D))


def _cli(*args):
    from clip_debias.toolchain.cli.app import app

    return CliRunner().invoke(app, ["locate", *map(str, args)])


def test_cli_from_pairs(tmp_path, tiny_clip):
    """On a tiny random model's cache (its own D): the plan is written with its heat map; options that need groups
    are refused in one line."""
    d = tiny_clip.model.visual.output_dim
    g = torch.Generator().manual_seed(1)
    base = pair_cache()
    cache = DecompositionCache(torch.randn(len(base), 2, 4, d, generator=g), torch.randn(len(base), d, generator=g),
                               base.labels, base.groups, [2, 3], tiny_clip.identity, "csv", "test", base.class_names,
                               base.group_names, attribute_table=base.attribute_table, attribute_columns=["a"],
                               attribute_values=[["0", "1"]], pairs=base.pairs, protected="a")
    save_cache(tmp_path / "pairs.safetensors", cache)
    common = [tmp_path / "pairs.safetensors", "--model", "clipdebias-tiny", "--random-weights", "--from-pairs"]
    res = _cli(*common, "--out", tmp_path / "plan.json")
    assert res.exit_code == 0, res.output
    assert "located from pairs" in res.output and (tmp_path / "plan.png").is_file()
    assert LocatePlan.load(tmp_path / "plan.json").n_pairs == 11
    bad = _cli(*common, "--max-salient", "1", "--out", tmp_path / "p2.json")
    lines = [ln for ln in bad.output.splitlines() if ln.strip()]
    assert bad.exit_code == 2 and len(lines) == 1 and "--max-salient: not with --from-pairs" in lines[0]
