"""The bias lab's timm image towers, registered with timm so that open_clip's ``TimmModel`` can build them by name.

open_clip builds a timm tower from a *registered timm model name* (``vision_cfg.timm_model_name``); it passes no
depth or width. The lab's MAP-pooled model (config ``clipdebias-lab-map``) therefore names
``vit_clipdebias_lab_map``: the lab ViT's size (64 px, patch 8, width 128, 6 layers x 4 heads, MLP ratio 2) in
SigLIP's layout (timm ``VisionTransformer``: no class token, ``global_pool='map'``, the trunk's ``head`` (a biased linear map, width
128 -> embedding 64; open_clip's ``timm_proj: ""``) as the projection: an ``AttentionPoolLatent`` with
one latent query, 4 heads, MLP ratio 2, LayerNorm eps 1e-6 as SigLIP's). Registering is idempotent.
"""

from __future__ import annotations

from typing import Any

LAB_MAP_TOWER = "vit_clipdebias_lab_map"
LAB_MAP_ARGS: dict[str, Any] = dict(img_size=64, patch_size=8, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0,
                                    class_token=False, global_pool="map")


def register_timm_towers() -> None:
    """Make the lab's timm towers known to ``timm.create_model`` (no-op when already registered)."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    if LAB_MAP_TOWER in timm.list_models(LAB_MAP_TOWER):
        return

    def vit_clipdebias_lab_map(pretrained: bool = False, **kwargs: Any) -> Any:
        from functools import partial

        from torch import nn

        args = dict(LAB_MAP_ARGS, norm_layer=partial(nn.LayerNorm, eps=1e-6))
        return _create_vision_transformer(LAB_MAP_TOWER, pretrained=False, **dict(args, **kwargs))

    vit_clipdebias_lab_map.__name__ = LAB_MAP_TOWER
    register_model(vit_clipdebias_lab_map)
