"""Decomposition cache: one safetensors file per (model, dataset, split).

Tensors: ``heads`` [N, L, H, D] float32, ``rest`` [N, D], ``labels`` [N], ``groups`` [N], ``attributes`` [N] (when the
dataset has a spurious attribute). Header metadata (all strings): ``model`` (ModelIdentity JSON), ``layers`` (JSON
list of absolute layer indices, 0 = first block), ``dataset``, ``split``, ``class_names``, ``group_names``,
``attribute_names`` (JSON lists), ``paths`` (JSON list of image paths, row order), ``convention``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clip_debias.runtime.atomic_output import atomic_file
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.loading import ModelIdentity

CONVENTION = (
    "textspan: heads[n,l,h] = direct contribution of head h of layer layers[l] to the unit-norm CLS embedding, "
    "ln_post folded with the sample's own mean/std (each term centred by its own feature mean), proj applied, "
    "divided by ||y||; rest = embedding term + MLP terms + untraced layers + attention out-proj biases + ln_post "
    "bias @ proj; heads.sum((1,2)) + rest == encode_image(x, normalize=True)"
)
_REQUIRED_TENSORS = ("heads", "rest", "labels", "groups")
_REQUIRED_META = ("model", "layers", "dataset", "split", "class_names", "group_names")


@dataclass
class DecompositionCache:
    """Decomposed terms of one split plus what identifies them."""

    heads: torch.Tensor
    rest: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    layers: list[int]
    identity: ModelIdentity
    dataset: str
    split: str
    class_names: list[str]
    group_names: list[str]
    attributes: torch.Tensor | None = None
    attribute_names: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    convention: str = CONVENTION

    def embeddings(self) -> torch.Tensor:
        """[N, D] the unit-norm image embeddings (sum of all terms)."""
        return self.heads.sum(dim=(1, 2)) + self.rest

    def __len__(self) -> int:
        return self.heads.shape[0]


def save_cache(path: str | Path, cache: DecompositionCache) -> Path:
    """Write atomically (temp file in the same folder, then rename; umask permissions)."""
    from safetensors.torch import save_file

    tensors = {
        "heads": cache.heads.float().contiguous(),
        "rest": cache.rest.float().contiguous(),
        "labels": cache.labels.long().contiguous(),
        "groups": cache.groups.long().contiguous(),
    }
    if cache.attributes is not None:
        tensors["attributes"] = cache.attributes.long().contiguous()
    meta = {
        "model": json.dumps(cache.identity.to_dict()),
        "layers": json.dumps(cache.layers),
        "dataset": cache.dataset,
        "split": cache.split,
        "class_names": json.dumps(cache.class_names),
        "group_names": json.dumps(cache.group_names),
        "attribute_names": json.dumps(cache.attribute_names),
        "paths": json.dumps(cache.paths),
        "convention": cache.convention,
    }
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def load_cache(path: str | Path) -> DecompositionCache:
    """Read a cache written by ``save_cache``; one clear line for a missing file, key or metadata field."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ClipDebiasError(f"{path}: decomposition cache not found (write one with 'clip-debias decompose')")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys}
    except Exception as e:
        raise ClipDebiasError(f"{path}: not a safetensors decomposition cache ({str(e).splitlines()[0][:160]})") from e
    for k in _REQUIRED_TENSORS:
        if k not in tensors:
            raise ClipDebiasError(f"{path}: missing tensor '{k}' (expected a file written by 'clip-debias decompose')")
    for k in _REQUIRED_META:
        if k not in meta:
            raise ClipDebiasError(f"{path}: missing metadata field '{k}'")
    try:
        return DecompositionCache(
            heads=tensors["heads"], rest=tensors["rest"], labels=tensors["labels"], groups=tensors["groups"],
            attributes=tensors.get("attributes"),
            layers=json.loads(meta["layers"]),
            identity=ModelIdentity.from_dict(json.loads(meta["model"])),
            dataset=meta["dataset"], split=meta["split"],
            class_names=json.loads(meta["class_names"]), group_names=json.loads(meta["group_names"]),
            attribute_names=json.loads(meta.get("attribute_names", "[]")),
            paths=json.loads(meta.get("paths", "[]")),
            convention=meta.get("convention", CONVENTION),
        )
    except (json.JSONDecodeError, TypeError) as e:
        raise ClipDebiasError(f"{path}: malformed metadata ({e})") from e
