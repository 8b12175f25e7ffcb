"""Exact per-head decomposition of the CLS image embedding (TextSpan, Gandelsman et al.).

For a batch of images, with y = ln_post(x_cls) @ proj the unnormalized embedding and e = y / ||y||:

    e = sum_{l in layers, h} c_{l,h} + rest                                     c_{l,h}, rest: [B, D] each

where c_{l,h} is head h of layer l's direct contribution under a convention (``toolchain.decompose.conventions``:
``textspan``, the default, or ``centred``) and rest is everything else. Only the CLS query row of the heads is read;
nothing of shape [B, N, N, H, D] is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clip_debias.toolchain.decompose.conventions import (DEFAULT_CONVENTION, LnStats, apply_readout, head_readout,
                                                         rest_readout)
from clip_debias.toolchain.decompose.layers import resolve_layers
from clip_debias.toolchain.models.tower import ExplicitViT

__all__ = ["Decomposer", "HeadContributions", "resolve_layers"]


@dataclass
class HeadContributions:
    """Direct contributions to the normalized CLS embedding.

    heads: [B, L, H, D] c_{l,h}; rest: [B, D]; layers: absolute indices (0 = first block) of the L chosen layers;
    embeddings: [B, D] y / ||y|| from the forward itself. ``heads.sum((1, 2)) + rest`` equals ``embeddings``.
    """

    heads: torch.Tensor
    rest: torch.Tensor
    layers: list[int]
    embeddings: torch.Tensor
    convention: str = DEFAULT_CONVENTION

    def embedding(self) -> torch.Tensor:
        """[B, D] sum of all terms (the normalized image embedding)."""
        return self.heads.sum(dim=(1, 2)) + self.rest


class Decomposer(nn.Module):
    """Runs the tower once and returns ``HeadContributions`` for ``layers`` under ``convention``. The folded
    readouts are constants computed once (float64, then cast), so the per-batch cost over a plain forward is one
    [B,L,H,Dh]x[L,H,Dh,D] contraction."""

    def __init__(self, tower: ExplicitViT, layers: list[int], convention: str = DEFAULT_CONVENTION):
        super().__init__()
        self.tower = tower
        self.layers = list(layers)
        self.convention = convention
        dtype = tower.conv1.weight.dtype
        self.heads_map = head_readout(tower, self.layers, convention).to(dtype)
        self.rest_map = rest_readout(tower, self.layers, convention).to(dtype)

    def _apply(self, fn, recurse=True):  # keep the readout constants on the tower's device and dtype
        super()._apply(fn, recurse)
        w = self.tower.conv1.weight
        self.heads_map = self.heads_map.to(w.dtype, w.device)
        self.rest_map = self.rest_map.to(w.dtype, w.device)
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> HeadContributions:
        tr = self.tower.trace(images, self.layers)
        stats = LnStats.of(self.tower, tr)
        o = torch.stack([tr.head_out[l] for l in self.layers], dim=1)  # [B, L, H, Dh]
        heads = apply_readout(o, self.heads_map, stats)
        rest = apply_readout(tr.rest_resid, self.rest_map, stats)
        return HeadContributions(heads=heads, rest=rest, layers=self.layers, embeddings=tr.pooled / stats.z,
                                 convention=self.convention)
