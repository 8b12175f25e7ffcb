"""The explicit-attention tower computes what open_clip computes, and refuses what it cannot compute."""

from __future__ import annotations

import pytest
import torch

from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.loading import load_clip
from clip_debias.toolchain.models.tower import ExplicitAttention, ExplicitViT

# fp32 parity bound from the issue: 1e-5 on embeddings of random-weight models (we see ~2e-6 on ViT-B).
TOL = 1e-5


def _parity(clip, batch: int = 2) -> float:
    torch.manual_seed(1)
    tower = ExplicitViT.from_open_clip(clip.model.visual)
    h, w = tower.cfg.image_size
    x = torch.randn(batch, 3, h, w)
    with torch.no_grad():
        return (tower(x) - clip.model.encode_image(x)).abs().max().item()


def test_tiny_parity(tiny_clip):
    assert _parity(tiny_clip, batch=5) <= TOL


def test_layerscale_parity():
    torch.manual_seed(0)
    assert _parity(load_clip("clipdebias-tiny-ls", random_weights=True), batch=3) <= TOL


def test_quickgelu_parity():
    torch.manual_seed(0)
    clip = load_clip("ViT-B-32-quickgelu", random_weights=True)
    assert ExplicitViT.from_open_clip(clip.model.visual).cfg.act == "quick_gelu"
    assert _parity(clip) <= TOL


def test_vitb32_parity(vitb32_clip):
    assert _parity(vitb32_clip) <= TOL


@pytest.mark.slow
def test_vitb16_parity():
    torch.manual_seed(0)
    assert _parity(load_clip("ViT-B-16", random_weights=True)) <= TOL


def test_patchify_matmul_is_the_patch_convolution(vitb32_clip):
    """The ONNX Runtime-only export writes conv1 as patchify + MatMul: the same numbers up to summation order."""
    tower = ExplicitViT.from_open_clip(vitb32_clip.model.visual)
    x = torch.randn(3, 3, *tower.cfg.image_size)
    w = tower.conv1.weight
    with torch.no_grad():
        conv = tower.conv1(x).flatten(2).transpose(1, 2)  # [B, gh*gw, W]
        gemm = tower.patchify(x) @ w.reshape(w.shape[0], -1).t()
    assert gemm.shape == conv.shape == (3, 49, 768)
    assert (gemm - conv).abs().max().item() <= TOL


@pytest.mark.parametrize("width,heads,tokens", [(64, 4, 17), (768, 12, 197)])
def test_cls_head_outputs_fold_keys_and_values(width, heads, tokens):
    """The last block's CLS-only attention (keys and values folded into the query, see ``cls_head_outputs``) equals
    SDPA on the projected q[:, :, :1], k, v: exact algebra, so in float64 up to rounding (1e-12), with non-zero
    biases (the key bias cancels in the softmax, the value bias passes through)."""
    torch.manual_seed(0)
    attn = ExplicitAttention(width, heads, tokens).double()
    torch.nn.init.normal_(attn.qkv.bias, std=0.5)
    x = torch.randn(3, tokens, width, dtype=torch.float64)
    q, k, v = attn.qkv_heads(x)
    ref = torch.nn.functional.scaled_dot_product_attention(q[:, :, :1], k, v)
    got = attn.head_outputs(x, cls_only=True)
    assert got.shape == (3, heads, 1, width // heads)
    assert (got - ref).abs().max().item() <= 1e-12


def test_tower_has_no_multihead_attention(tiny_clip):
    tower = ExplicitViT.from_open_clip(tiny_clip.model.visual)
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in tower.modules())


def test_wrong_image_size_refused(tiny_clip):
    """Reshapes are static (constants, -1 for the batch): an image of another size must be refused, not reshaped into
    a wrong batch (4 images of 48x48 have 9 x 16 patches' worth of numbers for a 32x32 tower)."""
    tower = ExplicitViT.from_open_clip(tiny_clip.model.visual)
    with pytest.raises(ClipDebiasError, match=r"images of size \[48, 48\]; this tower takes \[32, 32\]"):
        tower(torch.randn(4, 3, 48, 48))
    with pytest.raises(ValueError, match="expects 17 tokens"):
        tower.blocks[0].attn.head_outputs(torch.randn(2, 5, tower.cfg.width))


def test_trace_matches_forward(tiny_clip):
    tower = ExplicitViT.from_open_clip(tiny_clip.model.visual)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tr = tower.trace(x, [2, 3])
        assert torch.equal(tr.pooled, tower(x))
    assert set(tr.head_out) == {2, 3} and tr.head_out[3].shape == (3, 4, 16)


@pytest.mark.parametrize("name, words", [
    ("RN50", "ModifiedResNet is not supported"),
    ("coca_ViT-B-32", "attentional pooling"),
])
def test_refuses_other_towers(name, words):
    with pytest.raises(ClipDebiasError, match=words):
        load_clip(name, random_weights=True)


# ---- open_clip's two attention layouts: the tower reads parameters, not classes -------------------------------------
class NewLayoutAttention(torch.nn.Module):
    """Stand-in for the attention module that open_clip's main branch (4.x) puts in ``ResidualAttentionBlock`` instead
    of ``nn.MultiheadAttention``: its parameter and attribute names (fused ``in_proj_weight`` [3W, W],
    ``in_proj_bias``, ``out_proj``, ``num_heads``, ``scale``; the optional parts ``ln_q``/``ln_k``/``ln_inner`` as
    Identity, ``logit_scale``/``head_scale`` as None), with its forward written here: per head
    softmax(q k^T * scale) v, then out_proj. It answers both call conventions: nn.MultiheadAttention's
    ``(q, k, v, need_weights=..., attn_mask=...) -> (out, None)`` (the installed open_clip's block) and main's
    ``(x, k_x=..., v_x=..., attn_mask=...) -> out``."""

    def __init__(self, attn: torch.nn.Module):
        super().__init__()
        width = attn.in_proj_weight.shape[1]
        self.num_heads, self.head_dim = attn.num_heads, width // attn.num_heads
        self.scale = self.head_dim ** -0.5
        self.in_proj_weight = torch.nn.Parameter(attn.in_proj_weight.detach().clone())
        self.in_proj_bias = torch.nn.Parameter(attn.in_proj_bias.detach().clone())
        self.ln_q, self.ln_k, self.ln_inner = torch.nn.Identity(), torch.nn.Identity(), torch.nn.Identity()
        self.logit_scale = self.head_scale = None
        self.out_proj = torch.nn.Linear(width, width)
        self.out_proj.load_state_dict(attn.out_proj.state_dict())

    def forward(self, x, k_x=None, v_x=None, need_weights=None, attn_mask=None):
        assert attn_mask is None and all(t is None or t is x for t in (k_x, v_x))
        b, n, w = x.shape  # batch first
        qkv = torch.nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        o = ((q @ k.transpose(-1, -2)) * self.scale).softmax(dim=-1) @ v  # [B, H, N, Dh]
        out = self.out_proj(o.transpose(1, 2).reshape(b, n, w))
        return (out, None) if need_weights is not None else out


def _swap_attention(clip) -> None:
    for blk in clip.model.visual.transformer.resblocks:
        blk.attn = NewLayoutAttention(blk.attn)
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in clip.model.visual.modules())


def test_new_open_clip_attention_layout():
    """Each block's nn.MultiheadAttention swapped for the stand-in carrying the same weights: open_clip's own
    encode_image runs through the stand-ins, and ExplicitViT copies the same tensors and equals it (LayerScale too)."""
    torch.manual_seed(0)
    clip = load_clip("clipdebias-tiny-ls", random_weights=True)
    before = ExplicitViT.from_open_clip(clip.model.visual).state_dict()
    _swap_attention(clip)
    after = ExplicitViT.from_open_clip(clip.model.visual).state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert _parity(clip, batch=3) <= TOL


@pytest.mark.parametrize("part, value, words", [
    ("ln_q", lambda d: torch.nn.LayerNorm(d), r"q/k LayerNorms \(qk_norm\) \(attn.ln_q\)"),
    ("logit_scale", lambda d: torch.nn.Parameter(torch.zeros(4, 1, 1)), r"scaled cosine attention"),
    ("head_scale", lambda d: torch.nn.Parameter(torch.ones(4, 1, 1)), r"per-head output scales \(scale_heads\)"),
    ("ln_inner", lambda d: torch.nn.LayerNorm(4 * d), r"a LayerNorm inside attention before out_proj"),
    ("extra_gate", lambda d: torch.nn.Parameter(torch.ones(1)), r"has parameter 'attn.extra_gate', which a plain"),
    ("scale", lambda d: 0.5, r"attention scale 0.5 is not 1/sqrt\(head width 16\)"),
])
def test_new_layout_parts_that_change_the_math_are_refused(part, value, words):
    """What changes the math is refused in one line naming the block and the part; nothing else is."""
    torch.manual_seed(0)
    clip = load_clip("clipdebias-tiny", random_weights=True)
    _swap_attention(clip)
    setattr(clip.model.visual.transformer.resblocks[2].attn, part, value(16))
    with pytest.raises(ClipDebiasError, match="image tower block 2") as e:
        ExplicitViT.from_open_clip(clip.model.visual)
    assert "\n" not in str(e.value)
    import re

    assert re.search(words, str(e.value)), str(e.value)


def _custom_block_clip(**flags):
    """A tiny open_clip CLIP whose image tower uses open_clip's own CustomResidualAttentionBlock + Attention (the
    module main's ResidualAttentionBlock now holds), with ``flags`` (qk_norm, scale_heads, ...) set."""
    import json

    import open_clip

    from clip_debias.toolchain.models.loading import CONFIG_DIR

    cfg = json.loads((CONFIG_DIR / "clipdebias-tiny.json").read_text())
    cfg["vision_cfg"].update(block_type="custom", **flags)
    torch.manual_seed(0)
    return open_clip.CLIP(**cfg).eval()


def test_open_clip_custom_attention_block_parity():
    model = _custom_block_clip()
    blk = model.visual.transformer.resblocks[0]
    assert type(blk).__name__ == "CustomResidualAttentionBlock" and type(blk.attn).__name__ == "Attention"
    tower = ExplicitViT.from_open_clip(model.visual)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (tower(x) - model.encode_image(x)).abs().max().item() <= TOL


@pytest.mark.parametrize("flag, words", [
    ("qk_norm", "q/k LayerNorms (qk_norm)"), ("scaled_cosine_attn", "scaled cosine attention"),
    ("scale_heads", "per-head output scales"), ("scale_attn_inner", "a LayerNorm inside attention"),
    ("scale_attn", "a LayerNorm on the attention output (scale_attn)"), ("scale_fc", "a LayerNorm inside the MLP"),
])
def test_open_clip_custom_block_options_are_refused(flag, words):
    with pytest.raises(ClipDebiasError, match="image tower block 0") as e:
        ExplicitViT.from_open_clip(_custom_block_clip(**{flag: True}).visual)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_mlp_layers_are_named_and_old_keys_load(tiny_clip, tmp_path):
    """The MLP's layers are fc_in / fc_out (saved keys, exported node names); a model directory saved before the
    rename (keys mlp.0 / mlp.2) still loads, to the same outputs."""
    from safetensors.torch import load_file, save_file

    from clip_debias.toolchain.correct.classifier import DebiasedClassifier, plain_classifier

    model = plain_classifier(tiny_clip, ["landbird", "waterbird"])
    keys = model.state_dict().keys()
    assert "tower.blocks.0.mlp.fc_in.weight" in keys and "tower.blocks.3.mlp.fc_out.bias" in keys
    assert not any(".mlp.0." in k or ".mlp.2." in k for k in keys)
    model.save(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    old = {k.replace(".mlp.fc_in.", ".mlp.0.").replace(".mlp.fc_out.", ".mlp.2."): v
           for k, v in load_file(str(weights)).items()}
    assert any(".mlp.0." in k for k in old)
    save_file(old, str(weights))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(DebiasedClassifier.load(tmp_path / "m")(x)[0], model(x)[0])
