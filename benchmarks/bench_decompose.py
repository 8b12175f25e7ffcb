"""Decomposition (TextSpan convention) vs a plain ``encode_image`` forward: ViT-B-16, random weights, batch 8, CPU;
every layer (the default of ``decompose``) and the last 4.

Target: decomposition <= 1.25x the plain forward.
"""

from __future__ import annotations

import pytest
import torch

BATCH = 8


@pytest.fixture(scope="module")
def setup():
    from clip_debias.toolchain.decompose.contributions import Decomposer
    from clip_debias.toolchain.decompose.layers import resolve_layers
    from clip_debias.toolchain.models.loading import load_clip

    torch.manual_seed(0)
    clip = load_clip("ViT-B-16", random_weights=True)
    tower = clip.tower.explicit()
    decomposers = {spec: Decomposer(tower, resolve_layers(spec, tower.cfg.layers)) for spec in ("all", "4")}
    images = torch.randn(BATCH, 3, 224, 224)
    return clip, decomposers, images


def test_plain_encode_image(benchmark, setup):
    clip, _, images = setup
    with torch.inference_mode():
        benchmark.pedantic(clip.model.encode_image, args=(images,), rounds=8, warmup_rounds=1)


@pytest.mark.parametrize("layers", ["all", "4"])
def test_decompose(benchmark, setup, layers):
    _, decomposers, images = setup
    benchmark.extra_info.update(baseline="test_plain_encode_image", target="target <= 1.25x")
    with torch.inference_mode():
        benchmark.pedantic(decomposers[layers], args=(images,), rounds=8, warmup_rounds=1)


@pytest.mark.parametrize("layers", ["all", "4"])
def test_zz_interleaved_ratio(benchmark, setup, layers):
    """The ratio of this run from interleaved calls (robust to other processes' load); printed with -s."""
    from clip_debias.exporters.timing import describe, interleaved

    clip, decomposers, images = setup
    benchmark.pedantic(lambda: None, rounds=1)
    with torch.inference_mode():
        r = interleaved(lambda: clip.model.encode_image(images), lambda: decomposers[layers](images), rounds=8)
    benchmark.extra_info.update(r)
    print(f"\ndecompose --layers {layers} / plain encode_image, ViT-B-16 batch {BATCH}: {describe(r)} "
          "target <= 1.25x")
