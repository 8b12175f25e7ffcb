"""Side-by-side latency of one artifact's backends, measured in one run.

Rows (those that can run here, in this order; the first is the baseline of ``speedup``):
  open_clip eager   ``model.encode_image`` of the artifact's open_clip architecture (random init: latency does not
                    depend on the weights, and nothing is downloaded)
  torch plain       the ``ExplicitViT`` of MODEL_DIR (image -> embedding, no edits, no head)      [--model-dir]
  torch debiased    the ``DebiasedClassifier`` of MODEL_DIR                                          [--model-dir]
  ort fp32          model.onnx (ORT_ENABLE_ALL)
  ort fp32 (ort)    model.ort.onnx, when the artifact kept it
  ort fp16          model.fp16.onnx, when present (CPU: ORT_ENABLE_BASIC, see ``onnx_export.ort_session``)
  ort int8          model.int8.onnx, when present (CPU provider, ORT_ENABLE_ALL; image by image, as the runtime)
  ort cuda fp32/16  the runtime on ONNX Runtime CUDA (``runtime.load(device="cuda").predict_logits``: host<->device
                    copies and input checks included), when onnxruntime has the CUDA provider; each also as
                    "... graph" with ``cuda_graph=True`` (one captured CUDA graph per batch size)
  tensorrt          model.plan, when tensorrt + a CUDA device are present (host->device copies included)

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

from clip_debias.exporters.artifact import verify_files
from clip_debias.exporters.onnx_export import library_versions, ort_session
from clip_debias.exporters.timing import round_robin
from clip_debias.runtime.backends import session_runner
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.manifest import Manifest

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


def _ort_runner(path: Path, precision: str) -> Runner:
    # int8 image by image, as the runtime; no spinning after a run, which would slow the torch row that follows
    return session_runner(ort_session(path, precision, stop_spinning=True), precision)


def _ort_cuda_runners(artifact: Path, manifest: Manifest) -> list[tuple[str, Runner]]:
    """The runtime on ONNX Runtime CUDA, fp32/fp16, uncaptured and with CUDA graphs; none without the CUDA provider.
    A configuration the machine cannot load is left out with one line on stderr."""
    import sys

    from clip_debias import runtime
    from clip_debias.runtime.backends import ort_has_cuda

    if not ort_has_cuda():
        return []
    rows: list[tuple[str, Runner]] = []
    for precision in ("fp32", "fp16"):
        if manifest.file("onnx", precision) is None:
            continue
        for graph in (False, True):
            label = f"ort cuda {precision}{' graph' if graph else ''}"
            try:
                clf = runtime.load(artifact, backend="onnxruntime", device="cuda", precision=precision,
                                   cuda_graph=graph)
            except ClipDebiasError as e:
                print(f"bench: row '{label}' left out: {e}", file=sys.stderr)
                continue
            rows.append((label, clf.predict_logits))
    return rows


def _open_clip_runner(name: str) -> Runner | None:
    try:
        from clip_debias.toolchain.models.loading import load_clip

        model = load_clip(name).model
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


def _tensorrt_runner(artifact: Path, manifest: Manifest) -> Runner | None:
    plan = manifest.file("tensorrt", "fp16") or manifest.file("tensorrt", "fp32")
    if plan is None:
        return None
    try:
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            return None
    except ImportError:
        return None
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine((artifact / plan.path).read_bytes())
    context = engine.create_execution_context()
    outputs = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
               if engine.get_tensor_mode(engine.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT]

    def run(x: np.ndarray) -> Any:
        context.set_input_shape("image", tuple(x.shape))
        image = torch.from_numpy(x).cuda()
        context.set_tensor_address("image", image.data_ptr())
        bufs = []
        for name in outputs:
            buf = torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
            context.set_tensor_address(name, buf.data_ptr())
            bufs.append(buf)
        stream = torch.cuda.current_stream()
        context.execute_async_v3(stream.cuda_stream)
        return [b.cpu().numpy() for b in bufs]  # .cpu() synchronizes

    return run


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


def runners(artifact: str | Path, model_dir: str | Path | None = None,
            open_clip_row: bool = True) -> list[tuple[str, Runner]]:
    """The backends that can run here, baseline first."""
    artifact = Path(artifact)
    manifest = Manifest.load(artifact)
    verify_files(artifact, manifest)
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
    for label, kind, precision in (("ort fp32", "onnx", "fp32"), ("ort fp32 (ort)", "onnx-ort", "fp32"),
                                   ("ort fp16", "onnx", "fp16"), ("ort int8", "onnx", "int8")):
        f = manifest.file(kind, precision)
        if f is not None:
            rows.append((label, _ort_runner(artifact / f.path, precision)))
    rows += _ort_cuda_runners(artifact, manifest)
    trt = _tensorrt_runner(artifact, manifest)
    if trt is not None:
        rows.append(("tensorrt", trt))
    return rows


def bench(artifact: str | Path, batch_sizes: tuple[int, ...] | list[int] = (1, 8, 32), iters: int = 10,
          model_dir: str | Path | None = None, warmup: int = 3, open_clip_row: bool = True) -> list[BenchRow]:
    """Time every available backend at every batch size (see module docstring)."""
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ClipDebiasError(f"--batch-sizes {list(batch_sizes)}: expected positive integers")
    if iters < 1:
        raise ClipDebiasError(f"--iters {iters}: expected >= 1")
    manifest = Manifest.load(artifact)
    h, w = (int(s) for s in manifest.inputs[0].shape[2:4])
    backends = runners(artifact, model_dir, open_clip_row)
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


def bench_json(rows: list[BenchRow]) -> dict[str, Any]:
    """Rows plus the machine they were measured on."""
    import onnxruntime as ort

    return {"rows": [asdict(r) for r in rows],
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "ort_providers":
                        ort.get_available_providers()},
            "versions": library_versions()}


def bench_table(rows: list[BenchRow], title: str = "clip-debias bench") -> Any:
    """A rich ``Table`` of the rows."""
    from rich.table import Table

    table = Table(title=title)
    for col, justify in (("backend", "left"), ("batch", "right"), ("p50 ms", "right"), ("img/s", "right"),
                         ("speedup vs first", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r.backend, str(r.batch), f"{r.p50_ms:.2f}", f"{r.throughput:.1f}", f"{r.speedup:.2f}x")
    return table
