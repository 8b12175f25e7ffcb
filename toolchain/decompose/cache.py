"""Decomposition cache: one safetensors file per (model, dataset, split), written and read without holding all terms.

Tensors: ``heads`` [N, L, H, D] float32 (or float16 with ``terms_dtype``), ``rest`` [N, D], ``embeddings`` [N, D]
(y / ||y|| of the forward itself, float32), ``head_means`` [L, H, D] float64 (each head's mean term over the split,
accumulated before any float16 rounding), ``labels`` [N], ``groups`` [N], ``attributes`` [N] (when the dataset has a
spurious attribute), ``attribute_table`` [N, A] (every attribute's value id, columns ``attribute_columns``; when the
dataset has attributes) and ``pairs`` [N] (counterfactual pair ids, -1: not in a pair; when the split has pairs).
``heads`` is stored first, so a writer streams it batch by batch (``CacheWriter``) and a reader
maps it (``HeadTerms``). Header metadata (all strings): ``format`` ("2"), ``model`` (ModelIdentity JSON), ``layers``
(JSON list of absolute layer indices, 0 = first block), ``tower_layers`` (the tower's layer count), ``dataset``,
``split``, ``class_names``, ``group_names``, ``attribute_names`` (JSON lists), ``paths`` (JSON list of image paths,
row order), ``convention`` (textspan | centred), ``convention_formula`` (``conventions.FORMULAS``), and what
``runtime.metric_inputs`` reads (``DecompositionCache.metric_source``): ``attribute_columns`` / ``attribute_values``
(JSON: the table's column names and value names), ``protected`` (JSON: the attribute the bias metrics are about, or
null), ``train_correlation`` (JSON: what the data records of its train split, e.g. lab data's lab.json, or null) and
``train_correlation_from`` (the file it was read from).

Bytes per image: L*H*D*4 (+ 2*D*4 + 24); ViT-B-16 with every layer (12 x 12 x 512): 0.30 MB; ViT-L/14 (24 x 16 x 768):
1.18 MB, 0.59 MB with float16 terms.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import torch
from pydantic import field_validator
from pydantic.dataclasses import dataclass as format_dataclass

from clip_debias.runtime.atomic_output import atomic_file
from clip_debias.runtime.ownership import register_file_kind, safetensors_metadata
from clip_debias.runtime.metric_inputs import MetricSource
from clip_debias.runtime.metrics import AttributeColumn
from clip_debias.runtime.schema import FORMAT, validate
from clip_debias.toolchain.choices import TermsDtype
from clip_debias.toolchain.decompose.conventions import CONVENTIONS, DEFAULT_CONVENTION, FORMULAS
from clip_debias.toolchain.decompose.terms import FileSlot, HeadTerms
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.loading import ModelIdentity

CACHE_FORMAT = "2"
CACHE_WHAT = "a decomposition cache written by 'clip-debias decompose'"


def _is_cache(path: Path) -> bool:
    """A cache of format "2" (its convention's name and formula recorded) or an earlier one (a "textspan: ..."
    convention text)."""
    meta = safetensors_metadata(path)
    if not meta or "layers" not in meta:
        return False
    convention = str(meta.get("convention", ""))
    return convention.startswith("textspan:") or (convention in ("textspan", "centred")
                                                  and "convention_formula" in meta)


register_file_kind("decomposition-cache", CACHE_WHAT, _is_cache)
TERMS_DTYPES = {t.value: t.torch for t in TermsDtype}
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.float64: "F64", torch.int64: "I64"}
_REQUIRED_TENSORS = ("heads", "rest", "labels", "groups")


@format_dataclass(config=FORMAT)
class CacheHeader:
    """The header metadata of a cache file (see module doc)."""

    format: Literal["2"]
    model: ModelIdentity
    layers: list[int]
    dataset: str
    split: str
    class_names: list[str]
    group_names: list[str]
    convention: Literal[CONVENTIONS]
    tower_layers: Optional[int] = None
    attribute_names: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    convention_formula: str = ""
    attribute_columns: list[str] = field(default_factory=list)
    attribute_values: list[list[str]] = field(default_factory=list)
    protected: Optional[str] = None
    train_correlation: Optional[Union[float, dict[str, float]]] = None
    train_correlation_from: str = ""

    @field_validator("layers")
    @classmethod
    def _layers(cls, layers: list[int]) -> list[int]:
        if any(l < 0 for l in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"expected distinct absolute layer indices (>= 0), got {layers}")
        return layers


# stored as JSON text (safetensors metadata holds strings)
JSON_FIELDS = ("model", "layers", "tower_layers", "class_names", "group_names", "attribute_names", "paths",
               "attribute_columns", "attribute_values", "protected", "train_correlation")
METRIC_FIELDS = ("attribute_columns", "attribute_values", "protected", "train_correlation", "train_correlation_from")


@dataclass
class DecompositionCache:
    """Decomposed terms of one split plus what identifies them. ``heads`` may be given as a tensor (wrapped in
    ``HeadTerms``); ``embeddings``/``head_means`` are computed from the terms when not stored."""

    heads: HeadTerms
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
    convention: str = DEFAULT_CONVENTION
    tower_layers: int | None = None  # the tower's layer count (None: unknown, e.g. hand-built terms)
    stored_embeddings: torch.Tensor | None = field(default=None, repr=False)
    stored_means: torch.Tensor | None = field(default=None, repr=False)
    source: str = field(default="", repr=False)  # the file it was loaded from
    attribute_table: torch.Tensor | None = None  # [N, A] value ids of ``attribute_columns``
    attribute_columns: list[str] = field(default_factory=list)
    attribute_values: list[list[str]] = field(default_factory=list)
    pairs: torch.Tensor | None = None  # [N] counterfactual pair ids, -1: not in a pair
    protected: str | None = None
    train_correlation: float | dict[str, float] | None = None
    train_correlation_from: str = ""

    def metric_source(self) -> MetricSource:
        """What the bias metrics read of these rows (``runtime.metric_inputs``)."""
        table = self.attribute_table
        columns = [AttributeColumn(name, table[:, i].numpy().astype(np.int64), tuple(values))
                   for i, (name, values) in enumerate(zip(self.attribute_columns, self.attribute_values))
                   ] if table is not None else []
        return MetricSource(f"cache {self.dataset}/{self.split}", self.dataset, list(self.class_names), columns,
                            self.protected, self.pairs.numpy().astype(np.int64) if self.pairs is not None else None,
                            self.train_correlation, self.train_correlation_from)

    def metric_fields(self) -> dict[str, Any]:
        """The header fields of ``metric_source`` (``METRIC_FIELDS``), as keyword arguments."""
        return {k: getattr(self, k) for k in METRIC_FIELDS}

    def __post_init__(self) -> None:
        if isinstance(self.heads, torch.Tensor):
            self.heads = HeadTerms(self.heads)

    def embeddings(self) -> torch.Tensor:
        """[N, D] the unit-norm image embeddings (stored, else the sum of all terms)."""
        if self.stored_embeddings is None:
            self.stored_embeddings = self.heads.sum() + self.rest.float()
        return self.stored_embeddings

    def head_means(self) -> torch.Tensor:
        """[L, H, D] float64: each head's mean term over the split (stored, else one pass over the terms)."""
        if self.stored_means is None:
            self.stored_means = self.heads.mean()
        return self.stored_means

    def positions(self, heads: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Absolute (layer, head) pairs -> (row of ``layers``, head) positions in ``heads``."""
        row = {layer: i for i, layer in enumerate(self.layers)}
        return [(row[l], h) for l, h in heads]

    def head_terms(self, heads: list[tuple[int, int]], images: Sequence[int] | None = None) -> torch.Tensor:
        """[N, len(heads), D] float32: the terms of absolute (layer, head) pairs over all images (or over the rows
        ``images`` only)."""
        return self.heads.select(self.positions(heads), images)

    @property
    def all_layers(self) -> bool:
        """True when the terms cover every layer of the tower (known only for decomposed caches)."""
        return self.tower_layers is not None and list(self.layers) == list(range(self.tower_layers))

    def where(self) -> str:
        """How error lines name this cache: its file, else dataset/split."""
        return self.source or f"cache {self.dataset}/{self.split}"

    def header(self, paths: list[str] | None = None) -> CacheHeader:
        return CacheHeader(format=CACHE_FORMAT, model=self.identity, layers=list(self.layers), dataset=self.dataset,
                           split=self.split, class_names=list(self.class_names), group_names=list(self.group_names),
                           convention=self.convention, tower_layers=self.tower_layers,
                           attribute_names=list(self.attribute_names),
                           paths=list(self.paths if paths is None else paths),
                           convention_formula=FORMULAS.get(self.convention, ""),
                           attribute_columns=list(self.attribute_columns),
                           attribute_values=[list(v) for v in self.attribute_values], protected=self.protected,
                           train_correlation=self.train_correlation,
                           train_correlation_from=self.train_correlation_from)

    def __len__(self) -> int:
        return self.heads.shape[0]


def _metadata(header: CacheHeader) -> dict[str, str]:
    """The safetensors metadata strings of a header."""
    return {k: json.dumps(v) if k in JSON_FIELDS else v for k, v in asdict(header).items()}


class CacheWriter:
    """Streams a cache to ``path``: ``add`` each batch (its head terms are written at once, the small tensors kept),
    ``close`` writes the rest and the header. The file is a temp file beside ``path`` until ``close`` renames it
    (``atomic_file``: an existing ``path`` is replaced only when it is a decomposition cache, or with ``force``); an
    exception leaves no file. ``max_paths`` (all paths the split may hold) sizes the header
    space reserved before the terms; were the final header larger, the terms are shifted once."""

    def __init__(self, path: str | Path, *, layers: list[int], shape: tuple[int, int, int], identity: ModelIdentity,
                 dataset: str, split: str, class_names: list[str], group_names: list[str],
                 attribute_names: list[str], convention: str, tower_layers: int | None, max_rows: int,
                 max_paths: list[str], terms_dtype: torch.dtype = torch.float32, force: bool = False,
                 attribute_columns: list[str] | None = None, attribute_values: list[list[str]] | None = None,
                 protected: str | None = None, train_correlation: float | dict[str, float] | None = None,
                 train_correlation_from: str = "", pairs: bool = False):
        if terms_dtype not in (torch.float32, torch.float16):
            raise ClipDebiasError(f"terms dtype {terms_dtype}: expected float32 or float16")
        self.header = CacheHeader(format=CACHE_FORMAT, model=identity, layers=list(layers), dataset=dataset,
                                  split=split, class_names=list(class_names), group_names=list(group_names),
                                  convention=convention, tower_layers=tower_layers,  # type: ignore[arg-type]
                                  attribute_names=list(attribute_names), paths=list(max_paths),
                                  convention_formula=FORMULAS.get(convention, ""),
                                  attribute_columns=list(attribute_columns or []),
                                  attribute_values=[list(v) for v in attribute_values or []], protected=protected,
                                  train_correlation=train_correlation,
                                  train_correlation_from=train_correlation_from)
        self.with_pairs = pairs  # the split has pair ids: a ``pairs`` tensor is written
        self.shape, self.dtype = tuple(shape), terms_dtype
        self.rows = 0
        self.small: dict[str, list[torch.Tensor]] = {"rest": [], "embeddings": [], "labels": [], "groups": [],
                                                     "attributes": [], "attribute_table": [], "pairs": []}
        self.sums = torch.zeros(shape, dtype=torch.float64)
        self.paths: list[str] = []
        self.closed = False
        self.reserve = 8 + _round8(len(self._header(max_rows, with_attributes=True)) + 256)
        self._stack = ExitStack()
        self.tmp = self._stack.enter_context(atomic_file(path, "decomposition-cache", force))
        self.path = Path(path)
        self.file = self._stack.enter_context(open(self.tmp, "wb"))
        self.file.write(b"\0" * self.reserve)

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None:  # the temp file is removed
            self._stack.__exit__(kind, value, tb)
        elif not self.closed:
            self.close()

    def add(self, heads: torch.Tensor, rest: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor,
            groups: torch.Tensor, attributes: torch.Tensor | None, paths: list[str],
            attribute_table: torch.Tensor | None = None, pairs: torch.Tensor | None = None) -> None:
        """One batch: heads [B, L, H, D] (any float dtype), rest/embeddings [B, D], labels/groups/attributes [B],
        attribute_table [B, A] and pairs [B] (when the header has attribute columns / the writer has pairs)."""
        heads = heads.detach().cpu()
        if tuple(heads.shape[1:]) != self.shape:
            raise ValueError(f"head terms of shape {list(heads.shape[1:])}, the cache holds {list(self.shape)}")
        self.sums += heads.double().sum(dim=0)
        self.file.write(heads.to(self.dtype).contiguous().numpy().tobytes())
        self.rows += heads.shape[0]
        for name, t in (("rest", rest), ("embeddings", embeddings)):
            self.small[name].append(t.detach().float().cpu())
        for name, t in (("labels", labels), ("groups", groups), ("attributes", attributes),
                        ("attribute_table", attribute_table), ("pairs", pairs)):
            if t is not None:
                self.small[name].append(t.long().cpu())
        self.paths.extend(paths)

    def _tensors(self) -> list[tuple[str, torch.Tensor]]:
        """The small tensors, in file order after ``heads``."""
        n, d = self.rows, self.shape[-1]
        out = [(k, torch.cat(v) if v else torch.zeros(0, d)) for k, v in self.small.items()
               if k in ("rest", "embeddings")]
        out.append(("head_means", self.sums / max(n, 1)))
        out += [(k, torch.cat(v) if v else torch.zeros(0, dtype=torch.long)) for k, v in self.small.items()
                if k in ("labels", "groups")]
        for k in ("attributes", "attribute_table", "pairs"):
            if self.small[k]:
                out.append((k, torch.cat(self.small[k])))
        return out

    def _header(self, rows: int, with_attributes: bool, tensors: list[tuple[str, torch.Tensor]] | None = None,
                paths: list[str] | None = None) -> bytes:
        d = self.shape[-1]
        if tensors is None:  # the largest header this writer can produce (for the reserve)
            tensors = [("rest", torch.zeros(rows, d)), ("embeddings", torch.zeros(rows, d)),
                       ("head_means", torch.zeros(self.shape, dtype=torch.float64)),
                       ("labels", torch.zeros(rows, dtype=torch.long)), ("groups", torch.zeros(rows, dtype=torch.long))]
            tensors += [("attributes", torch.zeros(rows, dtype=torch.long))] if with_attributes else []
            columns = len(self.header.attribute_columns)
            tensors += [("attribute_table", torch.zeros(rows, columns, dtype=torch.long))] if columns else []
            tensors += [("pairs", torch.zeros(rows, dtype=torch.long))] if self.with_pairs else []
        size = rows * int(torch.tensor(self.shape).prod()) * torch.tensor([], dtype=self.dtype).element_size()
        entries: dict[str, Any] = {"heads": {"dtype": _ST_DTYPES[self.dtype], "shape": [rows, *self.shape],
                                             "data_offsets": [0, size]}}
        start = size
        for name, t in tensors:
            nbytes = t.numel() * t.element_size()
            entries[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [start,
                                                                                                   start + nbytes]}
            start += nbytes
        header = self.header if paths is None else dataclasses.replace(self.header, paths=list(paths))
        return json.dumps({"__metadata__": _metadata(header), **entries}).encode()

    def close(self) -> Path:
        """Write the small tensors and the header, rename into place; returns the path."""
        tensors = self._tensors()
        for _, t in tensors:
            self.file.write(t.contiguous().numpy().tobytes())
        header = self._header(self.rows, False, tensors, self.paths)
        if 8 + len(header) <= self.reserve:
            self.file.seek(0)
            self.file.write(struct.pack("<Q", self.reserve - 8) + header + b" " * (self.reserve - 8 - len(header)))
            self.file.close()
        else:  # not expected (the reserve bounds the header): rewrite with the terms moved after a larger header
            self.file.close()
            _shift_data(self.tmp, self.reserve, header)
        self._stack.close()  # renames the temp file onto the path
        self.closed = True
        return self.path


def _round8(n: int) -> int:
    return (n + 7) // 8 * 8


def _shift_data(path: Path, old_start: int, header: bytes) -> None:
    """Rewrite ``path`` as [len][header padded to 8][data from old_start on], copying the data in chunks."""
    padded = header + b" " * (_round8(len(header)) - len(header))
    moved = path.with_name(path.name + ".shift")
    with open(path, "rb") as src, open(moved, "wb") as dst:
        dst.write(struct.pack("<Q", len(padded)) + padded)
        src.seek(old_start)
        while chunk := src.read(64 * 2**20):
            dst.write(chunk)
    moved.replace(path)


def save_cache(path: str | Path, cache: DecompositionCache, terms_dtype: torch.dtype = torch.float32,
               force: bool = False) -> Path:
    """Write ``cache`` atomically (temp file in the same folder, then rename; umask permissions), terms chunk by
    chunk. An existing ``path`` is replaced only when it is a decomposition cache (``runtime.ownership``), or with
    ``force``."""
    n, l, h, d = cache.heads.shape
    writer = CacheWriter(path, layers=cache.layers, shape=(l, h, d), identity=cache.identity, dataset=cache.dataset,
                         split=cache.split, class_names=cache.class_names, group_names=cache.group_names,
                         attribute_names=cache.attribute_names, convention=cache.convention,
                         tower_layers=cache.tower_layers, max_rows=n, max_paths=cache.paths, terms_dtype=terms_dtype,
                         force=force, pairs=cache.pairs is not None, **cache.metric_fields())
    with writer:
        emb = cache.embeddings()
        for start, chunk in cache.heads.chunks():
            stop = start + chunk.shape[0]
            attrs = cache.attributes[start:stop] if cache.attributes is not None else None
            table = cache.attribute_table[start:stop] if cache.attribute_table is not None else None
            pairs = cache.pairs[start:stop] if cache.pairs is not None else None
            writer.add(chunk, cache.rest[start:stop], emb[start:stop], cache.labels[start:stop],
                       cache.groups[start:stop], attrs, cache.paths[start:stop], table, pairs)
        return writer.close()


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """(the safetensors header, byte offset of the data section)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("file too short")
        (size,) = struct.unpack("<Q", raw)
        if size > 2**30:
            raise ValueError("header size out of range")
        header = json.loads(f.read(size))
    return header, 8 + size


def load_cache(path: str | Path) -> DecompositionCache:
    """Read a cache written by ``save_cache``/``CacheWriter``: the small tensors into memory, the head terms as a
    ``HeadTerms`` over the file. One clear line for a missing file, tensor or metadata field, or an older format."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ClipDebiasError(f"{path}: decomposition cache not found (write one with 'clip-debias decompose')")
    try:
        header, data_start = _read_header(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            small = {k: f.get_tensor(k) for k in keys if k != "heads"}
    except Exception as e:
        raise ClipDebiasError(f"{path}: not a safetensors decomposition cache ({str(e).splitlines()[0][:160]})") from e
    for k in _REQUIRED_TENSORS:
        if k not in keys:
            raise ClipDebiasError(f"{path}: missing tensor '{k}' (expected a file written by 'clip-debias decompose')")
    if meta.get("format") != CACHE_FORMAT:
        raise ClipDebiasError(f"{path}: field 'format': is {json.dumps(meta.get('format'))}, expected "
                              f"\"{CACHE_FORMAT}\" (a cache of an earlier clip-debias: decompose again)")
    fields = read_header(meta, str(path))
    entry = header["heads"]
    dtype = {v: k for k, v in _ST_DTYPES.items()}.get(entry.get("dtype"))
    if dtype not in (torch.float32, torch.float16) or len(entry.get("shape", [])) != 4:
        raise ClipDebiasError(f"{path}: tensor 'heads' is {entry.get('dtype')} {entry.get('shape')}, expected F32 or "
                              "F16 [N, L, H, D]")
    shape = tuple(entry["shape"])
    check_tensors(shape, small, fields, str(path))
    heads = HeadTerms(slot=FileSlot(path, data_start + entry["data_offsets"][0], dtype), shape=shape)  # type: ignore
    return DecompositionCache(
        heads=heads, rest=small["rest"], labels=small["labels"], groups=small["groups"],
        attributes=small.get("attributes"), layers=fields.layers, identity=fields.model, dataset=fields.dataset,
        split=fields.split, class_names=fields.class_names, group_names=fields.group_names,
        attribute_names=fields.attribute_names, paths=fields.paths, convention=fields.convention,
        tower_layers=fields.tower_layers, stored_embeddings=small.get("embeddings"),
        stored_means=small.get("head_means"), source=str(path), attribute_table=small.get("attribute_table"),
        pairs=small.get("pairs"), **{k: getattr(fields, k) for k in METRIC_FIELDS},
    )


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


def check_tensors(heads_shape: tuple[int, ...], tensors: dict[str, torch.Tensor], header: CacheHeader,
                  where: str) -> None:
    """Shapes against each other and the header: heads [N, len(layers), H, D], rest and embeddings [N, D], labels,
    groups (and attributes) [N], head_means [L, H, D], paths N or none; labels and groups index their names."""
    if len(heads_shape) != 4 or heads_shape[1] != len(header.layers):
        raise ClipDebiasError(f"{where}: tensor 'heads' has shape {list(heads_shape)}, expected [N, "
                              f"{len(header.layers)} (one per entry of 'layers'), H, D]")
    n, d = heads_shape[0], heads_shape[3]
    expected = {"rest": [n, d], "embeddings": [n, d], "head_means": list(heads_shape[1:]), "labels": [n],
                "groups": [n], "attributes": [n], "pairs": [n], "attribute_table": [n, len(header.attribute_columns)]}
    for key, want in expected.items():
        if key in tensors and list(tensors[key].shape) != want:
            raise ClipDebiasError(f"{where}: tensor '{key}' has shape {list(tensors[key].shape)}, expected {want}")
    if header.paths and len(header.paths) != n:
        raise ClipDebiasError(f"{where}: field 'paths': {len(header.paths)} paths for {n} rows")
    for key, names in (("labels", header.class_names), ("groups", header.group_names)):
        values = tensors[key]
        if names and n and not (0 <= int(values.min()) and int(values.max()) < len(names)):
            raise ClipDebiasError(f"{where}: tensor '{key}' holds ids outside 0..{len(names) - 1} (the "
                                  f"{len(names)} entries of '{'class_names' if key == 'labels' else 'group_names'}')")
    if len(header.attribute_values) != len(header.attribute_columns):
        raise ClipDebiasError(f"{where}: field 'attribute_values': {len(header.attribute_values)} lists for "
                              f"{len(header.attribute_columns)} 'attribute_columns'")
    if header.protected is not None and header.protected not in header.attribute_columns:
        raise ClipDebiasError(f"{where}: field 'protected': '{header.protected}' is not one of 'attribute_columns'")
    table = tensors.get("attribute_table")
    if header.attribute_columns and n and table is None:
        raise ClipDebiasError(f"{where}: missing tensor 'attribute_table' (the header lists attribute_columns)")
    for i, values in enumerate(header.attribute_values if table is not None and n else []):
        if not (0 <= int(table[:, i].min()) and int(table[:, i].max()) < len(values)):
            raise ClipDebiasError(f"{where}: tensor 'attribute_table' column {i} holds ids outside 0..{len(values) - 1}"
                                  f" (the values of '{header.attribute_columns[i]}')")
