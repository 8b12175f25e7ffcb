"""Build, export, runtime and verify for timm towers (open_clip ``TimmModel``): the lab-map model (timm ViT, MAP
pool) and ``clipdebias-tiny-eva`` (EVA02's block in miniature: rotary embeddings, SwiGLU, scale-attn-inner norm),
random weights with random non-zero biases and norm weights.

The baked edits equal the same edits on the decomposition's cached terms; without edits the classifier's embedding is
open_clip's ``encode_image``; the ONNX graph (MAP pool and rotary embeddings in it) equals torch; a saved model reloads;
``verify`` runs on the artifact; a token heat map through a MAP pool is refused in one line."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from clip_debias.exporters.onnx_export import export_onnx
from clip_debias.runtime.verify import verify
from clip_debias.toolchain.correct.build import BuildOptions, build_classifier, make_edits, make_head
from clip_debias.toolchain.correct.classifier import DebiasedClassifier, plain_classifier
from clip_debias.toolchain.decompose.cache import DecompositionCache
from clip_debias.toolchain.decompose.towers import decomposer_for
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.loading import load_clip
from clip_debias.toolchain.models.timm_tower import TimmTower
from clip_debias.toolchain.prompts.defaults import attribute_pairs_for, contexts_for
from runtime_fixtures import build_csv_dataset
from test_export import assert_parity, edited_classifier
from test_correct import CLASSES, GROUPS, cli_build, plan_with
from test_timm_towers import randomize

MODELS = {"clipdebias-lab-map": [[5, 1], [3, 0]], "clipdebias-tiny-eva": [[1, 1], [0, 0]]}  # -> heads to ablate
SALIENT = {"clipdebias-lab-map": [[5, 2], [4, 3]], "clipdebias-tiny-eva": [[1, 2], [0, 3]]}


@pytest.fixture(scope="module", params=list(MODELS))
def clip(request):
    c = load_clip(request.param, random_weights=True)
    randomize(c.model, seed=3)
    return c


def images(clip, n: int = 8) -> torch.Tensor:
    size = clip.model.visual.image_size
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(0))


def decomposed(clip, x: torch.Tensor, convention: str) -> DecompositionCache:
    """A cache of ``x`` over every layer (labels and attributes fixed, groups imbalanced), as ``decompose`` stores."""
    layers = list(range(clip.tower.layers))
    hc = decomposer_for(clip.tower, layers, convention)(x)
    labels = torch.tensor([i % 2 for i in range(x.shape[0])])
    attrs = labels.clone()
    attrs[:3] = 1 - attrs[:3]
    return DecompositionCache(hc.heads, hc.rest, labels, 2 * labels + attrs, layers, clip.identity, "waterbirds",
                              "train", CLASSES, GROUPS, attrs, ["land", "water"], convention=convention)


def name_of(clip) -> str:
    return clip.identity.name


@pytest.mark.parametrize("classifier,convention", [("zeroshot", "textspan"), ("perception", "centred")])
def test_baked_equals_cached_edits(clip, classifier, convention):
    x = images(clip)
    cache = decomposed(clip, x, convention)
    plan = plan_with(cache, MODELS[name_of(clip)], SALIENT[name_of(clip)])
    opts = BuildOptions(attribute_pairs=attribute_pairs_for("defaults", "waterbirds"),
                        contexts=contexts_for("defaults", "waterbirds"), classifier=classifier)
    model = build_classifier(plan, cache, clip, opts)
    assert isinstance(model.tower, TimmTower) and model.spec.tower["timm"] == name_of(clip)
    with torch.no_grad():
        logits, e = model(x)
        e_cached = make_edits(plan, cache, clip, opts).apply(cache)
        logits_cached = make_head(clip, CLASSES, plan.templates, opts)(e_cached)
    assert (e - e_cached).abs().max() <= 1e-6  # unit vectors: relative to the embedding
    assert (logits - logits_cached).abs().max() <= 1e-6 * max(1.0, float(logits_cached.abs().max()))
    assert (e - cache.embeddings()).abs().max() > 1e-3  # the edits did something


def test_no_edits_is_open_clips_embedding_and_reloads(clip, tmp_path):
    model = plain_classifier(clip, CLASSES)
    x = images(clip, 3)
    with torch.no_grad():
        y = clip.model.encode_image(x)
        _, e = model(x)
    assert (e - y / y.norm(dim=-1, keepdim=True)).abs().max() <= 1e-6
    edited = edited_classifier(clip, MODELS[name_of(clip)], SALIENT[name_of(clip)])
    again = DebiasedClassifier.load(edited.save(tmp_path / "model"))
    with torch.no_grad():
        for a, b in zip(edited(x), again(x)):
            assert (a - b).abs().max() <= 1e-6 * max(1.0, float(a.abs().max()))  # same weights, fp32 rounding


def test_onnx_equals_torch_and_verify_runs(clip, tmp_path):
    """fp32, fp16 and int8 graphs pass export's parity gates; fp32 graph vs torch logits <= 1e-4 (relative to the largest logit) at batch 1 and 5, edits baked in; then
    ``verify`` on the artifact over a tiny csv dataset agrees with the torch model on the same preprocessed pixels."""
    model = edited_classifier(clip, MODELS[name_of(clip)], SALIENT[name_of(clip)])
    art = export_onnx(model, tmp_path / "art", precision="fp32,fp16,int8", ort_optimize=False)  # each gated
    assert_parity(model, art / "model.onnx", batches=(1, 5))
    import onnx

    ops = [n.op_type for n in onnx.load(str(art / "model.int8.onnx")).graph.node]
    per_block = {"clipdebias-lab-map": 4, "clipdebias-tiny-eva": 7}[name_of(clip)]  # qkv|q,k,v; proj; fc1|fc1_g,x; fc2
    assert ops.count("MatMulInteger") == per_block * clip.tower.layers  # every block linear, nothing else
    names = tuple(model.spec.class_names)
    data = build_csv_dataset(tmp_path / "d", names, n=6, split="val")
    r = verify(art, "csv", tmp_path / "d", "val", device="cpu", batch_size=4, progress=False)
    from clip_debias.runtime import load

    pixels = load(art).preprocessor.batch([im.path for im in data if im.split == "val"])
    with torch.no_grad():
        pred = model(torch.from_numpy(pixels))[0].argmax(dim=-1).numpy()
    labels = np.array([im.label for im in data if im.split == "val"])
    assert r.n == 6 and r.accuracy == pytest.approx(float((pred == labels).mean()))


def test_token_heat_map_drawn_for_a_class_token_and_refused_through_a_map_pool(clip, tmp_path):
    """tiny-eva (class token): the heat map is drawn and its tokens sum to the heads' terms along the text; lab-map
    (MAP pool): refused in one line saying why."""
    from PIL import Image

    from clip_debias.toolchain.explain.tokens import explain_image

    Image.new("RGB", (40, 30), (200, 30, 60)).save(tmp_path / "a.png")
    if clip.tower.kind == "token":
        path, total, prefix = explain_image(clip, tmp_path / "a.png", [(1, 0), (0, 2)], "a bird", None,
                                            tmp_path / "heat.png")
        assert path.is_file() and path.stat().st_size > 0 and abs(total) > 0 and abs(prefix) <= abs(total) + 1
        return
    with pytest.raises(ClipDebiasError) as e:
        explain_image(clip, tmp_path / "a.png", [(1, 0)], "a bird", None, tmp_path / "heat.png")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("a token heat map needs a class token's attention over the patches")
    assert clip.tower.readout in msg and "attention pool" in msg and not (tmp_path / "heat.png").exists()


def test_cli_build_export_verify_lab_map(tmp_path):
    """The commands, end to end on the MAP tower: build (ablation + projection, PerceptionCLIP head) from a plan and
    its cache, export onnx (gated), verify on a csv dataset (exit 0: no thresholds)."""
    from typer.testing import CliRunner

    from clip_debias.toolchain.cli.app import app

    clip = load_clip("clipdebias-lab-map", random_weights=True)
    cli_build(decomposed(clip, images(clip), "textspan"), [[5, 1]], [[4, 2]], "clipdebias-lab-map", tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["export", "onnx", str(tmp_path / "model"), "--out", str(tmp_path / "art"),
                              "--no-ort-optimize"])
    assert res.exit_code == 0, res.output
    build_csv_dataset(tmp_path / "d", tuple(CLASSES), n=4, split="val")
    res = runner.invoke(app, ["verify", str(tmp_path / "art"), "--dataset", "csv", "--data", str(tmp_path / "d"),
                              "--split", "val"])
    assert res.exit_code == 0, res.output
