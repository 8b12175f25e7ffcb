"""Classifier heads: e' [B, D] -> logits [B, C], with the data they need baked in as constant buffers.

``HEAD_KINDS`` is the one table of head kinds (``build --classifier``, config.json's ``head.kind``). A head module has
``kind``, ``forward(e)``, ``config()`` (config.json's ``head`` object) and ``empty(config, dim)`` (same shapes,
buffers filled by ``load_state_dict``); a kind adds the model of its config, how ``build`` makes it and, for a head
trained on the built model's embeddings (LLE), how ``build`` then trains it. A new head kind is one entry here and its
name in ``toolchain.choices.HeadName`` (``--classifier``; checked at import).
"""

from __future__ import annotations

from dataclasses import dataclass as plain_dataclass
from typing import Annotated, Any, Callable, Literal

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from clip_debias.runtime.schema import FORMAT
from clip_debias.toolchain.choices import HeadName
from clip_debias.toolchain.correct.lle import LleConfig, LleHead, lle_for
from clip_debias.toolchain.correct.lle_fit import fit_lle
from clip_debias.toolchain.correct.perception import PerceptionConfig, PerceptionHead, perception_for
from clip_debias.toolchain.models.loading import LoadedClip
from clip_debias.toolchain.prompts.text import class_text_matrix


class ZeroShotHead(nn.Module):
    """logits = logit_scale * e' @ T^T, T [C, D] unit-norm class text embeddings."""

    kind = "zeroshot"

    def __init__(self, text: torch.Tensor, logit_scale: float = 100.0):
        super().__init__()
        self.register_buffer("text", text.clone())
        self.logit_scale = float(logit_scale)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * e @ self.text.T

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "logit_scale": self.logit_scale, "num_classes": self.text.shape[0]}

    @classmethod
    def empty(cls, cfg: dict[str, Any], dim: int) -> "ZeroShotHead":
        return cls(torch.zeros(cfg["num_classes"], dim), cfg["logit_scale"])


@dataclass(config=FORMAT)
class ZeroShotConfig:
    """config.json's ``head`` object of a zero-shot head (``ZeroShotHead.config``)."""

    kind: Literal["zeroshot"]
    logit_scale: float
    num_classes: Annotated[int, Field(ge=1, description="an integer >= 1")]


def logit_scale_of(clip: LoadedClip) -> float:
    """exp of the CLIP model's learned logit scale."""
    return float(clip.model.logit_scale.detach().exp())


def zeroshot_for(clip: LoadedClip, class_names: list[str], templates: list[str], options: Any) -> ZeroShotHead:
    """``build``'s zero-shot head: T = the class text matrix of ``templates`` (prompt ensembling)."""
    return ZeroShotHead(class_text_matrix(clip, class_names, templates), logit_scale_of(clip))


@plain_dataclass(frozen=True)
class HeadKind:
    """One head kind: its module, the model of its config.json ``head`` object, ``make(clip, class_names,
    templates, options)`` -> the head (``options``: ``build.BuildOptions``) and, for a head trained on the built
    model's embeddings, ``fit(model, options)`` -> the trained head (``model``: the ``DebiasedClassifier`` holding
    the made head)."""

    module: type[nn.Module]
    config: type
    make: Callable[[Any, list[str], list[str], Any], nn.Module]
    fit: Callable[[Any, Any], nn.Module] | None = None


HEAD_KINDS: dict[str, HeadKind] = {
    "zeroshot": HeadKind(ZeroShotHead, ZeroShotConfig, zeroshot_for),
    "perception": HeadKind(PerceptionHead, PerceptionConfig, perception_for),
    "lle": HeadKind(LleHead, LleConfig, lle_for, fit_lle),
}
if tuple(HEAD_KINDS) != HeadName.values():  # the CLI's --classifier lists HeadName (torch-free)
    raise ImportError(f"HEAD_KINDS {tuple(HEAD_KINDS)} and toolchain.choices.HeadName {HeadName.values()} differ")
