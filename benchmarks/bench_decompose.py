"""Decomposition of the last 4 layers vs a plain ``encode_image`` forward: ViT-B-16, random weights, batch 8, CPU.

Target: decomposition <= 1.25x the plain forward.
"""

from __future__ import annotations

import pytest
import torch

BATCH = 8


@pytest.fixture(scope="module")
def setup():
    from clip_debias.toolchain.decompose.contributions import Decomposer, resolve_layers
    from clip_debias.toolchain.models.loading import load_clip
    from clip_debias.toolchain.models.tower import ExplicitViT

    torch.manual_seed(0)
    clip = load_clip("ViT-B-16", random_weights=True)
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


def test_zz_interleaved_ratio(benchmark, setup):
    """The ratio of this run from interleaved calls (robust to other processes' load); printed with -s."""
    from clip_debias.exporters.timing import describe, interleaved

    clip, decomposer, images = setup
    benchmark.pedantic(lambda: None, rounds=1)
    with torch.inference_mode():
        r = interleaved(lambda: clip.model.encode_image(images), lambda: decomposer(images), rounds=8)
    benchmark.extra_info.update(r)
    print(f"\ndecompose last 4 / plain encode_image, ViT-B-16 batch {BATCH}: {describe(r)} target <= 1.25x")
