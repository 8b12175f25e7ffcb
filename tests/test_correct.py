"""Correct: the baked DebiasedClassifier equals the same edits on cached terms; plain CLIP without edits; bad plans
refused; build / evaluate --compare CLI smoke."""

from __future__ import annotations
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clip_debias.toolchain.correct.build import BuildOptions, build_classifier, make_edits, make_head
from clip_debias.toolchain.correct.classifier import DebiasedClassifier
from clip_debias.toolchain.prompts.defaults import attribute_pairs_for, contexts_for
from clip_debias.toolchain.decompose.cache import DecompositionCache, save_cache
from clip_debias.toolchain.decompose.contributions import Decomposer
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.evaluate import compare_methods
from clip_debias.toolchain.locate.ltc import HeadScore, LocatePlan, locate_terms
from clip_debias.toolchain.models.loading import ModelIdentity, load_clip
from clip_debias.toolchain.prompts.text import class_text_matrix
from clip_debias.toolchain.models.tower import ExplicitViT

CLASSES = ["landbird", "waterbird"]
GROUPS = ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]


@pytest.fixture(scope="module")
def clip():
    return load_clip("clipdebias-tiny", random_weights=True)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def decomposed(clip, images: torch.Tensor, layers: list[int], split: str = "train",
               convention: str = "textspan") -> DecompositionCache:
    """A cache of ``images`` through the tiny model; labels/attributes fixed so group counts are imbalanced."""
    hc = Decomposer(ExplicitViT.from_open_clip(clip.model.visual), layers, convention)(images)
    n = images.shape[0]
    labels = torch.tensor([i % 2 for i in range(n)])
    attrs = labels.clone()
    attrs[:4] = 1 - attrs[:4]
    return DecompositionCache(hc.heads, hc.rest, labels, 2 * labels + attrs, layers, clip.identity, "waterbirds",
                              split, CLASSES, GROUPS, attrs, ["land", "water"], convention=convention)


def plan_with(cache: DecompositionCache, spurious: list[list[int]], salient: list[list[int]]) -> LocatePlan:
    """A real plan of ``cache`` whose heads are replaced by the given ones."""
    text = torch.eye(2, cache.heads.shape[-1])
    plan = locate_terms(cache, text, templates=["a photo of a {}."])
    plan.spurious = [HeadScore(h, 0.5, 0.0, 0.5) for h in spurious]
    plan.salient = [HeadScore(h, 0.0, 0.5, 0.5) for h in salient]
    return plan


@pytest.fixture(scope="module")
def cache(clip, images):
    return decomposed(clip, images, [1, 2, 3])


@pytest.fixture(scope="module")
def options() -> BuildOptions:
    return BuildOptions(attribute_pairs=attribute_pairs_for("defaults", "waterbirds"),
                        contexts=contexts_for("defaults", "waterbirds"))


@pytest.mark.parametrize("classifier", ["zeroshot", "perception"])
@pytest.mark.parametrize("renorm,convention", [("stepwise", "textspan"), ("keep", "textspan"),
                                               ("unit-once", "textspan"), ("stepwise", "centred")])
def test_baked_equals_cached_edits(clip, images, cache, options, classifier, renorm, convention):
    if convention != "textspan":
        cache = decomposed(clip, images, [1, 2, 3], convention=convention)
    plan = plan_with(cache, [[3, 1], [2, 0]], [[3, 2], [1, 3]])
    opts = replace(options, classifier=classifier, renorm=renorm)
    model = build_classifier(plan, cache, clip, opts)
    assert model.spec.convention == convention and model.spec.renorm == renorm
    assert model.spec.ablated == [[3, 1], [2, 0]] and model.spec.salient == [[3, 2], [1, 3]]
    assert model.spec.plan["calibration"]["split"] == "train" and not model.spec.plan["test_calibration"]
    with torch.no_grad():
        logits, e = model(images)
        e_cached = make_edits(plan, cache, clip, opts).apply(cache)
        logits_cached = make_head(clip, CLASSES, plan.templates, opts)(e_cached)
    assert (e - e_cached).abs().max() <= 1e-5
    assert (logits - logits_cached).abs().max() <= 1e-5
    assert (e - cache.embeddings()).abs().max() > 1e-3  # the edits did something


def test_no_edits_equals_plain_open_clip(clip, images, cache, options):
    model = build_classifier(plan_with(cache, [], []), cache, clip, options)
    with torch.no_grad():
        logits, e = model(images)
        img = clip.model.encode_image(images, normalize=True)
        txt = clip.model.encode_text(clip.tokenizer([f"a photo of a {c}." for c in CLASSES]), normalize=True)
        ref = clip.model.logit_scale.exp() * img @ txt.T
    assert (e - img).abs().max() <= 1e-5
    assert (logits - ref).abs().max() <= 1e-5


def test_saved_perception_model_reloads(clip, images, cache, options, tmp_path: Path):
    plan = plan_with(cache, [[3, 1]], [[2, 2]])
    model = build_classifier(plan, cache, clip, replace(options, classifier="perception", z_from="class-free"))
    again = DebiasedClassifier.load(model.save(tmp_path / "m"))
    with torch.no_grad():
        want, got = model(images)[0], again(images)[0]
    # the same float32 arithmetic; reloaded weights sit at other addresses, and oneDNN/MKL may then pick another
    # summation order: allow a few float32 ulps of the largest logit (a full test run once saw > 1e-6 absolute)
    assert (want - got).abs().max() <= 8 * torch.finfo(torch.float32).eps * max(1.0, float(want.abs().max()))
    assert again.head.kind == "perception" and again.head.z_from == "class-free"


def test_legacy_model_config_loads_with_its_meaning(clip, images, cache, options, tmp_path: Path):
    """A config.json written before conventions and the renorm rename: renorm 'unit' computes unit-once and the
    terms are centred (what those models computed); unknown values are refused with the file and field."""
    centred = decomposed(clip, images, [1, 2, 3], convention="centred")
    plan = plan_with(centred, [[3, 1]], [[2, 2]])
    model = build_classifier(plan, centred, clip, replace(options, renorm="unit-once"))
    path = model.save(tmp_path / "m")
    raw = json.loads((path / "config.json").read_text())
    raw["renorm"] = "unit"
    raw.pop("convention")
    (path / "config.json").write_text(json.dumps(raw))
    again = DebiasedClassifier.load(path)
    assert again.renorm == "unit-once" and again.spec.convention == "centred"
    with torch.no_grad():
        assert (again(images)[0] - model(images)[0]).abs().max() <= 1e-5
    raw["convention"] = "paper"
    (path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ClipDebiasError, match="config.json: field 'convention': expected one of 'textspan' or"):
        DebiasedClassifier.load(path)


def test_plan_and_cache_conventions_must_match(clip, images, cache, options):
    centred = decomposed(clip, images, [1, 2, 3], convention="centred")
    plan = plan_with(cache, [[3, 1]], [])  # located on textspan terms
    with pytest.raises(ClipDebiasError, match="calibration cache waterbirds/train holds 'centred' terms, the plan was "
                                              "located on 'textspan' terms"):
        build_classifier(plan, centred, clip, options)
    with pytest.raises(ClipDebiasError, match="cache waterbirds/train holds 'centred' terms"):
        compare_methods(centred, plan, cache, clip, attribute_pairs=options.attribute_pairs)


def test_bad_plans_are_refused(clip, images, cache, options):
    with pytest.raises(ClipDebiasError, match=r"head \[4, 0\] is out of range .*4 layers x 4 heads"):
        build_classifier(plan_with(cache, [[4, 0]], []), cache, clip, options)
    with pytest.raises(ClipDebiasError, match=r"head \[3, 7\] is out of range"):
        build_classifier(plan_with(cache, [], [[3, 7]]), cache, clip, options)
    other = plan_with(cache, [[3, 1]], [])
    other.identity = ModelIdentity("ViT-B-16", pretrained="openai").to_dict()
    with pytest.raises(ClipDebiasError,
                       match="plan comes from ViT-B-16 \\(openai\\), but the model is clipdebias-tiny"):
        build_classifier(other, cache, clip, options)
    narrow = decomposed(clip, images[:4], [3])
    with pytest.raises(ClipDebiasError, match=r"layers \[2\] of the plan's heads are not in the cache"):
        build_classifier(plan_with(cache, [[2, 0]], []), narrow, clip, options)
    with pytest.raises(ClipDebiasError, match="no attribute pairs"):
        build_classifier(plan_with(cache, [], [[3, 2]]), cache, clip, replace(options, attribute_pairs=None))


def test_test_calibration_needs_the_flag_and_is_recorded(clip, images, cache, options):
    test_cache = decomposed(clip, images, [1, 2, 3], split="test")
    plan = plan_with(cache, [[3, 1]], [])
    with pytest.raises(ClipDebiasError, match="--allow-test-calibration"):
        build_classifier(plan, test_cache, clip, options)
    model = build_classifier(plan, test_cache, clip, replace(options, allow_test_calibration=True))
    assert model.spec.plan["test_calibration"] is True


def test_compare_rows_use_the_same_edits(clip, images, cache, options):
    plan = plan_with(cache, [[3, 1]], [[2, 2]])
    rows = compare_methods(cache, plan, cache, clip, contexts=options.contexts, attribute_pairs=options.attribute_pairs)
    assert [r.method for r in rows] == [
        "zero-shot", "ablate", "ablate + project, stepwise renorm", "ablate + project, keep norm", "PerceptionCLIP",
        "ablate + project, stepwise renorm + PerceptionCLIP", "ablate + project, keep norm + PerceptionCLIP"]
    for i, renorm in ((2, "stepwise"), (3, "keep")):
        model = build_classifier(plan, cache, clip, replace(options, renorm=renorm))
        with torch.no_grad():
            logits = model(images)[0]
        assert (logits - rows[i].logits).abs().max() <= 1e-4
        assert rows[i].report.accuracy == pytest.approx(float((logits.argmax(-1) == cache.labels).float().mean()))
    assert rows[0].report.accuracy == pytest.approx(float(
        ((cache.embeddings() @ class_text_matrix(clip, CLASSES).T).argmax(-1) == cache.labels).float().mean()))


def test_compare_rows_carry_the_bias_metrics_of_their_logits(clip, images, cache, options):
    """Each row's bias metrics are ``runtime.metrics.bias_metrics`` of that row's logits (here: the baked LTC
    model's logits on the images), with the cache's attribute table, pairs and protected attribute."""
    import dataclasses

    from clip_debias.runtime.metrics import AttributeColumn, BiasInputs, bias_metrics
    from runtime_fixtures import assert_close_tree

    pairs = torch.tensor([0, 1, 2, -1, 0, 1, 2, -1, 3, -1, 3, -1])  # pair 3: the same place on both images
    with_meta = replace(cache, attribute_table=cache.attributes[:, None], attribute_columns=["place"],
                        attribute_values=[["land", "water"]], pairs=pairs, protected="place")
    plan = plan_with(cache, [[3, 1]], [[2, 2]])
    rows = compare_methods(with_meta, plan, cache, clip, contexts=options.contexts,
                           attribute_pairs=options.attribute_pairs, protected="place")
    with torch.no_grad():
        logits = build_classifier(plan, cache, clip, options)(images)[0].double().numpy()
    place = AttributeColumn("place", cache.attributes.numpy(), ("land", "water"))
    expected = bias_metrics(logits, cache.labels.numpy(), BiasInputs(CLASSES, place, None, pairs.numpy(),
                                                                     missing={"shortcut_gaps": "x"}))
    got = rows[2].bias
    assert got.counterfactual.pairs == 3 and got.counterfactual.excluded["not_protected"] == 1
    for name in ("counterfactual", "skew", "parity"):
        assert_close_tree(dataclasses.asdict(getattr(expected, name)), dataclasses.asdict(getattr(got, name)))
    assert "two spurious attributes" in got.not_computed["shortcut_gaps"]


def cli_build(cache: DecompositionCache, spurious: list[list[int]], salient: list[list[int]], model: str,
              tmp_path: Path):
    """``clip-debias build`` (PerceptionCLIP head, random weights) from a plan of ``cache`` saved with it in
    ``tmp_path``; the model goes to ``tmp_path / "model"``. Returns the CLI result (exit code checked)."""
    from clip_debias.toolchain.cli.app import app

    save_cache(tmp_path / "train.safetensors", cache)
    plan = plan_with(cache, spurious, salient)
    plan.cache_path = str(tmp_path / "train.safetensors")
    plan.save(tmp_path / "plan.json")
    res = CliRunner().invoke(app, ["build", "--plan", str(tmp_path / "plan.json"), "--model", model,
                                   "--random-weights", "--classifier", "perception", "--out", str(tmp_path / "model")])
    assert res.exit_code == 0, res.output
    return res


def test_cli_build_and_compare(clip, images, cache, tmp_path: Path):
    from clip_debias.toolchain.cli.app import app

    res = cli_build(cache, [[3, 1]], [[2, 2]], "clipdebias-tiny", tmp_path)
    runner = CliRunner()
    assert "ablation means from waterbirds/train" in res.output
    model = DebiasedClassifier.load(tmp_path / "model")
    assert model.spec.ablated == [[3, 1]] and model.spec.plan["calibration"]["n"] == len(cache)
    res = runner.invoke(app, ["evaluate", "--compare", "--model", "clipdebias-tiny", "--random-weights",
                              "--plan", str(tmp_path / "plan.json"),
                              "--cache", str(tmp_path / "train.safetensors"), "--json", str(tmp_path / "cmp.json")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "cmp.json").read_text())["rows"]
    assert len(rows) == 7 and {"accuracy", "worst_group_accuracy", "groups"} <= set(rows[0])
    # through a pipe (CliRunner: not a terminal) every group and method name is whole, each row on one line
    assert "…" not in res.stdout and res.stdout.endswith(f"wrote {tmp_path / 'cmp.json'}\n")
    for r in rows:
        assert any(line.startswith(f"│ {r['method']} ") for line in res.stdout.splitlines()), r["method"]
    for g in ("landbird/land", "landbird/water", "waterbird/land", "waterbird/water"):
        assert f"{g} (n=" in res.stdout


def test_compare_table_is_readable_at_any_width(clip, cache):
    """print_reports on a narrow terminal folds cells (nothing cut, no '…'); through a pipe it keeps its natural
    width (one line per method)."""
    import io

    from rich.console import Console

    from clip_debias.runtime.tables import PIPE_WIDTH
    from clip_debias.toolchain.evaluate import print_reports

    rows = compare_methods(cache, plan_with(cache, [[3, 1]], [[2, 2]]), cache, clip,
                           attribute_pairs=[("a photo of water", "a photo of land")])
    for width in (40, 60, 80):
        out = io.StringIO()
        print_reports(rows, Console(file=out, width=width, force_terminal=True, color_system=None))
        text = out.getvalue()
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= width  # folded, not cut
        assert text.count("\n") > len(rows) + 4  # rows wrapped onto more lines
    piped = io.StringIO()
    print_reports(rows, Console(file=piped, width=PIPE_WIDTH))
    lines = piped.getvalue().splitlines()
    import re

    tables = piped.getvalue().count("┏")  # the accuracy table, and the bias table when the rows carry metrics
    assert tables >= 1
    assert all(sum(bool(re.match(rf"│ {re.escape(m.method)} +│", line)) for line in lines) == tables for m in rows)


def test_cli_evaluate_on_a_csv_dataset(clip, cache, tmp_path: Path):
    """evaluate MODEL_DIR and evaluate --compare --dataset csv both run on images on disk and agree on zero-shot."""
    from PIL import Image

    from clip_debias.toolchain.cli.app import app

    rows = ["path,label,group,split"]
    g = torch.Generator().manual_seed(1)
    for i in range(6):
        pixels = torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8, generator=g).numpy()
        Image.fromarray(pixels).save(tmp_path / f"im{i}.png")
        rows.append(f"im{i}.png,{i % 2},{2 * (i % 2) + (i // 3)},test")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    plan = plan_with(cache, [], [])
    plan.save(tmp_path / "plan.json")
    runner = CliRunner()
    torch.manual_seed(0)  # random-init weights: each CLI call loads the model anew, with the same seed they agree
    res = runner.invoke(app, ["build", "--plan", str(tmp_path / "plan.json"), "--model", "clipdebias-tiny",
                              "--random-weights", "--out", str(tmp_path / "model")])
    assert res.exit_code == 0, res.output
    data = ["--dataset", "csv", "--data", str(tmp_path / "data.csv"), "--split", "test", "--classes",
            "landbird,waterbird"]
    res = runner.invoke(app, ["evaluate", str(tmp_path / "model"), *data, "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    torch.manual_seed(0)
    res = runner.invoke(app, ["evaluate", "--compare", "--model", "clipdebias-tiny", "--random-weights",
                              "--plan", str(tmp_path / "plan.json"),
                              *data, "--contexts", "waterbirds", "--json", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    single = json.loads((tmp_path / "m.json").read_text())["rows"][0]
    compared = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert single["groups"] == compared[0]["groups"] and sum(v["n"] for v in single["groups"].values()) == 6
