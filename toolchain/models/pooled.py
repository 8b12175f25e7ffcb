"""The pooled-readout form of an image tower: what a tower whose embedding reads many tokens (attention pool, average
pool, or one token through a head) leaves for an exact per-head decomposition.

Notation (shapes): B batch, N tokens, W width, H heads, Dh = W / H, D embedding dim; the readout has H' "pool
heads" of width Dh' (the attention pool's heads; H' = 1, Dh' = W for a class-token or average readout).

Readout with its statistics fixed. x_j [W] is the final residual stream at token j, n_j = g * (x_j - mu_j) / sigma_j
+ beta its norm (mu_j, sigma_j: per token, or those of the pooled vector when the norm follows the pooling), and
omega[h', j] the readout's token weights (attention-pool weights, 1/N of the patches, or the class token), summing
to 1 over j. Then the embedding is linear in the pooled, normed stream:

    y = sum_h' (V_h' nbar_h') @ F_h' + tail,     nbar_h' = sum_j omega[h', j] n_j                      [W]

with V_h' [Dh', W] the pool head's value rows (identity when H' = 1), F_h' [Dh', D] its rows of ``out`` (pool output
projection, then the trunk's and open_clip's heads) and ``tail`` [B, D] what is not linear in the stream or is
constant: the pool's value and output biases, the pool's MLP term (MAP: q = p + MLP(LN(p)), kept whole) and the
head biases, mapped to the embedding. ``lam[h', j] = omega[h', j] / sigma_j``.

Block l's attention writes a_lj = gamma_l * (sum_h M_lh o_lhj + b_l) at token j: o_lhj [Dh] head h's output there
(``trace.o``, already divided by the attention's inner norm statistic when the block has one: EVA02's
scale-attn-inner LayerNorm), M_lh [W, Dh] its slice of the output projection (through that norm's weight and
centring), b_l [W] the output bias (and that norm's bias). Rotary position embeddings (EVA02, PE) rotate q and k
only: o = softmax(rot(q) rot(k)^T / sqrt(Dh)) v, so nothing after the attention weights changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class PooledReadout:
    """Constants of the readout: g, beta [W] (the norm before the readout's linear part); value [H', Dh', W];
    out [H', Dh', D]. ``norm`` says which norm g/beta are (for the docs and errors)."""

    g: torch.Tensor
    beta: torch.Tensor
    value: torch.Tensor
    out: torch.Tensor
    norm: str


@dataclass
class PooledTrace:
    """One forward of a batch, reduced over tokens with the readout's weights.

    pooled:  [B, D]            y, the model's unnormalized embedding (its own forward)
    o:       {l: [B, H', H, Dh]} sum_j lam[h', j] o_lhj for each traced layer l
    kappa:   [B, H']           sum_j lam[h', j]
    m:       [B, H']           sum_j lam[h', j] mu_j
    rest:    [B, H', W]        sum_j lam[h', j] r_j, r_j = x_j - sum_{traced l} a_lj (embedding term, every MLP term,
                               the untraced layers' attention writes)
    tail:    [B, D]            the readout's constant and non-linear part (see the module docstring)
    mlp:     [B, D] or None    the attention pool's MLP term alone, mapped to the embedding (part of ``tail``)
    """

    pooled: torch.Tensor
    o: dict[int, torch.Tensor]
    kappa: torch.Tensor
    m: torch.Tensor
    rest: torch.Tensor
    tail: torch.Tensor
    mlp: torch.Tensor | None


class PooledTower(Protocol):
    """What ``toolchain.decompose.pooled`` needs of a tower: its shape, readout constants, each block's head write
    and a traced forward."""

    layers: int
    heads: int
    width: int
    embed_dim: int
    pool_heads: int

    def readout_maps(self) -> PooledReadout: ...

    def head_write(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma_l * M_l [H, W, Dh], gamma_l * b_l [W]) of block ``layer``."""

    def trace(self, images: torch.Tensor, layers: list[int]) -> PooledTrace: ...
