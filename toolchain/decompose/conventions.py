"""Decomposition conventions: how ln_post's centring and the biases are shared among the per-head terms.

Notation, for the pooled CLS stream x [W] of one image: x = sum of 2L+1 residual terms (the embedding term, L
attention outputs, L MLP outputs); mu = mean_i x_i, sigma = sqrt(var(x) + eps) (ln_post's statistics), g / beta =
ln_post weight / bias, P = proj [W, D] (identity without one), y = ln_post(x) @ P, z = ||y||, e = y / z. Head h of
layer l writes a_{l,h} = ls_l * (W_o[:, h] o_{l,h} + b_o / H) (o its attention output at the CLS query, ls_l the
LayerScale, 1 without), so the layer's attention output is sum_h a_{l,h}.

``textspan`` (TextSpan, Gandelsman et al., ICLR 2024; the default): every one of the 2L+1 terms takes an equal share
of the centring and of beta, and an attention layer's share is split equally among its H heads:
    c_{l,h} = ((g * (a_{l,h} - mu / ((2L+1) H))) / sigma + beta / ((2L+1) H)) @ P / z
    term(m) = ((g * (m - mu / (2L+1))) / sigma + beta / (2L+1)) @ P / z        (embedding term, each MLP term)
``centred`` (this project's earlier convention): each head term is centred on its own channel mean and carries no
bias; b_o and beta go to ``rest``:
    c_{l,h} = ((g * (a'_{l,h} - mean_i a'_{l,h,i})) / sigma) @ P / z,   a'_{l,h} = ls_l * W_o[:, h] o_{l,h}
In both, heads.sum((1, 2)) + rest == e exactly, with rest = everything that is not a chosen head's term (the
embedding and MLP terms, the heads of layers not chosen and, for ``centred``, the biases). Single heads differ.

Both are one linear form, c = (o @ A + k - mu q) / (sigma z) + r / z, with constants computed once in float64
(``head_readout``); ``rest`` is (R @ M + k - mu q) / (sigma z) + r / z of the residual-space sum R of the rest
(``rest_readout``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clip_debias.toolchain.choices import Convention
from clip_debias.toolchain.models.tower import ExplicitViT, TowerTrace
CONVENTIONS = Convention.values()
DEFAULT_CONVENTION = "textspan"
FORMULAS = {
    "textspan": "TextSpan (Gandelsman et al.): heads[n,l,h] = ((g*(a_lh - mu/((2L+1)H)))/sigma + beta/((2L+1)H)) @ P "
                "/ ||y||, a_lh = the head's CLS output through its slice of W_o plus b_o/H; every one of the 2L+1 "
                "residual terms shares ln_post's centring and bias equally; heads.sum((1,2)) + rest == "
                "encode_image(x, normalize=True)",
    "centred": "centred: heads[n,l,h] = (g*(a'_lh - mean(a'_lh)))/sigma @ P / ||y||, a'_lh = the head's CLS output "
               "through its slice of W_o (no bias); each head term centred on its own channel mean, b_o and ln_post's "
               "bias in rest; heads.sum((1,2)) + rest == encode_image(x, normalize=True)",
}


def check_convention(name: str, option: str = "--convention") -> str:
    """``name`` if it is a convention, else one clear line."""
    return Convention.parse(name, option)


@dataclass
class Readout:
    """Constants of one linear form t = (v @ A + k - mu q) / (sigma z) + r / z; A [..., In, D], k [..., D], q and r
    [D]. ``centring``: k and q are used (zero otherwise: centred head and rest terms); ``offset``: r is used (zero
    otherwise: centred head terms)."""

    A: torch.Tensor
    k: torch.Tensor
    q: torch.Tensor
    r: torch.Tensor
    centring: bool
    offset: bool

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> "Readout":
        cast = lambda t: t.to(dtype=dtype, device=device)  # noqa: E731
        return Readout(cast(self.A), cast(self.k), cast(self.q), cast(self.r), self.centring, self.offset)


@dataclass
class LnStats:
    """ln_post statistics of the pooled CLS stream: mu, sigma, and z = ||y||, each [B, 1]."""

    mu: torch.Tensor
    sigma: torch.Tensor
    z: torch.Tensor

    @classmethod
    def of(cls, tower: ExplicitViT, trace: TowerTrace) -> "LnStats":
        x = trace.cls_final
        return cls(x.mean(dim=-1, keepdim=True), tower.ln_post_sigma(x)[:, None],
                   trace.pooled.norm(dim=-1, keepdim=True))


def _fold(tower: ExplicitViT, convention: str) -> torch.Tensor:
    """M [W, D] in float64: diag(g) P (textspan) or C diag(g) P with C = I - 11^T/W (centred)."""
    g = tower.ln_post.weight.double()
    p = tower.proj.double() if tower.proj is not None else torch.eye(tower.cfg.width, dtype=torch.float64,
                                                                      device=g.device)
    m = g[:, None] * p
    return m - m.mean(dim=0, keepdim=True) if convention == "centred" else m


def _terms(tower: ExplicitViT) -> int:
    """2L+1: the embedding term, L attention outputs and L MLP outputs."""
    return 2 * tower.cfg.layers + 1


def _layer_scale(tower: ExplicitViT, layer: int) -> torch.Tensor:
    blk = tower.blocks[layer]
    if tower.cfg.layer_scale:
        return blk.ls_1.gamma.double()
    return torch.ones(tower.cfg.width, dtype=torch.float64, device=blk.attn.out.weight.device)


@torch.no_grad()
def head_readout(tower: ExplicitViT, layers: list[int], convention: str) -> Readout:
    """A [L, H, Dh, D], k [L, H, D], q, r [D] of the head terms of ``layers`` (float64, on the tower's device)."""
    check_convention(convention)
    m = _fold(tower, convention)
    cfg = tower.cfg
    a_maps, biases = [], []
    for layer in layers:
        blk, ls = tower.blocks[layer], _layer_scale(tower, layer)
        wo = blk.attn.out.weight.double().T * ls[None, :]  # [W_in, W_out]; rows h*Dh:(h+1)*Dh belong to head h
        a_maps.append((wo @ m).reshape(cfg.heads, cfg.head_dim, -1))
        share = (ls * blk.attn.out.bias.double() / cfg.heads) @ m  # [D], the same for every head of the layer
        biases.append(share.expand(cfg.heads, -1))
    a = torch.stack(a_maps) if layers else m.new_zeros(0, cfg.heads, cfg.head_dim, m.shape[1])
    ones = m.sum(dim=0)  # 1 @ M = g @ P
    shares = _terms(tower) * cfg.heads
    if convention == "centred":
        zero = torch.zeros_like(ones)
        return Readout(a, torch.zeros(*a.shape[:2], m.shape[1], dtype=m.dtype, device=m.device), zero, zero, False,
                       False)
    beta = tower.ln_post.bias.double() @ (tower.proj.double() if tower.proj is not None else
                                          torch.eye(cfg.width, dtype=torch.float64, device=m.device))
    k = torch.stack(biases) if layers else m.new_zeros(0, cfg.heads, m.shape[1])
    return Readout(a, k, ones / shares, beta / shares, True, True)


@torch.no_grad()
def rest_readout(tower: ExplicitViT, layers: list[int], convention: str) -> Readout:
    """A = M [W, D], k, q, r [D] of the rest term, applied to ``TowerTrace.rest_resid`` (the residual-space sum of
    the embedding term, every MLP term, the attention outputs of the layers not chosen, and ls(b_o) of the chosen
    ones: textspan gives those biases to the heads, so its k removes them here)."""
    check_convention(convention)
    m = _fold(tower, convention)
    cfg = tower.cfg
    proj = tower.proj.double() if tower.proj is not None else torch.eye(cfg.width, dtype=torch.float64,
                                                                         device=m.device)
    beta = tower.ln_post.bias.double() @ proj
    zero = torch.zeros(m.shape[1], dtype=m.dtype, device=m.device)
    if convention == "centred":
        return Readout(m, zero, zero, beta, False, True)
    traced_bias = sum((_layer_scale(tower, l) * tower.blocks[l].attn.out.bias.double() for l in layers),
                      torch.zeros(cfg.width, dtype=torch.float64, device=m.device))
    share = (_terms(tower) - len(layers)) / _terms(tower)  # the chosen layers' heads hold one share each
    return Readout(m, -(traced_bias @ m), share * m.sum(dim=0), share * beta, True, True)


def apply_readout(v: torch.Tensor, readout: Readout, stats: LnStats, share: float = 1.0) -> torch.Tensor:
    """(v @ A + s (k - mu q)) / (sigma z) + s r / z for v [B, *S, In] and A [*S, In, D] -> [B, *S, D]; s = ``share``
    (1, or 1/N for one token's share of a head term). Broadcasting of mu, sigma, z [B, 1] over S."""
    lead = (slice(None),) + (None,) * (v.dim() - 2)
    scale = 1.0 / (stats.sigma * stats.z)  # [B, 1]
    t = torch.einsum("b...i,...id->b...d", v, readout.A)
    if readout.centring:
        t = t + share * (readout.k - stats.mu[lead] * readout.q)
    t = t * scale[lead]
    if readout.offset:
        t = t + share * readout.r / stats.z[lead]
    return t
