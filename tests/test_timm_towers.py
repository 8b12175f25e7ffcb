"""timm towers (open_clip ``TimmModel``): the per-(layer, head) terms plus the rest sum to ``encode_image``
(normalised and not) for SigLIP, SigLIP2, PE-Core, EVA02, MobileCLIP-B and ViTamin-S; a MAP head term equals a
float64 transcription of its formula; rotary embeddings act on q/k only; unsupported towers are refused in one line.

Real-size configs with random weights (open_clip builds them offline), random non-zero biases and norm weights;
one image each. The random fill replaces the models' own initialisation (skipped while building: most of the time)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from clip_debias.toolchain.decompose.pooled import PooledDecomposer
from clip_debias.toolchain.decompose.towers import decomposer_for
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.adapter import tower_of
from clip_debias.toolchain.models.loading import _SkipRandomInit, register_configs

CONFIGS = {  # config -> readout
    "ViT-B-16-SigLIP": "attention pool (MAP)",
    "ViT-B-16-SigLIP2": "attention pool (MAP)",
    "PE-Core-B-16": "attention pool (MAP)",
    "EVA02-B-16": "class token",
    "MobileCLIP-B": "class token",
    "ViTamin-S": "average pool",  # a timm ViT behind a convolutional stem: the stem is part of the embedding term
    "clipdebias-lab-map": "attention pool (MAP)",  # the lab's SigLIP-layout tower (64 px): no class token
}
TOL = 1e-4  # relative to the embedding norm


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random: weights N(0, 1/fan_in), biases N(0, 0.1^2), norm weights / scales 1 + N(0, 0.1^2),
    tokens and position embeddings N(0, 0.5^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.ndim == 1:
                p.copy_(0.1 * r + (0.0 if name.endswith("bias") else 1.0))
            elif p.ndim > 1:
                p.copy_(0.5 * r if p.shape[0] == 1 else r / math.sqrt(p[0].numel()))
    return model.eval()


_MODELS: dict[str, torch.nn.Module] = {}


def random_model(name: str) -> torch.nn.Module:
    import open_clip

    register_configs()
    if name not in _MODELS:
        with _SkipRandomInit():
            _MODELS[name] = randomize(open_clip.create_model(name, pretrained=None))
    return _MODELS[name]


def image(seed: int = 1, size: int = 224) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_terms_sum_to_encode_image(name):
    model = random_model(name)
    tower = tower_of(model.visual)
    assert tower.readout == CONFIGS[name]
    x = image(size=model.visual.image_size[0])
    with torch.no_grad():
        y = model.encode_image(x)  # open_clip's own forward, unnormalised
    e = y / y.norm(dim=-1, keepdim=True)
    for convention, layers in (("textspan", list(range(tower.layers))), ("centred", [3, tower.layers - 1])):
        hc = decomposer_for(tower, layers, convention)(x)
        assert hc.heads.shape == (1, len(layers), tower.heads, tower.embed_dim)
        total = hc.heads.sum(dim=(1, 2)) + hc.rest
        assert (total - e).norm() <= TOL
        assert (total * y.norm() - y).norm() / y.norm() <= TOL
        assert hc.heads.abs().sum() > 0 and hc.rest.abs().sum() > 0


def _map_term_float64(model: torch.nn.Module, x: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    """TextSpan term of (layer, head) through the MAP pool, transcribed in float64 from the formula with loops over
    the pool heads: sum_h' Wpo[:, h'] Wv_h' sum_j a[h', j] (g * (a_lhj - mu_j / T) / sigma_j + beta / T) through
    the trunk's head, over ||y||; a_lhj = W_p[:, h] o_lhj + b_p / H, a[h', :] the pool's softmax for head h'."""
    m = copy.deepcopy(model).double()
    trunk, seen = m.visual.trunk, {}
    hooks = [trunk.blocks[layer].attn.norm.register_forward_pre_hook(lambda mod, a: seen.__setitem__("o", a[0])),
             trunk.norm.register_forward_pre_hook(lambda mod, a: seen.__setitem__("x", a[0]))]
    with torch.no_grad():
        y = m.encode_image(x.double())
    for hook in hooks:
        hook.remove()
    blk, pool, norm = trunk.blocks[layer], trunk.attn_pool, trunk.norm
    H, W = blk.attn.num_heads, trunk.embed_dim
    dh, T = W // H, (2 * len(trunk.blocks) + 1) * H
    xs = seen["x"][0]  # [N, W]
    mu, sigma = xs.mean(-1), torch.sqrt(xs.var(-1, unbiased=False) + norm.eps)
    n = (xs - mu[:, None]) / sigma[:, None] * norm.weight + norm.bias  # the pool's input tokens
    a_lh = seen["o"][0][:, head * dh:(head + 1) * dh] @ blk.attn.proj.weight[:, head * dh:(head + 1) * dh].T \
        + blk.attn.proj.bias / H  # [N, W]
    share = (a_lh - mu[:, None] / T) / sigma[:, None] * norm.weight + norm.bias / T  # [N, W]
    hp, dp = pool.num_heads, pool.head_dim
    q = pool.q(pool.latent)[0, 0]
    k, wv = pool.kv.weight[:W], pool.kv.weight[W:]
    out = torch.zeros(W, dtype=torch.float64)
    for p in range(hp):
        rows = slice(p * dp, (p + 1) * dp)
        scores = (n @ k[rows].T + pool.kv.bias[:W][rows]) @ q[rows] / math.sqrt(dp)
        attn = scores.softmax(dim=0)  # [N]
        out += pool.proj.weight[:, rows] @ (wv[rows] @ (attn[:, None] * share).sum(0))
    head_map = trunk.head
    term = head_map.weight @ out if isinstance(head_map, torch.nn.Linear) else out
    return term / y.norm()


@pytest.mark.parametrize("name", ["clipdebias-lab-map", "ViT-B-16-SigLIP"])
def test_map_head_term_matches_float64_transcription(name):
    model = random_model(name)
    last = len(model.visual.trunk.blocks) - 1
    x = image(2, model.visual.image_size[0])
    hc = PooledDecomposer(tower_of(model.visual), [1, last], "textspan")(x)
    for i, (layer, head) in enumerate(((1, 0), (last, 3))):
        want = _map_term_float64(model, x, layer, head)
        assert (hc.heads[0, i, head].double() - want).norm() <= TOL


def test_rotary_embeddings_change_only_q_and_k():
    """EVA02 block 0 in float64: timm's attention output equals softmax(rot(q) rot(k)^T / sqrt(Dh)) v projected, with
    v unrotated and the class token's q/k unrotated: everything after the attention weights (what the per-head
    terms read) is the plain attention's."""
    from timm.layers import apply_rot_embed_cat

    trunk = copy.deepcopy(random_model("EVA02-B-16").visual.trunk).double()
    x = torch.randn(1, 197, trunk.embed_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    attn, rope = trunk.blocks[0].attn, trunk.rope.get_embed().double()
    H = attn.num_heads
    q, k, v = (f(x).reshape(1, 197, H, -1).transpose(1, 2) for f in (attn.q_proj, attn.k_proj, attn.v_proj))

    def rot(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t[:, :, :1], apply_rot_embed_cat(t[:, :, 1:], rope)], dim=2)

    weights = (rot(q) @ rot(k).transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    o = (weights @ v).transpose(1, 2).reshape(1, 197, -1)
    want = attn.proj(attn.norm(o))
    with torch.no_grad():
        got = attn(x, rope=rope)
    assert torch.allclose(got, want, atol=1e-10)
    assert not torch.allclose((q @ k.transpose(-2, -1)).softmax(-1), weights)  # the rotation does act on q/k


def _tiny_timm(model_name: str) -> torch.nn.Module:
    from open_clip.timm_model import TimmModel

    with _SkipRandomInit():
        return TimmModel(model_name, embed_dim=32, image_size=224, pool="", proj="linear")


@pytest.mark.parametrize("make, text", [
    (lambda: _tiny_timm("convnext_atto"), "image tower TimmModel with timm trunk ConvNeXt is not supported"),
    (lambda: _tiny_timm("fastvit_t8"), "image tower TimmModel with timm trunk FastVit is not supported"),
])
def test_unsupported_timm_towers_are_refused_in_one_line(make, text):
    with pytest.raises(ClipDebiasError) as e:
        tower_of(make())
    assert str(e.value).startswith(text) and "\n" not in str(e.value)


def test_resnet_tower_is_refused_in_one_line():
    from open_clip.modified_resnet import ModifiedResNet

    with pytest.raises(ClipDebiasError, match="image tower ModifiedResNet is not supported") as e:
        tower_of(ModifiedResNet(layers=[1, 1, 1, 1], output_dim=32, heads=2, image_size=64, width=16))
    assert "\n" not in str(e.value)


def test_lab_map_decomposes_a_dataset_and_refuses_the_explicit_form_in_one_line(tmp_path):
    """Through ``LoadedClip.tower``: a cache of a MAP tower holds terms that sum to its stored embeddings; a step
    that needs the explicit tower (a token heat map; build and export do not: tests/test_timm_build.py) says in one
    line that it cannot."""
    from PIL import Image

    from clip_debias.toolchain.datasets import load_index
    from clip_debias.toolchain.decompose.cache import load_cache, save_cache
    from clip_debias.toolchain.decompose.run import decompose_dataset
    from clip_debias.toolchain.models.loading import load_clip

    lines = ["path,label,split", "a.png,0,test", "b.png,1,test", "c.png,1,test"]
    for i, line in enumerate(lines[1:]):
        Image.new("RGB", (40, 36), (60 * i, 20, 90)).save(tmp_path / line.split(",")[0])
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    clip = load_clip("clipdebias-lab-map", random_weights=True)
    cache = decompose_dataset(clip, load_index("csv", tmp_path, "test"), [0, 5], progress=False)
    save_cache(tmp_path / "c.safetensors", cache)
    back = load_cache(tmp_path / "c.safetensors")
    heads = back.heads.tensor()
    assert heads.shape == (3, 2, 4, 64) and back.tower_layers == 6
    assert torch.allclose(heads.sum(dim=(1, 2)) + back.rest, back.stored_embeddings, atol=TOL)
    with pytest.raises(ClipDebiasError, match="^a token heat map needs open_clip's CLS-token ViT") as e:
        clip.tower.explicit("a token heat map")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, heads", [("EVA02-B-16", [(11, 3), (6, 0), (6, 7)]), ("MobileCLIP-B", [(10, 2)]),
                                         ("clipdebias-tiny-eva", [(1, 1), (0, 3)])])
@pytest.mark.parametrize("convention", ["textspan", "centred"])
def test_class_token_heat_map_terms_sum_to_the_head_terms(name, heads, convention):
    """The per-token terms of a class-token timm tower (explain.timm_tokens: timm's own attention rows and values)
    sum over the tokens to the decomposition's head terms (<= 1e-4 of the embedding norm), with rotary embeddings
    (EVA02) and a convolutional stem (MobileCLIP-B); the attention rows are probabilities."""
    from clip_debias.toolchain.explain.timm_tokens import timm_token_terms

    model = random_model(name)
    tower = tower_of(model.visual)
    size = model.visual.trunk.patch_embed.img_size
    x = image(seed=4, size=size[0])
    tt = timm_token_terms(tower, x, heads, convention)
    layers = sorted({l for l, _ in heads})
    hc = PooledDecomposer(tower, layers, convention)(x)
    for k, (layer, head) in enumerate(heads):
        err = (tt.terms[:, k].sum(dim=1) - hc.heads[:, layers.index(layer), head]).norm()
        assert float(err) <= TOL, (name, layer, head, float(err))
    assert torch.allclose(tt.attention.sum(dim=-1), torch.ones(1, len(heads)), atol=1e-5)
    n = tt.terms.shape[2]
    assert n == tt.prefix + tt.grid[0] * tt.grid[1]
