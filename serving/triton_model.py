"""Triton python-backend model: serves the artifact in ``REPO/NAME/VERSION/artifact`` through ``clip_debias.runtime``.

Written by ``clip-debias export triton --backend python`` (its ``model.py`` imports ``TritonPythonModel`` from here).
Config parameters read: ``precision`` (fp32 | fp16 | int8) and ``intra_op_thread_count`` (CPU threads). Instance kind
CPU loads the artifact on the CPU; GPU on CUDA, the instance's device made the only visible one before the runtime
opens its session (unverified here: no GPU Triton on our machines).

``execute`` gets the requests the dynamic batcher grouped: each request's ``image`` [b_i, 3, H, W] is checked alone
(``Classifier.check_batch``: shape, dtype, NaN/Inf -- a bad request gets its own error response and does not fail
its neighbours), the good ones run as ONE batch (``Classifier.run``), and the outputs are split back per request.
``triton_python_backend_utils`` exists only inside Triton's stub process, so it is imported there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from clip_debias.runtime.classifier import Classifier, load
from clip_debias.runtime.errors import ClipDebiasError

ARTIFACT_DIR = "artifact"  # exporters.triton.ARTIFACT_DIR (the exporters layer sits above this one)


def model_parameters(model_config: dict[str, Any]) -> dict[str, str]:
    """``parameters`` of a Triton model config (as the backend receives it, JSON) -> {key: string_value}."""
    return {k: str(v.get("string_value", "")) for k, v in (model_config.get("parameters") or {}).items()}


def load_for_instance(args: dict[str, str]) -> Classifier:
    """The classifier of one model instance, from Triton's ``initialize`` arguments."""
    config = json.loads(args["model_config"])
    params = model_parameters(config)
    gpu = args.get("model_instance_kind", "CPU") == "GPU"
    if gpu:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", str(args.get("model_instance_device_id", "0")))
    root = Path(args["model_repository"]) / str(args["model_version"]) / ARTIFACT_DIR
    threads = params.get("intra_op_thread_count")
    return load(root, backend="onnxruntime", device="cuda" if gpu else "cpu",
                precision=params.get("precision", "fp32"), intra_op_threads=int(threads) if threads else None)


def split_rows(outputs: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Rows of ``outputs`` [sum(sizes), ...] cut back into one array per request."""
    return np.split(outputs, np.cumsum(sizes)[:-1]) if sizes else []


class TritonPythonModel:
    """Triton's python-backend interface: ``initialize``, ``execute``, ``finalize``."""

    def initialize(self, args: dict[str, str]) -> None:
        self.clf = load_for_instance(args)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, np.ndarray]] = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self.clf.check_batch(pb_utils.get_input_tensor_by_name(request, "image").as_numpy())))
            except ClipDebiasError as e:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e)))
        if good:
            logits, emb = self.clf.run(np.concatenate([x for _, x in good]))
            sizes = [len(x) for _, x in good]
            for (i, _), lg, em in zip(good, split_rows(logits, sizes), split_rows(emb, sizes)):
                responses[i] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("logits", np.ascontiguousarray(lg, dtype=np.float32)),
                    pb_utils.Tensor("embedding", np.ascontiguousarray(em, dtype=np.float32))])
        return responses

    def finalize(self) -> None:
        self.clf = None  # type: ignore[assignment]
