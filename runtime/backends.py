"""Inference backends for an artifact: ONNX Runtime (CPU / CUDA) and TensorRT (lazy, optional).

Every backend maps a validated float32 batch [N, 3, H, W] to ``(logits [N, C], embedding [N, D])`` float32 and is
safe to call from several threads at once (no mutable state shared between calls, except the fixed device buffers
of CUDA graphs, which one lock guards).

Choice (``select_backend``), ``backend="auto"``:
  TensorRT if ``model.plan`` of the wanted precision is listed, ``tensorrt`` + a CUDA device are available and
  ``device`` is auto/cuda; else ONNX Runtime CUDA if onnxruntime has ``CUDAExecutionProvider`` and device is
  auto/cuda; else ONNX Runtime CPU (device auto/cpu). Asking for ``device="cuda"`` and ending up on the CPU is an
  error; only ``device="auto"`` may fall back. ``cuda_graph=True`` (ONNX Runtime on device "cuda" only): one
  captured CUDA graph per batch size, replayed (``runtime.captured_graphs``).

ONNX Runtime graph optimization level per (device, precision) -- see ``ort_optimization_level``: fp32 at
``ORT_ENABLE_ALL``; fp16 at ALL only with ``device="cuda"`` (never on the CPU, where onnxruntime 1.31 was seen to
segfault while creating an fp16 session at ALL): ``ORT_ENABLE_BASIC`` on the CPU, ``ORT_ENABLE_EXTENDED`` for
auto. On the CPU an ``onnx-ort`` file (``model.ort.onnx``) is preferred for fp32 when listed; on CUDA the plain
``model.onnx`` (the ORT-optimized graph may hold CPU-only fused nodes).

int8 (``model.int8.onnx``, dynamically quantized linear layers) runs on the CPU provider only, at ``ORT_ENABLE_ALL``
(which fuses DynamicQuantizeLinear + MatMulInteger into DynamicQuantizeMatMul): the CUDA provider has no
MatMulInteger kernels for it, so ``device="cuda"`` with int8 is refused and ``auto`` runs it on the CPU. It runs
image by image, so an image's result never depends on the rest of its batch (per-tensor activation scales).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from clip_debias.runtime.captured_graphs import UNCAPTURED, CapturedGraphs, run_options
from clip_debias.runtime.device_input import DeviceBatch
from clip_debias.runtime.errors import ArtifactError, ClipDebiasError
from clip_debias.runtime.manifest import MANIFEST_NAME, Manifest, ModelFile, TensorSpec

BACKENDS = ("auto", "onnxruntime", "tensorrt")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "int8")
OUTPUTS = ("logits", "embedding")


class BackendError(ClipDebiasError):
    """The requested backend/device/precision cannot be provided on this machine (missing package, no GPU...)."""


class Backend(Protocol):
    name: str  # "onnxruntime" | "tensorrt"
    device: str  # "cpu" | "cuda" (what actually runs, after any allowed fallback)
    precision: str
    model_file: ModelFile

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [N, 3, H, W] (validated, C-contiguous) -> (logits [N, C], embedding [N, D]) float32."""
        ...

    def run_device(self, batch: DeviceBatch) -> tuple[np.ndarray, np.ndarray]:
        """A CUDA-resident float32 [N, 3, H, W] batch (shape/dtype checked) -> outputs copied to the host."""
        ...

    def info(self) -> dict[str, Any]:
        """What runs: backend, device, precision, file, providers/options."""
        ...


def image_by_image(run: Callable[[np.ndarray], Sequence[np.ndarray]], batch: np.ndarray) -> list[np.ndarray]:
    """``run`` on each image [1, 3, H, W] of ``batch``, outputs concatenated along the batch axis. For int8 graphs:
    dynamic quantization takes one scale per activation tensor, so in a batch one image's range would move every
    other image's result; image by image each result depends on that image alone (at the same CPU cost: the GEMMs
    already have N tokens rows per image)."""
    if len(batch) == 1:
        return list(run(batch))
    outs = [run(batch[i : i + 1]) for i in range(len(batch))]
    return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]


def session_runner(session: Any, precision: str,
                   input_name: str = "image") -> Callable[[np.ndarray], Sequence[np.ndarray]]:
    """``x -> [logits, embedding]`` on an onnxruntime session, the way the runtime runs ``precision``: int8 graphs
    image by image (``image_by_image``), the others on the whole batch. Stateless, so safe across threads; the export
    gate and ``bench`` use it too, so they measure what the runtime computes."""
    def run(x: np.ndarray) -> list[np.ndarray]:
        return session.run(list(OUTPUTS), {input_name: x})

    return (lambda x: image_by_image(run, x)) if precision == "int8" else run


def _what_runs(b: Backend) -> dict[str, Any]:
    """The part of ``Backend.info`` every backend has."""
    return {"backend": b.name, "device": b.device, "precision": b.precision, "file": b.model_file.path}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


# --------------------------------------------------------------------------------------------------------------
# graph I/O vs manifest
# --------------------------------------------------------------------------------------------------------------
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(int64)": "int64", "tensor(int32)": "int32"}
_DTYPE_ALIASES = {"float": "float32", "fp32": "float32", "half": "float16", "fp16": "float16", "double": "float64"}


def _norm_dtype(dtype: str) -> str:
    d = str(dtype).lower()
    return _ORT_DTYPES.get(d, _DTYPE_ALIASES.get(d, d))


def check_graph_io(
    file: Path, kind: str, specs: list[TensorSpec], graph: list[tuple[str, str, list[Any]]]
) -> None:
    """``graph``: (name, dtype, shape) of the model's inputs or outputs (dims: int, or str/None/-1 for dynamic).
    Names must be the same sets; dtypes equal; a fixed manifest dim must equal the graph dim, a named (dynamic)
    manifest dim must not be fixed in the graph. Raises a one-line ``ArtifactError``."""
    got = {name: (dtype, shape) for name, dtype, shape in graph}
    want = {t.name: t for t in specs}
    if set(got) != set(want):
        raise ArtifactError(
            f"{file}: graph {kind} {sorted(got)} do not match {MANIFEST_NAME} field '{kind}' {sorted(want)}"
        )
    for name, spec in want.items():
        dtype, shape = got[name]
        if _norm_dtype(dtype) != _norm_dtype(spec.dtype):
            raise ArtifactError(
                f"{file}: graph {kind[:-1]} '{name}' has dtype {_norm_dtype(dtype)}, {MANIFEST_NAME} says {spec.dtype}"
            )
        if len(shape) != len(spec.shape):
            raise ArtifactError(
                f"{file}: graph {kind[:-1]} '{name}' has shape {shape}, {MANIFEST_NAME} says {spec.shape}"
            )
        for g, m in zip(shape, spec.shape):
            g_fixed = isinstance(g, int) and g >= 0
            if (isinstance(m, int) and g_fixed and g != m) or (isinstance(m, str) and g_fixed):
                raise ArtifactError(
                    f"{file}: graph {kind[:-1]} '{name}' has shape {shape}, {MANIFEST_NAME} says {spec.shape}"
                )


# --------------------------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------------------------
def ort_optimization_level(device: str, precision: str) -> Any:
    """Graph optimization level. fp32: ENABLE_ALL. fp16: ENABLE_ALL only where CUDA is required and present
    (``device="cuda"``: on an H100, batch-1 latency 4.65 ms at EXTENDED -> 3.87 ms at ALL); never on the CPU, because
    onnxruntime 1.31 was seen to segfault creating an fp16 CPU session at ALL -- ENABLE_BASIC on the CPU (no fp16
    GEMM there anyway: fp16 on CPU saves memory, not time), ENABLE_EXTENDED for ``auto`` (a session that may fall
    back to the CPU must not be built at ALL)."""
    import onnxruntime as ort

    levels = ort.GraphOptimizationLevel
    if precision != "fp16":
        return levels.ORT_ENABLE_ALL
    if device == "cpu":
        return levels.ORT_ENABLE_BASIC
    return levels.ORT_ENABLE_ALL if device == "cuda" and ort_has_cuda() else levels.ORT_ENABLE_EXTENDED


def check_cuda_graph(backend: str, device: str) -> None:
    """``cuda_graph`` is an ONNX Runtime CUDA option: refuse it for another device or backend in one line."""
    if device != "cuda":
        raise BackendError(f"cuda_graph needs device 'cuda' (CUDA graphs exist only there), got '{device}'")
    if backend not in ("auto", "onnxruntime"):
        raise BackendError(f"cuda_graph is an onnxruntime option, not one of backend '{backend}' (use onnxruntime)")


def ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@dataclass
class OrtBackend:
    """ONNX Runtime session over one model file. ``InferenceSession.run`` is thread-safe; on CUDA each call makes its
    own IO binding (input copied host->device once, outputs left on device then copied back).

    ``cuda_graph`` (device "cuda" only): the session is created with ``enable_cuda_graph=1`` and every call of a batch
    size goes through that size's fixed device buffers (``runtime.captured_graphs``), so onnxruntime captures the
    graph once and replays it -- one launch instead of one per kernel, which is what batch-1 latency on a GPU is
    made of (H100, ViT-B/16 fused fp16: 2.42 -> 0.87 ms; captured and uncaptured logits identical).

    An fp32 graph runs in fp32 on CUDA too: TF32 is turned off (``use_tf32=0``; onnxruntime's default is on, which put
    ViT-B/16's logits 3.4e-4 from torch fp32 on an H100, beyond the 1e-4 fp32 export gate). fp16 is the fast path."""

    path: Path
    model_file: ModelFile
    manifest: Manifest
    device: str  # requested: cpu | cuda | auto
    precision: str
    intra_op_threads: int | None = None
    cuda_graph: bool = False
    device_id: int = 0
    name: str = field(default="onnxruntime", init=False)
    providers: list[str] = field(default_factory=list, init=False)
    session: Any = field(default=None, init=False, repr=False)
    graphs: CapturedGraphs | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        if self.cuda_graph:
            check_cuda_graph(self.name, self.device)
        want_cuda = self.device in ("cuda", "auto") and ort_has_cuda()
        if self.device == "cuda" and not want_cuda:
            raise BackendError(
                "device 'cuda': this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu) "
                f"-- available: {', '.join(ort.get_available_providers())}"
            )
        run_on = "cuda" if want_cuda else "cpu"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort_optimization_level(run_on, self.precision)
        so.log_severity_level = 3  # errors only; the providers check below reports fallbacks
        if self.intra_op_threads:
            so.intra_op_num_threads = int(self.intra_op_threads)
        providers: list[Any] = ["CPUExecutionProvider"]
        if want_cuda:
            cuda_options = {"device_id": str(self.device_id)}
            if self.cuda_graph:
                cuda_options["enable_cuda_graph"] = "1"
            if self.precision == "fp32":
                cuda_options["use_tf32"] = "0"
            providers.insert(0, ("CUDAExecutionProvider", cuda_options))
        try:
            self.session = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            if self.cuda_graph:  # e.g. a node left on the CPU provider makes capture impossible
                raise BackendError(f"{self.path}: onnxruntime cannot create a CUDA-graph session "
                                   f"({_first_line(e)}); load without cuda_graph") from None
            raise ArtifactError(f"{self.path}: onnxruntime cannot load the model ({_first_line(e)})") from None
        self.providers = list(self.session.get_providers())
        on_cuda = "CUDAExecutionProvider" in self.providers
        if want_cuda and not on_cuda and self.device == "cuda":
            raise BackendError(
                f"{self.path}: asked for device 'cuda' but onnxruntime created a session on {self.providers} "
                "(no usable GPU / CUDA or cuDNN libraries missing)"
            )
        self.device = "cuda" if on_cuda else "cpu"
        check_graph_io(
            self.path, "inputs", self.manifest.inputs,
            [(i.name, i.type, list(i.shape)) for i in self.session.get_inputs()],
        )
        check_graph_io(
            self.path, "outputs", self.manifest.outputs,
            [(o.name, o.type, list(o.shape)) for o in self.session.get_outputs()],
        )
        self._input = self.manifest.inputs[0].name
        self._run_host = session_runner(self.session, self.precision, self._input)
        if self.cuda_graph:
            dims = {o.name: [int(d) for d in o.shape[1:]] for o in self.manifest.outputs}
            self.graphs = CapturedGraphs(self.session, self._input, {n: dims[n] for n in OUTPUTS}, "cuda",
                                         self.device_id)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.device == "cuda":
            return self._run_cuda(batch)
        logits, emb = self._run_host(batch)
        return logits, emb

    def _captured(self, batch: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """Through the batch size's captured graph, when this session has them and the batch can be copied into the
        fixed input buffer (numpy, an OrtValue, or a DLPack-capable device tensor); None otherwise."""
        if self.graphs is None:
            return None
        if isinstance(batch, DeviceBatch):
            if batch.is_ortvalue:
                batch = batch.source
            elif hasattr(batch.source, "__dlpack__"):
                import onnxruntime as ort

                try:  # a view of the caller's tensor, copied device to device into the graph's input buffer
                    batch = ort.OrtValue.from_dlpack(batch.source)
                except Exception:  # an onnxruntime built without DLPack: bind in place, uncaptured
                    return None
            else:
                return None
        outs = self.graphs.run(batch)
        return (outs[0], outs[1]) if outs is not None else None

    def _run_cuda(self, batch: np.ndarray | DeviceBatch) -> tuple[np.ndarray, np.ndarray]:
        """IO binding, one per call (binding objects are not shared between threads): a host batch is copied to the
        device once; a device batch is bound in place. Outputs stay on the device until copied back. With
        ``cuda_graph``: the batch size's captured graph, else this path run uncaptured (``gpu_graph_id=-1``) under the
        graphs' lock (a CUDA-graph session runs one call at a time)."""
        captured = self._captured(batch)
        if captured is not None:
            return captured
        with self.graphs.lock if self.graphs is not None else contextlib.nullcontext():
            return self._run_bound(batch)

    def _run_bound(self, batch: np.ndarray | DeviceBatch) -> tuple[np.ndarray, np.ndarray]:
        io = self.session.io_binding()
        if isinstance(batch, np.ndarray):
            io.bind_cpu_input(self._input, batch)
        elif batch.is_ortvalue:
            io.bind_ortvalue_input(self._input, batch.source)
        else:
            io.bind_input(self._input, "cuda", batch.device_id, np.float32, list(batch.shape), batch.pointer)
        for name in OUTPUTS:
            io.bind_output(name, "cuda", self.device_id)
        self.session.run_with_iobinding(io, run_options(UNCAPTURED) if self.graphs is not None else None)
        logits, emb = io.copy_outputs_to_cpu()
        return logits, emb

    def run_device(self, batch: DeviceBatch) -> tuple[np.ndarray, np.ndarray]:
        if self.device != "cuda":
            raise BackendError(f"a CUDA-resident input needs a session on CUDA; this classifier runs on "
                               f"{self.device} (load with device='cuda', or pass a numpy array)")
        if batch.device_id != self.device_id:
            raise BackendError(f"input is on cuda:{batch.device_id}, the session on cuda:{self.device_id}")
        return self._run_cuda(batch)

    def info(self) -> dict[str, Any]:
        return {
            **_what_runs(self),
            "providers": self.providers,
            "graph_optimization_level": str(self.session.get_session_options().graph_optimization_level),
            **({"cuda_graph_batch_sizes": self.graphs.batch_sizes} if self.graphs is not None else {}),
        }


# --------------------------------------------------------------------------------------------------------------
# TensorRT (UNVERIFIED: written against the TensorRT 10 Python API + cuda-python; no GPU/TensorRT where it was written)
# --------------------------------------------------------------------------------------------------------------
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


@dataclass
class TensorRTBackend:
    """A serialized TensorRT 10 engine (``model.plan``), run with ``execute_async_v3`` on a per-thread context.
    UNVERIFIED: no GPU / tensorrt was available when this was written; ORT is the tested path."""

    path: Path
    model_file: ModelFile
    manifest: Manifest
    precision: str
    device_id: int = 0
    name: str = field(default="tensorrt", init=False)
    device: str = field(default="cuda", init=False)

    def __post_init__(self) -> None:
        trt = import_tensorrt()
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
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            built = ""
            try:  # exporters write model.plan.json: {tensorrt, gpu name, compute capability, ...}
                import json

                side = json.loads(self.path.with_name(self.path.name + ".json").read_text())
                gpu = side.get("gpu", side.get("gpu_name", "?"))
                built = f" (built with TensorRT {side.get('tensorrt', '?')} for {gpu})"
            except Exception:
                pass
            raise ArtifactError(
                f"{self.path}: TensorRT {trt.__version__} cannot deserialize this engine{built}; "
                "rebuild the plan on this machine (clip-debias export tensorrt)"
            )
        self._engine = engine
        io: dict[str, list[tuple[str, str, list[Any]]]] = {"inputs": [], "outputs": []}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = "inputs" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "outputs"
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name
            io[mode].append((name, dtype, [d if d >= 0 else "dynamic" for d in engine.get_tensor_shape(name)]))
        check_graph_io(self.path, "inputs", self.manifest.inputs, io["inputs"])
        check_graph_io(self.path, "outputs", self.manifest.outputs, io["outputs"])
        self._input = self.manifest.inputs[0].name
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
        from clip_debias.runtime.errors import InputError

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
        raise BackendError("device-resident input is supported by the onnxruntime backend; pass a numpy array to "
                           "the TensorRT backend")

    def info(self) -> dict[str, Any]:
        return {
            **_what_runs(self),
            "tensorrt": self._trt.__version__,
            "max_batch": self.max_batch,
        }


# --------------------------------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------------------------------
def _listed(manifest: Manifest, kind: str, precision: str, root: Path) -> ModelFile:
    mf = manifest.file(kind, precision)
    if mf is None:
        have = ", ".join(f"{f.path} ({f.kind}, {f.precision})" for f in manifest.files)
        raise ArtifactError(f"{root / MANIFEST_NAME}: no {kind} {precision} model listed in 'files' (has: {have})")
    return mf


@dataclass(frozen=True)
class BackendOptions:
    """How ``select_backend`` opens the chosen model file.

    intra_op_threads:  ONNX Runtime CPU threads (None: onnxruntime's default, one per core)
    use_ort_optimized: on the CPU, prefer the listed ``onnx-ort`` fp32 graph (``model.ort.onnx``) when there is one
    check_sha256:      hash the chosen model file against the manifest before opening it
    cuda_graph:        ONNX Runtime CUDA graphs, one captured per batch size (backend onnxruntime or auto, device
                       cuda; see ``runtime.captured_graphs``)
    """

    intra_op_threads: int | None = None
    use_ort_optimized: bool = True
    check_sha256: bool = True
    cuda_graph: bool = False


def select_backend(root: Path, manifest: Manifest, backend: str = "auto", device: str = "auto",
                   precision: str = "fp32", options: BackendOptions = BackendOptions()) -> Backend:
    """Pick and open the backend (see the module docstring) for ``manifest`` of the artifact at ``root``."""
    if backend not in BACKENDS:
        raise BackendError(f"backend {backend!r} is not one of {BACKENDS}")
    if device not in DEVICES:
        raise BackendError(f"device {device!r} is not one of {DEVICES}")
    if precision not in PRECISIONS:
        raise BackendError(f"precision {precision!r} is not one of {PRECISIONS}")
    manifest.check_files(root, verify=[])  # every listed file exists

    def verified(mf: ModelFile) -> ModelFile:
        if options.check_sha256:
            manifest.check_files(root, verify=[mf])
        return mf

    cuda_graph, threads = options.cuda_graph, options.intra_op_threads
    if cuda_graph:
        check_cuda_graph(backend, device)
    plan = manifest.file("tensorrt", precision)
    if not cuda_graph and (backend == "tensorrt" or (
        backend == "auto" and device in ("auto", "cuda") and plan is not None and tensorrt_available()
    )):
        if device == "cpu":
            raise BackendError("backend 'tensorrt' needs device 'cuda' (or 'auto'), got 'cpu'")
        import_tensorrt()
        mf = verified(_listed(manifest, "tensorrt", precision, root))
        return TensorRTBackend(root / mf.path, mf, manifest, precision)

    if precision == "int8":
        if device == "cuda":
            raise BackendError("precision 'int8': the dynamically quantized graph runs on the CPU provider only; use "
                               "device 'cpu' (or 'auto'), or precision fp16 on CUDA")
        mf = _listed(manifest, "onnx", "int8", root)
        return OrtBackend(root / verified(mf).path, mf, manifest, "cpu", precision, threads)
    on_cuda = device == "cuda" or (device == "auto" and ort_has_cuda())
    if precision == "fp16":
        mf = _listed(manifest, "onnx", "fp16", root)
    elif not on_cuda and options.use_ort_optimized and manifest.file("onnx-ort", "fp32") is not None:
        mf = _listed(manifest, "onnx-ort", "fp32", root)  # CPU-optimized graph: CPU only
    else:
        mf = _listed(manifest, "onnx", "fp32", root)
    return OrtBackend(root / verified(mf).path, mf, manifest, device, precision, threads, cuda_graph)
