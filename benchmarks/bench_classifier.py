"""Cost of the baked corrections: edited ``DebiasedClassifier`` vs the plain encoder, ViT-B-16 random weights, CPU.

Edited: 2 mean-ablated heads + 2 projected heads (rank-3 basis) in the last 2 layers, TextSpan-convention terms
(the default), PerceptionCLIP head
(Z = 4 contexts, joint P(z|x)). Plain: the same ``ExplicitViT`` with no edits and the zero-shot head.
Target: edited / plain <= 1.03 at batch 1 and 32.

    python -m pytest benchmarks/bench_classifier.py --benchmark-only -s

The ratio printed per batch size comes from one run: the two models alternate, round by round, on the same input
(so load from other processes hits both alike); ratio = min(edited) / min(plain), beside it the median of the
per-round ratios and the ratio of process CPU time. The pytest-benchmark table then times the edited model alone;
the plain timings and the ratios are in its ``extra_info`` (``--benchmark-json``).
"""

from __future__ import annotations

import pytest
import torch

from clip_debias.exporters.timing import describe, interleaved
from clip_debias.toolchain.correct.classifier import ClassifierSpec, DebiasedClassifier, PreprocessRecord
from clip_debias.toolchain.correct.edits import orthonormal_basis
from clip_debias.toolchain.correct.heads import ZeroShotHead
from clip_debias.toolchain.correct.perception import PerceptionHead
from clip_debias.toolchain.models.loading import load_clip

ABLATED = [[10, 3], [11, 5]]
SALIENT = [[10, 7], [11, 1]]
ROUNDS = {1: 30, 32: 3}


@pytest.fixture(scope="module")
def models() -> tuple[DebiasedClassifier, DebiasedClassifier]:
    torch.manual_seed(0)
    clip = load_clip("ViT-B-16", random_weights=True)
    tower = clip.tower.explicit()
    d = tower.cfg.embed_dim
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s), dim=-1)  # noqa: E731

    def spec(ablated: list, salient: list, rank: int) -> ClassifierSpec:
        return ClassifierSpec(tower=tower.cfg.to_dict(), identity=clip.identity.to_dict(), class_names=["a", "b"],
                              group_names=[], preprocess=PreprocessRecord.of(clip.preprocess_cfg), ablated=ablated,
                              salient=salient, basis_rank=rank, convention="textspan")

    plain = DebiasedClassifier(tower, ZeroShotHead(unit(2, d)), spec([], [], 0)).eval()
    edited = DebiasedClassifier(tower, PerceptionHead(unit(4, 2, d), 100.0), spec(ABLATED, SALIENT, 3),
                                ablation_means=0.01 * torch.randn(2, d),
                                basis=orthonormal_basis(torch.randn(3, d))).eval()
    return plain, edited


@pytest.mark.parametrize("batch", [1, 32])
def test_edited_vs_plain(benchmark, models, batch: int):
    plain, edited = models
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        plain(x), edited(x)  # warm-up
        r = interleaved(lambda: plain(x), lambda: edited(x), ROUNDS[batch], warmup=0)
        print(f"\n[batch {batch}] plain vs edited: {describe(r)}; {ROUNDS[batch]} rounds")
        benchmark.extra_info.update(r)
        benchmark.group = f"batch {batch}"
        benchmark.pedantic(edited, args=(x,), rounds=ROUNDS[batch], iterations=1)

