"""Last Layer Ensemble (LLE) head (Li et al., "A Whac-A-Mole Dilemma", CVPR 2023), on a frozen embedding.

K linear heads, one per *shift type* k (k = 0: original images; k >= 1: one augmentation type each, e.g. background
swap, object swap, watermark: ``correct.augment``), and a shift classifier with K outputs, all on the same embedding
e' [B, D] (the model's corrected unit-norm embedding: plain, or LTC-edited):

    logits_k = e' W_k^T + b_k                 W [K, C, D], b [K, C]
    p        = softmax(e' W_d^T + b_d)         W_d [K, D], b_d [K]        (which shift type e' looks like)
    logits   = sum_k p_k logits_k                                        -> the head's output [B, C]

Training (``correct.lle_fit``) minimises CE(W_{d(x)} f(x) + b_{d(x)}, y) + CE(W_d f(x) + b_d, d(x)) over originals
and augmented images, d(x) the type that made x: each head learns from its own type only, the shift classifier from
all. Every matrix is a constant buffer, so the baked ``DebiasedClassifier`` and its ONNX export compute the formula
above and the runtime needs nothing new.

Checked against the authors' code (facebookresearch/Whac-A-Mole: ``model/classifiers.py`` ``LastLayerEnsemble``,
``imagenet_trainers/lle.py``, ``urbancars_trainers/lle.py``): the inference formula and the loss are theirs, and by
default so are the UrbanCars head set, augmentations, schedule, weight decay and shift-classifier init
(``lle_fit``, ``augment``; docs/fidelity.md has the deviation table). Where ours differs:
- Every head starts from the zero-shot classifier (W_k = s T, s the logit scale, T [C, D] the class text matrix;
  b_k = 0), so an untrained head *is* the zero-shot head; their UrbanCars heads start as fresh ``nn.Linear`` layers,
  their ImageNet heads from the backbone's own linear classifier. The shift classifier starts as theirs
  (``nn.Linear``'s default init; ``--lle-shift-init zero``: ours, every type equally likely).
- Their UrbanCars variant trains the whole backbone; ours only the last layers (the embedding stays frozen, as in
  their ImageNet variant).
- Their loader redraws the augmentations every time an item is read; ours embeds a fixed draw (``copies`` per image
  and type) once (the features are frozen, so a cache is what makes training cheap). Per epoch both sample as many
  items as the original set from the pool of originals and augmented images.
The head computes in float32 (like ``PerceptionHead``) and returns the input dtype.
"""

from __future__ import annotations

from dataclasses import field as dataclass_field
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass
from torch import nn

from clip_debias.runtime.schema import FORMAT, FieldError
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.prompts.text import class_text_matrix

ORIGINAL = "original"  # the shift type of unaugmented images, always k = 0


def lle_logits(e: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, shift_weight: torch.Tensor,
               shift_bias: torch.Tensor) -> torch.Tensor:
    """sum_k softmax(e W_d^T + b_d)_k (e W_k^T + b_k) for e [B, D], W [K, C, D], b [K, C], W_d [K, D], b_d [K]."""
    x = e.float()
    per_type = torch.einsum("bd,kcd->bkc", x, weight.float()) + bias.float()  # [B, K, C]
    p = torch.softmax(x @ shift_weight.float().T + shift_bias.float(), dim=-1)  # [B, K]
    return (p[:, :, None] * per_type).sum(dim=1).to(e.dtype)


@dataclass(config=FORMAT)
class LleConfig:
    """config.json's ``head`` object of an LLE head (``LleHead.config``): the shift types in head order (the first
    is ``original``) and how the head was trained (``lle_fit.FitRecord``; empty for an untrained head)."""

    kind: Literal["lle"]
    num_classes: Annotated[int, Field(ge=1, description="an integer >= 1")]
    shifts: Annotated[list[str], Field(min_length=1, description="a non-empty list of shift type names")]
    training: dict[str, Any] = dataclass_field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> "LleConfig":
        """The originals' head first, each shift type once."""
        if self.shifts[0] != ORIGINAL:
            raise FieldError("shifts[0]", f"is {self.shifts[0]!r}, expected {ORIGINAL!r} (the head of the originals)")
        seen = [s for i, s in enumerate(self.shifts) if s in self.shifts[:i]]
        if seen:
            raise FieldError("shifts", f"names the shift type {seen[0]!r} twice")
        return self


class LleHead(nn.Module):
    """logits = ``lle_logits(e, weight, bias, shift_weight, shift_bias)``; ``shifts`` names the K heads."""

    kind = "lle"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, shift_weight: torch.Tensor,
                 shift_bias: torch.Tensor, shifts: list[str], training: dict[str, Any] | None = None):
        super().__init__()
        k, c, d = weight.shape
        if tuple(bias.shape) != (k, c) or tuple(shift_weight.shape) != (k, d) or tuple(shift_bias.shape) != (k,):
            raise ValueError(f"LleHead: shapes W {tuple(weight.shape)}, b {tuple(bias.shape)}, W_d "
                             f"{tuple(shift_weight.shape)}, b_d {tuple(shift_bias.shape)} do not fit K={k}, C={c}")
        if len(shifts) != k:
            raise ValueError(f"LleHead: {len(shifts)} shift names for {k} heads")
        for name, t in (("weight", weight), ("bias", bias), ("shift_weight", shift_weight), ("shift_bias", shift_bias)):
            self.register_buffer(name, t.detach().clone())
        self.shifts = list(shifts)
        self.training_record = dict(training or {})

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return lle_logits(e, self.weight, self.bias, self.shift_weight, self.shift_bias)

    def shift_probabilities(self, e: torch.Tensor) -> torch.Tensor:
        """softmax(e W_d^T + b_d) [B, K]: which shift type each embedding looks like."""
        return torch.softmax(e.float() @ self.shift_weight.float().T + self.shift_bias.float(), dim=-1)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_classes": self.weight.shape[1], "shifts": self.shifts,
                "training": self.training_record}

    @classmethod
    def empty(cls, cfg: dict[str, Any], dim: int) -> "LleHead":
        k, c = len(cfg["shifts"]), cfg["num_classes"]
        return cls(torch.zeros(k, c, dim), torch.zeros(k, c), torch.zeros(k, dim), torch.zeros(k), cfg["shifts"],
                   cfg.get("training"))

    @classmethod
    def from_zero_shot(cls, text: torch.Tensor, logit_scale: float, shifts: list[str]) -> "LleHead":
        """The untrained head: every W_k = ``logit_scale`` * text [C, D], b_k = 0, W_d = 0, b_d = 0 (so it computes
        the zero-shot logits exactly)."""
        k, (c, d) = len(shifts), text.shape
        w = (float(logit_scale) * text.float())[None].expand(k, c, d)
        return cls(w, torch.zeros(k, c), torch.zeros(k, d), torch.zeros(k), shifts)


def lle_for(clip: Any, class_names: list[str], templates: list[str], options: Any) -> LleHead:
    """``build``'s LLE head before training (``correct.heads.HEAD_KINDS``): one head per shift type of
    ``options.lle`` (checked against its dataset now, before any work), each the zero-shot head of ``templates``."""
    if options.lle is None:
        raise ClipDebiasError("--classifier lle trains on images: pass --data DIR (and --dataset) of the training "
                              "set")
    shifts = [ORIGINAL, *options.lle.resolve_augmentations().names()]
    logit_scale = float(clip.model.logit_scale.detach().exp())
    return LleHead.from_zero_shot(class_text_matrix(clip, class_names, templates), logit_scale, shifts)
