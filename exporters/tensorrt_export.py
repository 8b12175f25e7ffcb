"""Build a TensorRT engine (``model.plan``) from an artifact's ONNX graph, gate it against onnxruntime, and add it to
the artifact (rewritten atomically, see ``exporters.artifact``).

API per TensorRT major version (``import tensorrt`` is lazy; without it: one-line ``ClipDebiasError``):

- TRT 10: ``builder.create_network(0)`` (explicit batch is the only mode). fp16: when the artifact has
  ``model.fp16.onnx`` the network is built strongly typed from it (same precision choices as the gated ORT fp16 graph:
  LayerNormalization in fp16 with fp32 statistics per its ``stash_type``, unless the artifact was exported with
  ``--fp16-fp32-ops LayerNormalization``), else from ``model.onnx`` with ``BuilderFlag.FP16`` (weak typing).
- TRT 11: precision builder flags are gone; fp16 means building the fp16 ONNX with
  ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (accepted and implied on 11). fp32 builds ``model.onnx``.

One optimization profile over the batch axis: ``image`` [min|opt|max, 3, H, W]. Accuracy gate: the engine, written
into the staged artifact and run by the runtime's own TensorRT backend (``runtime.backends.TensorRTBackend``: what
``runtime.load(backend="tensorrt")`` runs), vs the runtime's ONNX Runtime backend on the artifact's fp32 graph (CPU)
on seeded N(0, 1) images: max |logit diff| <= 2e-2 * max(1, max |logits|) (TF32/fp16 kernels have a 10-bit mantissa,
same budget as the fp16 ONNX gate) and identical argmax on rows with a top-2 margin above that; a failure leaves the
artifact unchanged.
Sidecar ``model.plan.json``: TensorRT version, GPU name, compute capability, source ONNX file + sha256, profile.
UNVERIFIED: written against the TensorRT 10/11 Python API documentation; no TensorRT was available to run it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from clip_debias.exporters.artifact import (ONNX_FP16, ONNX_FP32, TRT_PLAN, TRT_SIDECAR, copy_artifact_files,
                                            model_file, staged_artifact)
from clip_debias.runtime.backends import ModelSource, OrtBackend, TensorRTBackend, import_tensorrt
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.manifest import Manifest
from clip_debias.runtime.precision_gate import GateResult, compare, gate_images

log = logging.getLogger("clip_debias.export")
TENSORRT_CONTEXT = "export tensorrt"  # how the missing-TensorRT line starts (runtime.backends.trt.import_tensorrt)


@dataclass
class EngineOptions:
    """Build options. Batch profile: 1 <= min_batch <= opt_batch <= max_batch."""

    fp16: bool = False
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_gb: float = 4.0

    def check(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ClipDebiasError(f"--min-batch {self.min_batch} --opt-batch {self.opt_batch} --max-batch "
                                  f"{self.max_batch}: expected 1 <= min <= opt <= max")
        if self.workspace_gb <= 0:
            raise ClipDebiasError(f"--workspace-gb {self.workspace_gb}: expected a positive size in GiB")


def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def _source_onnx(trt: Any, artifact: Path, manifest: Manifest, opts: EngineOptions) -> tuple[str, bool]:
    """(ONNX file to build from, strongly typed?) for this TensorRT version and precision."""
    has16 = manifest.file("onnx", "fp16") is not None
    has32 = manifest.file("onnx", "fp32") is not None
    strongly = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if opts.fp16:
        if has16 and strongly:
            return ONNX_FP16, True
        if _major(trt) >= 11:
            raise ClipDebiasError(f"{artifact}: TensorRT {trt.__version__} builds fp16 only from a strongly typed fp16 "
                                  "graph; re-export with 'clip-debias export onnx --precision both'")
        if has32:
            return ONNX_FP32, False
        raise ClipDebiasError(f"{artifact}: no model.onnx to build an fp16 engine from with TensorRT {trt.__version__}")
    if not has32:
        raise ClipDebiasError(f"{artifact}: no fp32 model.onnx listed in the manifest (build with --fp16, or re-export "
                              "with --precision fp32|both)")
    return ONNX_FP32, False


def build_engine(trt: Any, onnx_path: Path, height: int, width: int, opts: EngineOptions,
                 strongly_typed: bool) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine with one batch profile."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ClipDebiasError(f"{onnx_path}: TensorRT's ONNX parser rejected it ({errs[:300]})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    if opts.fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)  # TRT 10 weak typing only (removed in 11)
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (opts.min_batch, 3, height, width), (opts.opt_batch, 3, height, width),
                      (opts.max_batch, 3, height, width))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ClipDebiasError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
    return bytes(serialized)


def gate_engine(artifact: Path, manifest: Manifest, plan: Path, precision: str, batch: int) -> GateResult:
    """The engine at ``plan`` (run by the runtime's TensorRT backend) vs the artifact's fp32 graph (or its fp16 one
    when that is all there is) on the runtime's ONNX Runtime CPU backend, on ``batch`` gate images."""
    ref_file = manifest.file("onnx", "fp32") or manifest.file("onnx", "fp16")
    ref = OrtBackend(ModelSource.listed(artifact, manifest, ref_file), "cpu")
    engine = TensorRTBackend(ModelSource(plan, precision, manifest.inputs, manifest.outputs))
    _, h, w = (int(s) for s in manifest.inputs[0].shape[1:4])
    x = gate_images(h, w, batch=batch)
    return compare("fp16", *engine.run(x), *ref.run(x))  # fp16/TF32 budget, see the module docstring


def _gpu_info() -> dict[str, str]:
    import torch

    if not torch.cuda.is_available():
        raise ClipDebiasError("no CUDA device visible: TensorRT engines are built on (and for) the target NVIDIA GPU")
    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def export_tensorrt(artifact: str | Path, opts: EngineOptions | None = None) -> Path:
    """Add ``model.plan`` (+ ``model.plan.json``) to ``artifact`` after the accuracy gate; returns the artifact path."""
    artifact = Path(artifact)
    manifest = Manifest.load(artifact)
    if manifest.export.get("fused_attention"):
        raise ClipDebiasError(f"{artifact}: exported with --fused-attention (ONNX Runtime's contrib ops, which "
                              "TensorRT cannot parse); re-export without it for TensorRT")
    trt = import_tensorrt(TENSORRT_CONTEXT)
    opts = opts or EngineOptions()
    opts.check()
    if _major(trt) < 10:
        raise ClipDebiasError(f"TensorRT {trt.__version__} is too old: clip-debias builds engines with TensorRT >= 10")
    manifest.check_files(artifact)  # every listed file there, with its sha256
    gpu = _gpu_info()
    src, strongly = _source_onnx(trt, artifact, manifest, opts)
    h, w = (int(s) for s in manifest.inputs[0].shape[2:4])
    log.info("building TensorRT %s engine from %s (%s, batch %d/%d/%d) on %s", trt.__version__, src,
             "fp16" if opts.fp16 else "fp32", opts.min_batch, opts.opt_batch, opts.max_batch, gpu["gpu"])
    plan = build_engine(trt, artifact / src, h, w, opts, strongly)

    precision = "fp16" if opts.fp16 else "fp32"
    with staged_artifact(artifact) as tmp:
        copy_artifact_files(artifact, tmp, manifest, skip=(TRT_PLAN, TRT_SIDECAR))
        (tmp / TRT_PLAN).write_bytes(plan)
        gate = gate_engine(tmp, manifest, tmp / TRT_PLAN, precision, min(max(4, opts.min_batch), opts.max_batch))
        log.info("TensorRT gate: max|dlogit| %.3g (tol %.3g), argmax agree %.0f%%", gate.max_logit_diff,
                 gate.logit_tolerance, 100 * gate.argmax_agree)
        if not gate.passed:  # raising inside the staged directory discards it: the artifact is unchanged
            raise ClipDebiasError(f"{artifact / TRT_PLAN}: TensorRT gate failed against onnxruntime ({gate.reason}); "
                                  "artifact unchanged")
        sidecar = {"tensorrt": str(trt.__version__), **gpu, "precision": precision, "onnx_file": src,
                   "onnx_sha256": next(f.sha256 for f in manifest.files if f.path == src),
                   "strongly_typed": strongly, "profile": {"input": "image", "min": opts.min_batch,
                                                           "opt": opts.opt_batch, "max": opts.max_batch},
                   "workspace_gb": opts.workspace_gb,
                   "gate": {"max_logit_diff": gate.max_logit_diff, "tolerance": gate.logit_tolerance,
                            "argmax_agree": gate.argmax_agree}}
        (tmp / TRT_SIDECAR).write_text(json.dumps(sidecar, indent=2))
        manifest.files = [f for f in manifest.files if f.kind != "tensorrt"] + \
            [model_file(tmp, TRT_PLAN, "tensorrt", precision)]
        manifest.save(tmp)
    return artifact


def read_sidecar(artifact: str | Path) -> dict[str, Any]:
    """``model.plan.json`` of an artifact ({} when absent)."""
    p = Path(artifact) / TRT_SIDECAR
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ClipDebiasError(f"{p}: not valid JSON ({e})") from e
