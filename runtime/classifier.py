"""``runtime.load(artifact) -> Classifier``: a debiased zero-shot classifier from an exported artifact, torch-free.

Shapes: images are preprocessed to float32 [3, H, W] (``Classifier.preprocess``), batched to [N, 3, H, W];
the graph returns ``logits`` [N, C] (C = ``len(class_names)``, already scaled as exported) and ``embedding`` [N, D].
``classify`` adds ``probabilities = softmax(logits)`` over the C classes.

Input policy of ``predict_logits`` / ``embed`` on arrays: a numpy array of rank 4 with (channels, H, W) equal to the
manifest's; float32 is used as is, other floating dtypes (float16/float64) are cast to float32 (the graph's input
type -- this is the precision the model computes in anyway); integer/bool/other dtypes are refused (they are almost
certainly un-normalized pixels); NaN/Inf (also after the cast) are refused. Each refusal is one ``InputError`` line.
Device-resident batches (an ``OrtValue``, a torch CUDA tensor, a CuPy array) go to a CUDA session without a host
copy: see ``runtime.device_input``. Outputs are checked on every device: a batch item whose logits or embedding hold
NaN/Inf (from a finite input: e.g. values near float32's maximum overflow inside the model) is refused in one line.
All methods are safe to call from several threads at once.

Open vocabulary (artifacts exported with their text tower, ``has_text_tower``; ``runtime.text``): ``tokenize``,
``encode_text`` (unit-norm text embeddings, prompt ensembling over the recorded templates on request),
``encode_image`` (the debiased unit-norm image embedding) and ``classify(images, labels=[...])`` -- labels chosen at
request time, ``logits = logit_scale * e' @ T^T`` over the labels' ensembled text matrix T, which equals the
built-in zero-shot head built with the same labels and templates. An artifact without a text tower answers the text
calls with one ``InputError`` line; everything else works as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from clip_debias.runtime import metrics
from clip_debias.runtime.backends import Backend, BackendOptions, select_backend
from clip_debias.runtime.device_input import as_device_batch
from clip_debias.runtime.errors import ArtifactError, InputError
from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS
from clip_debias.runtime.integrity import check_digest, parse_digest, verify_artifact
from clip_debias.runtime.manifest import MANIFEST_NAME, Manifest
from clip_debias.runtime.preprocess import Preprocessor
from clip_debias.runtime.text import TextModel, check_labels


@dataclass
class Prediction:
    """One image's result: the top class and the softmax over all classes."""

    label: str
    index: int
    probabilities: np.ndarray  # [C] float32, sums to 1
    logits: np.ndarray  # [C] float32

    def scores(self, class_names: Sequence[str]) -> dict[str, float]:
        return {c: float(p) for c, p in zip(class_names, self.probabilities)}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis, computed stably in float64 (``runtime.metrics.softmax``), returned as
    float32."""
    return metrics.softmax(logits).astype(np.float32)


def _check_contract(root: Path, m: Manifest) -> tuple[str, tuple[int, int, int]]:
    """The artifact contract: one input [batch, 3, H, W] with (H, W) = preprocessing.size; outputs ``logits``
    [batch, C = len(class_names)] and ``embedding`` [batch, D]. Returns (input name, (3, H, W))."""
    src = root / MANIFEST_NAME
    if len(m.inputs) != 1:
        raise ArtifactError(f"{src}: field 'inputs' must list exactly one input (the image), got {len(m.inputs)}")
    spec = m.inputs[0]
    h, w = (int(s) for s in m.preprocessing.size)
    if len(spec.shape) != 4 or list(spec.shape[1:]) != [3, h, w]:
        raise ArtifactError(
            f"{src}: field 'inputs[0].shape' is {spec.shape}, expected [batch, 3, {h}, {w}] (preprocessing.size)"
        )
    if spec.dtype not in ("float32", "float"):
        raise ArtifactError(f"{src}: field 'inputs[0].dtype' is {spec.dtype!r}, expected 'float32'")
    for name in ("logits", "embedding"):
        t = m.tensor(name)
        if t is None:
            raise ArtifactError(f"{src}: field 'outputs' has no '{name}' (has {[o.name for o in m.outputs]})")
        if len(t.shape) != 2:
            raise ArtifactError(f"{src}: field 'outputs' '{name}' shape {t.shape} must be [batch, n]")
    n_cls = m.tensor("logits").shape[1]  # type: ignore[union-attr]
    if isinstance(n_cls, int) and n_cls != len(m.class_names):
        raise ArtifactError(
            f"{src}: 'logits' has {n_cls} columns but field 'class_names' lists {len(m.class_names)} classes"
        )
    return spec.name, (3, h, w)


class Classifier:
    """A loaded artifact. Build with ``runtime.load``."""

    def __init__(self, root: Path, manifest: Manifest, backend: Backend, preprocessor: Preprocessor,
                 input_shape: tuple[int, int, int], digest: str | None = None) -> None:
        self.root = root
        self.manifest = manifest
        self.backend = backend
        self.preprocessor = preprocessor
        self.input_shape = input_shape  # (3, H, W)
        self.digest = digest  # "sha256:..." of the files checked at load (runtime.integrity); None if not checked
        self.text: TextModel | None = None  # the text tower (runtime.text), set by runtime.load when there is one

    # -- description ------------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.class_names)

    @property
    def group_names(self) -> list[str]:
        return list(self.manifest.group_names)

    @property
    def has_text_tower(self) -> bool:
        """True when the artifact carries its text tower (``text.onnx`` + ``tokenizer.json``)."""
        return self.text is not None

    def info(self) -> dict[str, Any]:
        """What runs: artifact path and digest, backend, device, precision, model file, providers, text graph."""
        text = str(self.text.path.name) if self.text is not None else None
        return {"artifact": str(self.root), "digest": self.digest, **self.backend.info(), "text_model_file": text}

    def __repr__(self) -> str:
        b = self.backend
        return (f"Classifier({str(self.root)!r}, backend={b.name!r}, device={b.device!r}, precision={b.precision!r}, "
                f"classes={len(self.manifest.class_names)})")

    # -- preprocessing ----------------------------------------------------------------------------------------
    def preprocess(self, image: Image.Image | str | os.PathLike[str] | np.ndarray) -> np.ndarray:
        """PIL image / path / uint8 HxWxC array -> float32 [3, H, W], open_clip's eval transform."""
        return self.preprocessor(image)

    # -- inference --------------------------------------------------------------------------------------------
    def _check_shape(self, shape: tuple[int, ...]) -> None:
        c, h, w = self.input_shape
        if len(shape) != 4:
            hint = " (add a batch axis: x[None])" if tuple(shape) == (c, h, w) else ""
            raise InputError(f"input has shape {list(shape)} (rank {len(shape)}); expected [N, {c}, {h}, {w}]{hint}")
        if tuple(shape[1:]) != (c, h, w):
            raise InputError(
                f"input has shape {list(shape)}; expected [N, {c}, {h}, {w}] (channels, height, width of the artifact)"
            )
        if shape[0] == 0:
            raise InputError(f"input batch is empty (shape {list(shape)})")

    def check_batch(self, batch: Any) -> np.ndarray:
        """Validate a preprocessed batch (see the module docstring); returns float32 C-contiguous [N, 3, H, W]."""
        c, h, w = self.input_shape
        if not isinstance(batch, np.ndarray):
            raise InputError(f"input must be a numpy array [N, {c}, {h}, {w}] float32 (or a device-resident "
                             f"OrtValue / __cuda_array_interface__ tensor), got {type(batch).__name__}")
        self._check_shape(batch.shape)
        if batch.dtype != np.float32:
            if not np.issubdtype(batch.dtype, np.floating):
                raise InputError(
                    f"input dtype {batch.dtype} is not floating point; expected float32 normalized pixels "
                    "(use Classifier.preprocess / classify for raw images)"
                )
            with np.errstate(over="ignore"):
                batch = batch.astype(np.float32)
        batch = np.ascontiguousarray(batch)
        flat = batch.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):  # sum of squares: one BLAS pass, no temporaries
            sq = np.dot(flat, flat)
        if not np.isfinite(sq):  # finite <=> no NaN/Inf; non-finite may also be a huge-value overflow: exact check
            finite = np.isfinite(batch)
            if not finite.all():
                bad = int(batch.size - np.count_nonzero(finite))
                first = int(np.argwhere(~finite)[0][0])
                raise InputError(f"input contains {bad} NaN/Inf value(s) (first in batch item {first})")
        return batch

    @staticmethod
    def check_outputs(logits: np.ndarray, emb: np.ndarray, scanned: bool = True) -> None:
        """Refuse NaN/Inf outputs with one ``InputError`` naming the batch items. ``scanned``: the input was checked
        finite (host arrays), so the model overflowed on it; else (device input) the input may hold NaN/Inf."""
        finite = np.isfinite(logits).all(axis=1) & np.isfinite(emb).all(axis=1)
        if not finite.all():
            items = np.flatnonzero(~finite)[:8].tolist()
            why = ("from a finite input: values this large overflow the model (expected normalized pixels, "
                   "|x| of a few units; use Classifier.preprocess)" if scanned else
                   "a device-resident input is not scanned for NaN/Inf -- check those images")
            raise InputError(f"outputs are NaN/Inf for batch item(s) {items}, {why}")

    def run(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        """Validated batch -> (logits [N, C], embedding [N, D]) float32 numpy arrays, finite (``check_outputs``).
        ``batch``: a numpy array, or a device-resident one (``runtime.device_input``: OrtValue, torch CUDA tensor,
        CuPy array...)."""
        dev = None if isinstance(batch, np.ndarray) else as_device_batch(batch)
        if dev is None or dev.device == "cpu":  # a host OrtValue: validated like any array
            logits, emb = self.backend.run(self.check_batch(batch if dev is None else dev.source.numpy()))
            self.check_outputs(logits, emb)
            return logits, emb
        self._check_shape(dev.shape)
        if dev.dtype != "float32":
            raise InputError(f"device input dtype {dev.dtype}; expected float32 (no cast happens on the device)")
        logits, emb = self.backend.run_device(dev)
        self.check_outputs(logits, emb, scanned=False)
        return logits, emb

    def predict_logits(self, batch: Any) -> np.ndarray:
        """float32 [N, 3, H, W] -> logits [N, C]."""
        return self.run(batch)[0]

    def _as_batch(self, x: Any) -> np.ndarray:
        if isinstance(x, np.ndarray) and x.ndim == 4:
            return x
        one_image = isinstance(x, np.ndarray) and x.ndim in (2, 3) and x.dtype == np.uint8
        if one_image or isinstance(x, (Image.Image, str, os.PathLike)):
            return self.preprocessor.batch([x])
        if isinstance(x, np.ndarray):
            return x  # let check_batch name the problem
        return self.preprocessor.batch(list(x))

    def embed(self, images: Any, batch_size: int = 32) -> np.ndarray:
        """A preprocessed batch [N, 3, H, W], or images (PIL/paths, one or a list) -> embedding [N, D] float32."""
        return np.concatenate([self.run(b)[1] for b in self._chunks(images, batch_size)])

    def encode_image(self, images: Any, batch_size: int = 32) -> np.ndarray:
        """Images or a preprocessed batch -> the debiased unit-norm image embedding e' [N, D] float32 (``embed``)."""
        return self.embed(images, batch_size)

    def _text(self) -> TextModel:
        if self.text is None:
            raise InputError(f"{self.root}: this artifact has no text tower (re-export it with 'clip-debias export "
                             "onnx --text'); labels and texts need one")
        return self.text

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> int64 [N, L] token ids, open_clip's tokenizer (``runtime.tokenizer``)."""
        return self._text().tokenize(texts)

    def encode_text(self, texts: Sequence[str], *, ensemble: bool = False) -> np.ndarray:
        """Texts -> float32 [N, D] unit-norm text embeddings (open_clip ``encode_text(normalize=True)``); with
        ``ensemble`` each text is put in every recorded template and the normalized mean is returned."""
        return self._text().encode(texts, ensemble=ensemble)

    def classify(self, images: Any, labels: Sequence[str] | None = None, batch_size: int = 32) -> list[Prediction]:
        """Images (PIL/paths/uint8 arrays, one or a list) or a preprocessed batch -> one ``Prediction`` per image:
        ``index = argmax(logits)``, ``probabilities = softmax(logits)``. ``labels``: classes chosen now (needs the
        text tower; logits over them from the image embedding, module docstring); None: the built-in head."""
        if labels is None:
            logits, names = np.concatenate([self.run(b)[0] for b in self._chunks(images, batch_size)]), \
                self.manifest.class_names
        else:
            text, names = self._text(), check_labels(labels)
            emb = self.embed(images, batch_size)
            logits = text.logits(emb, names)
        probs = softmax(logits)
        return [
            Prediction(label=names[int(i)], index=int(i), probabilities=p, logits=lg)
            for i, p, lg in zip(probs.argmax(axis=1), probs, logits)
        ]

    def _chunks(self, images: Any, batch_size: int) -> Iterable[np.ndarray]:
        if batch_size <= 0:
            raise InputError(f"batch_size must be positive, got {batch_size}")
        if isinstance(images, np.ndarray) or isinstance(images, (Image.Image, str, os.PathLike)):
            yield self._as_batch(images)
            return
        items = list(images)
        if not items:
            raise InputError("no images given")
        for i in range(0, len(items), batch_size):
            yield self._as_batch(items[i : i + batch_size])


def load(
    artifact: str | os.PathLike[str],
    backend: str = "auto",
    device: str = "auto",
    precision: str = "fp32",
    *,
    intra_op_threads: int | None = None,
    use_ort_optimized: bool = True,
    check_sha256: bool = True,
    cuda_graph: bool = False,
    stop_spinning: bool = False,
    performance_hint: str = "latency",
    expected_digest: str | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Classifier:
    """Open an artifact directory: validate ``manifest.json`` (format version, fields, contract), check the sha256 of
    every file of the artifact and compute its digest (``runtime.integrity``; ``check_sha256=False`` skips both),
    refuse it when ``expected_digest`` is given and differs, open the backend and check the graph's inputs and
    outputs against the manifest. Any problem is a one-line ``ArtifactError`` (or ``BackendError`` when the
    machine cannot provide the backend/device).

    backend: auto | onnxruntime | tensorrt | openvino (``runtime.backends.selection``). device: auto | cpu | cuda
    (only auto may fall back to the CPU). precision: fp32 | fp16 (needs ``model.fp16.onnx`` or an fp16 plan) | int8
    (needs ``model.int8.onnx``; CPU only) | bf16 (OpenVINO on a CPU with bf16 arithmetic, from ``model.onnx``).
    cuda_graph: ONNX Runtime CUDA graphs, one captured per batch size (device "cuda" only; see
    ``runtime.captured_graphs``) -- for low batch-1 latency on a GPU. stop_spinning (ONNX Runtime CPU) and
    performance_hint (OpenVINO: latency | throughput): see ``runtime.backends.BackendOptions``.
    expected_digest: ``sha256:...`` as ``export`` / ``verify`` print it (pins the exact artifact).
    max_image_pixels: image files over this many pixels are refused before decoding (``runtime.images``)."""
    root = Path(artifact)
    digest = None
    if expected_digest is not None:
        expected_digest = parse_digest(expected_digest)  # a malformed value fails before any hashing
    if check_sha256 or expected_digest is not None:
        manifest, digest = verify_artifact(root)
        if expected_digest is not None:
            check_digest(root, digest, expected_digest)
    else:
        manifest = Manifest.load(root)
    _, input_shape = _check_contract(root, manifest)
    try:
        pre = Preprocessor.from_manifest(manifest.preprocessing, max_image_pixels)
    except ValueError as e:
        raise ArtifactError(f"{root / MANIFEST_NAME}: field 'preprocessing': {e}") from None
    options = BackendOptions(intra_op_threads, use_ort_optimized, False, cuda_graph, stop_spinning,
                             performance_hint)  # every file was hashed above (runtime.integrity)
    b = select_backend(root, manifest, backend, device, precision, options)
    clf = Classifier(root, manifest, b, pre, input_shape, digest)
    if manifest.text is not None:  # onnxruntime, on the image graph's device; opened on first use
        clf.text = TextModel(root, manifest, b.precision, "cuda" if b.device == "cuda" else "cpu", intra_op_threads)
    return clf
