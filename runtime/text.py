"""The artifact's text tower at run time (torch-free): texts -> unit-norm text embeddings, labels -> a zero-shot head.

``encode(texts)``: ``runtime.tokenizer`` ids int64 [N, L] -> ``text.onnx`` -> float32 [N, D], unit-norm rows (open_clip
``encode_text(normalize=True)``). ``label_matrix(labels)``: CLIP's prompt ensembling over the manifest's templates,
T[c] = normalize(mean_t encode(template_t.format(label_c))) [C, D] -- how ``build`` made the artifact's zero-shot head
(``toolchain.prompts.text.prompt_matrix``); ``logits(e, labels) = logit_scale * e @ T^T`` [N, C] with the manifest's
``logit_scale``, so labels given at request time equal the built-in zero-shot head built with the same labels and
templates. The session opens on first use (an image-only caller never pays for it); safe from several threads.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clip_debias.runtime.errors import ArtifactError, InputError
from clip_debias.runtime.manifest import MANIFEST_NAME, Manifest
from clip_debias.runtime.tokenizer import TextTokenizer, check_texts

TEXT_INPUT, TEXT_OUTPUT = "tokens", "text_embedding"
TEXT_BATCH = 256  # rows per text.onnx call


def check_labels(labels: Sequence[str]) -> list[str]:
    """Labels given at request time: a non-empty list of distinct, non-blank strings (``check_texts`` first)."""
    items = check_texts(labels)
    blank = [i for i, t in enumerate(items) if not t.strip()]
    if blank:
        raise InputError(f"labels[{blank[0]}] is blank")
    seen: dict[str, int] = {}
    for i, t in enumerate(items):
        if t in seen:
            raise InputError(f"labels[{i}] {t!r} repeats labels[{seen[t]}]")
        seen[t] = i
    return items


class TextModel:
    """``text.onnx`` + ``tokenizer.json`` of an artifact (``Manifest.text``), run with onnxruntime."""

    def __init__(self, root: Path, manifest: Manifest, precision: str = "fp32", device: str = "cpu",
                 threads: int | None = None) -> None:
        if manifest.text is None:
            raise ArtifactError(f"{root / MANIFEST_NAME}: no text tower (exported without --text)")
        self.root, self.spec = root, manifest.text
        files = {f.precision: f for f in manifest.files if f.kind == "text-onnx"}
        if not files:
            raise ArtifactError(f"{root / MANIFEST_NAME}: field 'text' is set but 'files' lists no text-onnx graph")
        self.precision = precision if precision in files else "fp32" if "fp32" in files else next(iter(files))
        self.path = root / files[self.precision].path
        self.device, self.threads = device, threads
        self._session: Any = None
        self._tokenizer: TextTokenizer | None = None
        self._lock = threading.Lock()

    @property
    def templates(self) -> list[str]:
        return list(self.spec.templates)

    def _open(self) -> tuple[Any, TextTokenizer]:
        with self._lock:
            if self._session is None:
                from clip_debias.runtime.backends.ort import ort_session

                self._tokenizer = TextTokenizer(self.root / self.spec.tokenizer, self.spec.context_length)
                session = ort_session(self.path, self.precision, self.device, threads=self.threads)
                names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
                if names != ([TEXT_INPUT], [TEXT_OUTPUT]):
                    raise ArtifactError(f"{self.path}: graph inputs/outputs {names}, expected "
                                        f"([{TEXT_INPUT!r}], [{TEXT_OUTPUT!r}])")
                self._session = session
        return self._session, self._tokenizer  # type: ignore[return-value]

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """texts -> int64 [N, L] token ids (``runtime.tokenizer``)."""
        return self._open()[1](texts)

    def encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """int64 [N, L] -> float32 [N, D] unit-norm rows. int8 runs row by row (its activation scales are per call,
        so a batch would change each row's result), the others in chunks of ``TEXT_BATCH``."""
        session = self._open()[0]
        step = 1 if self.precision == "int8" else TEXT_BATCH
        out = [session.run([TEXT_OUTPUT], {TEXT_INPUT: tokens[i:i + step]})[0] for i in range(0, len(tokens), step)]
        emb = np.concatenate(out).astype(np.float32, copy=False)
        if not np.isfinite(emb).all():
            raise InputError("text embeddings are NaN/Inf (the text graph overflowed)")
        return emb

    def encode(self, texts: Sequence[str], ensemble: bool = False) -> np.ndarray:
        """float32 [N, D] unit-norm: each text's embedding, or with ``ensemble`` each text put in every template and
        the normalized mean of their embeddings (``label_matrix``)."""
        if ensemble:
            return self.label_matrix(texts, check=False)
        return self.encode_tokens(self.tokenize(texts))

    def label_matrix(self, labels: Sequence[str], check: bool = True) -> np.ndarray:
        """T [C, D] float32: row c = normalize(mean over templates of the unit-norm prompt embeddings) (module
        docstring); mean and norm in float64."""
        labels = check_labels(labels) if check else check_texts(labels)
        templates = self.spec.templates
        emb = self.encode_tokens(self.tokenize([t.format(label) for label in labels for t in templates]))
        mean = emb.astype(np.float64).reshape(len(labels), len(templates), -1).mean(axis=1)
        return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)

    def logits(self, image_embedding: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """``logit_scale * e @ T^T`` [N, C] float32 for image embeddings e [N, D] and labels given now."""
        t = self.label_matrix(labels)
        return (self.spec.logit_scale * (image_embedding.astype(np.float64) @ t.T.astype(np.float64))).astype(
            np.float32)

