"""Decomposition (TextSpan convention, every layer) vs a plain ``encode_image`` forward for the timm towers:
ViT-B-16-SigLIP (MAP readout) and EVA02-B-16 (class token, rotary), random weights, batch 8, CPU; the ratio from
interleaved calls in one run (printed with -s).

Target: decomposition <= 1.25x the plain forward (as for open_clip's ViT, ``bench_decompose.py``).
"""

from __future__ import annotations

import pytest
import torch

BATCH = 8
MODELS = ("ViT-B-16-SigLIP", "EVA02-B-16")


@pytest.fixture(scope="module", params=MODELS)
def setup(request):
    import open_clip

    from clip_debias.toolchain.decompose.towers import decomposer_for
    from clip_debias.toolchain.models.adapter import tower_of
    from clip_debias.toolchain.models.loading import _SkipRandomInit

    torch.manual_seed(0)
    with _SkipRandomInit():  # timing only: the weights' values do not matter, their shapes do
        model = open_clip.create_model(request.param, pretrained=None).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    tower = tower_of(model.visual)
    decomposer = decomposer_for(tower, list(range(tower.layers)))
    return request.param, model, decomposer, torch.randn(BATCH, 3, 224, 224)


def test_interleaved_ratio(benchmark, setup):
    from clip_debias.exporters.timing import describe, interleaved

    name, model, decomposer, images = setup
    benchmark.pedantic(lambda: None, rounds=1)
    with torch.inference_mode():
        r = interleaved(lambda: model.encode_image(images), lambda: decomposer(images), rounds=6)
    benchmark.extra_info.update(r)
    print(f"\ndecompose (every layer) / plain encode_image, {name} batch {BATCH}: {describe(r)} target <= 1.25x")
