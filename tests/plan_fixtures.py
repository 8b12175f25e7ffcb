"""Valid plan and cache files for tests of the readers (explain, report, file formats)."""

from __future__ import annotations

from pathlib import Path

import torch

from clip_debias.toolchain.decompose.cache import DecompositionCache, save_cache
from clip_debias.toolchain.locate.ltc import HeadScore, LocatePlan
from clip_debias.toolchain.models.loading import ModelIdentity


def write_plan(path: Path, spurious: list[list[int]], salient: list[list[int]], layers=(2, 3), n_heads: int = 4,
               identity: dict | None = None) -> Path:
    """A valid plan.json holding these heads (zero grids: enough for the readers)."""
    zeros = [[0.0] * n_heads for _ in layers]
    plan = LocatePlan(
        spurious=[HeadScore(h, 0.4, 0.1, 0.3) for h in spurious],
        salient=[HeadScore(h, 0.1, 0.4, 0.3) for h in salient],
        k=4, threshold=0.25, layers=list(layers), n_heads=n_heads, n_wrong_grid=zeros, n_correct_grid=zeros,
        minority_groups=[1, 2], minority_group_names=["g1", "g2"], minority_source="user", minority_note="",
        group_source="labels", n_minority=10, n_wrong=4, n_correct=6, dataset="csv", split="val", n=24,
        identity=identity or ModelIdentity("clipdebias-tiny").to_dict(), class_names=["a", "b"], templates=[],
        convention="textspan", protocol="default", tower_layers=4)
    return plan.save(path)


def small_cache(path: Path, identity: ModelIdentity) -> Path:
    """24 random rows of layers [2, 3] x 4 heads, D = 32 (the tiny model's shapes), two classes, four groups."""
    g = torch.Generator().manual_seed(5)
    n = 24
    cache = DecompositionCache(heads=0.05 * torch.randn(n, 2, 4, 32, generator=g), rest=torch.randn(n, 32, generator=g),
                               labels=torch.arange(n) % 2, groups=torch.arange(n) % 4, layers=[2, 3],
                               identity=identity, dataset="csv", split="val", class_names=["a", "b"],
                               group_names=[f"g{i}" for i in range(4)], paths=[f"im{i}.png" for i in range(n)])
    return save_cache(path, cache)
