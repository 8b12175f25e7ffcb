"""Decomposition cache: one safetensors file per (model, dataset, split).

Tensors: ``heads`` [N, L, H, D] float32, ``rest`` [N, D], ``labels`` [N], ``groups`` [N], ``attributes`` [N] (when the
dataset has a spurious attribute). Header metadata (``CacheHeader``; safetensors stores strings, so lists and the
identity are JSON): ``model`` (ModelIdentity), ``layers`` (absolute layer indices, 0 = first block), ``dataset``,
``split``, ``class_names``, ``group_names``, ``attribute_names``, ``paths`` (image paths, row order), ``convention``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import field_validator
from pydantic.dataclasses import dataclass as format_dataclass

from clip_debias.runtime.atomic_output import atomic_file
from clip_debias.runtime.schema import FORMAT, validate
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.loading import ModelIdentity

CONVENTION = (
    "textspan: heads[n,l,h] = direct contribution of head h of layer layers[l] to the unit-norm CLS embedding, "
    "ln_post folded with the sample's own mean/std (each term centred by its own feature mean), proj applied, "
    "divided by ||y||; rest = embedding term + MLP terms + untraced layers + attention out-proj biases + ln_post "
    "bias @ proj; heads.sum((1,2)) + rest == encode_image(x, normalize=True)"
)
CACHE_WHAT = "a decomposition cache written by 'clip-debias decompose'"
_REQUIRED_TENSORS = ("heads", "rest", "labels", "groups")


@format_dataclass(config=FORMAT)
class CacheHeader:
    """The header metadata of a cache file (see module doc)."""

    model: ModelIdentity
    layers: list[int]
    dataset: str
    split: str
    class_names: list[str]
    group_names: list[str]
    attribute_names: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    convention: str = CONVENTION

    @field_validator("layers")
    @classmethod
    def _layers(cls, layers: list[int]) -> list[int]:
        if any(l < 0 for l in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"expected distinct absolute layer indices (>= 0), got {layers}")
        return layers


JSON_FIELDS = ("model", "layers", "class_names", "group_names", "attribute_names", "paths")  # stored as JSON text


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

    def header(self) -> CacheHeader:
        return CacheHeader(model=self.identity, layers=list(self.layers), dataset=self.dataset, split=self.split,
                           class_names=list(self.class_names), group_names=list(self.group_names),
                           attribute_names=list(self.attribute_names), paths=list(self.paths),
                           convention=self.convention)


def save_cache(path: str | Path, cache: DecompositionCache, force: bool = False) -> Path:
    """Write atomically (temp file in the same folder, then rename; umask permissions). An existing ``path`` is
    replaced only when it is a decomposition cache (``runtime.ownership``), or with ``force``."""
    from safetensors.torch import save_file

    tensors = {
        "heads": cache.heads.float().contiguous(),
        "rest": cache.rest.float().contiguous(),
        "labels": cache.labels.long().contiguous(),
        "groups": cache.groups.long().contiguous(),
    }
    if cache.attributes is not None:
        tensors["attributes"] = cache.attributes.long().contiguous()
    meta = {k: json.dumps(v) if k in JSON_FIELDS else v for k, v in asdict(cache.header()).items()}
    with atomic_file(path, "decomposition-cache", force) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def read_header(meta: dict[str, str], where: str) -> CacheHeader:
    """The validated ``CacheHeader`` of a file's metadata strings; one line naming ``where`` and the field."""
    decoded: dict[str, Any] = {}
    for key, text in meta.items():
        if key not in JSON_FIELDS:
            decoded[key] = text
            continue
        try:
            decoded[key] = json.loads(text)
        except json.JSONDecodeError as e:
            raise ClipDebiasError(f"{where}: field '{key}': expected JSON text (the header stores it as JSON), "
                                  f"got {text[:40]!r} ({e.msg})") from None
    return validate(CacheHeader, decoded, where, CACHE_WHAT)


def check_tensors(tensors: dict[str, torch.Tensor], header: CacheHeader, where: str) -> None:
    """Shapes against each other and the header: heads [N, len(layers), H, D], rest [N, D], labels, groups (and
    attributes) [N], paths N or none; labels and groups index their names."""
    heads = tensors["heads"]
    if heads.ndim != 4 or heads.shape[1] != len(header.layers):
        raise ClipDebiasError(f"{where}: tensor 'heads' has shape {list(heads.shape)}, expected [N, "
                              f"{len(header.layers)} (one per entry of 'layers'), H, D]")
    n, d = heads.shape[0], heads.shape[3]
    expected = {"rest": [n, d], "labels": [n], "groups": [n], "attributes": [n]}
    for key, shape in expected.items():
        if key in tensors and list(tensors[key].shape) != shape:
            raise ClipDebiasError(f"{where}: tensor '{key}' has shape {list(tensors[key].shape)}, expected {shape}")
    if header.paths and len(header.paths) != n:
        raise ClipDebiasError(f"{where}: field 'paths': {len(header.paths)} paths for {n} rows")
    for key, names in (("labels", header.class_names), ("groups", header.group_names)):
        values = tensors[key]
        if names and n and not (0 <= int(values.min()) and int(values.max()) < len(names)):
            raise ClipDebiasError(f"{where}: tensor '{key}' holds ids outside 0..{len(names) - 1} (the "
                                  f"{len(names)} entries of '{'class_names' if key == 'labels' else 'group_names'}')")


def load_cache(path: str | Path) -> DecompositionCache:
    """Read a cache written by ``save_cache``; one clear line for a missing file, tensor or a malformed header."""
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
    header = read_header(meta, str(path))
    check_tensors(tensors, header, str(path))
    return DecompositionCache(
        heads=tensors["heads"], rest=tensors["rest"], labels=tensors["labels"], groups=tensors["groups"],
        attributes=tensors.get("attributes"), layers=header.layers, identity=header.model, dataset=header.dataset,
        split=header.split, class_names=header.class_names, group_names=header.group_names,
        attribute_names=header.attribute_names, paths=header.paths, convention=header.convention,
    )
