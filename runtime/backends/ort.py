"""ONNX Runtime: the one place for its session policy, and the ``onnxruntime`` backend (CPU / CUDA).

Session policy (``ort_session``, used by the backend, the export gates, ``bench`` and ``benchmarks/``):

- graph optimization level per (device, precision), ``ort_optimization_level``: fp32 and int8 at ``ORT_ENABLE_ALL``
  (int8: fuses DynamicQuantizeLinear + MatMulInteger into DynamicQuantizeMatMul); fp16 at ALL only on CUDA, never on
  the CPU, where onnxruntime 1.31 was seen to segfault while creating an fp16 session at ALL: ``ORT_ENABLE_BASIC``
  on the CPU (no fp16 GEMM there anyway: fp16 on the CPU saves memory, not time), ``ORT_ENABLE_EXTENDED`` for
  ``auto`` (a session that may fall back to the CPU). A level asked for explicitly is capped by the same rule.
- threads: ``intra_op_num_threads`` when given, else onnxruntime's default (one per core).
- ``stop_spinning``: the idle intra-op threads stop spinning when a run returns (``session.force_spinning_stop``),
  for benchmarks that take turns with torch; by default they spin on (measured ~40 ms of CPU after each call on 2
  cores) and slow whatever runs next. Services keep the default.
- CUDA: fp32 runs in true fp32 (``use_tf32=0``; onnxruntime's default TF32 put ViT-B/16's logits 3.4e-4 from torch
  fp32 on an H100, beyond the 1e-4 fp32 export gate); ``cuda_graph`` adds ``enable_cuda_graph=1``.

Backend (``open_backend``): on the CPU an ``onnx-ort`` file (``model.ort.onnx``) is preferred for fp32 when listed;
on CUDA the plain ``model.onnx`` (the ORT-optimized graph may hold CPU-only fused nodes). int8 runs on the CPU
provider only (no MatMulInteger kernels on CUDA): ``device="cuda"`` with int8 is refused, ``auto`` runs it on the CPU,
image by image (``image_by_image``). Asking for ``device="cuda"`` and getting a CPU session is an error.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clip_debias.runtime.backends.base import (OUTPUTS, BackendError, ModelSource, first_line, image_by_image,
                                               what_runs)
from clip_debias.runtime.backends.graph_io import check_io
from clip_debias.runtime.backends.request import BackendRequest, model_source
from clip_debias.runtime.captured_graphs import UNCAPTURED, CapturedGraphs, run_options
from clip_debias.runtime.device_input import DeviceBatch
from clip_debias.runtime.errors import ArtifactError

NAME = "onnxruntime"
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "int8")
LEVELS = ("disable", "basic", "extended", "all")


# --------------------------------------------------------------------------------------------------------------
# session policy
# --------------------------------------------------------------------------------------------------------------
def ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def level_name(level: Any) -> str:
    """An ``ort.GraphOptimizationLevel`` as ``LEVELS`` names it (``all``, not ``GraphOptimizationLevel.ORT_ENABLE_ALL``:
    what ``info()`` and the reports print)."""
    import onnxruntime as ort

    levels = ort.GraphOptimizationLevel
    names = dict(zip((levels.ORT_DISABLE_ALL, levels.ORT_ENABLE_BASIC, levels.ORT_ENABLE_EXTENDED,
                      levels.ORT_ENABLE_ALL), LEVELS))
    return names.get(level, getattr(level, "name", str(level)))


def ort_optimization_level(device: str, precision: str, level: str | None = None) -> Any:
    """Graph optimization level for ``device`` (cpu | cuda | auto) and ``precision`` (module docstring); ``level``
    (disable | basic | extended | all) asks for one, capped by the fp16 rule. On an H100 fp16 at ALL cut batch-1
    latency from 4.65 ms (EXTENDED) to 3.87 ms."""
    import onnxruntime as ort

    levels = ort.GraphOptimizationLevel
    by_name = dict(zip(LEVELS, (levels.ORT_DISABLE_ALL, levels.ORT_ENABLE_BASIC, levels.ORT_ENABLE_EXTENDED,
                                levels.ORT_ENABLE_ALL)))
    if precision != "fp16":
        cap = "all"
    elif device == "cpu":
        cap = "basic"
    else:
        cap = "all" if device == "cuda" and ort_has_cuda() else "extended"
    want = level or "all"
    return by_name[LEVELS[min(LEVELS.index(want), LEVELS.index(cap))]]


def cuda_provider_options(precision: str, device_id: int = 0, cuda_graph: bool = False) -> dict[str, str]:
    """The CUDA execution provider's options: the device, no TF32 for fp32, CUDA graphs when asked."""
    options = {"device_id": str(device_id)}
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    if precision == "fp32":
        options["use_tf32"] = "0"
    return options


def ort_session(path: str | Path, precision: str = "fp32", device: str = "cpu", *, level: str | None = None,
                threads: int | None = None, stop_spinning: bool = False, cuda_graph: bool = False,
                device_id: int = 0, optimized_path: str | Path | None = None) -> Any:
    """An onnxruntime ``InferenceSession`` of ``path`` under the policy (module docstring). ``device`` "cuda" puts
    the CUDA provider first (the CPU provider stays as onnxruntime's fallback; callers check ``get_providers()``).
    ``optimized_path``: onnxruntime also saves the optimized graph there. A model onnxruntime cannot load is one
    ``ArtifactError`` line."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort_optimization_level(device, precision, level)
    so.log_severity_level = 3  # errors only; callers check where the session landed
    if threads:
        so.intra_op_num_threads = int(threads)
    if stop_spinning:
        so.add_session_config_entry("session.force_spinning_stop", "1")
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    providers: list[Any] = ["CPUExecutionProvider"]
    if device == "cuda":
        providers.insert(0, ("CUDAExecutionProvider", cuda_provider_options(precision, device_id, cuda_graph)))
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ArtifactError(f"{path}: onnxruntime cannot load the model ({first_line(e)})") from e


def save_optimized(src: str | Path, dst: str | Path) -> Path:
    """Save ``src`` optimized at ``ORT_ENABLE_EXTENDED`` to ``dst``: portable across CPUs, unlike a graph saved at
    ALL, which may hold kernels chosen for this CPU's instruction set."""
    ort_session(src, level="extended", optimized_path=dst)
    return Path(dst)


def session_runner(session: Any, precision: str,
                   input_name: str = "image") -> Callable[[np.ndarray], Sequence[np.ndarray]]:
    """``x -> [logits, embedding]`` on an onnxruntime session, the way the runtime runs ``precision``: int8 graphs
    image by image (``image_by_image``), the others on the whole batch. Stateless, so safe across threads."""
    def run(x: np.ndarray) -> list[np.ndarray]:
        return session.run(list(OUTPUTS), {input_name: x})

    return (lambda x: image_by_image(run, x)) if precision == "int8" else run


def check_cuda_graph(backend: str, device: str) -> None:
    """``cuda_graph`` is an ONNX Runtime CUDA option: refuse it for another device or backend in one line."""
    if device != "cuda":
        raise BackendError(f"cuda_graph needs device 'cuda' (CUDA graphs exist only there), got '{device}'")
    if backend not in ("auto", NAME):
        raise BackendError(f"cuda_graph is an onnxruntime option, not one of backend '{backend}' (use onnxruntime)")


# --------------------------------------------------------------------------------------------------------------
# backend
# --------------------------------------------------------------------------------------------------------------
@dataclass
class OrtBackend:
    """ONNX Runtime session over ``source``. ``device``: cpu | cuda | auto (as asked; after ``__post_init__`` what
    runs). ``InferenceSession.run`` is thread-safe; on CUDA each call makes its own IO binding (input copied
    host->device once, outputs left on device then copied back).

    ``cuda_graph`` (device "cuda" only): the session is created with ``enable_cuda_graph=1`` and every call of a batch
    size goes through that size's fixed device buffers (``runtime.captured_graphs``), so onnxruntime captures the
    graph once and replays it -- one launch instead of one per kernel, which is what batch-1 latency on a GPU is
    made of (H100, ViT-B/16 fused fp16: 2.42 -> 0.87 ms; captured and uncaptured logits identical)."""

    source: ModelSource
    device: str = "cpu"
    intra_op_threads: int | None = None
    cuda_graph: bool = False
    device_id: int = 0
    stop_spinning: bool = False
    name: str = field(default=NAME, init=False)
    precision: str = field(default="", init=False)
    providers: list[str] = field(default_factory=list, init=False)
    session: Any = field(default=None, init=False, repr=False)
    graphs: CapturedGraphs | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        self.precision = self.source.precision
        path = self.source.path
        if self.cuda_graph:
            check_cuda_graph(self.name, self.device)
        want_cuda = self.device in ("cuda", "auto") and ort_has_cuda()
        if self.device == "cuda" and not want_cuda:
            raise BackendError(
                "device 'cuda': this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu) "
                f"-- available: {', '.join(ort.get_available_providers())}"
            )
        try:
            self.session = ort_session(path, self.precision, "cuda" if want_cuda else "cpu",
                                       threads=self.intra_op_threads, stop_spinning=self.stop_spinning,
                                       cuda_graph=self.cuda_graph, device_id=self.device_id)
        except ArtifactError as e:
            if self.cuda_graph:  # e.g. a node left on the CPU provider makes capture impossible
                raise BackendError(f"{path}: onnxruntime cannot create a CUDA-graph session "
                                   f"({first_line(e.__cause__ or e)}); load without cuda_graph") from None
            raise
        self.providers = list(self.session.get_providers())
        on_cuda = "CUDAExecutionProvider" in self.providers
        if want_cuda and not on_cuda and self.device == "cuda":
            raise BackendError(
                f"{path}: asked for device 'cuda' but onnxruntime created a session on {self.providers} "
                "(no usable GPU / CUDA or cuDNN libraries missing)"
            )
        self.device = "cuda" if on_cuda else "cpu"
        check_io(path, self.source.inputs, self.source.outputs,
                 [(i.name, i.type, list(i.shape)) for i in self.session.get_inputs()],
                 [(o.name, o.type, list(o.shape)) for o in self.session.get_outputs()])
        self._input = self.source.input_name
        self._run_host = session_runner(self.session, self.precision, self._input)
        if self.cuda_graph:
            self.graphs = CapturedGraphs(self.session, self._input, self.source.output_dims(), "cuda", self.device_id)

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
            **what_runs(self),
            "providers": self.providers,
            "graph_optimization_level": level_name(self.session.get_session_options().graph_optimization_level),
            **({"cuda_graph_batch_sizes": self.graphs.batch_sizes} if self.graphs is not None else {}),
        }


# --------------------------------------------------------------------------------------------------------------
# selection entry
# --------------------------------------------------------------------------------------------------------------
def picked_by_auto(req: BackendRequest) -> bool:
    """``backend="auto"`` falls back to ONNX Runtime for every precision it runs."""
    return req.precision in PRECISIONS


def open_backend(req: BackendRequest) -> OrtBackend:
    """The file for (device, precision) -- module docstring -- hashed, then opened."""
    opts = req.options
    common = {"intra_op_threads": opts.intra_op_threads, "stop_spinning": opts.stop_spinning}
    if req.precision == "int8":
        if req.device == "cuda":
            raise BackendError("precision 'int8': the dynamically quantized graph runs on the CPU provider only; use "
                               "device 'cpu' (or 'auto'), or precision fp16 on CUDA")
        return OrtBackend(model_source(req, "onnx", "int8"), "cpu", **common)
    on_cuda = req.device == "cuda" or (req.device == "auto" and ort_has_cuda())
    if req.precision == "fp32" and not on_cuda and opts.use_ort_optimized and req.manifest.file("onnx-ort", "fp32"):
        source = model_source(req, "onnx-ort", "fp32")  # CPU-optimized graph: CPU only
    else:
        source = model_source(req, "onnx", req.precision)
    return OrtBackend(source, req.device, cuda_graph=opts.cuda_graph, **common)
