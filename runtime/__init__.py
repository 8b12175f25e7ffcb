"""Torch-free runtime: load an exported clip-debias artifact and run / verify it (numpy, pillow, onnxruntime).

    from clip_debias import runtime
    clf = runtime.load("artifacts/waterbirds", device="cpu")     # -> runtime.Classifier
    preds = clf.classify(["bird.jpg"])                          # [Prediction(label, index, probabilities, logits)]
    logits = clf.predict_logits(batch)                          # float32 [N, 3, H, W] -> [N, C]

``runtime.verify.verify`` checks an artifact on a labelled dataset. Names are imported lazily, so ``import runtime``
(done by ``toolchain.errors``) stays cheap.
"""

from __future__ import annotations

from clip_debias.runtime.lazy_exports import lazy_exports

_EXPORTS = {
    "load": "clip_debias.runtime.classifier",
    "Classifier": "clip_debias.runtime.classifier",
    "Prediction": "clip_debias.runtime.classifier",
    "softmax": "clip_debias.runtime.classifier",
    "Preprocessor": "clip_debias.runtime.preprocess",
    "load_image": "clip_debias.runtime.images",
    "ImageError": "clip_debias.runtime.images",
    "Manifest": "clip_debias.runtime.manifest",
    "Preprocessing": "clip_debias.runtime.manifest",
    "TensorSpec": "clip_debias.runtime.manifest",
    "ModelFile": "clip_debias.runtime.manifest",
    "BackendError": "clip_debias.runtime.backends",
    "BackendOptions": "clip_debias.runtime.backends",
    "ClipDebiasError": "clip_debias.runtime.errors",
    "ArtifactError": "clip_debias.runtime.errors",
    "InputError": "clip_debias.runtime.errors",
    "VerifyReport": "clip_debias.runtime.verify",
    "Thresholds": "clip_debias.runtime.verify",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports("clip_debias.runtime", _EXPORTS, globals())
