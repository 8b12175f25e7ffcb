"""Side-by-side latency of one artifact's backends, measured in one run.

Rows (those that can run here, in this order; the first is the baseline of ``speedup``):
  open_clip eager   ``model.encode_image`` of the artifact's open_clip architecture (random init: latency does not
                    depend on the weights, and nothing is downloaded)
  torch plain       the ``ExplicitViT`` of MODEL_DIR (image -> embedding, no edits, no head)      [--model-dir]
  torch debiased    the ``DebiasedClassifier`` of MODEL_DIR                                          [--model-dir]
  ort fp32          model.onnx (ORT_ENABLE_ALL)
  ort fp32 (ort)    model.ort.onnx, when the artifact kept it
  ort fp16          model.fp16.onnx, when present (CPU: ORT_ENABLE_BASIC, see ``runtime.backends.ort``)
  ort int8          model.int8.onnx, when present (CPU provider, ORT_ENABLE_ALL; image by image, as the runtime)
  openvino fp32/bf16  model.onnx on OpenVINO's CPU plugin, when ``openvino`` is installed (bf16: when the CPU has
                    bf16 arithmetic, see ``runtime.backends.ov``)
  ort cuda fp32/16  the runtime on ONNX Runtime CUDA (``runtime.load(device="cuda").predict_logits``: host<->device
                    copies and input checks included), when onnxruntime has the CUDA provider; each also as
                    "... graph" with ``cuda_graph=True`` (one captured CUDA graph per batch size)
  tensorrt          model.plan, when tensorrt + a CUDA device are present (host->device copies included)

Every ONNX Runtime, OpenVINO and TensorRT row is the runtime's own backend (``runtime.load(...).backend.run``: what a
service runs, minus the classifier's input checks); a row the machine cannot load is left out with one line on
stderr saying why (``--json`` records it under ``left_out``).

Per batch size b the rows take turns, call by call (``exporters.timing.round_robin``: load from other processes hits
every row alike, instead of whichever row ran while it lasted): p50 latency (ms) over ``iters`` rounds after
``warmup``, throughput = b / p50 (img/s), speedup = median over rounds of time(first row) / time(row). No row runs
while the previous one's threads still spin: the CPU ORT sessions stop spinning when a run returns
(``stop_spinning``), and ``round_robin`` pauses between calls.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from clip_debias.exporters.onnx_export import library_versions
from clip_debias.exporters.timing import round_robin
from clip_debias.runtime import cpu_features
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.manifest import Manifest
from clip_debias.runtime.ownership import json_object_with, register_file_kind

BENCH_REPORT = "clip-debias bench"  # the 'report' field of bench_json (how runtime.ownership recognises it)
register_file_kind("bench-report", "a report written by 'clip-debias bench --json'",
                   json_object_with({"rows", "machine", "left_out"}, ("report", BENCH_REPORT)))
Runner = Callable[[np.ndarray], Any]


@dataclass
class BenchRow:
    backend: str
    batch: int
    p50_ms: float
    throughput: float  # images / s
    speedup: float  # p50 of the first row at this batch / p50 of this row


def _torch_runner(module: Any) -> Runner:
    import torch

    module.eval()

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return module(torch.from_numpy(x))

    return run


def _load(artifact: Path, label: str, left_out: list[str], **load: Any) -> Any:
    """``runtime.load(artifact, **load)`` (file hashes already checked), or None with the reason appended to
    ``left_out`` and printed on stderr."""
    import sys

    from clip_debias import runtime

    try:
        return runtime.load(artifact, check_sha256=False, **load)
    except ClipDebiasError as e:
        left_out.append(f"{label}: {e}")
        print(f"bench: row '{label}' left out: {e}", file=sys.stderr)
        return None


def _cpu_runners(artifact: Path, manifest: Manifest, left_out: list[str]) -> list[tuple[str, Runner]]:
    """ONNX Runtime CPU rows for each listed graph (no spinning after a run: it would slow the torch row that
    follows), then OpenVINO fp32 and bf16 on model.onnx when ``openvino`` is installed."""
    import importlib.util

    rows: list[tuple[str, Runner]] = []
    cpu = {"device": "cpu", "stop_spinning": True}
    for label, kind, precision in (("ort fp32", "onnx", "fp32"), ("ort fp32 (ort)", "onnx-ort", "fp32"),
                                   ("ort fp16", "onnx", "fp16"), ("ort int8", "onnx", "int8")):
        if manifest.file(kind, precision) is not None:
            clf = _load(artifact, label, left_out, backend="onnxruntime", precision=precision,
                        use_ort_optimized=kind == "onnx-ort", **cpu)
            rows += [(label, clf.backend.run)] if clf is not None else []
    if manifest.file("onnx", "fp32") is not None and importlib.util.find_spec("openvino") is not None:
        for precision in ("fp32", "bf16"):
            label = f"openvino {precision}"
            clf = _load(artifact, label, left_out, backend="openvino", device="cpu", precision=precision)
            rows += [(label, clf.backend.run)] if clf is not None else []
    return rows


def _ort_cuda_runners(artifact: Path, manifest: Manifest, left_out: list[str]) -> list[tuple[str, Runner]]:
    """The runtime on ONNX Runtime CUDA, fp32/fp16, uncaptured and with CUDA graphs; none without the CUDA provider.
    ``predict_logits``: input checks and host<->device copies included."""
    from clip_debias.runtime.backends import ort_has_cuda

    if not ort_has_cuda():
        return []
    rows: list[tuple[str, Runner]] = []
    for precision in ("fp32", "fp16"):
        if manifest.file("onnx", precision) is None:
            continue
        for graph in (False, True):
            label = f"ort cuda {precision}{' graph' if graph else ''}"
            clf = _load(artifact, label, left_out, backend="onnxruntime", device="cuda", precision=precision,
                        cuda_graph=graph)
            rows += [(label, clf.predict_logits)] if clf is not None else []
    return rows


def _open_clip_runner(name: str) -> Runner | None:
    try:
        from clip_debias.toolchain.models.loading import load_clip

        model = load_clip(name, random_weights=True).model  # timing only: the weights do not matter
    except Exception:  # unknown architecture / open_clip missing: the row is just absent
        return None

    class Enc:
        def __init__(self, m: Any):
            self.m = m

        def eval(self) -> "Enc":
            return self

        def __call__(self, x: Any) -> Any:
            return self.m.encode_image(x)

    return _torch_runner(Enc(model))


def _tensorrt_runner(artifact: Path, manifest: Manifest, left_out: list[str]) -> list[tuple[str, Runner]]:
    """The runtime's TensorRT backend on the listed plan (fp16 first), when tensorrt + a CUDA device are present."""
    from clip_debias.runtime.backends import tensorrt_available

    plan = manifest.file("tensorrt", "fp16") or manifest.file("tensorrt", "fp32")
    if plan is None or not tensorrt_available():
        return []
    clf = _load(artifact, "tensorrt", left_out, backend="tensorrt", device="cuda", precision=plan.precision)
    return [("tensorrt", clf.backend.run)] if clf is not None else []


def check_same_model(spec: Any, manifest: Manifest, model_dir: Path, artifact: Path) -> None:
    """Refuse, in one line, a ``--model-dir`` that is not the model ``artifact`` was exported from (other weights,
    edits, head or classes): its torch rows would time a different model."""
    ours = {"model": dict(spec.identity), "ablated": [list(p) for p in spec.ablated],
            "salient": [list(p) for p in spec.salient], "head": spec.head.get("kind"),
            "classes": list(spec.class_names)}
    theirs = {"model": dict(manifest.model), "ablated": manifest.plan.get("ablated"),
              "salient": manifest.plan.get("salient"), "head": (manifest.plan.get("head") or {}).get("kind"),
              "classes": list(manifest.class_names)}
    differ = [k for k in ours if ours[k] != theirs[k]]
    if differ:
        raise ClipDebiasError(f"--model-dir {model_dir}: not the model {artifact} was exported from "
                              f"({', '.join(differ)} differ); give the model directory it was built from, or leave "
                              "--model-dir out")


def runners(artifact: str | Path, model_dir: str | Path | None = None, open_clip_row: bool = True,
            left_out: list[str] | None = None) -> list[tuple[str, Runner]]:
    """The backends that can run here, baseline first; rows that cannot are listed in ``left_out``."""
    artifact = Path(artifact)
    left_out = [] if left_out is None else left_out
    manifest = Manifest.load(artifact)
    manifest.check_files(artifact)  # every listed file there, with its sha256 (the rows then load unhashed)
    rows: list[tuple[str, Runner]] = []
    if open_clip_row:
        oc = _open_clip_runner(str(manifest.model.get("name", "")))
        if oc is not None:
            rows.append(("open_clip eager", oc))
    if model_dir is not None:
        from clip_debias.toolchain.correct.classifier import DebiasedClassifier

        model = DebiasedClassifier.load(model_dir)
        check_same_model(model.spec, manifest, Path(model_dir), artifact)
        rows.append(("torch plain", _torch_runner(model.tower)))
        rows.append(("torch debiased", _torch_runner(model)))
    rows += _cpu_runners(artifact, manifest, left_out)
    rows += _ort_cuda_runners(artifact, manifest, left_out)
    rows += _tensorrt_runner(artifact, manifest, left_out)
    return rows


def bench(artifact: str | Path, batch_sizes: tuple[int, ...] | list[int] = (1, 8, 32), iters: int = 10,
          model_dir: str | Path | None = None, warmup: int = 3, open_clip_row: bool = True,
          left_out: list[str] | None = None) -> list[BenchRow]:
    """Time every available backend at every batch size (see module docstring); rows that cannot run here are
    appended to ``left_out`` (one line each)."""
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ClipDebiasError(f"--batch-sizes {list(batch_sizes)}: expected positive integers")
    if iters < 1:
        raise ClipDebiasError(f"--iters {iters}: expected >= 1")
    manifest = Manifest.load(artifact)
    h, w = (int(s) for s in manifest.inputs[0].shape[2:4])
    backends = runners(artifact, model_dir, open_clip_row, left_out)
    rows: list[BenchRow] = []
    rng = np.random.default_rng(0)
    for b in batch_sizes:
        x = rng.standard_normal((b, 3, h, w)).astype(np.float32)
        wall, _ = round_robin([functools.partial(run, x) for _, run in backends], iters, warmup)
        for (label, _), times in zip(backends, wall):
            p50 = 1e3 * statistics.median(times)
            speedup = statistics.median(t0 / t for t0, t in zip(wall[0], times))
            rows.append(BenchRow(label, b, p50, b / (p50 / 1e3), speedup))
    return rows


def bench_json(rows: list[BenchRow], left_out: list[str] | None = None) -> dict[str, Any]:
    """Rows plus the machine they were measured on (CPU model and the instruction-set flags the CPU precisions use,
    ``runtime.cpu_features``) and the rows left out."""
    import importlib.util

    import onnxruntime as ort

    versions = library_versions()
    if importlib.util.find_spec("openvino") is not None:
        import openvino

        versions["openvino"] = openvino.get_version()
    return {"report": BENCH_REPORT, "rows": [asdict(r) for r in rows],
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "cpu": cpu_features.cpu_model(),
                        "cpu_flags": cpu_features.features(), "load_avg_1m": os.getloadavg()[0],
                        "ort_providers": ort.get_available_providers()},
            "left_out": list(left_out or []), "versions": versions}


def bench_table(rows: list[BenchRow], title: str = "clip-debias bench") -> Any:
    """A rich ``Table`` of the rows (``runtime.tables``: cells folded, never cut)."""
    from clip_debias.runtime.tables import table as new_table

    table = new_table(["backend", "batch", "p50 ms", "img/s", "speedup vs first"], right={1, 2, 3, 4}, title=title,
                      caption=cpu_features.describe())
    for r in rows:
        table.add_row(r.backend, str(r.batch), f"{r.p50_ms:.2f}", f"{r.throughput:.1f}", f"{r.speedup:.2f}x")
    return table
