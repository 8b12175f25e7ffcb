"""The ``tensorrt`` backend: a serialized TensorRT engine (``model.plan``), run with ``execute_async_v3`` on a
per-thread execution context, stream and device buffers (cuda-python). The export gate (``exporters.tensorrt_export``)
and ``bench`` run engines through this class, so the path users get is the one the gate exercises.

UNVERIFIED: written against the documented TensorRT 10/11 Python API + cuda-python; no GPU/TensorRT was available
where it was written (tests skip without ``tensorrt``). ONNX Runtime is the tested path.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clip_debias.runtime.backends.base import OUTPUTS, BackendError, ModelSource, host_only, what_runs
from clip_debias.runtime.backends.graph_io import check_io
from clip_debias.runtime.backends.request import BackendRequest, model_source
from clip_debias.runtime.device_input import DeviceBatch
from clip_debias.runtime.errors import ArtifactError, InputError

NAME = "tensorrt"
DEVICES = ("auto", "cuda")
PRECISIONS = ("fp32", "fp16")


def _cudart() -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime`` in cuda-python >= 12.6, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
    except ImportError:
        from cuda import cudart  # type: ignore[import-not-found,no-redef]
    return cudart


def import_tensorrt(context: str = "backend 'tensorrt'") -> Any:
    """The ``tensorrt`` module, or one ``BackendError`` line: ``context``, then that TensorRT is not installed."""
    try:
        import tensorrt  # type: ignore[import-not-found]
    except ImportError:
        raise BackendError(f"{context}: TensorRT is not installed: pip install 'clip-debias[tensorrt]' on a machine "
                           "with an NVIDIA GPU") from None
    return tensorrt


def tensorrt_available() -> bool:
    """``tensorrt`` and cuda-python importable and at least one CUDA device visible."""
    try:
        import_tensorrt()
        cudart = _cudart()
        err, count = cudart.cudaGetDeviceCount()
        return int(err) == 0 and count > 0
    except Exception:
        return False


def _cuda_check(result: Any, what: str) -> Any:
    """cuda-python calls return (err, *values); raise on a non-zero error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA error in {what}: {err}")
    return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)


class _TrtThreadState:
    """Per-thread execution context, stream and device buffers (a TensorRT context is not thread-safe)."""

    def __init__(self, engine: Any, cudart: Any) -> None:
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = _cuda_check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity bytes)
        self.cudart = cudart

    def buffer(self, name: str, nbytes: int) -> int:
        ptr, cap = self.buffers.get(name, (0, 0))
        if cap < nbytes:
            if ptr:
                _cuda_check(self.cudart.cudaFree(ptr), "cudaFree")
            ptr = int(_cuda_check(self.cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self.buffers[name] = (ptr, nbytes)
        return ptr

    def __del__(self) -> None:  # best effort
        try:
            for ptr, _ in self.buffers.values():
                self.cudart.cudaFree(ptr)
            self.cudart.cudaStreamDestroy(self.stream)
        except Exception:
            pass


def _built_for(path: Any) -> str:
    """' (built with TensorRT X for GPU)' from the exporter's ``model.plan.json`` sidecar, when readable."""
    try:
        side = json.loads(path.with_name(path.name + ".json").read_text())
        return f" (built with TensorRT {side.get('tensorrt', '?')} for {side.get('gpu', side.get('gpu_name', '?'))})"
    except Exception:
        return ""


@dataclass
class TensorRTBackend:
    """A serialized TensorRT engine over ``source`` (an artifact's ``model.plan``, or a freshly built one the export
    gate runs before it is listed)."""

    source: ModelSource
    device_id: int = 0
    name: str = field(default=NAME, init=False)
    device: str = field(default="cuda", init=False)
    precision: str = field(default="", init=False)

    def __post_init__(self) -> None:
        trt = import_tensorrt()
        self.precision = self.source.precision
        try:
            self._cudart = _cudart()
        except ImportError:
            raise BackendError("backend 'tensorrt': cuda-python is not installed (pip install cuda-python)") from None
        if not tensorrt_available():
            raise BackendError("backend 'tensorrt': no CUDA device visible")
        _cuda_check(self._cudart.cudaSetDevice(self.device_id), "cudaSetDevice")
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        path = self.source.path
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ArtifactError(f"{path}: TensorRT {trt.__version__} cannot deserialize this engine{_built_for(path)}; "
                                "rebuild the plan on this machine (clip-debias export tensorrt)")
        self._engine = engine
        io: dict[str, list[tuple[str, str, list[Any]]]] = {"inputs": [], "outputs": []}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = "inputs" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "outputs"
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
            io[mode].append((name, dtype, [d if d >= 0 else "dynamic" for d in engine.get_tensor_shape(name)]))
        check_io(path, self.source.inputs, self.source.outputs, io["inputs"], io["outputs"])
        self._input = self.source.input_name
        try:
            _, _, max_shape = engine.get_tensor_profile_shape(self._input, 0)
            self.max_batch = int(max_shape[0])
        except Exception:
            self.max_batch = 0
        self._local = threading.local()

    def _state(self) -> _TrtThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            _cuda_check(self._cudart.cudaSetDevice(self.device_id), "cudaSetDevice")
            state = self._local.state = _TrtThreadState(self._engine, self._cudart)
        return state

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.max_batch and batch.shape[0] > self.max_batch:
            raise InputError(f"batch of {batch.shape[0]} exceeds the TensorRT engine's max batch {self.max_batch}")
        cudart, st = self._cudart, self._state()
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if not st.context.set_input_shape(self._input, tuple(batch.shape)):
            raise BackendError(f"TensorRT refused input shape {list(batch.shape)}")
        in_ptr = st.buffer(self._input, batch.nbytes)
        _cuda_check(cudart.cudaMemcpyAsync(in_ptr, batch.ctypes.data, batch.nbytes, h2d, st.stream), "cudaMemcpyAsync")
        st.context.set_tensor_address(self._input, in_ptr)
        outs: dict[str, np.ndarray] = {}
        for name in OUTPUTS:
            shape = tuple(st.context.get_tensor_shape(name))
            dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))
            outs[name] = np.empty(shape, dtype=dtype)
            st.context.set_tensor_address(name, st.buffer(name, outs[name].nbytes))
        if not st.context.execute_async_v3(int(st.stream)):
            raise BackendError("TensorRT execute_async_v3 failed")
        for name, arr in outs.items():
            _cuda_check(
                cudart.cudaMemcpyAsync(arr.ctypes.data, st.buffers[name][0], arr.nbytes, d2h, st.stream),
                "cudaMemcpyAsync",
            )
        _cuda_check(cudart.cudaStreamSynchronize(st.stream), "cudaStreamSynchronize")
        return outs["logits"].astype(np.float32, copy=False), outs["embedding"].astype(np.float32, copy=False)

    def run_device(self, batch: DeviceBatch) -> tuple[np.ndarray, np.ndarray]:
        raise host_only(self.name)

    def info(self) -> dict[str, Any]:
        return {**what_runs(self), "tensorrt": self._trt.__version__, "max_batch": self.max_batch}


# --------------------------------------------------------------------------------------------------------------
# selection entry
# --------------------------------------------------------------------------------------------------------------
def picked_by_auto(req: BackendRequest) -> bool:
    """``backend="auto"``: TensorRT when a plan of the precision is listed, ``tensorrt`` + a CUDA device are present,
    the device may be CUDA and no ONNX Runtime-only option (``cuda_graph``) was asked for."""
    return (req.device in DEVICES and not req.options.cuda_graph and req.precision in PRECISIONS
            and req.manifest.file("tensorrt", req.precision) is not None and tensorrt_available())


def open_backend(req: BackendRequest) -> TensorRTBackend:
    import_tensorrt()  # the install hint before anything else
    return TensorRTBackend(model_source(req, "tensorrt", req.precision))
