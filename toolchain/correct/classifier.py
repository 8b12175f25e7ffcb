"""``DebiasedClassifier``: image -> (logits, embedding) with the LTC edits and the classifier head baked in.

forward(image [B, 3, H, W]):
    trace the tower, keeping the CLS-query head outputs o [B, H, Dh] of the edited layers only
    e   = y / ||y||                                                     (plain normalized embedding, [B, D])
    c_j = o_{l_j, h_j} @ A_j / (sigma ||y||)  for each edited head j    ([B, E, D], A_j constant [Dh, D])
    e'  = corrected_embedding(e, c_ablated, mu, c_salient, u, renorm)   (``toolchain.correct.edits``)
    logits = head(e')                                                   (zero-shot or PerceptionCLIP, constants)

Everything that depends on data or text (mu, u, the text matrices) is a constant buffer, so the saved model
(``model.safetensors`` + ``config.json``) reloads and exports without the plan, the data or the text tower.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clip_debias.runtime.atomic_output import staged_directory
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.toolchain.correct.edits import Renorm, corrected_embedding
from clip_debias.toolchain.models.tower import ExplicitViT, TowerConfig

CONFIG_NAME = "config.json"
MODEL_DIR_KIND = "a model directory written by 'clip-debias build'"  # what staged_directory refuses to replace
WEIGHTS_NAME = "model.safetensors"
MODEL_FORMAT = 1


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


HEAD_KINDS: dict[str, type[nn.Module]] = {"zeroshot": ZeroShotHead}


def register_head(cls: type[nn.Module]) -> type[nn.Module]:
    """Make a head kind loadable by name. A head has ``kind``, ``forward(e [B, D]) -> [B, C]``, ``config()`` and
    ``empty(config, dim)`` (same shapes, buffers filled by ``load_state_dict``)."""
    HEAD_KINDS[cls.kind] = cls
    return cls


@dataclass
class ClassifierSpec:
    """What ``config.json`` holds: architecture, identity, labels, preprocessing and the edits."""

    tower: dict[str, Any]
    identity: dict[str, Any]
    class_names: list[str]
    group_names: list[str]
    preprocess: dict[str, Any]
    ablated: list[list[int]] = field(default_factory=list)  # [[layer, head], ...] mean-ablated
    salient: list[list[int]] = field(default_factory=list)  # [[layer, head], ...] projected
    basis_rank: int = 0
    renorm: str = "unit"
    head: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)  # provenance: the LocatePlan summary, calibration split...
    format: int = MODEL_FORMAT


class DebiasedClassifier(nn.Module):
    """A CLIP zero-shot classifier whose forward pass is the corrected classifier. See module docstring."""

    def __init__(self, tower: ExplicitViT, head: nn.Module, spec: ClassifierSpec,
                 ablation_means: torch.Tensor | None = None, basis: torch.Tensor | None = None):
        super().__init__()
        self.tower, self.head, self.spec = tower, head, spec
        d = tower.cfg.embed_dim
        self.edited = [tuple(p) for p in spec.ablated] + [tuple(p) for p in spec.salient]
        self.layers = sorted({l for l, _ in self.edited})
        for l, h in self.edited:
            if not (0 <= l < tower.cfg.layers and 0 <= h < tower.cfg.heads):
                raise ClipDebiasError(
                    f"plan head [{l}, {h}] is out of range for a tower of {tower.cfg.layers} layers x "
                    f"{tower.cfg.heads} heads")
        self.n_ablated = len(spec.ablated)
        # index of each edited head in the [B, L_edited * H] flattened head outputs
        flat = [self.layers.index(l) * tower.cfg.heads + h for l, h in self.edited]
        self.register_buffer("flat_index", torch.tensor(flat, dtype=torch.long), persistent=False)
        dtype = tower.conv1.weight.dtype
        readout = tower.head_readout(self.layers).reshape(-1, tower.cfg.head_dim, d) if self.layers else \
            torch.zeros(0, tower.cfg.head_dim, d, dtype=dtype)
        self.register_buffer("readout", readout[flat].contiguous() if flat else readout[:0], persistent=False)
        means = ablation_means if ablation_means is not None else torch.zeros(self.n_ablated, d)
        self.register_buffer("ablation_means", means.detach().to(dtype).reshape(self.n_ablated, d))
        b = basis if basis is not None else torch.zeros(spec.basis_rank, d)
        self.register_buffer("basis", b.detach().to(dtype).reshape(spec.basis_rank, d))

    @property
    def renorm(self) -> Renorm:
        return "keep" if self.spec.renorm == "keep" else "unit"

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> corrected unit-norm embedding e' [B, D]."""
        if not self.edited:
            y = self.tower(images)
            return y / y.norm(dim=-1, keepdim=True)
        tr = self.tower.trace(images, self.layers)
        e = tr.pooled / tr.pooled.norm(dim=-1, keepdim=True)
        o = torch.cat([tr.head_out[l] for l in self.layers], dim=1)[:, self.flat_index]  # [B, E, Dh]
        c = torch.einsum("bek,ekd->bed", o, self.readout) * self.tower.term_scale(tr)[:, :, None]  # [B, E, D]
        a = self.n_ablated
        return corrected_embedding(e, c[:, :a], self.ablation_means, c[:, a:], self.basis, self.renorm)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] -> (logits [B, C], embedding e' [B, D])."""
        e = self.embed(images)
        return self.head(e), e

    # ---- persistence --------------------------------------------------------------------------------------------
    def save(self, model_dir: str | Path) -> Path:
        """Write ``model.safetensors`` then ``config.json`` into a temp dir beside ``model_dir``, then rename it onto
        ``model_dir`` (refused when that is a non-empty directory without ``config.json``: not a model of ours)."""
        from safetensors.torch import save_file

        spec = asdict(self.spec)
        spec["head"] = self.head.config()
        with staged_directory(model_dir, CONFIG_NAME, MODEL_DIR_KIND) as tmp:
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME))
            (tmp / CONFIG_NAME).write_text(json.dumps(spec, indent=2))
        return Path(model_dir)

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu") -> "DebiasedClassifier":
        """Rebuild from ``config.json`` and ``model.safetensors`` (no open_clip, plan or data needed)."""
        from safetensors.torch import load_file

        import clip_debias.toolchain.correct.perception  # noqa: F401  (registers the 'perception' head kind)

        model_dir = Path(model_dir)
        cfg_path, w_path = model_dir / CONFIG_NAME, model_dir / WEIGHTS_NAME
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise ClipDebiasError(f"{p}: missing (expected a model directory written by 'clip-debias build')")
        try:
            raw = json.loads(cfg_path.read_text())
            spec = ClassifierSpec(**raw)
        except (json.JSONDecodeError, TypeError) as e:
            raise ClipDebiasError(f"{cfg_path}: not a clip-debias model config ({e})") from e
        if spec.format != MODEL_FORMAT:
            raise ClipDebiasError(f"{cfg_path}: field 'format' is {spec.format}, expected {MODEL_FORMAT}")
        tower = ExplicitViT(TowerConfig.from_dict(spec.tower))
        kind = spec.head.get("kind")
        if kind not in HEAD_KINDS:
            raise ClipDebiasError(f"{cfg_path}: field 'head.kind' is {kind!r}, expected one of {sorted(HEAD_KINDS)}")
        state = load_file(str(w_path))
        # the folded readouts are derived from the tower weights at construction: load those first
        tower_state = {k[len("tower."):]: v for k, v in state.items() if k.startswith("tower.")}
        try:
            tower.load_state_dict(tower_state, strict=True)
        except RuntimeError as e:
            raise ClipDebiasError(f"{w_path}: tower weights do not match {cfg_path} ({str(e).splitlines()[0]})") from e
        head = HEAD_KINDS[kind].empty(spec.head, tower.cfg.embed_dim)
        model = cls(tower, head, spec)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ClipDebiasError(f"{w_path}: weights do not match {cfg_path} (missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]})")
        return model.to(device).eval()


def plain_classifier(clip: Any, class_names: list[str], group_names: list[str] | None = None,
                     templates: tuple[str, ...] | list[str] | None = None) -> DebiasedClassifier:
    """The unedited zero-shot classifier of a ``LoadedClip``: logits = logit_scale * e @ T^T."""
    from clip_debias.toolchain.models.text import DEFAULT_TEMPLATES, class_text_matrix

    tower = ExplicitViT.from_open_clip(clip.model.visual)
    text = class_text_matrix(clip, class_names, templates or DEFAULT_TEMPLATES)
    spec = ClassifierSpec(tower=tower.cfg.to_dict(), identity=clip.identity.to_dict(), class_names=list(class_names),
                          group_names=list(group_names or []), preprocess=clip.preprocess_cfg)
    return DebiasedClassifier(tower, ZeroShotHead(text, float(clip.model.logit_scale.detach().exp())), spec).eval()
