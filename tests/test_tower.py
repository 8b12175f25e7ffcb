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
    assert _parity(load_clip("clipdebias-tiny-ls"), batch=3) <= TOL


def test_quickgelu_parity():
    torch.manual_seed(0)
    clip = load_clip("ViT-B-32-quickgelu")
    assert ExplicitViT.from_open_clip(clip.model.visual).cfg.act == "quick_gelu"
    assert _parity(clip) <= TOL


def test_vitb32_parity(vitb32_clip):
    assert _parity(vitb32_clip) <= TOL


@pytest.mark.slow
def test_vitb16_parity():
    torch.manual_seed(0)
    assert _parity(load_clip("ViT-B-16")) <= TOL


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
        load_clip(name)
