"""Locate: planted spurious/salient heads on hand-built terms, minority groups, predicted groups, plan I/O, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clip_debias.toolchain.decompose.cache import DecompositionCache, save_cache
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.locate.groups import minority_from_counts
from clip_debias.toolchain.locate.heatmap import save_heatmap
from clip_debias.toolchain.locate.ltc import LocatePlan, locate_terms, select_heads
from clip_debias.toolchain.models.loading import ModelIdentity

LAYERS = [6, 7]  # absolute indices of the cached layers
SPURIOUS, SALIENT = (7, 2), (6, 1)
D = 6
IDENTITY = ModelIdentity("clipdebias-tiny")
GROUP_NAMES = ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]


def unit(i: int) -> torch.Tensor:
    return torch.eye(D)[i]


def planted_cache(n_major: int = 20, n_wrong: int = 6, n_right: int = 4, seed: int = 0,
                  width: int = D) -> DecompositionCache:
    """Two classes (text t_y = e_y), attribute a along e_{2+a} in ``rest``; group = 2y + a; terms padded with zeros
    to ``width`` dimensions.

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
    pad = lambda t: torch.nn.functional.pad(t, (0, width - D))  # noqa: E731
    return DecompositionCache(pad(heads), pad(rest), labels, 2 * labels + attrs, LAYERS, IDENTITY, "waterbirds",
                              "train", ["landbird", "waterbird"], GROUP_NAMES, attrs, ["land", "water"])


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
    with pytest.raises(ClipDebiasError, match=r"--minority-groups include group\(s\) 7, which have no image there "
                                              r"\(groups with images: 0 \("):
        locate_terms(cache, TEXT, minority_groups=[7])


def test_shipped_minority_groups_only_for_their_four_groups():
    """Waterbirds' shipped minority ids are of group = 2y + place; on 8-group data (the two-shortcut lab's
    4y + 2place + object) they would name other groups, so balanced counts are refused there instead."""
    from clip_debias.toolchain.prompts.defaults import known_minority_groups

    assert known_minority_groups("waterbirds") == known_minority_groups("waterbirds", 4) == [1, 2]
    assert known_minority_groups("waterbirds", 8) is None


def test_an_empty_default_minority_group_is_named_as_such():
    """Issue 16 item 8: when the dataset's default minority groups (used because the counts are balanced) include a
    group with no image in the split, the error names those defaults and the cache, not --minority-groups (which the
    user never passed)."""
    cache = planted_cache(n_major=10, n_wrong=6, n_right=4)
    with pytest.raises(ClipDebiasError) as e:
        locate_terms(cache, TEXT, known_minority=[1, 5])
    msg = str(e.value)
    assert msg.startswith(f"{cache.dataset}/{cache.split} cache (labels groups): the dataset's default minority groups")
    assert "include group(s) 5, which have no image there" in msg and "--minority-groups" not in msg


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
    assert "source" not in raw and again.source == str(path)  # where it came from is known, never saved
    (tmp_path / "bad.json").write_text(json.dumps({"spurious": []}))
    with pytest.raises(ClipDebiasError, match="bad.json: field 'salient': missing"):
        LocatePlan.load(tmp_path / "bad.json")


HEADS = "{head, n_wrong, n_correct, score, pair_change}"
BAD_PLANS = [  # (edit of a good plan's JSON, the error after 'PATH: ')
    (lambda p: p["spurious"].extend([p["spurious"][0], [6, 0]]),
     f"field 'spurious[2]': expected an object {HEADS}, got [6, 0]"),
    (lambda p: p["spurious"][0].pop("score"), "field 'spurious[0].score': missing (expected a number)"),
    (lambda p: p.pop("spurious"), f"field 'spurious': missing (expected a list of objects {HEADS})"),
    (lambda p: p["salient"][0].update(head=[6]), "field 'salient[0].head': expected a [layer, head] pair (two "
                                                 "integers), got [6]"),
    (lambda p: p["salient"][0].update(head=[6, True]), "field 'salient[0].head[1]': expected an integer, got true"),
    (lambda p: p["spurious"][0].update(score="high"), "field 'spurious[0].score': expected a number, got the string "
                                                      '"high"'),
    (lambda p: p["spurious"][0].update(extra=1), "field 'spurious[0].extra': unknown field (allowed: head, n_wrong, "
                                                 "n_correct, score, pair_change)"),
    (lambda p: p.update(k="2"), "field 'k': expected an integer, got the string \"2\""),
    (lambda p: p.update(k=2.0), "field 'k': expected an integer, got the number 2.0"),
    (lambda p: p.update(layers=[6, "7"]), "field 'layers[1]': expected an integer, got the string \"7\""),
    (lambda p: p.update(identity=None), "field 'identity': expected an object {name, pretrained, weights_sha256, "
                                        "weights_file}, got null"),
    (lambda p: p["identity"].update(name=7), "field 'identity.name': expected a string, got the number 7"),
    (lambda p: p.update(max_salient=1.5), "field 'max_salient': expected an integer or null, got the number 1.5"),
    (lambda p: p.update(surprise=1), "field 'surprise': unknown field (not part of a plan written by 'clip-debias "
                                     "locate')"),
    (lambda p: p.update(source="elsewhere.json"), "field 'source': unknown field (not part of a plan written by "
                                                  "'clip-debias locate')"),
    (lambda p: p["n_wrong_grid"].pop(), "field 'n_wrong_grid': expected 2 rows (one per entry of 'layers') of 3 "
                                        "numbers ('n_heads'), got 1 row"),
    (lambda p: p["n_correct_grid"][1].pop(), "field 'n_correct_grid': expected 2 rows (one per entry of 'layers') "
                                             "of 3 numbers ('n_heads'), got 2 numbers in row 1"),
    (lambda p: p.update(format=3), "field 'format': is 3, expected 2"),
    (lambda p: p.update(format=1), "field 'format': is 1, expected 2 (a plan of an earlier clip-debias: locate again)"),
    (lambda p: p.update(convention="paper"), "field 'convention': expected one of 'textspan' or 'centred', got the "
                                                'string "paper"'),
    (lambda p: p.update(protocol=None), "field 'protocol': expected one of 'default' or 'reference', got null"),
    (lambda p: p.update(protocol="exact"), "field 'protocol': expected one of 'default' or 'reference', got the "
                                                  'string "exact"'),
    (lambda p: p.pop("convention"), "field 'convention': missing (expected one of 'textspan', 'centred')"),
    (lambda p: p["spurious"][0].update(head=[9, 0]), "field 'spurious[0].head': [9, 0] is not in the plan's grid "
                                                     "(layers [6, 7] x 3 heads)"),
    (lambda p: p["salient"][0].update(head=[6, 3]), "field 'salient[0].head': [6, 3] is not in the plan's grid "
                                                    "(layers [6, 7] x 3 heads)"),
    (lambda p: p["salient"].append(dict(p["spurious"][0])),
     "field 'salient[1].head': [7, 2] is also spurious ('spurious[0]'); a head is either ablated (spurious) or "
     "projected (salient), not both"),
    (lambda p: p["spurious"].append(dict(p["spurious"][0])),
     "field 'spurious[1].head': [7, 2] is listed twice (also 'spurious[0]'); each head once per list"),
    (lambda p: p["salient"].extend([{**p["salient"][0], "head": [7, 0]}, dict(p["salient"][0])]),
     "field 'salient[2].head': [6, 1] is listed twice (also 'salient[0]'); each head once per list"),
]


@pytest.mark.parametrize("edit,message", BAD_PLANS)
def test_plan_errors_name_the_file_and_field(tmp_path: Path, edit, message):
    raw = json.loads(locate_terms(planted_cache(), TEXT).save(tmp_path / "good.json").read_text())
    edit(raw)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ClipDebiasError) as e:
        LocatePlan.load(path)
    assert str(e.value) == f"{path}: {message}"


def test_overlap_and_duplicates_refused_in_built_plans():
    from clip_debias.toolchain.locate.ltc import HeadScore, check_plan_heads

    plan = locate_terms(planted_cache(), TEXT)
    plan.salient.append(HeadScore(list(SPURIOUS), 0.0, 0.0, 0.0))
    with pytest.raises(ClipDebiasError) as e:
        check_plan_heads(plan)
    assert str(e.value) == ("plan: field 'salient[1].head': [7, 2] is also spurious ('spurious[0]'); a head is either "
                            "ablated (spurious) or projected (salient), not both")


def test_cli_locate_smoke_and_identity_refusal(tmp_path: Path):
    from clip_debias.toolchain.cli.app import app

    cache = planted_cache(width=32)  # hand-built terms live in D=6; the tiny model's text is D=32
    save_cache(tmp_path / "train.safetensors", cache)
    runner = CliRunner()
    out = tmp_path / "plan.json"
    args = ["locate", str(tmp_path / "train.safetensors"), "--model", "clipdebias-tiny", "--random-weights",
            "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert out.is_file() and (tmp_path / "plan.png").is_file()
    plan = LocatePlan.load(out)
    assert plan.minority_groups == [1, 2] and plan.cache_path.endswith("train.safetensors")
    assert plan.templates == ["a photo of a {}."]  # waterbirds defaults
    res = runner.invoke(app, ["locate", str(tmp_path / "train.safetensors"), "--model", "clipdebias-tiny-ls",
                              "--random-weights", "--out", str(out)])
    assert res.exit_code == 2
    assert "comes from clipdebias-tiny (random init), but the model is clipdebias-tiny-ls" in res.output


def _tiny_plan(tmp_path: Path) -> tuple[Path, Path]:
    """(plan.json located by the CLI on a planted cache of the tiny model's width and layers, that cache)."""
    from clip_debias.toolchain.cli.app import app

    cache = planted_cache(width=32)
    cache.layers = [2, 3]  # inside the tiny model's 4 layers
    save_cache(tmp_path / "train.safetensors", cache)
    cache.dataset = "csv"  # a dataset without shipped attribute pairs
    save_cache(tmp_path / "csv.safetensors", cache)
    out = tmp_path / "plan.json"
    res = CliRunner().invoke(app, ["locate", str(tmp_path / "train.safetensors"), "--model", "clipdebias-tiny",
                                   "--random-weights", "--out", str(out)])
    assert res.exit_code == 0, res.output
    raw = json.loads(out.read_text())  # the random-init text tower picks its own heads: pin one of each
    raw["spurious"] = [{"head": [3, 2], "n_wrong": 0.5, "n_correct": 0.0, "score": 0.5}]
    raw["salient"] = [{"head": [2, 1], "n_wrong": 0.0, "n_correct": 0.5, "score": 0.5}]
    out.write_text(json.dumps(raw))
    return out, tmp_path / "train.safetensors"


def _error_line(res) -> str:
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def test_cli_build_names_a_moved_calibration_cache(tmp_path: Path):
    from clip_debias.toolchain.cli.app import app

    plan, cache = _tiny_plan(tmp_path)
    cache.rename(tmp_path / "moved.safetensors")
    runner = CliRunner()
    res = runner.invoke(app, ["build", "--plan", str(plan), "--model", "clipdebias-tiny", "--random-weights",
                              "--out", str(tmp_path / "m")])
    assert _error_line(res) == (f"error: {plan} records calibration cache {cache}, which does not exist; pass "
                                "--calibration CACHE, or --no-ablate")
    res = runner.invoke(app, ["evaluate", "--compare", "--plan", str(plan), "--model", "clipdebias-tiny",
                              "--random-weights", "--cache", str(tmp_path / "csv.safetensors")])
    assert _error_line(res) == (f"error: {plan} records calibration cache {cache}, which does not exist; pass "
                                "--calibration CACHE")
    res = runner.invoke(app, ["build", "--plan", str(plan), "--model", "clipdebias-tiny", "--random-weights",
                              "--out", str(tmp_path / "m"),
                              "--calibration", str(tmp_path / "moved.safetensors")])
    assert res.exit_code == 0, res.output


def test_cli_evaluate_compare_advice_names_its_own_options(tmp_path: Path):
    from clip_debias.toolchain.cli.app import app

    plan, cache = _tiny_plan(tmp_path)
    res = CliRunner().invoke(app, ["evaluate", "--compare", "--plan", str(plan), "--model", "clipdebias-tiny",
                                   "--random-weights", "--cache", str(tmp_path / "csv.safetensors")])
    assert _error_line(res) == ("error: the plan has 1 salient head(s) to project but no attribute pairs were given "
                                "(--attribute-pairs FILE; the 'ablate + project' rows need them)")
    pairs = tmp_path / "pairs.yaml"
    pairs.write_text("attribute_pairs:\n  - [a photo of water, a photo of land]\n")
    res = CliRunner().invoke(app, ["evaluate", "--compare", "--plan", str(plan), "--model", "clipdebias-tiny",
                                   "--random-weights", "--cache", str(tmp_path / "csv.safetensors"),
                                   "--attribute-pairs", str(pairs)])
    assert res.exit_code == 0, res.output


def test_cli_locate_with_defaults_scores_every_layer(tmp_path: Path):
    """decompose and locate with their defaults: every layer of the tower is decomposed, scored and recorded in the
    plan; a cache of fewer layers is located too, with a note that the published method scores them all."""
    from PIL import Image

    from clip_debias.toolchain.cli.app import app

    rows = ["path,label,group,split"]
    g = torch.Generator().manual_seed(3)
    for i in range(12):
        y, a = i % 2, int(i % 4 == 1 or i % 4 == 2)  # groups 2y + a: 1 and 2 are the minority (3 of 12 images)
        Image.fromarray(torch.randint(0, 256, (36, 36, 3), dtype=torch.uint8, generator=g).numpy()).save(
            tmp_path / f"im{i}.png")
        rows.append(f"im{i}.png,{y},{2 * y + a},train")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    runner = CliRunner()
    data = ["--dataset", "csv", "--data", str(tmp_path / "data.csv"), "--split", "train", "--classes",
            "landbird,waterbird"]
    for name, extra in (("all", []), ("last2", ["--layers", "2"])):
        torch.manual_seed(0)
        res = runner.invoke(app, ["decompose", "--model", "clipdebias-tiny", "--random-weights", *data, "--out",
                                  str(tmp_path / f"{name}.safetensors"), *extra])
        assert res.exit_code == 0, res.output
        torch.manual_seed(0)
        res = runner.invoke(app, ["locate", str(tmp_path / f"{name}.safetensors"), "--model", "clipdebias-tiny",
                                  "--random-weights",
                                  "--out", str(tmp_path / f"{name}.json"), "--minority-groups", "1,2"])
        assert res.exit_code == 0, res.output
        plan = LocatePlan.load(tmp_path / f"{name}.json")
        assert plan.convention == "textspan" and plan.protocol == "default" and plan.tower_layers == 4
        if name == "all":
            assert plan.layers == [0, 1, 2, 3] and plan.all_layers and "note: scored" not in res.output
            assert len(plan.n_wrong_grid) == 4 and plan.k >= 1
        else:
            assert plan.layers == [2, 3] and not plan.all_layers
            assert "note: scored the heads of layers [2, 3] of 4 only" in res.output
