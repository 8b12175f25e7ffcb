"""Torch-free runtime: load an exported clip-debias artifact and run / verify it (numpy, pillow, onnxruntime).

    import runtime
    clf = runtime.load("artifacts/waterbirds", device="cpu")     # -> runtime.Classifier
    preds = clf.classify(["bird.jpg"])                          # [Prediction(label, index, probabilities, logits)]
    logits = clf.predict_logits(batch)                          # float32 [N, 3, H, W] -> [N, C]

``runtime.verify.verify`` checks an artifact on a labelled dataset. Names are imported lazily, so ``import runtime`` (done by ``toolchain.errors``) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load": "runtime.classifier",
    "Classifier": "runtime.classifier",
    "Prediction": "runtime.classifier",
    "softmax": "runtime.classifier",
    "Preprocessor": "runtime.preprocess",
    "load_image": "runtime.preprocess",
    "Manifest": "runtime.manifest",
    "Preprocessing": "runtime.manifest",
    "TensorSpec": "runtime.manifest",
    "ModelFile": "runtime.manifest",
    "BackendError": "runtime.backends",
    "ClipDebiasError": "runtime.errors",
    "ArtifactError": "runtime.errors",
    "InputError": "runtime.errors",
    "VerifyReport": "runtime.verify",
    "Thresholds": "runtime.verify",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
