"""The decomposer of any registered tower: ``Decomposer`` over the explicit ViT for open_clip's own ViT, the
``PooledDecomposer`` over the pooled-readout form for the timm towers. Both return ``HeadContributions``."""

from __future__ import annotations

from torch import nn

from clip_debias.toolchain.decompose.contributions import Decomposer
from clip_debias.toolchain.decompose.conventions import DEFAULT_CONVENTION
from clip_debias.toolchain.decompose.pooled import PooledDecomposer
from clip_debias.toolchain.models.adapter import TowerAdapter


def decomposer_for(tower: TowerAdapter, layers: list[int], convention: str = DEFAULT_CONVENTION) -> nn.Module:
    """images [B, 3, H, W] -> ``HeadContributions`` of ``layers`` under ``convention``."""
    if tower.has_explicit:
        return Decomposer(tower.explicit(), layers, convention)
    return PooledDecomposer(tower.pooled(), layers, convention)
