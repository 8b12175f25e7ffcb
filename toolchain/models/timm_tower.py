"""``TimmTower``: the image tower a built classifier holds for an open_clip ``TimmModel`` (timm ViT / EVA trunk).

It is a copy of open_clip's own tower module (``forward`` = ``encode_image(normalize=False)``: the trunk, its MAP /
class-token / average readout, rotary embeddings and head run as timm wrote them, so the ONNX graph holds them as
traced), with a ``TowerConfig`` whose ``timm`` field names the open_clip config that rebuilds the architecture when a
saved model reloads (``from_config``; the weights then come from ``model.safetensors``). The edited heads' direct
terms come from the same ``PooledDecomposer`` that decomposes the tower (``adapter``), so a baked edit computes
exactly what the decomposition's cached terms hold.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from clip_debias.toolchain.models.adapter import TowerAdapter, tower_of
from clip_debias.toolchain.models.tower import TowerConfig


def timm_tower_config(adapter: Any, model_name: str) -> TowerConfig:
    """The ``TowerConfig`` of a timm tower (``adapter``: its ``timm_adapter.TimmViT``): shape fields read off the
    trunk, ``timm`` = the open_clip config name."""
    trunk = adapter.trunk
    patch = getattr(getattr(trunk, "patch_embed", None), "patch_size", (1, 1))
    mlp = adapter.blocks[0].mlp
    return TowerConfig(image_size=tuple(adapter.visual.image_size), patch_size=tuple(patch), width=adapter.width,
                       layers=adapter.layers, heads=adapter.heads, mlp_width=int(mlp.fc2.in_features),
                       output_dim=adapter.embed_dim, eps=float(adapter._norm().eps), timm=model_name)


class TimmTower(nn.Module):
    """images [B, 3, H, W] -> y [B, D], open_clip's ``encode_image(normalize=False)`` of the tower it copies."""

    def __init__(self, visual: nn.Module, cfg: TowerConfig):
        super().__init__()
        self.visual, self.cfg = visual, cfg
        self._adapter: TowerAdapter | None = None

    @classmethod
    def of(cls, adapter: Any, model_name: str) -> "TimmTower":
        """A tower owning a copy of ``adapter``'s module (the loaded model stays untouched)."""
        return cls(copy.deepcopy(adapter.visual).eval(), timm_tower_config(adapter, model_name))

    @classmethod
    def from_config(cls, cfg: TowerConfig) -> "TimmTower":
        """The architecture of ``cfg.timm`` with uninitialised weights (the caller loads them)."""
        from clip_debias.toolchain.models.loading import _create, register_configs

        register_configs()
        model, _ = _create(cfg.timm, None, skip_init=True)
        return cls(model.visual.eval(), cfg)

    @property
    def adapter(self) -> TowerAdapter:
        """The tower adapter over this copy (its decomposition reads these weights, wherever they are moved)."""
        if self._adapter is None:
            self._adapter = tower_of(self.visual)
        return self._adapter

    @property
    def conv1(self) -> nn.Module:
        """A module whose ``weight`` gives the tower's dtype and device (as ``ExplicitViT.conv1``)."""
        for m in self.visual.modules():
            if isinstance(getattr(m, "weight", None), torch.Tensor):
                return m
        raise AttributeError("conv1")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


def tower_from_config(cfg: TowerConfig) -> nn.Module:
    """The empty tower a saved ``TowerConfig`` describes: ``TimmTower`` when ``cfg.timm`` is set, else ``ExplicitViT``."""
    from clip_debias.toolchain.models.tower import ExplicitViT

    return TimmTower.from_config(cfg) if cfg.timm else ExplicitViT(cfg)
