"""Token heat maps for timm towers with a class-token readout (EVA02, MobileCLIP-B: ``models/timm_adapter.py``).

As for open_clip's ViT (``explain.tokens``): at the class token, head h of block l outputs
o_{l,h} = sum_j a_{h,j} v_{h,j} (a_h the class token's attention row, after rotary embeddings and q/k norms, which
act on q and k only; v_{h,j} the head's value at token j), and the head's direct term c_{l,h}
(``decompose.pooled``, the class-token readout: lambda = 1 / sigma of ``trunk.norm`` at the class token; with EVA02's
inner attention norm also divided by that norm's sigma at the class token) is affine in o. So it splits exactly into
per-token terms, the constant part shared equally over the N tokens:

    p_{l,h,j} = [lambda a_{h,j} v_{h,j} / s_l] K_{l,h} F / ||y|| + offset_l / (N ||y||),   sum_j p_{l,h,j} = c_{l,h}

(K_{l,h} and F the decomposer's per-head map and output map; offset_l the textspan convention's constant, 0 for
centred). The attention rows and the values are timm's own: one forward with the chosen blocks' attention unfused
(``fused_attn = False``) reads the softmax probabilities where timm applies ``attn_drop``; then per chosen layer a
second forward, cut short at that block, swaps its attention for the identity there so that the block's
``attn @ v`` is v itself. A MAP or average readout has no class-token row to split: refused in one line
(``TimmViT.no_explicit``).
"""

from __future__ import annotations

from typing import Any

import torch

from clip_debias.toolchain.decompose.conventions import DEFAULT_CONVENTION
from clip_debias.toolchain.decompose.pooled import PooledDecomposer
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.explain.token_terms import TokenTerms, check_heads


class _Stop(Exception):
    """Ends a forward once the value vectors of the block it was run for are read."""


def _attention_rows(tower: Any, images: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
    """{layer: [B, H, N] the class token's attention probabilities} from one forward, attention unfused."""
    seen: dict[int, torch.Tensor] = {}
    hooks, fused = [], {}
    try:
        for i in layers:
            attn = tower.blocks[i].attn
            fused[i] = attn.fused_attn
            attn.fused_attn = False
            hooks.append(attn.attn_drop.register_forward_hook(
                lambda m, a, out, i=i: seen.__setitem__(i, out[:, :, 0].detach())))
        tower.visual(images)
    finally:
        for h in hooks:
            h.remove()
        for i, f in fused.items():
            tower.blocks[i].attn.fused_attn = f
    return seen


def _values(tower: Any, images: torch.Tensor, layer: int) -> torch.Tensor:
    """[B, N, H, Dh] the values of block ``layer``: its attention swapped for the identity, ``attn @ v`` read at the
    attention's output norm, the forward stopped there."""
    attn = tower.blocks[layer].attn
    seen: dict[str, torch.Tensor] = {}

    def identity(module: Any, args: Any, out: torch.Tensor) -> torch.Tensor:
        n = out.shape[-1]
        return torch.eye(n, dtype=out.dtype, device=out.device).expand_as(out)

    def keep(module: Any, args: Any) -> None:
        seen["v"] = args[0].detach()
        raise _Stop()

    fused = attn.fused_attn
    hooks = [attn.attn_drop.register_forward_hook(identity), attn.norm.register_forward_pre_hook(keep)]
    attn.fused_attn = False
    try:
        tower.visual(images)
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
        attn.fused_attn = fused
    v = seen["v"]
    return v.reshape(v.shape[0], v.shape[1], tower.heads, -1)


@torch.no_grad()
def timm_token_terms(tower: Any, images: torch.Tensor, heads: list[tuple[int, int]],
                     convention: str = DEFAULT_CONVENTION) -> TokenTerms:
    """Per-token direct terms p_{l,h,j} [B, K, N, D] of the (layer, head) pairs ``heads`` of a class-token timm
    tower (module docstring); ``attention`` the class token's rows [B, K, N]."""
    if tower.kind != "token":
        raise ClipDebiasError(f"a token heat map needs a class token's attention over the patches; "
                              f"{tower.describe()} has none: {tower.no_explicit}")
    layers = check_heads(heads, tower.layers, tower.heads)
    dec = PooledDecomposer(tower, layers, convention)
    tr = tower.trace(images, layers)
    y = tr.pooled
    z = y.norm(dim=-1)[:, None]  # [B, 1]
    k = dec._consts(y)
    rows = _attention_rows(tower, images, layers)
    lam = tr.kappa[:, 0]  # [B]: 1 / sigma of trunk.norm at the class token
    outputs: dict[int, torch.Tensor] = {}  # layer -> [B, N, H, Dh] lambda a_{h,j} v_{h,j} / s_l, every head
    for layer in layers:
        mixed = torch.einsum("bhn,bnhd->bnhd", rows[layer], _values(tower, images, layer))  # a_{h,j} v_{h,j}
        scale = lam
        norm = tower.blocks[layer].attn.norm
        if isinstance(norm, torch.nn.LayerNorm):  # EVA02's inner norm: its sigma at the class token
            o_cls = mixed.sum(dim=1).reshape(mixed.shape[0], -1)
            scale = scale / torch.sqrt(o_cls.var(dim=-1, unbiased=False) + norm.eps)
        outputs[layer] = mixed * scale[:, None, None, None]
    terms, attn_rows = [], []
    for layer, head in heads:
        i = layers.index(layer)
        o_tok = outputs[layer][:, :, head]  # [B, N, Dh]
        t = torch.einsum("bnd,pde->bnpe", o_tok, k["k_maps"][i][:, head])  # [B, N, 1, Dh']
        if not dec.centred:
            off = (tr.kappa[..., None] * k["v_bias"][i] - tr.m[..., None] * k["v_g"] / dec.shares
                   + k["v_beta"] / dec.shares)  # [B, 1, Dh']
            t = t + off[:, None] / o_tok.shape[1]
        terms.append(torch.einsum("bnpe,ped->bnd", t, k["out"]) / z[:, None])
        attn_rows.append(rows[layer][:, head])
    grid = tuple(tower.trunk.patch_embed.grid_size)
    return TokenTerms(torch.stack(terms, dim=1), torch.stack(attn_rows, dim=1), list(heads), grid,
                      prefix=tower.trunk.num_prefix_tokens)
