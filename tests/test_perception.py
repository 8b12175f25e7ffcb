"""PerceptionCLIP head: log-space == float64 probability-space reference; fp16 safety; contexts and shipped defaults."""

from __future__ import annotations

import pytest
import torch

from clip_debias.runtime.datasets import CELEBA_CLASSES, WATERBIRDS_CLASSES
from clip_debias.toolchain.correct.defaults import (attribute_pairs_for, attribute_prompts_for, classes_for, contexts_for,
                                        known_minority_groups, templates_for)
from clip_debias.toolchain.correct.perception import ContextSpec, PerceptionHead, perception_log_probs
from clip_debias.toolchain.errors import ClipDebiasError


def reference(e: torch.Tensor, text: torch.Tensor, scale: float, tau: float,
              text0: torch.Tensor | None) -> torch.Tensor:
    """P(y|x) = sum_z P(z|x) P(y|x,z), straight in probability space, float64."""
    e, text = e.double(), text.double()
    f = scale * torch.einsum("bd,zcd->bzc", e, text)
    if text0 is None:
        w = torch.exp(f / tau).sum(dim=-1)  # sum over y
    else:
        w = torch.exp(scale * e @ text0.double().T / tau)
    p_z = w / w.sum(dim=-1, keepdim=True)
    p_y_z = torch.exp(f) / torch.exp(f).sum(dim=-1, keepdim=True)
    return (p_z[:, :, None] * p_y_z).sum(dim=1)


def unit(*shape: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("class_free", [False, True])
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_log_space_equals_probability_reference(class_free, tau):
    e, text = unit(16, 24, seed=0), unit(6, 3, 24, seed=1)
    text0 = unit(6, 24, seed=2) if class_free else None
    out = perception_log_probs(e, text, 30.0, tau, text0)
    ref = reference(e, text, 30.0, tau, text0)
    assert out.shape == (16, 3)
    assert (out.double().exp() - ref).abs().max() <= 1e-6
    assert (out.double() - ref.log()).abs().max() <= 1e-5


def test_fp16_forward_has_no_inf_or_nan_under_extreme_logits():
    text = unit(4, 2, 32, seed=3)
    e = torch.cat([text[:, 0], -text[:, 1], unit(4, 32, seed=4)])  # cosines of exactly +1 / -1 and random
    for tau in (1.0, 0.01):
        for text0 in (None, text[:, 0]):
            head = PerceptionHead(text, logit_scale=1000.0, tau=tau, text0=text0).half()
            text0 = text0.double() if text0 is not None else None
            out = head(e.half())
            assert out.dtype == torch.float16 and torch.isfinite(out).all()
            ref = perception_log_probs(e.double(), text.double(), 1000.0, tau, text0)  # (float64 exp would overflow)
            assert (out.double().exp() - ref.exp()).abs().max() <= 2e-3


def test_context_spec_combinations_and_refusals():
    spec = contexts_for("celeba", None)
    assert len(spec.combinations()) == 12 and spec.combinations()[0] == "female, young, white"
    with pytest.raises(ClipDebiasError, match=r"template must be a string with '\{class\}' and '\{context\}'"):
        ContextSpec.parse({"template": "a photo of a {class}.", "contexts": {"bg": ["x"]}}, "my.yaml")
    with pytest.raises(ClipDebiasError, match="contexts must map"):
        ContextSpec.parse({"template": "a {class}, {context}.", "contexts": {"bg": []}}, "my.yaml")


def test_user_contexts_file(tmp_path):
    path = tmp_path / "ctx.yaml"
    path.write_text("template: 'a photo of a {class}, {context}.'\ncontexts:\n  light: [at night, by day]\n")
    spec = contexts_for(str(path), None)
    assert spec.combinations() == ["at night", "by day"] and spec.class_free is None


@pytest.mark.parametrize("dataset, classes", [("waterbirds", WATERBIRDS_CLASSES), ("celeba", CELEBA_CLASSES)])
def test_shipped_defaults_are_complete(dataset, classes):
    assert classes_for(None, dataset) == classes
    assert all("{}" in t for t in templates_for(None, dataset))
    names, prompts = attribute_prompts_for("defaults", dataset)
    assert len(names) == 2 and all(prompts)
    assert len(attribute_pairs_for("defaults", dataset)) >= 3
    assert len(known_minority_groups(dataset)) == 2 and known_minority_groups("csv") is None
    spec = contexts_for("defaults", dataset)
    assert spec.class_free and spec.combinations()
    assert attribute_pairs_for("defaults", "csv") is None  # no defaults for csv: optional sources give None
    with pytest.raises(ClipDebiasError, match="no shipped defaults"):
        attribute_prompts_for("defaults", "csv")


def test_head_with_the_tiny_text_tower():
    from clip_debias.toolchain.correct.perception import perception_head
    from clip_debias.toolchain.models.loading import load_clip

    clip = load_clip("clipdebias-tiny")
    spec = contexts_for("waterbirds", None)
    joint = perception_head(clip, WATERBIRDS_CLASSES, spec)
    assert joint.text.shape == (2, 2, 32) and joint.z_from == "joint"
    assert torch.allclose(joint.text.norm(dim=-1), torch.ones(2, 2), atol=1e-5)
    free = perception_head(clip, WATERBIRDS_CLASSES, spec, z_from="class-free")
    assert free.text0.shape == (2, 32) and free.config()["contexts"] == ["on land", "on water"]
    with pytest.raises(ClipDebiasError, match="needs 'class_free'"):
        perception_head(clip, WATERBIRDS_CLASSES, ContextSpec("a {class}, {context}.", {"bg": ["x", "y"]}),
                        z_from="class-free")
