"""The ``openvino`` backend: OpenVINO's CPU plugin on the artifact's fp32 ``model.onnx``, at fp32 or bf16.

``pip install 'clip-debias[openvino]'``; ``openvino`` is imported when the backend opens, never before.

- precision: ``INFERENCE_PRECISION_HINT`` is always set -- ``f32`` for fp32 (on a CPU with AMX or AVX-512 BF16
  OpenVINO's default is bf16, which would silently change the numbers), ``bf16`` for bf16: OpenVINO then runs the
  MatMuls/convolutions with bf16 inputs and fp32 accumulation. bf16 is refused in one line unless the CPU computes
  bf16 in hardware (``bf16_support``): OpenVINO's CPU plugin lists ``BF16`` in ``OPTIMIZATION_CAPABILITIES`` *and*
  /proc/cpuinfo has avx512_bf16, amx_bf16 or avx_ne_convert (where /proc/cpuinfo exists); after compiling, the
  compiled model must report bf16 (OpenVINO 2026.4 falls back to f32 without a word on a CPU without BF16). No
  silent emulation either way. Its accuracy gate: ``runtime.precision_gate`` (``verify --backend openvino
  --precision bf16``).
- ``PERFORMANCE_HINT``: LATENCY (default: one stream, every thread on one request) or THROUGHPUT (several streams,
  for several concurrent callers); ``INFERENCE_NUM_THREADS`` from ``intra_op_threads``.
- thread safety: one infer request per calling thread (``threading.local``); ``infer`` returns copies of the
  outputs, so a later call never overwrites what an earlier one returned.

Same validation (the classifier's), hashing (``request.model_source``) and outputs as the ONNX Runtime backend; the
graph's inputs and outputs are checked against the manifest before compiling.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clip_debias.runtime import cpu_features
from clip_debias.runtime.backends.base import BackendError, ModelSource, first_line, host_only, what_runs
from clip_debias.runtime.backends.graph_io import check_io
from clip_debias.runtime.backends.request import PERFORMANCE_HINTS, BackendRequest, model_source
from clip_debias.runtime.device_input import DeviceBatch
from clip_debias.runtime.errors import ArtifactError

NAME = "openvino"
DEVICES = ("auto", "cpu")
PRECISIONS = ("fp32", "bf16")
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
CPU_BACKEND_ENV = "CLIP_DEBIAS_CPU_BACKEND"  # "openvino": backend="auto" runs fp32 on OpenVINO on the CPU


def import_openvino(context: str = "backend 'openvino'") -> Any:
    """The ``openvino`` module, or one ``BackendError`` line saying how to install it."""
    try:
        import openvino  # type: ignore[import-not-found]
    except ImportError:
        raise BackendError(f"{context}: OpenVINO is not installed: pip install 'clip-debias[openvino]'") from None
    return openvino


def bf16_support(capabilities: list[str], flags: set[str] | None) -> tuple[bool, str]:
    """(whether this CPU computes bf16 in hardware, how that was decided). ``capabilities``: OpenVINO's CPU
    ``OPTIMIZATION_CAPABILITIES``; ``flags``: /proc/cpuinfo's (None where unreadable: OpenVINO's word alone)."""
    listed = "BF16" in capabilities
    native = sorted(set(cpu_features.NATIVE_BF16) & flags) if flags is not None else None
    said = (f"OpenVINO's CPU OPTIMIZATION_CAPABILITIES [{', '.join(capabilities)}] "
            f"{'include' if listed else 'lack'} BF16")
    if flags is None:
        cpuinfo = "no /proc/cpuinfo to check"
    elif native:
        cpuinfo = f"/proc/cpuinfo flags include {', '.join(native)}"
    else:
        cpuinfo = f"/proc/cpuinfo flags have none of {', '.join(cpu_features.NATIVE_BF16)}"
    return listed and (native is None or bool(native)), f"{said}; {cpuinfo}"


def _graph(ports: Any) -> list[tuple[str, str, list[Any]]]:
    """(name, dtype, shape) of OpenVINO model inputs/outputs; a dynamic dimension as None."""
    return [(p.get_any_name(), p.get_element_type().get_type_name(),
             [d.get_length() if d.is_static else None for d in p.get_partial_shape()]) for p in ports]


@dataclass
class OpenVINOBackend:
    """OpenVINO CPU over ``source`` (the fp32 ONNX graph), computing at ``precision`` (fp32 | bf16)."""

    source: ModelSource
    precision: str = "fp32"
    intra_op_threads: int | None = None
    performance_hint: str = "latency"
    name: str = field(default=NAME, init=False)
    device: str = field(default="cpu", init=False)

    def __post_init__(self) -> None:
        ov = import_openvino()
        if self.precision not in PRECISIONS:
            raise BackendError(f"backend 'openvino' runs precision fp32 or bf16, not '{self.precision}'")
        if self.source.precision != "fp32":
            raise BackendError(f"backend 'openvino' reads the fp32 graph, got {self.source.file} "
                               f"({self.source.precision})")
        if self.performance_hint not in PERFORMANCE_HINTS:
            raise BackendError(f"performance_hint {self.performance_hint!r} is not one of {PERFORMANCE_HINTS}")
        core = ov.Core()
        if self.precision == "bf16":
            ok, how = bf16_support(list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
                                   cpu_features.cpu_flags())
            if not ok:
                raise BackendError(f"precision 'bf16' refused: this CPU has no bf16 arithmetic ({how}); OpenVINO would "
                                   "emulate or silently run fp32 -- use precision fp32")
        path = self.source.path
        try:
            model = core.read_model(str(path))
        except Exception as e:
            raise ArtifactError(f"{path}: OpenVINO cannot read the model ({first_line(e)})") from None
        check_io(path, self.source.inputs, self.source.outputs, _graph(model.inputs), _graph(model.outputs))
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": OV_PRECISION[self.precision],
                                  "PERFORMANCE_HINT": self.performance_hint.upper()}
        if self.intra_op_threads:
            config["INFERENCE_NUM_THREADS"] = int(self.intra_op_threads)
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise BackendError(f"{path}: OpenVINO cannot compile the model for the CPU ({first_line(e)})") from None
        got = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if got != OV_PRECISION[self.precision]:
            raise BackendError(f"precision '{self.precision}' refused: OpenVINO compiled the model at {got} instead "
                               f"of {OV_PRECISION[self.precision]}")
        self._input = self.source.input_name
        self._outputs = [self.compiled.output(n) for n in ("logits", "embedding")]
        self._version = ov.get_version()
        self._local = threading.local()

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        results = self._request().infer({self._input: batch}, share_inputs=True)  # outputs returned as copies
        logits, emb = (np.asarray(results[p], dtype=np.float32) for p in self._outputs)
        return logits, emb

    def run_device(self, batch: DeviceBatch) -> tuple[np.ndarray, np.ndarray]:
        raise host_only(self.name)

    def info(self) -> dict[str, Any]:
        return {**what_runs(self), "openvino": self._version,
                "inference_precision": self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                "performance_hint": str(self.compiled.get_property("PERFORMANCE_HINT")),
                "threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
                "cpu": cpu_features.describe()}


# --------------------------------------------------------------------------------------------------------------
# selection entry
# --------------------------------------------------------------------------------------------------------------
def configured() -> bool:
    """Whether ``CLIP_DEBIAS_CPU_BACKEND`` names OpenVINO (onnxruntime | openvino; anything else is one line)."""
    import os

    value = os.environ.get(CPU_BACKEND_ENV, "").strip()
    if value not in ("", "onnxruntime", NAME):
        raise BackendError(f"environment variable {CPU_BACKEND_ENV}={value!r}: expected onnxruntime or openvino")
    return value == NAME


def picked_by_auto(req: BackendRequest) -> bool:
    """``backend="auto"`` picks OpenVINO on the CPU only when asked for bf16 (which only it runs), or for fp32 when
    ``CLIP_DEBIAS_CPU_BACKEND=openvino`` and the run is on the CPU (device cpu, or auto without a CUDA provider)."""
    if req.device not in DEVICES:
        return False
    if req.precision == "bf16":
        return True
    from clip_debias.runtime.backends.ort import ort_has_cuda

    return req.precision == "fp32" and configured() and (req.device == "cpu" or not ort_has_cuda())


def open_backend(req: BackendRequest) -> OpenVINOBackend:
    import_openvino()  # the install hint before hashing anything
    return OpenVINOBackend(model_source(req, "onnx", "fp32"), req.precision, req.options.intra_op_threads,
                           req.options.performance_hint)
