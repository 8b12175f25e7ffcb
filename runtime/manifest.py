"""``manifest.json`` of an exported artifact: the contract between ``exporters/`` (writes) and ``runtime/`` (reads).

An artifact is a directory::

    ARTIFACT/
      manifest.json        this file's dataclass, as JSON
      model.onnx           fp32 graph: image float32 [batch, 3, H, W] -> logits [batch, C], embedding [batch, D]
      model.fp16.onnx      optional, fp16 weights/compute with fp32 I/O
      model.ort.onnx       optional, ORT-optimized fp32 graph (saved when it helps latency)
      model.plan           optional, TensorRT engine (+ model.plan.json sidecar)

Every model file is listed in ``files`` with its sha256; the runtime refuses a file whose hash differs.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from runtime.errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass
class Preprocessing:
    """open_clip's eval transform, recorded: resize (``resize_mode`` shortest|longest|squash, ``interpolation``
    bicubic|bilinear|nearest) to ``size`` [H, W] with centre crop (or pad with ``fill_color`` for longest), RGB,
    to [0, 1], then (x - mean) / std per channel."""

    size: list[int]
    mean: list[float]
    std: list[float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0


@dataclass
class TensorSpec:
    """An input or output of the graph. ``shape`` uses the string "batch" for the dynamic axis."""

    name: str
    dtype: str
    shape: list[int | str]


@dataclass
class ModelFile:
    """One model file of the artifact. ``kind``: onnx | onnx-ort | tensorrt; ``precision``: fp32 | fp16."""

    path: str
    sha256: str
    kind: str = "onnx"
    precision: str = "fp32"


@dataclass
class Manifest:
    """Everything needed to run and audit the artifact without the toolchain.

    ``model``: model identity {name, pretrained, weights_sha256, weights_file}. ``plan``: the edits baked in
    (spurious/salient heads, corrections, classifier kind, contexts, templates). ``versions``: library versions at
    export time (torch, open_clip, onnx, onnxruntime, clip-debias).
    """

    model: dict[str, Any]
    plan: dict[str, Any]
    class_names: list[str]
    group_names: list[str]
    preprocessing: Preprocessing
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    files: list[ModelFile]
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    def file(self, kind: str = "onnx", precision: str = "fp32") -> ModelFile | None:
        """The listed model file of that kind and precision, if any."""
        return next((f for f in self.files if f.kind == kind and f.precision == precision), None)

    @classmethod
    def from_dict(cls, d: Any, source: str = MANIFEST_NAME) -> "Manifest":
        """Validate and build; any problem raises ``ArtifactError`` naming the file and field."""
        if not isinstance(d, dict):
            raise ArtifactError(f"{source}: expected a JSON object")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(f"{source}: field 'format_version' is {version!r}, expected {FORMAT_VERSION}")
        for f in fields(cls):
            if f.name not in d and f.name != "versions":
                raise ArtifactError(f"{source}: missing field '{f.name}'")

        def sub(klass: type, value: Any, name: str) -> Any:
            if not isinstance(value, dict):
                raise ArtifactError(f"{source}: field '{name}' must be an object")
            need = [g.name for g in fields(klass) if g.default is MISSING and g.default_factory is MISSING]
            for n in need:
                if n not in value:
                    raise ArtifactError(f"{source}: missing field '{name}.{n}'")
            try:
                return klass(**{g.name: value[g.name] for g in fields(klass) if g.name in value})
            except TypeError as e:
                raise ArtifactError(f"{source}: field '{name}': {e}") from e

        def sublist(klass: type, value: Any, name: str) -> list[Any]:
            if not isinstance(value, list):
                raise ArtifactError(f"{source}: field '{name}' must be a list")
            return [sub(klass, v, f"{name}[{i}]") for i, v in enumerate(value)]

        m = cls(
            model=d["model"],
            plan=d["plan"],
            class_names=d["class_names"],
            group_names=d["group_names"],
            preprocessing=sub(Preprocessing, d["preprocessing"], "preprocessing"),
            inputs=sublist(TensorSpec, d["inputs"], "inputs"),
            outputs=sublist(TensorSpec, d["outputs"], "outputs"),
            opset=d["opset"],
            files=sublist(ModelFile, d["files"], "files"),
            versions=d.get("versions", {}),
            format_version=version,
        )
        if not isinstance(m.class_names, list) or not m.class_names or not all(isinstance(c, str) for c in m.class_names):
            raise ArtifactError(f"{source}: field 'class_names' must be a non-empty list of strings")
        if not isinstance(m.group_names, list):
            raise ArtifactError(f"{source}: field 'group_names' must be a list of strings")
        if len(m.preprocessing.size) != 2 or len(m.preprocessing.mean) != 3 or len(m.preprocessing.std) != 3:
            raise ArtifactError(f"{source}: field 'preprocessing' needs size [H, W], mean [3], std [3]")
        if not m.files:
            raise ArtifactError(f"{source}: field 'files' lists no model file")
        return m

    @classmethod
    def load(cls, artifact_dir: str | Path) -> "Manifest":
        path = Path(artifact_dir) / MANIFEST_NAME
        if not path.is_file():
            raise ArtifactError(f"{path}: missing (not an artifact directory, or an export that did not finish)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(data, source=str(path))
