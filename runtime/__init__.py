"""Torch-free runtime: load an exported clip-debias artifact and run / verify it (numpy, pillow, onnxruntime).

    import runtime
    clf = runtime.load("artifacts/waterbirds", device="cpu")     # -> runtime.Classifier
    preds = clf.classify(["bird.jpg"])                          # [Prediction(label, index, probabilities, logits)]
    logits = clf.predict_logits(batch)                          # float32 [N, 3, H, W] -> [N, C]

``runtime.verify.verify`` checks an artifact on a labelled dataset. Names are imported lazily, so ``import runtime``
(done by ``toolchain.errors``) stays cheap.
"""

from __future__ import annotations

from runtime.lazy_exports import lazy_exports

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
    "BackendOptions": "runtime.backends",
    "ClipDebiasError": "runtime.errors",
    "ArtifactError": "runtime.errors",
    "InputError": "runtime.errors",
    "VerifyReport": "runtime.verify",
    "Thresholds": "runtime.verify",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("runtime", _EXPORTS, globals())
