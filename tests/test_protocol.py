"""The reference protocol reproduces the published LTC pipeline: on hand-built caches it selects exactly the heads
and gives exactly the logits of a float64 transcription of the steps (issue 13); RoboShot's stepwise accept step
equals a hand loop; what the reference protocol does not do is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clip_debias.toolchain.correct.build import BuildOptions, build_classifier
from clip_debias.toolchain.prompts.defaults import attribute_pairs_for, known_minority_groups
from clip_debias.toolchain.correct.edits import orthonormal_basis, project_salient
from clip_debias.toolchain.decompose.cache import DecompositionCache, save_cache
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.evaluate import compare_methods
from clip_debias.toolchain.locate.ltc import LocatePlan, locate_cache

CLASSES = ["landbird", "waterbird"]
GROUPS = ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
SPURIOUS, SALIENT = (3, 2), (2, 1)  # planted; the transcription must find them on its own


def class_text(clip) -> torch.Tensor:
    """T [C, D]: unit-norm embeddings of 'a photo of a {class}.' (the waterbirds default template)."""
    with torch.no_grad():
        return clip.encode_text([f"a photo of a {c}." for c in CLASSES], normalize=True).double()


def hand_built(clip, split: str, seed: int, n_major: int = 30, n_wrong: int = 8, n_right: int = 6,
               layers: list[int] | None = None) -> DecompositionCache:
    """A cache of every layer of the tiny model (4 x 4 heads, D = 32), TextSpan terms by declaration: noise in every
    head; majority images' class evidence in ``rest``; on the minority groups (1, 2), head SPURIOUS pushes the wrong
    ones to the other class and head SALIENT the right ones to their own."""
    t = class_text(clip).float()
    g = torch.Generator().manual_seed(seed)
    rows = []
    for y in (0, 1):
        rows += [(y, y, "major")] * n_major + [(y, 1 - y, "wrong")] * n_wrong + [(y, 1 - y, "right")] * n_right
    n = len(rows)
    heads = 0.02 * torch.randn(n, 4, 4, 32, generator=g)
    rest = 0.05 * torch.randn(n, 32, generator=g)
    for i, (y, a, kind) in enumerate(rows):
        rest[i] += 0.6 * (t[y] - t[1 - y])
        if kind == "wrong":
            heads[i, SPURIOUS[0], SPURIOUS[1]] += 1.5 * (t[1 - y] - t[y])
        elif kind == "right":
            heads[i, SALIENT[0], SALIENT[1]] += 0.6 * (t[y] - t[1 - y])
    labels = torch.tensor([r[0] for r in rows])
    attrs = torch.tensor([r[1] for r in rows])
    keep = layers if layers is not None else [0, 1, 2, 3]
    return DecompositionCache(heads[:, keep], rest, labels, 2 * labels + attrs, keep, clip.identity, "waterbirds",
                              split, CLASSES, GROUPS, attrs, ["land", "water"], convention="textspan", tower_layers=4)


# ---- the transcription (float64 numpy; written from the steps of issue 13, not from our modules) ----------------

def reference_locate(cache: DecompositionCache, text: np.ndarray, minority: list[int]) -> tuple[list, list]:
    """(spurious, salient) absolute heads: margins of every head of every layer toward (prediction - other class),
    the top-1 head's counts on the minority groups' wrong (W) and right (C) images, K = heads with any count,
    spurious = n_W - n_C > 1/K and salient = n_C - n_W > 1/K, each sorted by the difference."""
    c = cache.heads.tensor().double().numpy()  # [N, L, H, D]
    n, n_l, n_h, _ = c.shape
    e = c.sum(axis=(1, 2)) + cache.rest.double().numpy()
    logits = e @ text.T
    pred = logits.argmax(axis=1)
    labels = cache.labels.numpy()
    other = np.where(pred == labels, np.argsort(-logits, axis=1)[:, 1], labels)
    head_logits = c @ text.T  # [N, L, H, C]
    diff = head_logits[np.arange(n), :, :, pred] - head_logits[np.arange(n), :, :, other]  # [N, L, H]
    in_minority = np.isin(cache.groups.numpy(), minority)
    counts = {}
    for name, mask in (("W", in_minority & (pred != labels)), ("C", in_minority & (pred == labels))):
        top = diff[mask].reshape(int(mask.sum()), -1).argmax(axis=1)
        counts[name] = np.bincount(top, minlength=n_l * n_h) / max(int(mask.sum()), 1)
    k = int(((counts["W"] > 0) | (counts["C"] > 0)).sum())

    def pick(values: np.ndarray) -> list[tuple[int, int]]:
        idx = [i for i in np.argsort(-values, kind="stable") if values[i] > 1.0 / k]
        return [(cache.layers[i // n_h], i % n_h) for i in idx]

    return pick(counts["W"] - counts["C"]), pick(counts["C"] - counts["W"])


def reference_correct(cache: DecompositionCache, spurious: list, salient: list, pairs_raw: np.ndarray) -> np.ndarray:
    """e' [N, D]: spurious heads replaced by their mean over the evaluated split itself; each salient head's terms,
    for each row u of Q^T (QR of the unnormalized pair differences): c <- c + cos(c, u) u / ||u||, c <- c / ||c||;
    then the sum of all terms (the reference takes the argmax of e' @ T^T)."""
    c = cache.heads.tensor().double().numpy().copy()
    row = {layer: i for i, layer in enumerate(cache.layers)}
    for l, h in spurious:
        c[:, row[l], h] = c[:, row[l], h].mean(axis=0)
    q, _ = np.linalg.qr((pairs_raw[:, 0] - pairs_raw[:, 1]).T)
    for l, h in salient:
        terms = c[:, row[l], h]
        for u in q.T:
            cos = terms @ u / (np.linalg.norm(terms, axis=1) * np.linalg.norm(u))
            terms = terms + cos[:, None] * u[None] / np.linalg.norm(u)
            terms = terms / np.linalg.norm(terms, axis=1, keepdims=True)
        c[:, row[l], h] = terms
    return c.sum(axis=(1, 2)) + cache.rest.double().numpy()


@pytest.fixture(scope="module")
def setting(tiny_clip):
    train, test = hand_built(tiny_clip, "train", 0), hand_built(tiny_clip, "test", 1, n_major=12)
    pairs = attribute_pairs_for("defaults", "waterbirds")
    with torch.no_grad():
        raw = np.stack([tiny_clip.encode_text(list(p), normalize=False).double().numpy() for p in pairs])  # [K, 2, D]
    return train, test, pairs, raw


def test_reference_protocol_selects_the_transcribed_heads_and_logits(tiny_clip, setting):
    train, test, pairs, raw = setting
    text = class_text(tiny_clip).numpy()
    spurious, salient = reference_locate(train, text, known_minority_groups("waterbirds"))
    assert spurious == [SPURIOUS] and salient == [SALIENT]  # the planted heads: the test is not vacuous

    plan = locate_cache(train, tiny_clip, protocol="reference")
    assert plan.spurious_heads() == spurious and plan.salient_heads() == salient
    assert plan.protocol == "reference" and plan.minority_groups == [1, 2] and plan.minority_source == "defaults"
    assert plan.layers == [0, 1, 2, 3] and plan.all_layers and plan.convention == "textspan"

    rows = {r.method: r for r in compare_methods(test, plan, None, tiny_clip, attribute_pairs=pairs,
                                                 protocol="reference", renorms=("stepwise",))}
    scale = float(tiny_clip.model.logit_scale.detach().exp())
    for method, edits in (("ablate", (spurious, [])), ("ablate + project, stepwise renorm", (spurious, salient))):
        e = reference_correct(test, *edits, raw)
        want = e @ text.T  # the reference's logits
        got = rows[method].logits.double().numpy()
        # ours divides e' by its norm (one positive factor per image) and scales by CLIP's logit scale
        assert np.abs(got - scale * want / np.linalg.norm(e, axis=1, keepdims=True)).max() <= 1e-4
        assert (got.argmax(1) == want.argmax(1)).all()
        assert rows[method].report.accuracy == pytest.approx((want.argmax(1) == test.labels.numpy()).mean())
    # the projection did something, and the default protocol (means from a calibration split) differs
    assert np.abs(rows["ablate"].logits.numpy() - rows["ablate + project, stepwise renorm"].logits.numpy()).max() > 1e-3
    default = {r.method: r for r in compare_methods(test, plan, train, tiny_clip, attribute_pairs=pairs,
                                                    renorms=("stepwise",))}
    assert (default["ablate"].logits - rows["ablate"].logits).abs().max() > 1e-4


def test_reference_build_is_marked_transductive(tiny_clip, setting):
    train, test, pairs, _ = setting
    plan = locate_cache(train, tiny_clip, protocol="reference")
    model = build_classifier(plan, test, tiny_clip, BuildOptions(attribute_pairs=pairs, protocol="reference"))
    assert model.spec.plan["transductive"] and "TRANSDUCTIVE" in model.spec.plan["note"]
    assert model.spec.plan["protocol"] == "reference" and model.spec.renorm == "stepwise"
    assert model.spec.plan["options"]["pair_embeddings"] == "raw" and model.spec.convention == "textspan"
    with pytest.raises(ClipDebiasError, match="--renorm keep: --protocol reference renormalizes stepwise"):
        build_classifier(plan, test, tiny_clip, BuildOptions(attribute_pairs=pairs, protocol="reference",
                                                             renorm="keep"))
    with pytest.raises(ClipDebiasError, match="--pair-embeddings unit: --protocol reference takes the accept"):
        build_classifier(plan, test, tiny_clip, BuildOptions(attribute_pairs=pairs, protocol="reference",
                                                             pair_embeddings="unit"))
    default_plan = locate_cache(train, tiny_clip)
    with pytest.raises(ClipDebiasError, match="was located with the default protocol; --protocol reference needs"):
        build_classifier(default_plan, test, tiny_clip, BuildOptions(attribute_pairs=pairs, protocol="reference"))
    deployable = build_classifier(default_plan, train, tiny_clip, BuildOptions(attribute_pairs=pairs))
    assert not deployable.spec.plan["transductive"] and deployable.spec.plan["options"]["pair_embeddings"] == "unit"


def test_reference_locate_refuses_what_the_reference_does_not_do(tiny_clip, setting):
    train, test, _, _ = setting
    with pytest.raises(ClipDebiasError, match="cache waterbirds/test: --protocol reference locates on the train split"):
        locate_cache(test, tiny_clip, protocol="reference")
    partial = hand_built(tiny_clip, "train", 0, layers=[2, 3])
    with pytest.raises(ClipDebiasError, match=r"holds layers \[2, 3\] of 4 \(decompose with --layers all\)"):
        locate_cache(partial, tiny_clip, protocol="reference")
    train.convention = "centred"
    try:
        with pytest.raises(ClipDebiasError, match="needs TextSpan-convention terms, the located cache holds 'centred'"):
            locate_cache(train, tiny_clip, protocol="reference")
    finally:
        train.convention = "textspan"
    with pytest.raises(ClipDebiasError, match="--max-spurious: not part of --protocol reference"):
        locate_cache(train, tiny_clip, protocol="reference", max_spurious=1)
    with pytest.raises(ClipDebiasError, match="--attribute-prompts: not part of --protocol reference"):
        locate_cache(train, tiny_clip, protocol="reference", attribute_prompts=(["land", "water"], [["a"], ["b"]]))
    with pytest.raises(ClipDebiasError, match=r"--minority-groups 1: --protocol reference uses the dataset's default "
                                              r"minority groups \[1, 2\]"):
        locate_cache(train, tiny_clip, protocol="reference", minority_groups=[1])
    assert locate_cache(train, tiny_clip, protocol="reference", minority_groups=[2, 1]).minority_groups == [1, 2]


# ---- RoboShot's accept step ------------------------------------------------------------------------------------

@pytest.mark.parametrize("renorm", ["stepwise", "keep", "unit-once"])
def test_projection_equals_a_hand_loop(renorm):
    rng = np.random.default_rng(0)
    c0 = rng.normal(size=(5, 3, 16)) * 0.05  # small head terms, as in a real model
    v = rng.normal(size=(4, 16))
    q, _ = np.linalg.qr(v.T)
    want = np.empty_like(c0)
    for i in np.ndindex(c0.shape[:2]):
        c = c0[i]
        for u in q.T:  # the hand loop
            c = c + (c @ u) / (np.linalg.norm(c) * np.linalg.norm(u)) * u / np.linalg.norm(u)
            if renorm == "stepwise":
                c = c / np.linalg.norm(c)
        if renorm == "unit-once":
            c = c / np.linalg.norm(c)
        elif renorm == "keep":
            c = c / np.linalg.norm(c) * np.linalg.norm(c0[i])
        want[i] = c
    basis = orthonormal_basis(torch.from_numpy(v))
    got = project_salient(torch.from_numpy(c0), basis, renorm).numpy()
    assert np.abs(got - want).max() <= 1e-12
    assert not np.allclose(want, project_salient(torch.from_numpy(c0), basis, "stepwise" if renorm != "stepwise"
                                                  else "unit-once").numpy())


# ---- the CLI ------------------------------------------------------------------------------------------------------

def _error(res) -> str:
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def test_cli_reference_protocol(tmp_path: Path, tiny_clip, setting):
    from clip_debias.toolchain.cli.app import app

    train, test, pairs, raw = setting
    save_cache(tmp_path / "train.safetensors", train)
    save_cache(tmp_path / "test.safetensors", test)
    runner = CliRunner()
    model = ["--model", "clipdebias-tiny", "--random-weights"]
    torch.manual_seed(0)  # random-init weights: with the fixture's seed, each CLI call loads the fixture's model
    res = runner.invoke(app, ["locate", str(tmp_path / "train.safetensors"), *model, "--out",
                              str(tmp_path / "plan.json"), "--protocol", "reference"])
    assert res.exit_code == 0, res.output
    assert "reference protocol, textspan terms" in res.output and "note: scored" not in res.output
    plan = LocatePlan.load(tmp_path / "plan.json")
    text = class_text(tiny_clip).numpy()
    spurious, salient = reference_locate(train, text, [1, 2])
    assert plan.spurious_heads() == spurious and plan.salient_heads() == salient
    torch.manual_seed(0)
    res = runner.invoke(app, ["evaluate", "--compare", *model, "--plan", str(tmp_path / "plan.json"), "--cache",
                              str(tmp_path / "test.safetensors"), "--protocol", "reference", "--json",
                              str(tmp_path / "cmp.json")])
    assert res.exit_code == 0, res.output
    assert "ablation means from waterbirds/test itself" in res.output and "TRANSDUCTIVE" in res.output
    doc = json.loads((tmp_path / "cmp.json").read_text())
    assert doc["protocol"] == "reference" and doc["transductive"] is True
    rows = {r["method"]: r for r in doc["rows"]}
    e = reference_correct(test, spurious, salient, raw)
    want = ((e @ text.T).argmax(1) == test.labels.numpy()).mean()
    assert rows["ablate + project, stepwise renorm"]["accuracy"] == pytest.approx(want)

    res = runner.invoke(app, ["evaluate", "--compare", *model, "--plan", str(tmp_path / "plan.json"), "--cache",
                              str(tmp_path / "test.safetensors"), "--protocol", "reference", "--calibration",
                              str(tmp_path / "train.safetensors")])
    assert _error(res).startswith("error: --calibration: --protocol reference takes the ablation means from the "
                                  "evaluated split itself")
    out = tmp_path / "model"
    res = runner.invoke(app, ["build", "--plan", str(tmp_path / "plan.json"), *model, "--out", str(out),
                              "--protocol", "reference"])
    assert _error(res).startswith("error: --protocol reference takes the ablation means from the evaluated split "
                                  "itself: pass --calibration")
    torch.manual_seed(0)
    res = runner.invoke(app, ["build", "--plan", str(tmp_path / "plan.json"), *model, "--out", str(out),
                              "--protocol", "reference", "--calibration", str(tmp_path / "test.safetensors")])
    assert res.exit_code == 0, res.output
    assert "WARNING: TRANSDUCTIVE" in res.output and "not a deployable model" in res.output
    assert json.loads((out / "config.json").read_text())["plan"]["transductive"] is True
    res = runner.invoke(app, ["locate", str(tmp_path / "test.safetensors"), *model, "--out",
                              str(tmp_path / "p2.json"), "--protocol", "reference"])
    assert "locates on the train split, this cache is 'test'" in _error(res)
    res = runner.invoke(app, ["evaluate", str(out), "--dataset", "csv", "--data", str(tmp_path), "--split", "test",
                              "--protocol", "reference"])
    assert _error(res).startswith("error: --protocol reference: only with --compare")


def test_every_protocol_is_one_policy():
    """Each ``--protocol`` value has one ``ProtocolPolicy``, and no module outside ``toolchain/protocol.py`` compares
    a name with "reference": they ask its policy."""
    import re

    from clip_debias.toolchain.choices import Protocol
    from clip_debias.toolchain.protocol import POLICIES, policy

    assert tuple(POLICIES) == Protocol.values()
    default, reference = policy("default"), policy(Protocol.REFERENCE)
    assert (default.transductive, reference.transductive) == (False, True)
    assert (default.note, reference.locate_split, default.locate_split) == (None, "train", None)
    assert (default.resolve_pair_embeddings(None), reference.resolve_pair_embeddings(None)) == ("unit", "raw")
    assert (default.means_from("test", "val"), reference.means_from("test", "val")) == ("val", "test")
    assert default.resolve_renorm("keep") == "keep"
    with pytest.raises(ClipDebiasError, match="--protocol 'x': expected one of default, reference"):
        policy("x")
    root = Path(__file__).resolve().parents[1]
    compared = re.compile(r"""[!=]= *["']reference["']|["']reference["'] *[!=]=""")
    hits = [f"{p.relative_to(root)}:{i}" for d in ("runtime", "toolchain", "exporters", "serving")
            for p in sorted((root / d).rglob("*.py")) if p.name != "protocol.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if compared.search(line)]
    assert hits == []
