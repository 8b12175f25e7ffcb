"""``DebiasedClassifier``: image -> (logits, embedding) with the LTC edits and the classifier head baked in.

forward(image [B, 3, H, W]) (open_clip's ViT: an ``ExplicitViT``; a timm tower: a ``TimmTower``, whose edited head
terms c_j are the ``PooledDecomposer``'s, computed in the same forward):
    trace the tower, keeping the CLS-query head outputs o [B, H, Dh] of the edited layers only
    e   = y / ||y||                                                     (plain normalized embedding, [B, D])
    c_j = (o_{l_j, h_j} @ A_j + k_j - mu q) / (sigma ||y||) + r / ||y||  for each edited head j, in the plan's
          decomposition convention (``toolchain.decompose.conventions``; k, q, r = 0 for centred)  [B, E, D]
    e'  = corrected_embedding(e, c_ablated, mu, c_salient, u, renorm)   (``toolchain.correct.edits``)
    logits = head(e')                                     (a kind of ``correct.heads.HEAD_KINDS``, constants)

Everything that depends on data or text (mu, u, the text matrices) is a constant buffer, so the saved model
(``model.safetensors`` + ``config.json``) reloads and exports without the plan, the data or the text tower.
"""

from __future__ import annotations

import json
from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass
from torch import nn

from clip_debias.runtime.atomic_output import staged_directory
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.schema import FORMAT, FieldError, describe_value, read_json, stored_as_dict, validate
from clip_debias.toolchain.correct.edits import LEGACY_RENORMS, RENORMS, Renorm, corrected_embedding
from clip_debias.toolchain.correct.heads import HEAD_KINDS, ZeroShotHead, logit_scale_of
from clip_debias.toolchain.decompose.conventions import (CONVENTIONS, DEFAULT_CONVENTION, LnStats, Readout,
                                                         apply_readout, head_readout)
from clip_debias.toolchain.locate.ltc import HeadIndex, IdentityRecord
from clip_debias.toolchain.models.loading import LoadedClip
from clip_debias.toolchain.decompose.pooled import PooledDecomposer
from clip_debias.toolchain.models.timm_tower import TimmTower, tower_from_config
from clip_debias.toolchain.models.tower import TowerConfig
from clip_debias.toolchain.prompts.text import DEFAULT_TEMPLATES, class_text_matrix

CONFIG_NAME = "config.json"
MODEL_DIR_KIND = "model"  # its output kind (runtime.ownership.FOLDER_KINDS)
CONFIG_WHAT = "a model config written by 'clip-debias build'"
WEIGHTS_NAME = "model.safetensors"
MODEL_FORMAT = 1

__all__ = ["ClassifierSpec", "DebiasedClassifier", "PreprocessRecord", "ZeroShotHead", "plain_classifier"]


@dataclass(config=FORMAT)
class PreprocessRecord:
    """open_clip's ``preprocess_cfg`` of the model (its eval transform), as config.json records it."""

    size: Annotated[list[int], Field(min_length=2, max_length=2, description="[H, W] (two integers)")]
    mean: Annotated[list[float], Field(min_length=3, max_length=3, description="three numbers (R, G, B)")]
    std: Annotated[list[float], Field(min_length=3, max_length=3, description="three numbers (R, G, B)")]
    mode: str = "RGB"
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def of(cls, preprocess_cfg: dict[str, Any]) -> dict[str, Any]:
        """The record of a ``LoadedClip.preprocess_cfg`` (the keys above; others are open_clip's, not ours)."""
        return {k: v for k, v in preprocess_cfg.items() if k in cls.__dataclass_fields__}


TowerRecord = stored_as_dict(TowerConfig)  # validated as a TowerConfig, kept as its dict
PreprocessDict = stored_as_dict(PreprocessRecord)


@dataclass(config=FORMAT)
class ClassifierSpec:
    """What ``config.json`` holds: architecture, identity, labels, preprocessing and the edits. ``head`` is the
    head's ``config()`` (checked against its kind's model in ``read_spec``); ``plan`` the provenance (the
    LocatePlan summary, calibration split, options)."""

    tower: TowerRecord
    identity: IdentityRecord
    class_names: Annotated[list[str], Field(min_length=1, description="a non-empty list of strings")]
    group_names: list[str]
    preprocess: PreprocessDict
    ablated: list[HeadIndex] = field(default_factory=list)  # [[layer, head], ...] mean-ablated
    salient: list[HeadIndex] = field(default_factory=list)  # [[layer, head], ...] projected
    basis_rank: Annotated[int, Field(ge=0, description="an integer >= 0")] = 0
    # stepwise | keep | unit-once; "unit" (models built before the rename) computes unit-once
    renorm: Literal[(*RENORMS, *LEGACY_RENORMS)] = "stepwise"
    # the decomposition convention of the edited head terms; models built before the field existed used "centred"
    convention: Literal[CONVENTIONS] = "centred"
    head: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)  # provenance: the LocatePlan summary, calibration split...
    format: int = MODEL_FORMAT

    @model_validator(mode="after")
    def _check(self) -> "ClassifierSpec":
        """The format, and every edited head inside the tower (layers x heads), each once."""
        if self.format != MODEL_FORMAT:
            raise FieldError("format", f"is {self.format}, expected {MODEL_FORMAT}")
        layers, heads = self.tower["layers"], self.tower["heads"]
        seen: dict[tuple[int, int], str] = {}
        for role in ("ablated", "salient"):
            for i, (l, h) in enumerate(getattr(self, role)):
                name = f"{role}[{i}]"
                if not (0 <= l < layers and 0 <= h < heads):
                    raise FieldError(name, f"[{l}, {h}] is outside the tower ({layers} layers x {heads} heads)")
                if (l, h) in seen:
                    raise FieldError(name, f"[{l}, {h}] is also '{seen[l, h]}'; each head is edited once")
                seen[l, h] = name
        return self


def read_spec(path: str | Path) -> ClassifierSpec:
    """A model directory's ``config.json``, validated (its ``head`` object by the model of its kind); one line naming
    the file and the field for anything malformed."""
    raw = read_json(path, CONFIG_WHAT)
    if isinstance(raw, dict) and raw.get("format", MODEL_FORMAT) != MODEL_FORMAT:
        raise ClipDebiasError(f"{path}: field 'format': is {json.dumps(raw['format'])}, expected {MODEL_FORMAT}")
    spec = validate(ClassifierSpec, raw, str(path), CONFIG_WHAT)
    kind = spec.head.get("kind")
    if kind not in HEAD_KINDS:
        raise ClipDebiasError(f"{path}: field 'head.kind': expected one of {', '.join(map(repr, HEAD_KINDS))}, got "
                              f"{describe_value(kind)}")
    validate(HEAD_KINDS[kind].config, spec.head, str(path), CONFIG_WHAT, prefix="head")
    return spec


class DebiasedClassifier(nn.Module):
    """A CLIP zero-shot classifier whose forward pass is the corrected classifier. See module docstring."""

    def __init__(self, tower: nn.Module, head: nn.Module, spec: ClassifierSpec,
                 ablation_means: torch.Tensor | None = None, basis: torch.Tensor | None = None):
        super().__init__()
        self.tower, self.head, self.spec = tower, head, spec
        d = tower.cfg.embed_dim
        self.edited = [tuple(p) for p in spec.ablated] + [tuple(p) for p in spec.salient]
        self.layers = sorted({l for l, _ in self.edited})
        self.n_ablated = len(spec.ablated)
        # index of each edited head in the [B, L_edited * H] flattened head outputs
        flat = [self.layers.index(l) * tower.cfg.heads + h for l, h in self.edited]
        self.register_buffer("flat_index", torch.tensor(flat, dtype=torch.long), persistent=False)
        dtype = tower.conv1.weight.dtype
        # a timm tower: the edited heads' terms come from its PooledDecomposer (held outside the module tree: it reads
        # the tower's own weights, which must be saved once)
        self._pooled: dict[str, nn.Module] = {}
        if isinstance(tower, TimmTower):
            if self.edited:
                self._pooled["decomposer"] = PooledDecomposer(tower.adapter, self.layers, spec.convention)
        else:
            full = head_readout(tower, self.layers, spec.convention).to(dtype)
            self.centring, self.offset = full.centring, full.offset
            readout = full.A.reshape(-1, tower.cfg.head_dim, d)
            bias = full.k.reshape(-1, d)
            self.register_buffer("readout", readout[flat].contiguous() if flat else readout[:0], persistent=False)
            self.register_buffer("term_bias", bias[flat].contiguous() if flat else bias[:0], persistent=False)
            self.register_buffer("mean_share", full.q, persistent=False)
            self.register_buffer("beta_share", full.r, persistent=False)
        means = ablation_means if ablation_means is not None else torch.zeros(self.n_ablated, d)
        self.register_buffer("ablation_means", means.detach().to(dtype).reshape(self.n_ablated, d))
        b = basis if basis is not None else torch.zeros(spec.basis_rank, d)
        self.register_buffer("basis", b.detach().to(dtype).reshape(spec.basis_rank, d))

    @property
    def renorm(self) -> Renorm:
        return LEGACY_RENORMS.get(self.spec.renorm, self.spec.renorm)  # type: ignore[return-value]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> corrected unit-norm embedding e' [B, D]."""
        if not self.edited:
            y = self.tower(images)
            return y / y.norm(dim=-1, keepdim=True)
        a = self.n_ablated
        if self._pooled:  # timm tower: c_{l,h} as the PooledDecomposer computes it (module docstring there)
            hc = self._pooled["decomposer"](images)  # heads [B, L_edited, H, D], embeddings e [B, D]
            c = hc.heads.flatten(1, 2)[:, self.flat_index]  # [B, E, D]
            return corrected_embedding(hc.embeddings, c[:, :a], self.ablation_means, c[:, a:], self.basis,
                                       self.renorm)
        tr = self.tower.trace(images, self.layers)
        e = tr.pooled / tr.pooled.norm(dim=-1, keepdim=True)
        o = torch.cat([tr.head_out[l] for l in self.layers], dim=1)[:, self.flat_index]  # [B, E, Dh]
        readout = Readout(self.readout, self.term_bias, self.mean_share, self.beta_share, self.centring, self.offset)
        c = apply_readout(o, readout, LnStats.of(self.tower, tr))  # [B, E, D]
        return corrected_embedding(e, c[:, :a], self.ablation_means, c[:, a:], self.basis, self.renorm)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] -> (logits [B, C], embedding e' [B, D])."""
        e = self.embed(images)
        return self.head(e), e

    # ---- persistence --------------------------------------------------------------------------------------------
    def save(self, model_dir: str | Path) -> Path:
        """Write ``model.safetensors`` then ``config.json`` into a temp dir beside ``model_dir``, then rename it onto
        ``model_dir`` (refused unless that is new, empty, or a model directory of ours: ``runtime.ownership``)."""
        from safetensors.torch import save_file

        spec = asdict(self.spec)
        spec["head"] = self.head.config()
        with staged_directory(model_dir, MODEL_DIR_KIND, complete=CONFIG_NAME) as tmp:
            state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME))
            (tmp / CONFIG_NAME).write_text(json.dumps(spec, indent=2))
        return Path(model_dir)

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu") -> "DebiasedClassifier":
        """Rebuild from ``config.json`` and ``model.safetensors`` (no open_clip, plan or data needed)."""
        from safetensors.torch import load_file

        model_dir = Path(model_dir)
        cfg_path, w_path = model_dir / CONFIG_NAME, model_dir / WEIGHTS_NAME
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise ClipDebiasError(f"{p}: missing (expected a model directory written by 'clip-debias build')")
        spec = read_spec(cfg_path)
        tower = tower_from_config(TowerConfig.from_dict(spec.tower))
        state = load_file(str(w_path))
        # the folded readouts are derived from the tower weights at construction: load those first
        tower_state = {k[len("tower."):]: v for k, v in state.items() if k.startswith("tower.")}
        try:
            tower.load_state_dict(tower_state, strict=True)
        except RuntimeError as e:
            raise ClipDebiasError(f"{w_path}: tower weights do not match {cfg_path} ({str(e).splitlines()[0]})") from e
        head = HEAD_KINDS[spec.head["kind"]].module.empty(spec.head, tower.cfg.embed_dim)
        model = cls(tower, head, spec)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ClipDebiasError(f"{w_path}: weights do not match {cfg_path} (missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]})")
        return model.to(device).eval()


def plain_classifier(clip: LoadedClip, class_names: list[str], group_names: list[str] | None = None,
                     templates: tuple[str, ...] | list[str] | None = None) -> DebiasedClassifier:
    """The unedited zero-shot classifier of a ``LoadedClip``: logits = logit_scale * e @ T^T."""
    tower = clip.tower.classifier_tower(clip.identity.name, "a zero-shot classifier artifact")
    text = class_text_matrix(clip, class_names, templates or DEFAULT_TEMPLATES)
    spec = ClassifierSpec(tower=tower.cfg.to_dict(), identity=clip.identity.to_dict(), class_names=list(class_names),
                          group_names=list(group_names or []), preprocess=PreprocessRecord.of(clip.preprocess_cfg),
                          convention=DEFAULT_CONVENTION, plan={"templates": list(templates or DEFAULT_TEMPLATES)})
    return DebiasedClassifier(tower, ZeroShotHead(text, logit_scale_of(clip)), spec).eval()
