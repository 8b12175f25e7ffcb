"""Write a Triton Inference Server model repository entry for an artifact::

    REPO/NAME/config.pbtxt
    REPO/NAME/1/model.onnx     (platform onnxruntime_onnx)   or   REPO/NAME/1/model.plan (platform tensorrt_plan)
    REPO/NAME/manifest.json    (the artifact's manifest, as documentation: labels, preprocessing, provenance)

The engine is used when the artifact has one and ``kind`` is gpu (a TensorRT plan cannot run on CPU instances);
otherwise the fp32 ONNX graph (else the fp16 one, else the int8 one -- for CPU instances; all have fp32 I/O).
``REPO/NAME`` is written into a temp dir and renamed into place (``runtime.atomic_output``); an existing ``REPO/NAME``
is replaced only when it is a Triton model folder of ours, untouched (its ``clip-debias-output.json`` marker).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from clip_debias.exporters.artifact import TRT_PLAN
from clip_debias.exporters.tensorrt_export import read_sidecar
from clip_debias.runtime.atomic_output import staged_directory
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.manifest import MANIFEST_NAME, Manifest

KINDS = ("cpu", "gpu")
CONFIG_PBTXT = "config.pbtxt"


@dataclass
class TritonConfig:
    """What ``config.pbtxt`` says."""

    name: str
    platform: str  # onnxruntime_onnx | tensorrt_plan
    max_batch_size: int
    image_dims: tuple[int, int, int]  # [3, H, W]
    num_classes: int
    embed_dim: int
    preferred_batch_sizes: list[int]
    instances: int = 1
    kind: str = "cpu"
    max_queue_delay_us: int = 100

    def to_pbtxt(self) -> str:
        """Triton's protobuf text format."""
        dims = lambda d: "[ " + ", ".join(str(int(v)) for v in d) + " ]"  # noqa: E731
        return "\n".join([
            f'name: "{self.name}"',
            f'platform: "{self.platform}"',
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
            "  },",
            "  {",
            '    name: "embedding"',
            "    data_type: TYPE_FP32",
            f"    dims: {dims([self.embed_dim])}",
            "  }",
            "]",
            "dynamic_batching {",
            f"  preferred_batch_size: {dims(self.preferred_batch_sizes)}",
            f"  max_queue_delay_microseconds: {self.max_queue_delay_us}",
            "}",
            "instance_group [",
            "  {",
            f"    count: {self.instances}",
            f"    kind: KIND_{self.kind.upper()}",
            "  }",
            "]",
            "",
        ])


def preferred_batch_sizes(max_batch: int, opt_batch: int | None = None) -> list[int]:
    """Powers of two in [max_batch / 4, max_batch], plus max_batch and the engine's opt batch (sorted, unique)."""
    sizes = {max_batch}
    p = 1
    while p <= max_batch:
        if p * 4 >= max_batch:
            sizes.add(p)
        p *= 2
    if opt_batch is not None and 1 <= opt_batch <= max_batch:
        sizes.add(opt_batch)
    return sorted(sizes)


def triton_config(manifest: Manifest, name: str, platform: str, max_batch: int, instances: int, kind: str,
                  opt_batch: int | None = None) -> TritonConfig:
    """The config of an artifact (shapes from its manifest)."""
    image, logits, emb = (next(t for t in specs if t.name == n) for specs, n in
                          ((manifest.inputs, "image"), (manifest.outputs, "logits"), (manifest.outputs, "embedding")))
    return TritonConfig(name=name, platform=platform, max_batch_size=max_batch,
                        image_dims=tuple(int(d) for d in image.shape[1:]),  # type: ignore[arg-type]
                        num_classes=int(logits.shape[1]), embed_dim=int(emb.shape[1]),
                        preferred_batch_sizes=preferred_batch_sizes(max_batch, opt_batch), instances=instances,
                        kind=kind)


def export_triton(artifact: str | Path, repo: str | Path, name: str = "clip_debias", max_batch: int = 32,
                  instances: int = 1, kind: str | None = None) -> Path:
    """Write ``repo/name`` for ``artifact`` and return that directory. ``kind`` None: gpu when the artifact has a
    TensorRT engine, else cpu."""
    artifact, repo = Path(artifact), Path(repo)
    manifest = Manifest.load(artifact)
    manifest.check_files(artifact)  # every listed file there, with its sha256
    plan = manifest.file("tensorrt", "fp16") or manifest.file("tensorrt", "fp32")
    kind = kind or ("gpu" if plan else "cpu")
    if kind not in KINDS:
        raise ClipDebiasError(f"--kind {kind}: expected one of {', '.join(KINDS)}")
    if max_batch < 1:
        raise ClipDebiasError(f"--max-batch {max_batch}: expected >= 1")
    if instances < 1:
        raise ClipDebiasError(f"--instances {instances}: expected >= 1")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ClipDebiasError(f"--name {name!r}: expected a plain directory name")
    opt = None
    if plan is not None and kind == "gpu":
        profile = read_sidecar(artifact).get("profile", {})
        engine_max = int(profile.get("max", max_batch))
        if max_batch > engine_max:
            raise ClipDebiasError(f"--max-batch {max_batch}: the TensorRT engine's profile allows at most {engine_max} "
                                  f"({artifact / 'model.plan.json'})")
        opt = profile.get("opt")
        platform, src, dst = "tensorrt_plan", plan.path, TRT_PLAN
    else:
        onnx_file = manifest.file("onnx", "fp32") or manifest.file("onnx", "fp16") or manifest.file("onnx", "int8")
        if onnx_file is None:
            raise ClipDebiasError(f"{artifact}: no ONNX model file listed in {MANIFEST_NAME}")
        platform, src, dst = "onnxruntime_onnx", onnx_file.path, "model.onnx"
    cfg = triton_config(manifest, name, platform, max_batch, instances, kind, opt)

    target = repo / name
    with staged_directory(target, "triton-model", complete=CONFIG_PBTXT) as tmp:
        (tmp / "1").mkdir()
        shutil.copy2(artifact / src, tmp / "1" / dst)
        shutil.copy2(artifact / MANIFEST_NAME, tmp / MANIFEST_NAME)
        (tmp / CONFIG_PBTXT).write_text(cfg.to_pbtxt())
    return target
