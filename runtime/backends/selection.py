"""Backend selection: ``select_backend`` picks and opens a backend for an artifact from one table.

``BACKEND_MODULES`` maps each backend name to its module; ``backend="auto"`` tries them in table order. A backend
module defines ``NAME``, ``DEVICES`` (the devices one may ask it for), ``PRECISIONS``, ``picked_by_auto(request)``
and ``open_backend(request)``; it imports its library only inside those functions, so listing it costs nothing.
A new backend is one module plus one entry here (and its name in ``runtime.choices.BackendName``, checked at import).

``backend="auto"``: TensorRT if a ``model.plan`` of the wanted precision is listed, ``tensorrt`` + a CUDA device are
available and the device is auto/cuda; else OpenVINO on the CPU when asked for bf16, or for fp32 with
``CLIP_DEBIAS_CPU_BACKEND=openvino``; else ONNX Runtime (CUDA when onnxruntime has the CUDA provider and the device
is auto/cuda, else the CPU). Asking for ``device="cuda"`` and ending up on the CPU is an error; only ``device="auto"``
may fall back. ``cuda_graph`` is an ONNX Runtime CUDA option (``runtime.captured_graphs``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from clip_debias.runtime.backends.base import Backend, BackendError
from clip_debias.runtime.backends.request import BackendOptions, BackendRequest
from clip_debias.runtime.choices import BackendName, Precision, RuntimeDevice
from clip_debias.runtime.manifest import Manifest

BACKEND_MODULES = {  # name -> module; ``auto`` tries them in this order
    "tensorrt": "clip_debias.runtime.backends.trt",
    "openvino": "clip_debias.runtime.backends.ov",
    "onnxruntime": "clip_debias.runtime.backends.ort",
}
if BackendName.values() != ("auto", *BACKEND_MODULES):  # --backend lists BackendName (import-light)
    raise ImportError(f"BACKEND_MODULES {tuple(BACKEND_MODULES)} and runtime.choices.BackendName differ")
BACKENDS = BackendName.values()
DEVICES = RuntimeDevice.values()
PRECISIONS = Precision.values()


def backend_module(name: str) -> ModuleType:
    return importlib.import_module(BACKEND_MODULES[name])


def _check_request(name: str, module: ModuleType, req: BackendRequest) -> None:
    """The device and precision asked for are ones backend ``name`` runs, else one line."""
    if req.device not in module.DEVICES:
        wants = " or ".join(f"'{d}'" for d in module.DEVICES if d != "auto")
        raise BackendError(f"backend '{name}' needs device {wants} (or 'auto'), got '{req.device}'")
    if req.precision not in module.PRECISIONS:
        others = [n for n in BACKEND_MODULES if req.precision in backend_module(n).PRECISIONS]
        raise BackendError(f"backend '{name}' runs precision {', '.join(module.PRECISIONS)}, not '{req.precision}'"
                           f" (backend {' or '.join(others)} runs it)")


def select_backend(root: Path, manifest: Manifest, backend: str = "auto", device: str = "auto",
                   precision: str = "fp32", options: BackendOptions = BackendOptions()) -> Backend:
    """Pick and open the backend (module docstring) for ``manifest`` of the artifact at ``root``."""
    if backend not in BACKENDS:
        raise BackendError(f"backend {backend!r} is not one of {BACKENDS}")
    if device not in DEVICES:
        raise BackendError(f"device {device!r} is not one of {DEVICES}")
    if precision not in PRECISIONS:
        raise BackendError(f"precision {precision!r} is not one of {PRECISIONS}")
    manifest.check_files(root, verify=[])  # every listed file exists
    if options.cuda_graph:
        from clip_debias.runtime.backends.ort import check_cuda_graph

        check_cuda_graph(backend, device)
    req = BackendRequest(Path(root), manifest, backend, device, precision, options)
    if backend == "auto":
        picked = next((n for n in BACKEND_MODULES if backend_module(n).picked_by_auto(req)), None)
        if picked is None:
            raise BackendError(f"no backend runs precision '{precision}' on device '{device}'"
                               + (" (bf16: backend openvino, on the CPU)" if precision == "bf16" else ""))
        backend = picked
    module = backend_module(backend)
    _check_request(backend, module, req)
    return module.open_backend(req)
