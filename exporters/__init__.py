"""Ship a ``DebiasedClassifier``: ONNX artifact (``onnx_export``), TensorRT engine (``tensorrt_export``), Triton model
repository (``triton``), side-by-side latency (``bench``). Artifacts are written atomically (``artifact``).

Importing this package is cheap: torch, onnx and tensorrt are imported inside the functions that need them.
"""

from __future__ import annotations

from runtime.lazy_exports import lazy_exports

_LAZY = {
    "export_onnx": "exporters.onnx_export",
    "export_onnx_report": "exporters.onnx_export",
    "export_module_onnx": "exporters.onnx_export",
    "export_tensorrt": "exporters.tensorrt_export",
    "EngineOptions": "exporters.tensorrt_export",
    "export_triton": "exporters.triton",
    "bench": "exporters.bench",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports("exporters", _LAZY, globals())
