"""The bias lab's timm image towers, registered with timm so that open_clip's ``TimmModel`` can build them by name.

open_clip builds a timm tower from a *registered timm model name* (``vision_cfg.timm_model_name``); it passes no
depth or width. The lab's MAP-pooled model (config ``clipdebias-lab-map``) therefore names
``vit_clipdebias_lab_map``: the lab ViT's size (64 px, patch 8, width 128, 6 layers x 4 heads, MLP ratio 2) in
SigLIP's layout (timm ``VisionTransformer``: no class token, ``global_pool='map'``, the trunk's ``head`` (a biased linear map, width
128 -> embedding 64; open_clip's ``timm_proj: ""``) as the projection: an ``AttentionPoolLatent`` with
one latent query, 4 heads, MLP ratio 2, LayerNorm eps 1e-6 as SigLIP's). Registering is idempotent.

``eva02_clipdebias_tiny`` (config ``clipdebias-tiny-eva``, random weights only: tests) is EVA02-B/16's timm ``Eva`` in
miniature: the same block (separate q/k/v, rotary position embeddings, SwiGLU MLP with its inner norm, the
scale-attn-inner LayerNorm) and class-token readout, at 32 px, patch 8, width 64, 2 layers x 4 heads.
"""

from __future__ import annotations

from typing import Any

LAB_MAP_TOWER = "vit_clipdebias_lab_map"
LAB_MAP_ARGS: dict[str, Any] = dict(img_size=64, patch_size=8, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0,
                                    class_token=False, global_pool="map")
TINY_EVA_TOWER = "eva02_clipdebias_tiny"
TINY_EVA_ARGS: dict[str, Any] = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, qkv_fused=False,
                                     mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True,
                                     use_rot_pos_emb=True, ref_feat_shape=(4, 4), global_pool="token")


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

    def eva02_clipdebias_tiny(pretrained: bool = False, **kwargs: Any) -> Any:
        from timm.models.eva import _create_eva

        return _create_eva(TINY_EVA_TOWER, pretrained=False, **dict(TINY_EVA_ARGS, **kwargs))

    eva02_clipdebias_tiny.__name__ = TINY_EVA_TOWER
    register_model(eva02_clipdebias_tiny)
