"""The adapter of open_clip's own ``VisionTransformer`` (CLS-token readout): its explicit form is ``ExplicitViT``
(``models/tower.py``), its decomposition ``toolchain.decompose.contributions.Decomposer``."""

from __future__ import annotations

from torch import nn

from clip_debias.toolchain.models.adapter import TowerAdapter, register_tower
from clip_debias.toolchain.models.tower import ExplicitViT, TowerConfig, tower_config_of


@register_tower("VisionTransformer")
class OpenClipViT(TowerAdapter):
    """open_clip ``VisionTransformer`` with CLS-token pooling; refused in one line otherwise (``tower_config_of``)."""

    family = "open_clip ViT"
    readout = "class token"

    def __init__(self, visual: nn.Module):
        super().__init__(visual)
        self.cfg: TowerConfig = tower_config_of(visual)

    @property
    def layers(self) -> int:
        return self.cfg.layers

    @property
    def heads(self) -> int:
        return self.cfg.heads

    @property
    def width(self) -> int:
        return self.cfg.width

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def explicit(self, step: str = "this step") -> ExplicitViT:
        return ExplicitViT.from_open_clip(self.visual)
