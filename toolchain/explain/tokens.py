"""Token heat maps: where in the image a head's direct contribution along a text direction comes from.

At the CLS query of layer l, head h's output is a convex mix of the value vectors of all N tokens,
o_{l,h}^{cls} = sum_j a_{h,j} v_{h,j} with a_h = softmax(q_cls k^T / sqrt(Dh)) on ln_1 of the layer input. The head's
direct term c_{l,h} = (o @ A + k - mu q) / (sigma ||y||) + r / ||y|| (``toolchain.decompose.conventions``; k, q, r
are 0 in the centred convention) is affine in o, so it splits exactly into per-token terms, each token taking an
equal 1/N share of the constant part (as TextSpan's spatial decomposition does):

    p_{l,h,j} = (a_{h,j} v_{h,j} @ A + (k - mu q) / N) / (sigma ||y||) + r / (N ||y||),   sum_j p_{l,h,j} = c_{l,h}

and along a text direction t, s_j = sum_{(l,h) chosen} p_{l,h,j} . t is one scalar per token. sigma and ||y|| are
those of the full forward. The patch scalars s_1..s_{N-1} form the heat map; s_0 (the CLS token's own share) has no
place in the image and is reported beside it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clip_debias.toolchain.decompose.conventions import (DEFAULT_CONVENTION, LnStats, Readout, apply_readout,
                                                         head_readout)
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.explain.token_terms import TokenTerms, check_heads
from clip_debias.toolchain.models.tower import ExplicitViT


def cls_attention(block: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS-row attention of one block on its input x [B, N, W]: probabilities a [B, H, N] =
    softmax(q_cls k^T / sqrt(Dh)) on ln_1(x), and the values v [B, H, N, Dh]."""
    q, k, v = block.attn.qkv_heads(block.ln_1(x))  # [B, H, N, Dh]
    logits = torch.einsum("bhd,bhnd->bhn", q[:, :, 0], k) * block.attn.scale
    return logits.softmax(dim=-1), v


@torch.no_grad()
def token_terms(tower: ExplicitViT, images: torch.Tensor, heads: list[tuple[int, int]],
                convention: str = DEFAULT_CONVENTION) -> TokenTerms:
    """Per-token direct terms p_{l,h,j} [B, K, N, D] of the (absolute layer, head) pairs ``heads`` (module docstring).
    Runs the blocks up to the deepest chosen layer once; mu, sigma and ||y|| come from ``tower.trace``."""
    layers = check_heads(heads, tower.cfg.layers, tower.cfg.heads)
    tr = tower.trace(images, layers)
    stats = LnStats.of(tower, tr)
    full = head_readout(tower, layers, convention).to(tower.conv1.weight.dtype)
    per_layer: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    x = tower.embed(images)
    for i in range(layers[-1] + 1):
        if i in layers:
            per_layer[i] = cls_attention(tower.blocks[i], x)
        if i < layers[-1]:
            x = tower.blocks[i](x)[0]  # never the last block (its output keeps only the CLS row)
    terms, attn = [], []
    for layer, head in heads:
        a, v = per_layer[layer]
        mixed = a[:, head, :, None] * v[:, head]  # [B, N, Dh]
        i = layers.index(layer)
        one = Readout(full.A[i, head], full.k[i, head], full.q, full.r, full.centring, full.offset)
        terms.append(apply_readout(mixed, one, stats, share=1.0 / mixed.shape[1]))  # [B, N, D]
        attn.append(a[:, head])
    return TokenTerms(torch.stack(terms, dim=1), torch.stack(attn, dim=1), list(heads), tower.cfg.grid)


def text_direction(clip, text: str, vs: str | None = None) -> torch.Tensor:
    """t [D] = E_T(text) (unit norm), or E_T(text) - E_T(vs) with ``vs`` (the logit-difference direction)."""
    emb = clip.encode_text([text] + ([vs] if vs else []), normalize=True).float().cpu()
    return emb[0] - emb[1] if vs else emb[0]


def denormalize(image: torch.Tensor, mean, std) -> torch.Tensor:
    """Undo the preprocess normalization of one [3, H, W] tensor -> [H, W, 3] in [0, 1] for display."""
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (image.float().cpu() * s + m).clamp(0, 1).permute(1, 2, 0)


def render_overlay(picture: torch.Tensor, heat: torch.Tensor, path: str | Path, title: str, cls_share: float,
                   total: float, force: bool = False) -> Path:
    """PNG with the image and the heat map [gh, gw] upsampled over it (diverging colours centred at 0: red = the
    tokens push towards the text, blue = away), plus a colour bar. ``picture`` [H, W, 3] in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clip_debias.toolchain.figures import save_figure

    h, w = picture.shape[:2]
    lim = max(float(heat.abs().max()), 1e-12)
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 4.2))
    extent = (0, w, h, 0)
    axes[0].imshow(picture.numpy(), extent=extent)
    axes[0].set_title("input (preprocessed)", fontsize=9)
    axes[1].imshow(picture.numpy(), extent=extent)
    im = axes[1].imshow(heat.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.55, extent=extent,
                        interpolation="bilinear")
    axes[1].set_title(f"patch terms . t  (sum of all tokens {total:+.4f}, CLS token {cls_share:+.4f})", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, "explain-image", force=force)


def explain_image(clip, image_path: str | Path, heads: list[tuple[int, int]], text: str, vs: str | None,
                  out: str | Path, convention: str = DEFAULT_CONVENTION, force: bool = False,
                  max_pixels: int | None = None) -> tuple[Path, float, float]:
    """Heat map of ``heads`` along ``text`` (minus ``vs``) for one image file, written to ``out`` (replacing only a
    figure of ours, or anything with ``force``), terms in ``convention``. Returns (path, sum over all tokens, CLS
    token share)."""
    from clip_debias.runtime.images import load_image
    from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS

    image_path = Path(image_path)
    if not image_path.is_file():
        raise ClipDebiasError(f"{image_path}: image not found")
    pil = load_image(image_path, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    x = clip.preprocess(pil).unsqueeze(0).float()
    if clip.tower.has_explicit:
        tt = token_terms(clip.tower.explicit("a token heat map").float().cpu(), x, heads, convention)
    else:  # a timm tower: class-token readouts only (explain.timm_tokens), else one line
        from clip_debias.toolchain.explain.timm_tokens import timm_token_terms

        clip.model.float().cpu()
        tt = timm_token_terms(clip.tower.pooled(), x, heads, convention)
    t = text_direction(clip, text, vs)
    s = tt.along(t)[0]
    prefix_share = float(s[:tt.prefix].sum())
    heat = tt.patch_map(t)[0]
    cfg = clip.preprocess_cfg
    picture = denormalize(x[0], cfg.get("mean", (0.0, 0.0, 0.0)), cfg.get("std", (1.0, 1.0, 1.0)))
    names = ", ".join(f"{l}:{h}" for l, h in heads)
    what = f"'{text}'" + (f" - '{vs}'" if vs else "")
    path = render_overlay(picture, heat, out, f"{image_path.name}: heads {names} along {what}", prefix_share,
                          float(s.sum()), force=force)
    return path, float(s.sum()), prefix_share
