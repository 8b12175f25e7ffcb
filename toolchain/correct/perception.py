"""PerceptionCLIP head: infer the context z, then classify given it (Zhou et al., ICLR 2024).

Contexts (``prompts.files.ContextSpec``): attributes with values (e.g. background: on land / on water); every
combination of values is one context z (Z in all), described by joining the values with ", ". With
f(x, y, z) = s * cos(e, t_{z,y}) (s = logit scale), t_{z,y} = text of ``template.format(class=y, context=z)``:

    joint (default):   log P(z|x) = logsumexp_y f(x,y,z)/tau - logsumexp_{y,z'} f(x,y,z')/tau
    class-free:        log P(z|x) = log_softmax_z  s * cos(e, t0_z) / tau,  t0_z = text of ``class_free`` (no class)
    log P(y|x,z) = log_softmax_y f(x, y, z)
    log P(y|x)   = logsumexp_z (log P(z|x) + log P(y|x,z))          -> the head's "logits" [B, C]

All in log space; the head upcasts to float32 internally (so fp16 models can overflow neither in exp nor in
s / tau scaling) and returns log P(y|x) in the input dtype (it lies in [-2s, 0], finite in fp16 for s < 16000).
The text matrices T [Z, C, D] and T0 [Z, D] are constant buffers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

import torch
from pydantic import BeforeValidator, Field
from pydantic.dataclasses import dataclass
from torch import nn

from clip_debias.runtime.schema import FORMAT
from clip_debias.toolchain.choices import ZFrom
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.loading import LoadedClip
from clip_debias.toolchain.prompts.files import ContextSpec
from clip_debias.toolchain.prompts.text import prompt_matrix

Z_FROM = ZFrom.values()


@torch.no_grad()
def perception_text(clip: LoadedClip, class_names: list[str], spec: ContextSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(T [Z, C, D], T0 [Z, D] or None): unit-norm embeddings of the class x context and class-free prompts."""
    zs = spec.combinations()
    rows = [[spec.template.replace("{context}", z).replace("{class}", c)] for z in zs for c in class_names]
    rows += [[spec.class_free.replace("{context}", z)] for z in zs] if spec.class_free else []
    emb = prompt_matrix(clip, rows)
    t = emb[: len(zs) * len(class_names)].reshape(len(zs), len(class_names), -1)
    return t, (emb[len(zs) * len(class_names):] if spec.class_free else None)


def perception_log_probs(e: torch.Tensor, text: torch.Tensor, logit_scale: float, tau: float = 1.0,
                         text0: torch.Tensor | None = None) -> torch.Tensor:
    """log P(y|x) [B, C] for e [B, D], text [Z, C, D], optional text0 [Z, D] (class-free P(z|x)); see module doc."""
    f = logit_scale * torch.einsum("bd,zcd->bzc", e.float(), text.float())  # [B, Z, C]
    if text0 is None:
        g = torch.logsumexp(f / tau, dim=-1)  # [B, Z]
    else:
        g = logit_scale * e.float() @ text0.float().T / tau
    log_pz = torch.log_softmax(g, dim=-1)  # [B, Z]
    log_py_z = torch.log_softmax(f, dim=-1)  # [B, Z, C]
    return torch.logsumexp(log_pz[:, :, None] + log_py_z, dim=1).to(e.dtype)


@dataclass(config=FORMAT)
class PerceptionConfig:
    """config.json's ``head`` object of a perception head (``PerceptionHead.config``)."""

    kind: Literal["perception"]
    logit_scale: float
    tau: Annotated[float, Field(gt=0, description="a number > 0")]
    z_from: Literal[Z_FROM]
    num_classes: Annotated[int, Field(ge=1, description="an integer >= 1")]
    contexts: Annotated[list[str], Field(min_length=1, description="a non-empty list of context phrases")]
    context_spec: Annotated[Optional[ContextSpec], BeforeValidator(lambda v: v or None)] = None  # {} = none given


class PerceptionHead(nn.Module):
    """logits = log P(y|x) (``perception_log_probs``); buffers ``text`` [Z, C, D] and ``text0`` [Z, D] (class-free
    variant) or [0, D] (joint)."""

    kind = "perception"

    def __init__(self, text: torch.Tensor, logit_scale: float = 100.0, tau: float = 1.0,
                 text0: torch.Tensor | None = None, contexts: list[str] | None = None, spec: dict | None = None):
        super().__init__()
        if tau <= 0:
            raise ClipDebiasError(f"--tau must be > 0, got {tau}")
        z, _, d = text.shape
        self.register_buffer("text", text.clone())
        self.register_buffer("text0", text0.clone() if text0 is not None else torch.zeros(0, d, dtype=text.dtype))
        self.logit_scale, self.tau = float(logit_scale), float(tau)
        self.contexts = list(contexts or [str(i) for i in range(z)])
        self.context_spec = dict(spec or {})

    @property
    def z_from(self) -> str:
        return "class-free" if self.text0.shape[0] else "joint"

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return perception_log_probs(e, self.text, self.logit_scale, self.tau,
                                    self.text0 if self.text0.shape[0] else None)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "logit_scale": self.logit_scale, "tau": self.tau, "z_from": self.z_from,
                "num_classes": self.text.shape[1], "contexts": self.contexts, "context_spec": self.context_spec}

    @classmethod
    def empty(cls, cfg: dict[str, Any], dim: int) -> "PerceptionHead":
        z, c = len(cfg["contexts"]), cfg["num_classes"]
        text0 = torch.zeros(z, dim) if cfg.get("z_from") == "class-free" else None
        return cls(torch.zeros(z, c, dim), cfg["logit_scale"], cfg["tau"], text0, cfg["contexts"],
                   cfg.get("context_spec"))


def perception_head(clip: LoadedClip, class_names: list[str], spec: ContextSpec, tau: float = 1.0,
                    z_from: str = "joint") -> PerceptionHead:
    """The head for ``clip``'s text tower; ``z_from`` = joint (sum over y) or class-free (needs ``class_free``)."""
    ZFrom.parse(z_from, "--z-from")
    if z_from == "class-free" and not spec.class_free:
        raise ClipDebiasError(f"{spec.origin}: --z-from class-free needs 'class_free' in the perception contexts")
    text, text0 = perception_text(clip, class_names, spec)
    return PerceptionHead(text, float(clip.model.logit_scale.detach().exp()), tau,
                          text0 if z_from == "class-free" else None, spec.combinations(), spec.to_dict())


def perception_for(clip: LoadedClip, class_names: list[str], templates: list[str], options: Any) -> PerceptionHead:
    """``build``'s perception head (``correct.heads.HEAD_KINDS``): the contexts, tau and z_from of ``options`` (a
    ``BuildOptions``); class templates are not used (the contexts' template is)."""
    if options.contexts is None:
        raise ClipDebiasError("--classifier perception needs contexts (--contexts waterbirds|celeba|FILE.yaml)")
    return perception_head(clip, class_names, options.contexts, options.tau, options.z_from)
