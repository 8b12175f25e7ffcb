"""Inference backends for an artifact, one module per concern:

  base       the ``Backend`` protocol, ``ModelSource`` (a model file + the IO specs it must meet), ``BackendError``
  request    ``BackendOptions``, ``BackendRequest`` and ``model_source``: the manifest lookup + sha256 hook
  graph_io   a graph's inputs/outputs against the specs
  selection  ``select_backend`` and the table of backends (``BACKEND_MODULES``)
  ort        ONNX Runtime: the session policy (``ort_session``) and the CPU / CUDA backend
  trt        TensorRT (lazy, unverified: no TensorRT where it was written)
  ov         OpenVINO CPU, fp32 / bf16 (lazy)

Every backend maps a validated float32 batch [N, 3, H, W] to ``(logits [N, C], embedding [N, D])`` float32 and is
safe to call from several threads at once. Importing this package imports no inference library.
"""

from __future__ import annotations

from clip_debias.runtime.backends.base import OUTPUTS, Backend, BackendError, ModelSource, image_by_image
from clip_debias.runtime.backends.graph_io import check_graph_io
from clip_debias.runtime.backends.ort import (OrtBackend, check_cuda_graph, ort_has_cuda, ort_optimization_level,
                                              ort_session, save_optimized, session_runner)
from clip_debias.runtime.backends.request import BackendOptions, BackendRequest, model_source
from clip_debias.runtime.backends.selection import (BACKEND_MODULES, BACKENDS, DEVICES, PRECISIONS, BackendName,
                                                    Precision, RuntimeDevice, select_backend)
from clip_debias.runtime.backends.trt import TensorRTBackend, import_tensorrt, tensorrt_available

__all__ = ["BACKENDS", "BACKEND_MODULES", "DEVICES", "OUTPUTS", "PRECISIONS", "Backend", "BackendError", "BackendName",
           "Precision", "RuntimeDevice",
           "BackendOptions", "BackendRequest", "ModelSource", "OrtBackend", "TensorRTBackend", "check_cuda_graph",
           "check_graph_io", "image_by_image", "import_tensorrt", "model_source", "ort_has_cuda",
           "ort_optimization_level", "ort_session", "save_optimized", "select_backend", "session_runner",
           "tensorrt_available"]
