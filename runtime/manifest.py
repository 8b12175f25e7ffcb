"""``manifest.json`` of an exported artifact: the contract between ``exporters/`` (writes) and ``runtime/`` (reads).

An artifact is a directory::

    ARTIFACT/
      manifest.json        ``Manifest`` as JSON (strict models: unknown fields refused, see ``runtime.schema``)
      model.onnx           fp32 graph: image float32 [batch, 3, H, W] -> logits [batch, C], embedding [batch, D]
      model.fp16.onnx      optional, fp16 weights/compute with fp32 I/O
      model.int8.onnx      optional, dynamically quantized int8 linear layers with fp32 I/O (for the CPU)
      model.ort.onnx       optional, ORT-optimized fp32 graph (saved when it helps latency)
      model.plan           optional, TensorRT engine (+ model.plan.json sidecar)
      text.onnx            optional text tower: tokens int64 [batch, L] -> text_embedding float32 [batch, D] unit-norm
      text.fp16.onnx, text.int8.onnx   optional, its fp16 / int8 graphs
      tokenizer.json       with a text tower: its tokenizer (``runtime.tokenizer``); ``text`` records the rest

Every model file is listed in ``files`` with its sha256; the runtime refuses a file whose hash differs.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator
from pydantic.dataclasses import dataclass

from clip_debias.runtime.choices import FilePrecision
from clip_debias.runtime.errors import ArtifactError
from clip_debias.runtime.ownership import sha256_file  # noqa: F401  (the one file hasher; imported from here too)
from clip_debias.runtime.schema import FORMAT, FieldError, describe_value, read_json, validate

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MANIFEST_WHAT = "an artifact manifest written by 'clip-debias export'"
FILE_KINDS = ("onnx", "onnx-ort", "tensorrt", "text-onnx", "tokenizer")  # tokenizer: precision unused (fp32)
PRECISIONS = FilePrecision.values()
SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _axis(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected an integer or an axis name (a string), got {describe_value(value)}")
    return value


Axis = Annotated[Any, AfterValidator(_axis)]  # a dimension: its size, or the name of a dynamic axis ("batch")


@dataclass(config=FORMAT)
class Preprocessing:
    """open_clip's eval transform, recorded: resize (``resize_mode`` shortest|longest|squash, ``interpolation``
    bicubic|bilinear|nearest) to ``size`` [H, W] with centre crop (or pad with ``fill_color`` for longest), RGB,
    to [0, 1], then (x - mean) / std per channel."""

    size: Annotated[list[int], Field(min_length=2, max_length=2, description="[H, W] (two integers)")]
    mean: Annotated[list[float], Field(min_length=3, max_length=3, description="three numbers (R, G, B)")]
    std: Annotated[list[float], Field(min_length=3, max_length=3, description="three numbers (R, G, B)")]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0


@dataclass(config=FORMAT)
class TensorSpec:
    """An input or output of the graph. ``shape`` uses the string "batch" for the dynamic axis."""

    name: str
    dtype: str
    shape: list[Axis]


@dataclass(config=FORMAT)
class ModelFile:
    """One model file of the artifact: its path relative to the artifact, its sha256 (64 hex digits), ``kind``
    (one of ``FILE_KINDS``) and ``precision`` (one of ``PRECISIONS``)."""

    path: str
    sha256: str
    kind: Literal[FILE_KINDS] = "onnx"
    precision: Literal[PRECISIONS] = "fp32"

    @field_validator("path")
    @classmethod
    def _inside(cls, path: str) -> str:
        if not path or Path(path).is_absolute() or ".." in Path(path).parts:
            raise ValueError(f"expected a relative path inside the artifact, got {describe_value(path)}")
        return path

    @field_validator("sha256")
    @classmethod
    def _hex(cls, digest: str) -> str:
        if not SHA256.fullmatch(digest):
            raise ValueError(f"expected a sha256 digest (64 hex digits), got {describe_value(digest)}")
        return digest


@dataclass(config=FORMAT)
class TextTower:
    """The text tower of an open-vocabulary artifact (``exporters.text_export``): its tokenizer file, the context
    length L every token row is padded / truncated to (``<start_of_text>`` first, ``<end_of_text>`` last kept,
    ``pad_id`` after), the embedding width D, ``logit_scale`` (exp of the model's learned scale: logits of labels
    given at request time are ``logit_scale * e' @ T^T``) and the prompt templates of the artifact's head (prompt
    ensembling: T = normalize(mean over templates of the unit-norm prompt embeddings))."""

    context_length: Annotated[int, Field(ge=2, description="an integer >= 2")]
    embed_dim: Annotated[int, Field(ge=1, description="an integer >= 1")]
    logit_scale: float
    templates: Annotated[list[str], Field(min_length=1, description="a non-empty list of templates with {}")]
    sot_id: int
    eot_id: int
    pad_id: int = 0
    tokenizer: str = "tokenizer.json"
    pooling: str = "argmax"  # open_clip's text pooling: the embedding at the position of the largest id (EOT)

    @field_validator("templates")
    @classmethod
    def _placeholder(cls, templates: list[str]) -> list[str]:
        bad = [t for t in templates if "{}" not in t]
        if bad:
            raise ValueError(f"every template needs a {{}} placeholder, got {describe_value(bad[0])}")
        return templates


@dataclass(config=FORMAT)
class Manifest:
    """Everything needed to run and audit the artifact without the toolchain.

    ``model``: model identity {name, pretrained, weights_sha256, weights_file}. ``plan``: the edits baked in
    (spurious/salient heads, corrections, classifier kind, contexts, templates). ``versions``: library versions at
    export time (torch, open_clip, onnx, onnxruntime, clip-debias).
    """

    model: dict[str, Any]
    plan: dict[str, Any]
    class_names: Annotated[list[str], Field(min_length=1, description="a non-empty list of strings")]
    group_names: list[str]
    preprocessing: Preprocessing
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    files: Annotated[list[ModelFile], Field(min_length=1, description="a non-empty list of model files")]
    versions: dict[str, str] = field(default_factory=dict)
    export: dict[str, Any] = field(default_factory=dict)  # how the graphs were written, e.g. {"fused_attention": true}
    text: TextTower | None = None  # the text tower (text.onnx + tokenizer.json), when exported
    format_version: int = FORMAT_VERSION

    @model_validator(mode="after")
    def _version(self) -> "Manifest":
        if self.format_version != FORMAT_VERSION:
            raise FieldError("format_version", f"is {self.format_version}, expected {FORMAT_VERSION}")
        return self

    def to_json(self) -> str:
        """The manifest as JSON; ``text`` only when there is a text tower, so an image-only artifact's manifest is
        what it was before text towers existed (older runtimes read it)."""
        d = asdict(self)
        if d["text"] is None:
            del d["text"]
        return json.dumps(d, indent=2, sort_keys=False)

    def save(self, artifact_dir: str | Path) -> Path:
        """Write ``manifest.json`` atomically (temp file + rename) into ``artifact_dir``; returns its path."""
        path = Path(artifact_dir) / MANIFEST_NAME
        tmp = path.with_name(f".{MANIFEST_NAME}.tmp-{os.getpid()}")
        tmp.write_text(self.to_json() + "\n")
        os.replace(tmp, path)
        return path

    def tensor(self, name: str, outputs: bool = True) -> TensorSpec | None:
        """The output (or input, ``outputs=False``) spec called ``name``, if listed."""
        return next((t for t in (self.outputs if outputs else self.inputs) if t.name == name), None)

    def file(self, kind: str = "onnx", precision: str = "fp32") -> ModelFile | None:
        """The listed model file of that kind and precision, if any."""
        return next((f for f in self.files if f.kind == kind and f.precision == precision), None)

    @property
    def transductive(self) -> bool:
        """True when the model was built under the reference (transductive) protocol: recorded by the build in its
        plan (``plan.plan.transductive``; ``toolchain.protocol``)."""
        inner = self.plan.get("plan")
        return bool((inner.get("transductive") if isinstance(inner, dict) else None) or self.plan.get("transductive"))

    @classmethod
    def from_dict(cls, d: Any, source: str = MANIFEST_NAME) -> "Manifest":
        """Validate and build; any problem raises a one-line ``ArtifactError`` naming the file and field. The format
        version is checked first: a newer manifest is refused for its version, not for its fields."""
        if isinstance(d, dict) and "format_version" not in d:
            raise ArtifactError(f"{source}: field 'format_version': missing (expected {FORMAT_VERSION})")
        if isinstance(d, dict) and d["format_version"] != FORMAT_VERSION:
            raise ArtifactError(f"{source}: field 'format_version': is {json.dumps(d['format_version'])}, expected "
                                f"{FORMAT_VERSION}")
        return validate(cls, d, source, MANIFEST_WHAT, ArtifactError)

    def check_files(self, artifact_dir: str | Path, verify: list[ModelFile] | None = None) -> None:
        """Every listed file must exist; the files in ``verify`` (default: all) must match their sha256.
        Raises a one-line ``ArtifactError`` naming the file."""
        root = Path(artifact_dir)
        for mf in self.files:
            if not (root / mf.path).is_file():
                raise ArtifactError(f"{root / mf.path}: listed in {MANIFEST_NAME} but missing")
        for mf in self.files if verify is None else verify:
            digest = sha256_file(root / mf.path)
            if digest != mf.sha256.lower():
                raise ArtifactError(
                    f"{root / mf.path}: sha256 {digest[:12]}... does not match {MANIFEST_NAME} "
                    f"({mf.sha256[:12]}...): file modified or corrupted"
                )

    @classmethod
    def load(cls, artifact_dir: str | Path) -> "Manifest":
        root = Path(artifact_dir)
        path = root / MANIFEST_NAME
        if not root.exists():
            raise ArtifactError(f"{root}: artifact directory not found")
        if not root.is_dir():
            raise ArtifactError(f"{root}: not a directory (an artifact is a directory with {MANIFEST_NAME})")
        if ".tmp-" in root.name:
            raise ArtifactError(f"{root}: a temporary export directory (export unfinished or crashed); "
                                "use the final one")
        if not path.is_file():
            raise ArtifactError(f"{path}: missing (not an artifact directory, or an export that did not finish)")
        return cls.from_dict(read_json(path, MANIFEST_WHAT, ArtifactError), source=str(path))


TRANSDUCTIVE_WARNING = ("this model was built under the reference (transductive) protocol: its ablation means come "
                        "from the evaluated split itself; not a deployable model")
