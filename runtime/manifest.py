"""``manifest.json`` of an exported artifact: the contract between ``exporters/`` (writes) and ``runtime/`` (reads).

An artifact is a directory::

    ARTIFACT/
      manifest.json        this file's dataclass, as JSON
      model.onnx           fp32 graph: image float32 [batch, 3, H, W] -> logits [batch, C], embedding [batch, D]
      model.fp16.onnx      optional, fp16 weights/compute with fp32 I/O
      model.int8.onnx      optional, dynamically quantized int8 linear layers with fp32 I/O (for the CPU)
      model.ort.onnx       optional, ORT-optimized fp32 graph (saved when it helps latency)
      model.plan           optional, TensorRT engine (+ model.plan.json sidecar)

Every model file is listed in ``files`` with its sha256; the runtime refuses a file whose hash differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from clip_debias.runtime.errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
FILE_KINDS = ("onnx", "onnx-ort", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
    """One model file of the artifact. ``kind``: onnx | onnx-ort | tensorrt; ``precision``: fp32 | fp16 | int8."""

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
    export: dict[str, Any] = field(default_factory=dict)  # how the graphs were written, e.g. {"fused_attention": true}
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

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

    @classmethod
    def from_dict(cls, d: Any, source: str = MANIFEST_NAME) -> "Manifest":
        """Validate and build; any problem raises ``ArtifactError`` naming the file and field."""
        if not isinstance(d, dict):
            raise ArtifactError(f"{source}: expected a JSON object")
        if "format_version" not in d:
            raise ArtifactError(f"{source}: missing field 'format_version'")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(f"{source}: field 'format_version' is {version!r}, expected {FORMAT_VERSION}")
        for f in fields(cls):
            if f.name not in d and f.name not in ("versions", "export"):
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
            export=d.get("export", {}),
            format_version=version,
        )
        if (not isinstance(m.class_names, list) or not m.class_names
                or not all(isinstance(c, str) for c in m.class_names)):
            raise ArtifactError(f"{source}: field 'class_names' must be a non-empty list of strings")
        if not isinstance(m.group_names, list) or not all(isinstance(g, str) for g in m.group_names):
            raise ArtifactError(f"{source}: field 'group_names' must be a list of strings")
        def numbers(v: Any, n: int, kind: type | tuple[type, ...]) -> bool:
            return isinstance(v, list) and len(v) == n and all(
                isinstance(x, kind) and not isinstance(x, bool) for x in v)

        p = m.preprocessing
        if not (numbers(p.size, 2, int) and numbers(p.mean, 3, (int, float)) and numbers(p.std, 3, (int, float))):
            raise ArtifactError(f"{source}: field 'preprocessing' needs size [H, W] ints, mean [3], std [3] numbers")
        if (not isinstance(p.fill_color, int) or not isinstance(p.resize_mode, str)
                or not isinstance(p.interpolation, str)):
            raise ArtifactError(f"{source}: field 'preprocessing': fill_color must be an int, "
                                "resize_mode/interpolation strings")
        if not isinstance(m.opset, int):
            raise ArtifactError(f"{source}: field 'opset' must be an int, got {m.opset!r}")
        if not isinstance(m.model, dict) or not isinstance(m.plan, dict) or not isinstance(m.versions, dict):
            raise ArtifactError(f"{source}: fields 'model', 'plan' and 'versions' must be objects")
        if not m.files:
            raise ArtifactError(f"{source}: field 'files' lists no model file")
        for i, mf in enumerate(m.files):
            where = f"{source}: field 'files[{i}]'"
            if (not isinstance(mf.path, str) or not mf.path or Path(mf.path).is_absolute()
                    or ".." in Path(mf.path).parts):
                raise ArtifactError(f"{where}.path {mf.path!r} must be a relative path inside the artifact")
            if not isinstance(mf.sha256, str) or len(mf.sha256) != 64:
                raise ArtifactError(f"{where}.sha256 must be a 64-character hex digest")
            if mf.kind not in FILE_KINDS:
                raise ArtifactError(f"{where}.kind {mf.kind!r} is not one of {FILE_KINDS}")
            if mf.precision not in PRECISIONS:
                raise ArtifactError(f"{where}.precision {mf.precision!r} is not one of {PRECISIONS}")
        for name, specs in (("inputs", m.inputs), ("outputs", m.outputs)):
            for i, t in enumerate(specs):
                if not isinstance(t.name, str) or not isinstance(t.dtype, str):
                    raise ArtifactError(f"{source}: field '{name}[{i}]': name and dtype must be strings")
                if not isinstance(t.shape, list) or not all(isinstance(d, (int, str)) for d in t.shape):
                    raise ArtifactError(f"{source}: field '{name}[{i}].shape' must be a list of ints / axis names")
        return m

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
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(data, source=str(path))
