"""PerceptionCLIP head: infer the context z, then classify given it (Zhou et al., ICLR 2024).

Contexts: attributes with values (e.g. background: on land / on water); every combination of values is one context
z (Z in all), described by joining the values with ", ". With f(x, y, z) = s * cos(e, t_{z,y}) (s = logit scale),
t_{z,y} = text of ``template.format(class=y, context=z)``:

    joint (default):   log P(z|x) = logsumexp_y f(x,y,z)/tau - logsumexp_{y,z'} f(x,y,z')/tau
    class-free:        log P(z|x) = log_softmax_z  s * cos(e, t0_z) / tau,  t0_z = text of ``class_free`` (no class)
    log P(y|x,z) = log_softmax_y f(x, y, z)
    log P(y|x)   = logsumexp_z (log P(z|x) + log P(y|x,z))          -> the head's "logits" [B, C]

All in log space; the head upcasts to float32 internally (so fp16 models can overflow neither in exp nor in
s / tau scaling) and returns log P(y|x) in the input dtype (it lies in [-2s, 0], finite in fp16 for s < 16000).
The text matrices T [Z, C, D] and T0 [Z, D] are constant buffers.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from clip_debias.toolchain.correct.classifier import register_head
from clip_debias.toolchain.errors import ClipDebiasError

Z_FROM = ("joint", "class-free")


@dataclass
class ContextSpec:
    """Prompt template with ``{class}`` and ``{context}``, optional class-free template with ``{context}`` and the
    context attributes {name: [values]} (combinations in row-major order of the attributes as given)."""

    template: str
    contexts: dict[str, list[str]]
    class_free: str | None = None
    origin: str = ""

    def combinations(self) -> list[str]:
        """The Z context phrases: values of one combination joined with ", "."""
        return [", ".join(combo) for combo in itertools.product(*self.contexts.values())]

    @classmethod
    def parse(cls, value: Any, origin: str) -> "ContextSpec":
        """From the ``perception`` mapping of a defaults or user YAML file."""
        where = f"{origin}: field 'perception'"
        if not isinstance(value, dict):
            raise ClipDebiasError(f"{where} must be a mapping with template, contexts (and optional class_free)")
        template, contexts, class_free = value.get("template"), value.get("contexts"), value.get("class_free")
        if not isinstance(template, str) or "{class}" not in template or "{context}" not in template:
            raise ClipDebiasError(f"{where}.template must be a string with '{{class}}' and '{{context}}'")
        if class_free is not None and (not isinstance(class_free, str) or "{context}" not in class_free):
            raise ClipDebiasError(f"{where}.class_free must be a string with '{{context}}'")
        if not isinstance(contexts, dict) or not contexts or not all(
                isinstance(v, list) and v and all(isinstance(s, str) for s in v) for v in contexts.values()):
            raise ClipDebiasError(f"{where}.contexts must map each attribute to a non-empty list of value strings")
        return cls(template, {str(k): list(v) for k, v in contexts.items()}, class_free, origin)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def perception_text(clip: Any, class_names: list[str], spec: ContextSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(T [Z, C, D], T0 [Z, D] or None): unit-norm embeddings of the class x context and class-free prompts."""
    from clip_debias.toolchain.correct.defaults import prompt_matrix

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


@register_head
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


def perception_head(clip: Any, class_names: list[str], spec: ContextSpec, tau: float = 1.0,
                    z_from: str = "joint") -> PerceptionHead:
    """The head for ``clip``'s text tower; ``z_from`` = joint (sum over y) or class-free (needs ``class_free``)."""
    if z_from not in Z_FROM:
        raise ClipDebiasError(f"--z-from {z_from!r}: expected one of {', '.join(Z_FROM)}")
    if z_from == "class-free" and not spec.class_free:
        raise ClipDebiasError(f"{spec.origin}: --z-from class-free needs 'class_free' in the perception contexts")
    text, text0 = perception_text(clip, class_names, spec)
    return PerceptionHead(text, float(clip.model.logit_scale.detach().exp()), tau,
                          text0 if z_from == "class-free" else None, spec.combinations(), spec.to_dict())
