"""Exact per-head decomposition of the CLS image embedding (TextSpan, Gandelsman et al.).

For a batch of images, with y = ln_post(x_cls) @ proj the unnormalized embedding and e = y / ||y||:

    e = sum_{l in layers, h} c_{l,h} + rest

    c_{l,h} = o_{l,h}^{cls} @ A_{l,h} / (sigma * ||y||)                                   [B, D] each
    A_{l,h} = W_o[:, h]^T diag(gamma_l) C diag(g) proj   (``ExplicitViT.head_readout``)     [Dh, D]
    rest    = (r @ C diag(g) proj / sigma + b @ proj) / ||y||

where o_{l,h}^{cls} is head h's attention output at the CLS query of layer l, sigma the sample's own ln_post std,
C = I - 11^T/W the centring, g/b the ln_post weight/bias, gamma_l the LayerScale (1 without), and r the residual-space
CLS sum of everything else: the embedding term, every MLP term, the attention terms of layers not chosen and each
chosen layer's output bias ls_1(b_o). Centring is split per term (each term minus its own feature mean), the ln_post
bias goes wholly to ``rest``. Only the CLS query row of the heads is read; nothing of shape [B, N, N, H, D] is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.tower import ExplicitViT


@dataclass
class HeadContributions:
    """Direct contributions to the normalized CLS embedding.

    heads: [B, L, H, D] c_{l,h}; rest: [B, D]; layers: absolute indices (0 = first block) of the L chosen layers.
    ``heads.sum((1, 2)) + rest`` is the unit-norm image embedding.
    """

    heads: torch.Tensor
    rest: torch.Tensor
    layers: list[int]

    def embedding(self) -> torch.Tensor:
        """[B, D] sum of all terms (the normalized image embedding)."""
        return self.heads.sum(dim=(1, 2)) + self.rest


def resolve_layers(n_layers: int, last: int | None = None, layers: list[int] | None = None) -> list[int]:
    """Absolute layer indices: an explicit list (negative counts from the end) or the ``last`` N layers (default 4)."""
    if layers:
        out = sorted({l + n_layers if l < 0 else l for l in layers})
        bad = [l for l in out if not 0 <= l < n_layers]
        if bad:
            raise ClipDebiasError(f"--layers: {bad} out of range for a tower of {n_layers} layers (0..{n_layers - 1})")
        return out
    last = 4 if last is None else last
    if not 1 <= last <= n_layers:
        raise ClipDebiasError(f"--layers: last {last} layers requested, the tower has {n_layers} "
                              f"(expected 1..{n_layers})")
    return list(range(n_layers - last, n_layers))


class Decomposer(nn.Module):
    """Runs the tower once and returns ``HeadContributions`` for ``layers``. The folded readouts are constants
    computed once (float64, then cast), so the per-batch cost over a plain forward is one [B,L,H,Dh]x[L,H,Dh,D]
    contraction."""

    def __init__(self, tower: ExplicitViT, layers: list[int]):
        super().__init__()
        self.tower = tower
        self.layers = list(layers)
        self.register_buffer("readout", tower.head_readout(self.layers), persistent=False)  # [L, H, Dh, D]
        self.register_buffer("centred", tower.centred_readout().to(self.readout.dtype), persistent=False)  # [W, D]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> HeadContributions:
        tr = self.tower.trace(images, self.layers)
        o = torch.stack([tr.head_out[l] for l in self.layers], dim=1)  # [B, L, H, Dh]
        scale = self.tower.term_scale(tr)  # [B, 1]
        heads = torch.einsum("blhk,lhkd->blhd", o, self.readout) * scale[:, :, None, None]
        rest = tr.rest_resid @ self.centred * scale + self.tower.bias_readout() / tr.pooled.norm(dim=-1, keepdim=True)
        return HeadContributions(heads=heads, rest=rest, layers=self.layers)
