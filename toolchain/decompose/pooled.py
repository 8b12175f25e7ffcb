"""Exact per-head decomposition of a pooled-readout tower (``models/pooled.py``: timm ViT / EVA towers with an
attention-pool, class-token or average readout), under the same conventions as the CLS-token ViT
(``decompose/conventions.py``).

With the readout's statistics fixed, the embedding is linear in each residual term (``models/pooled.py``), so the
direct term of head h of layer l is, for the normalized embedding e = y / z (z = ||y||, T = (2L+1) H shares):

    textspan: c_lh = sum_h' [ (V_h' (g * (gamma_l M_lh U_l,h',h + kappa_h' gamma_l b_l / H)
                                - m_h' V_h' g / T + V_h' beta / T) ] @ F_h' / z
    centred:  c_lh = sum_h' [ V_h' (g * C(gamma_l M_lh U_l,h',h)) ] @ F_h' / z          (C: remove the channel mean)

U_l,h',h = sum_j lam[h', j] o_lhj [Dh] (the pool head h''s weighted sum of the head's outputs over the read tokens,
each divided by its norm statistic). ``rest`` holds the same linear form of the residual rest (embedding term, MLP
terms, untraced layers; for ``centred`` also the traced layers' biases and all of beta) plus ``tail`` (the pool's
value/output biases, its MLP term kept whole, the head biases). heads.sum((1, 2)) + rest == e exactly.

For a MAP pool this makes each head's term its contribution through the pool's value and output projections,
weighted by the pool's own attention; the pool's MLP term (in ``rest``) is never split, so an edit of the heads
(LTC, ablation) replaces their direct terms only: the pool's attention and MLP term keep the unedited forward's values.
"""

from __future__ import annotations

import torch
from torch import nn

from clip_debias.toolchain.decompose.contributions import HeadContributions
from clip_debias.toolchain.decompose.conventions import DEFAULT_CONVENTION, check_convention
from clip_debias.toolchain.models.pooled import PooledTower


def _centre(v: torch.Tensor, dim: int) -> torch.Tensor:
    return v - v.mean(dim=dim, keepdim=True)


class PooledDecomposer(nn.Module):
    """Runs the tower once and returns ``HeadContributions`` for ``layers`` under ``convention``; the per-layer maps
    K_l = V (g * M_l) [H', H, Dh, Dh'] are constants computed once in float64."""

    def __init__(self, tower: PooledTower, layers: list[int], convention: str = DEFAULT_CONVENTION):
        super().__init__()
        self.tower, self.layers, self.convention = tower, list(layers), check_convention(convention)
        visual = getattr(tower, "visual", None)
        if isinstance(visual, nn.Module):
            self.visual = visual  # a submodule: ``.to(device)`` moves the tower the trace runs
        r = tower.readout_maps()
        self.centred = convention == "centred"
        shares = (2 * tower.layers + 1) * tower.heads
        self.out = r.out  # [H', Dh', D]
        self.value = r.value  # [H', Dh', W]
        self.g = r.g
        self.v_g = torch.einsum("pew,w->pe", r.value, r.g)  # V_h' g        [H', Dh']
        self.v_beta = torch.einsum("pew,w->pe", r.value, r.beta)  # V_h' beta  [H', Dh']
        self.k_maps, self.v_bias, biases = [], [], []
        for layer in self.layers:
            m, b = tower.head_write(layer)  # [H, W, Dh], [W]
            if self.centred:
                m = _centre(m, 1)
            self.k_maps.append(torch.einsum("hwd,pew->phde", r.g[None, :, None] * m, r.value))
            self.v_bias.append(torch.einsum("pew,w->pe", r.value, r.g * b) / tower.heads)
            biases.append(b)
        self.traced_bias = sum(biases, torch.zeros_like(r.g))
        self.shares = shares
        self.rest_share = (2 * tower.layers + 1 - len(self.layers)) / (2 * tower.layers + 1)
        self._cast_key: tuple | None = None
        self._cast_consts: dict[str, object] = {}

    def _consts(self, like: torch.Tensor) -> dict[str, object]:
        """The float64 constants in ``like``'s dtype and device, cast once per (dtype, device)."""
        key = (like.dtype, like.device)
        if self._cast_key != key:
            c = lambda t: t.to(dtype=like.dtype, device=like.device)  # noqa: E731
            self._cast_consts = {"out": c(self.out), "value": c(self.value), "g": c(self.g), "v_g": c(self.v_g),
                                 "v_beta": c(self.v_beta), "traced_bias": c(self.traced_bias),
                                 "k_maps": [c(k) for k in self.k_maps], "v_bias": [c(v) for v in self.v_bias]}
            self._cast_key = key
        return self._cast_consts

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> HeadContributions:
        tr = self.tower.trace(images, self.layers)
        y = tr.pooled
        k = self._consts(y)
        out, value, g, v_g, v_beta = k["out"], k["value"], k["g"], k["v_g"], k["v_beta"]
        z = y.norm(dim=-1, keepdim=True)  # [B, 1]
        heads = []
        for layer, k_map, v_bias in zip(self.layers, k["k_maps"], k["v_bias"]):
            t = torch.einsum("bphd,phde->bhpe", tr.o[layer], k_map)  # [B, H, H', Dh']
            if not self.centred:
                off = (tr.kappa[..., None] * v_bias - tr.m[..., None] * v_g / self.shares
                       + v_beta / self.shares)  # [B, H', Dh'], the same for every head of the layer
                t = t + off[:, None]
            heads.append(torch.einsum("bhpe,ped->bhd", t, out))
        heads_t = (torch.stack(heads, dim=1) if heads else y.new_zeros(y.shape[0], 0, self.tower.heads, y.shape[1]))
        if self.centred:
            rest_w = g * _centre(tr.rest + tr.kappa[..., None] * k["traced_bias"], -1)  # [B, H', W]
            rest_v = torch.einsum("bpw,pew->bpe", rest_w, value) + v_beta
        else:
            rest_v = (torch.einsum("bpw,pew->bpe", g * tr.rest, value)
                      - self.rest_share * tr.m[..., None] * v_g + self.rest_share * v_beta)
        rest = torch.einsum("bpe,ped->bd", rest_v, out) + tr.tail
        return HeadContributions(heads=heads_t / z[:, None, None], rest=rest / z, layers=self.layers,
                                 embeddings=y / z, convention=self.convention)
