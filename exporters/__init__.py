"""Ship a ``DebiasedClassifier``: ONNX artifact (``onnx_export``), TensorRT engine (``tensorrt_export``), Triton model
repository (``triton``), side-by-side latency (``bench``). Artifacts are written atomically (``artifact``).

Importing this package is cheap: torch, onnx and tensorrt are imported inside the functions that need them.
"""

from __future__ import annotations

from clip_debias.runtime.lazy_exports import lazy_exports

_LAZY = {
    "export_onnx": "clip_debias.exporters.onnx_export",
    "export_onnx_report": "clip_debias.exporters.onnx_export",
    "export_module_onnx": "clip_debias.exporters.onnx_export",
    "export_tensorrt": "clip_debias.exporters.tensorrt_export",
    "EngineOptions": "clip_debias.exporters.tensorrt_export",
    "export_triton": "clip_debias.exporters.triton",
    "bench": "clip_debias.exporters.bench",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports("clip_debias.exporters", _LAZY, globals())
