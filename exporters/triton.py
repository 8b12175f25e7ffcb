"""Write a Triton Inference Server model repository entry for an artifact.

``backend="onnxruntime"`` (Triton's onnxruntime / TensorRT backends, as in NVIDIA's Triton images)::

    REPO/NAME/config.pbtxt     platform onnxruntime_onnx (1/model.onnx) or tensorrt_plan (1/model.plan)
    REPO/NAME/labels.txt       the manifest's class names, one a line (label_filename of the logits output)
    REPO/NAME/manifest.json    the artifact's manifest, as documentation (labels, preprocessing, provenance)

``backend="python"`` (Triton's python backend: CPU-only Triton images, pytriton's bundled server)::

    REPO/NAME/config.pbtxt     backend "python", parameters precision / intra_op_thread_count
    REPO/NAME/labels.txt, REPO/NAME/manifest.json
    REPO/NAME/1/model.py       imports ``clip_debias.serving.triton_model.TritonPythonModel``
    REPO/NAME/1/artifact/      the artifact's files: served through ``clip_debias.runtime`` (checks, preprocessing
                               contract, int8 image by image), so clip-debias must be installed where the stub runs

Which model file: the TensorRT engine when the artifact has one and ``kind`` is gpu (a plan cannot run on CPU
instances); otherwise ``precision`` (default: fp32, else fp16, else int8 -- all have fp32 I/O).

What the config says, and why (Triton's model-configuration and batcher documentation):

- dynamic batching with ``max_queue_delay_microseconds`` (option); no ``preferred_batch_size``: the batcher docs
  advise it only for TensorRT models with several optimization profiles (our engines have one), otherwise batches
  are formed as large as possible up to ``max_batch_size``.
- int8 is never batched across requests: dynamic quantization takes one activation scale per tensor, so batch
  neighbours would change each other's result (the runtime runs int8 image by image for that reason). Its
  ``max_batch_size`` is 1 and there is no dynamic batching; a larger ``max_batch`` is refused.
- CPU instances: ``intra_op_thread_count`` = max(1, server cores // instances), so the instances do not
  oversubscribe the server's cores (``server_cores`` default: this machine's).
- GPU instances: ``model_warmup`` runs a zero image at batch 1 and at ``max_batch_size`` when the model loads (the
  first requests do not pay for CUDA / TensorRT initialization).
- ``label_filename`` on ``logits``: Triton's classification extension answers with the class names.

``REPO/NAME`` is written into a temp dir and renamed into place (``runtime.atomic_output``); an existing ``REPO/NAME``
is replaced only when it is a Triton model folder of ours, untouched (its ``clip-debias-output.json`` marker).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from clip_debias.exporters.artifact import TRT_PLAN
from clip_debias.exporters.tensorrt_export import read_sidecar
from clip_debias.runtime.atomic_output import staged_directory
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.choices import FilePrecision
from clip_debias.runtime.manifest import MANIFEST_NAME, Manifest, ModelFile
from clip_debias.toolchain.choices import TritonBackend, TritonKind

KINDS = TritonKind.values()
BACKENDS = TritonBackend.values()
CONFIG_PBTXT = "config.pbtxt"
LABELS_TXT = "labels.txt"
MODEL_PY = "model.py"
ARTIFACT_DIR = "artifact"  # REPO/NAME/1/artifact/ of a python-backend repository (serving.triton_model reads it)
DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_QUEUE_DELAY_US = 100

PYTHON_MODEL = '''\
"""Triton python-backend model written by 'clip-debias export triton --backend python': serves ./artifact through
clip_debias.runtime. clip-debias (pip install clip-debias) must be importable by the python backend's stub."""

from clip_debias.serving.triton_model import TritonPythonModel  # noqa: F401
'''


@dataclass
class TritonConfig:
    """What ``config.pbtxt`` says (see the module docstring)."""

    name: str
    max_batch_size: int
    image_dims: tuple[int, int, int]  # [3, H, W]
    num_classes: int
    embed_dim: int
    platform: str | None = "onnxruntime_onnx"  # onnxruntime_onnx | tensorrt_plan; None for the python backend
    backend: str | None = None  # "python" (then platform is None)
    instances: int = 1
    kind: str = "cpu"
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    intra_op_threads: int | None = None  # CPU instances
    warmup: bool = False  # GPU instances
    parameters: dict[str, str] = field(default_factory=dict)  # extra model parameters (python backend: precision)

    @property
    def batched(self) -> bool:
        """Dynamic batching across requests (off at max_batch_size 1, i.e. int8)."""
        return self.max_batch_size > 1

    def to_pbtxt(self) -> str:
        """Triton's protobuf text format."""
        dims = lambda d: "[ " + ", ".join(str(int(v)) for v in d) + " ]"  # noqa: E731
        head = [f'name: "{self.name}"']
        head.append(f'backend: "{self.backend}"' if self.backend else f'platform: "{self.platform}"')
        lines = head + [
            f"max_batch_size: {self.max_batch_size}",
            "input [",
            "  {",
            '    name: "image"',
            "    data_type: TYPE_FP32",
            f"    dims: {dims(self.image_dims)}",
            "  }",
            "]",
            "output [",
            "  {",
            '    name: "logits"',
            "    data_type: TYPE_FP32",
            f"    dims: {dims([self.num_classes])}",
            f'    label_filename: "{LABELS_TXT}"',
            "  },",
            "  {",
            '    name: "embedding"',
            "    data_type: TYPE_FP32",
            f"    dims: {dims([self.embed_dim])}",
            "  }",
            "]",
        ]
        if self.batched:
            lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {self.max_queue_delay_us}", "}"]
        lines += ["instance_group [", "  {", f"    count: {self.instances}", f"    kind: KIND_{self.kind.upper()}",
                  "  }", "]"]
        params = dict(self.parameters)
        if self.intra_op_threads is not None:
            params["intra_op_thread_count"] = str(self.intra_op_threads)
        for key, value in params.items():
            lines += ["parameters {", f'  key: "{key}"', f'  value: {{ string_value: "{value}" }}', "}"]
        if self.warmup:
            lines.append("model_warmup [")
            sizes = sorted({1, self.max_batch_size})
            for i, b in enumerate(sizes):
                lines += ["  {", f'    name: "zeros_batch_{b}"', f"    batch_size: {b}", "    inputs {",
                          '      key: "image"', "      value {", "        data_type: TYPE_FP32",
                          f"        dims: {dims(self.image_dims)}", "        zero_data: true", "      }", "    }",
                          "  }" + ("," if i < len(sizes) - 1 else "")]
            lines.append("]")
        return "\n".join(lines + [""])


def triton_config(manifest: Manifest, name: str, platform: str | None, max_batch: int, instances: int, kind: str,
                  *, backend: str | None = None, max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
                  server_cores: int | None = None, parameters: dict[str, str] | None = None) -> TritonConfig:
    """The config of an artifact (shapes from its manifest; threads and warm-up from ``kind``)."""
    image, logits, emb = (next(t for t in specs if t.name == n) for specs, n in
                          ((manifest.inputs, "image"), (manifest.outputs, "logits"), (manifest.outputs, "embedding")))
    threads = max(1, (server_cores or os.cpu_count() or 1) // instances) if kind == "cpu" else None
    return TritonConfig(name=name, platform=None if backend else platform, backend=backend, max_batch_size=max_batch,
                        image_dims=tuple(int(d) for d in image.shape[1:]),  # type: ignore[arg-type]
                        num_classes=int(logits.shape[1]), embed_dim=int(emb.shape[1]), instances=instances,
                        kind=kind, max_queue_delay_us=max_queue_delay_us, intra_op_threads=threads,
                        warmup=kind == "gpu", parameters=dict(parameters or {}))


def labels_text(manifest: Manifest) -> str:
    """``labels.txt``: one class name a line (a name with a line break cannot be written there: refused)."""
    bad = [c for c in manifest.class_names if "\n" in c or "\r" in c or not c.strip()]
    if bad:
        raise ClipDebiasError(f"{MANIFEST_NAME}: field 'class_names': {bad[0]!r} cannot be a line of Triton's "
                              f"{LABELS_TXT} (expected non-empty names without line breaks)")
    return "".join(c + "\n" for c in manifest.class_names)


def _onnx_file(manifest: Manifest, artifact: Path, precision: str | None) -> ModelFile:
    """The ONNX model of ``precision`` (None: fp32, else fp16, else int8), or one line naming what there is."""
    wanted = [precision] if precision else list(FilePrecision.values())
    for p in wanted:
        f = manifest.file("onnx", p)
        if f is not None:
            return f
    have = ", ".join(f"{f.path} ({f.precision})" for f in manifest.files if f.kind == "onnx") or "none"
    raise ClipDebiasError(f"{artifact / MANIFEST_NAME}: no ONNX model of precision {' / '.join(wanted)} listed "
                          f"(ONNX models: {have})")


def _check_options(name: str, kind: str, backend: str, precision: str | None, instances: int,
                   max_queue_delay_us: int, server_cores: int | None) -> None:
    TritonKind.parse(kind, "--kind")
    TritonBackend.parse(backend, "--backend")
    if precision is not None:
        FilePrecision.parse(precision, "--precision")
    if precision == "int8" and kind == "gpu":
        raise ClipDebiasError("--precision int8: the int8 model runs on the CPU only (expected --kind cpu)")
    if instances < 1:
        raise ClipDebiasError(f"--instances {instances}: expected >= 1")
    if max_queue_delay_us < 0:
        raise ClipDebiasError(f"--max-queue-delay-us {max_queue_delay_us}: expected >= 0 (microseconds)")
    if server_cores is not None and server_cores < 1:
        raise ClipDebiasError(f"--server-cores {server_cores}: expected >= 1")
    if not name or any(c in name for c in "/\\\"\n") or name.startswith("."):
        raise ClipDebiasError(f"--name {name!r}: expected a plain directory name")


def _max_batch(max_batch: int | None, int8: bool) -> int:
    if max_batch is not None and max_batch < 1:
        raise ClipDebiasError(f"--max-batch {max_batch}: expected >= 1")
    if int8:
        if max_batch is not None and max_batch > 1:
            raise ClipDebiasError(f"--max-batch {max_batch}: an int8 model is never batched across requests (its "
                                  "dynamic quantization would let batch neighbours change each other's result); "
                                  "expected 1, or leave --max-batch out")
        return 1
    return DEFAULT_MAX_BATCH if max_batch is None else max_batch


def _artifact_files(artifact: Path, manifest: Manifest) -> list[Path]:
    """The artifact's regular top-level files (manifest, every listed model, sidecars, its marker): what
    ``runtime.load`` may check. A listed file that is missing was caught by ``check_files`` already."""
    listed = {MANIFEST_NAME, *(f.path for f in manifest.files)}
    extra = {p.name for p in artifact.iterdir() if p.is_file() and not p.is_symlink()}
    return [artifact / n for n in sorted(listed | extra)]


def export_triton(artifact: str | Path, repo: str | Path, name: str = "clip_debias", max_batch: int | None = None,
                  instances: int = 1, kind: str | None = None, *, backend: str = "onnxruntime",
                  precision: str | None = None, max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
                  server_cores: int | None = None) -> Path:
    """Write ``repo/name`` for ``artifact`` and return that directory (see the module docstring). ``kind`` None:
    gpu when the artifact has a TensorRT engine (onnxruntime backend), else cpu. ``max_batch`` None: 32 (1 for
    int8). ``server_cores``: the cores of the machine Triton runs on (CPU instances' threads; default this one's)."""
    artifact, repo = Path(artifact), Path(repo)
    manifest = Manifest.load(artifact)
    manifest.check_files(artifact)  # every listed file there, with its sha256
    plan = manifest.file("tensorrt", "fp16") or manifest.file("tensorrt", "fp32")
    kind = kind or ("gpu" if plan is not None and backend == "onnxruntime" and precision is None else "cpu")
    _check_options(name, kind, backend, precision, instances, max_queue_delay_us, server_cores)
    labels = labels_text(manifest)
    use_plan = plan is not None and kind == "gpu" and backend == "onnxruntime" and precision in (None, plan.precision)
    model = plan if use_plan else _onnx_file(manifest, artifact, precision)
    assert model is not None
    batch = _max_batch(max_batch, model.precision == "int8")
    if use_plan:
        engine_max = int(read_sidecar(artifact).get("profile", {}).get("max", batch))
        if batch > engine_max:
            raise ClipDebiasError(f"--max-batch {batch}: the TensorRT engine's profile allows at most {engine_max} "
                                  f"({artifact / 'model.plan.json'})")
    params = {"precision": model.precision} if backend == "python" else {}
    cfg = triton_config(manifest, name, "tensorrt_plan" if use_plan else "onnxruntime_onnx", batch, instances, kind,
                        backend="python" if backend == "python" else None, max_queue_delay_us=max_queue_delay_us,
                        server_cores=server_cores, parameters=params)

    target = repo / name
    with staged_directory(target, "triton-model", complete=CONFIG_PBTXT) as tmp:
        (tmp / "1").mkdir()
        if backend == "python":
            (tmp / "1" / ARTIFACT_DIR).mkdir()
            for f in _artifact_files(artifact, manifest):
                shutil.copy2(f, tmp / "1" / ARTIFACT_DIR / f.name)
            (tmp / "1" / MODEL_PY).write_text(PYTHON_MODEL)
        else:
            shutil.copy2(artifact / model.path, tmp / "1" / (TRT_PLAN if use_plan else "model.onnx"))
        shutil.copy2(artifact / MANIFEST_NAME, tmp / MANIFEST_NAME)
        (tmp / LABELS_TXT).write_text(labels)
        (tmp / CONFIG_PBTXT).write_text(cfg.to_pbtxt())
    return target
