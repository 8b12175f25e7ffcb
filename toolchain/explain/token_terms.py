"""``TokenTerms``: per-token direct terms of chosen heads, what a token heat map draws (``explain.tokens`` for
open_clip's ViT, ``explain.timm_tokens`` for timm class-token towers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clip_debias.toolchain.errors import ClipDebiasError


def check_heads(heads: list[tuple[int, int]], layers: int, n_heads: int) -> list[int]:
    """The sorted distinct layers of ``heads`` (absolute (layer, head) pairs) of a tower of ``layers`` x ``n_heads``;
    one line when none is chosen or one is out of range."""
    if not heads:
        raise ClipDebiasError("no heads chosen for the heat map")
    bad = [h for h in heads if not (0 <= h[0] < layers and 0 <= h[1] < n_heads)]
    if bad:
        raise ClipDebiasError(f"heads {bad} out of range for a tower of {layers} layers x {n_heads} heads")
    return sorted({l for l, _ in heads})


@dataclass
class TokenTerms:
    """Per-token direct terms of chosen heads: ``terms`` [B, K, N, D] for the K (absolute layer, head) pairs in
    ``heads``; ``attention`` [B, K, N] the CLS-row attention probabilities; ``grid`` the patch grid (gh, gw);
    ``prefix`` the tokens before the patches (the class token, and register tokens where a tower has them)."""

    terms: torch.Tensor
    attention: torch.Tensor
    heads: list[tuple[int, int]]
    grid: tuple[int, int]
    prefix: int = 1

    def head_terms(self) -> torch.Tensor:
        """[B, K, D] the heads' CLS terms (sum over tokens)."""
        return self.terms.sum(dim=2)

    def along(self, direction: torch.Tensor) -> torch.Tensor:
        """[B, N] sum over the chosen heads of p_{l,h,j} . t for a direction t [D]."""
        return torch.einsum("bknd,d->bn", self.terms, direction.to(self.terms.dtype))

    def patch_map(self, direction: torch.Tensor) -> torch.Tensor:
        """[B, gh, gw] the patch scalars along ``direction`` (the prefix tokens left out)."""
        s = self.along(direction)
        return s[:, self.prefix:].reshape(s.shape[0], *self.grid)
