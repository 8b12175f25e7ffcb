"""PerceptionCLIP head: log-space == float64 probability-space reference; fp16 safety; contexts and shipped defaults."""

from __future__ import annotations

import pytest
import torch

from clip_debias.runtime.datasets import CELEBA_CLASSES, WATERBIRDS_CLASSES
from clip_debias.toolchain.correct.perception import PerceptionHead, perception_log_probs
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.prompts.defaults import (attribute_pairs_for, attribute_prompts_for, classes_for,
                                                    contexts_for, known_minority_groups, templates_for)
from clip_debias.toolchain.prompts.files import ContextSpec


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


BAD_CONTEXTS = [  # (YAML of a contexts file, the error after 'FILE: ')
    ("template: 'a photo of a {class}.'\ncontexts: {bg: [x]}\n",
     "field 'perception.template': expected a template with '{class}' and '{context}', got the string "
     '"a photo of a {class}."'),
    ("template: 'a {class}, {context}.'\ncontexts: {bg: []}\n",
     "field 'perception.contexts.bg': expected a non-empty list of strings, got []"),
    ("template: 'a {class}, {context}.'\ncontexts: {}\n",
     "field 'perception.contexts': expected an object mapping each context attribute to a non-empty list of values, "
     "got an empty object"),
    ("template: 'a {class}, {context}.'\ncontexts: {bg: [x, 3]}\n",
     "field 'perception.contexts.bg[1]': expected a string, got the number 3"),
    ("template: 'a {class}, {context}.'\ncontexts: {bg: [x]}\nclass_free: a bird\n",
     "field 'perception.class_free': expected a template with '{context}', got the string \"a bird\""),
    ("perception:\n  template: 'a {class}, {context}.'\n  context: {bg: [x]}\n",
     "field 'perception.contexts': missing (expected an object mapping each context attribute to a non-empty list "
     "of values) (and 1 more problem)"),
    ("perception: {template: 'a {class}, {context}.', contexts: {bg: [x]}}\nattribute_pairs: [[a, b, c]]\n",
     "field 'attribute_pairs[0]': expected a [positive, negative] prompt pair, got [\"a\", \"b\", \"c\"]"),
    ("perception: {template: 'a {class}, {context}.', contexts: {bg: [x]}}\norigin: me\n",
     "field 'origin': unknown field (allowed: classes, templates, minority_groups, attribute_prompts, "
     "attribute_pairs, perception)"),
]


@pytest.mark.parametrize("text,message", BAD_CONTEXTS)
def test_malformed_contexts_file_names_file_and_field(tmp_path, text, message):
    path = tmp_path / "ctx.yaml"
    path.write_text(text)
    with pytest.raises(ClipDebiasError) as e:
        contexts_for(str(path), None)
    assert str(e.value) == f"{path}: {message}"


def test_context_spec_combinations():
    spec = contexts_for("celeba", None)
    assert len(spec.combinations()) == 12 and spec.combinations()[0] == "female, young, white"
    assert spec.origin == "defaults:celeba"


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

    clip = load_clip("clipdebias-tiny", random_weights=True)
    spec = contexts_for("waterbirds", None)
    joint = perception_head(clip, WATERBIRDS_CLASSES, spec)
    assert joint.text.shape == (2, 2, 32) and joint.z_from == "joint"
    assert torch.allclose(joint.text.norm(dim=-1), torch.ones(2, 2), atol=1e-5)
    free = perception_head(clip, WATERBIRDS_CLASSES, spec, z_from="class-free")
    assert free.text0.shape == (2, 32) and free.config()["contexts"] == ["on land", "on water"]
    with pytest.raises(ClipDebiasError, match="needs 'class_free'"):
        perception_head(clip, WATERBIRDS_CLASSES, ContextSpec("a {class}, {context}.", {"bg": ["x", "y"]}),
                        z_from="class-free")
