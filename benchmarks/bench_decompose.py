"""Decomposition of the last 4 layers vs a plain ``encode_image`` forward: ViT-B-16, random weights, batch 8, CPU.

Target: decomposition <= 1.25x the plain forward.
"""

from __future__ import annotations

import pytest
import torch

BATCH = 8


@pytest.fixture(scope="module")
def setup():
    from toolchain.decompose.contributions import Decomposer, resolve_layers
    from toolchain.models.loading import load_clip
    from toolchain.models.tower import ExplicitViT

    torch.manual_seed(0)
    clip = load_clip("ViT-B-16")
    tower = ExplicitViT.from_open_clip(clip.model.visual)
    decomposer = Decomposer(tower, resolve_layers(tower.cfg.layers, last=4))
    images = torch.randn(BATCH, 3, 224, 224)
    return clip, decomposer, images


def test_plain_encode_image(benchmark, setup):
    clip, _, images = setup
    with torch.inference_mode():
        benchmark.pedantic(clip.model.encode_image, args=(images,), rounds=8, warmup_rounds=1)


def test_decompose_last4(benchmark, setup):
    _, decomposer, images = setup
    benchmark.extra_info.update(baseline="test_plain_encode_image", target="target <= 1.25x")
    with torch.inference_mode():
        benchmark.pedantic(decomposer, args=(images,), rounds=8, warmup_rounds=1)
