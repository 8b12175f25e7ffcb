"""Where the model runs over a split (``Engine``): this process (``LocalEngine``) or elsewhere
(``clip_debias.serving.ray_verify.RayEngine``). Both run each batch through ONE ``BatchRunner``: decode and
preprocess its images (an unreadable one is left out with ``skip_bad``, else a one-line ``InputError``), check the
batch, warm the backend up on the first batch (``warmup`` untimed runs), time the backend call alone and check that
its outputs are finite (naming the image that is not).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from clip_debias.runtime.classifier import Classifier, load
from clip_debias.runtime.errors import InputError
from clip_debias.runtime.precision_gate import GateResult, precision_gate
from clip_debias.runtime.progress import Progress

GATED_AT_VERIFY = ("bf16",)  # precisions without an exported, export-gated file: gated against fp32 here


@dataclass
class Predictions:
    """What an engine returns for the split's records (dataset order): ``logits`` [n, C] float32 (undefined where not
    ``kept``), ``kept`` [n] bool (False: unreadable and left out, ``skip_bad``), the model time of each call in ms
    (every engine times the backend call alone, after its warm-up) with the images of that call (``call_images``,
    same length), and the wall time. ``time_again``: times one more call on a batch of the largest size and returns
    its ms (``latency_batches``' top-up); None where the engine cannot (the calls ran elsewhere). ``embeddings``
    [n, D] float32: the artifact's (debiased) image embedding of each record from the same calls (undefined where not
    ``kept``; None: the engine does not return them)."""

    logits: np.ndarray
    kept: np.ndarray
    latencies_ms: list[float]
    wall_s: float
    call_images: list[int]
    time_again: Callable[[], float] | None = None
    embeddings: np.ndarray | None = None

    @property
    def preds(self) -> np.ndarray:
        """[n] argmax of the logits."""
        return self.logits.argmax(axis=1)


class Engine(Protocol):
    """Runs an artifact over a split for ``verify``: the artifact's description, its precision gate, and the
    predictions (an unreadable image without ``skip_bad`` and non-finite outputs are one-line ``InputError``s;
    ``what``, e.g. ``waterbirds/test``, names the pass in progress lines)."""

    root: Path
    class_names: list[str]
    group_names: list[str]
    digest: str | None
    transductive: bool  # built under the reference protocol (``Manifest.transductive``)

    def info(self) -> dict[str, Any]: ...

    def precision_gate(self) -> GateResult | None: ...

    def predict(self, records: list[Any], batch_size: int, skip_bad: bool, what: str) -> Predictions: ...


@dataclass
class BatchResult:
    """One batch: ``logits`` [n, C] float32 (zeros where not ``kept``), ``kept`` [n], the timed model call's ``ms``
    (None: no image of the batch was read), the preprocessed batch ``x`` it ran on and the call's image
    ``embeddings`` [n, D] float32 (zeros where not ``kept``; None: no image read)."""

    logits: np.ndarray
    kept: np.ndarray
    ms: float | None
    x: np.ndarray | None
    embeddings: np.ndarray | None = None


class BatchRunner:
    """The batch step every engine runs (module docstring), on one loaded ``Classifier``."""

    def __init__(self, clf: Classifier, warmup: int = 2, skip_bad: bool = False) -> None:
        self.clf, self.warmup, self.skip_bad, self.warm = clf, warmup, skip_bad, False

    def decode(self, path: Any) -> np.ndarray | None:
        """The preprocessed image; None when it is unreadable and ``skip_bad`` (else the ``InputError``)."""
        try:
            return self.clf.preprocess(path)
        except InputError:
            if not self.skip_bad:
                raise
            return None

    def run(self, arrays: list[np.ndarray | None], paths: list[Any]) -> BatchResult:
        """Run the decoded images of one batch (``arrays[i]`` None: left out) through the backend, timed."""
        clf = self.clf
        kept = np.array([a is not None for a in arrays], dtype=bool)
        logits = np.zeros((len(arrays), len(clf.class_names)), dtype=np.float32)
        if not kept.any():
            return BatchResult(logits, kept, None, None)
        x = clf.check_batch(np.stack([a for a in arrays if a is not None]))
        if not self.warm:
            for _ in range(self.warmup):
                clf.backend.run(x)
            self.warm = True
        t0 = time.perf_counter()
        out, emb = clf.backend.run(x)
        ms = (time.perf_counter() - t0) * 1000.0
        check_finite(clf, out, emb, [p for p, a in zip(paths, arrays) if a is not None])
        logits[kept] = np.asarray(out, dtype=np.float32)
        embeddings = np.zeros((len(arrays), np.asarray(emb).shape[1]), dtype=np.float32)
        embeddings[kept] = np.asarray(emb, dtype=np.float32)
        return BatchResult(logits, kept, ms, x, embeddings)

    def time_again(self, x: np.ndarray) -> float:
        """The ms of one more backend call on ``x``."""
        t0 = time.perf_counter()
        self.clf.backend.run(x)
        return (time.perf_counter() - t0) * 1000.0


class LocalEngine:
    """This process: ``workers`` threads decode/preprocess a batch, then the backend runs it (timed alone)."""

    def __init__(self, clf: Classifier, warmup: int = 2, workers: int | None = None, progress: bool = True,
                 console: Any = None) -> None:
        self.clf, self.warmup, self.progress, self.console = clf, warmup, progress, console
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.root, self.class_names, self.group_names = clf.root, clf.class_names, clf.group_names
        self.digest = clf.digest
        self.transductive = clf.manifest.transductive

    def info(self) -> dict[str, Any]:
        return self.clf.info()

    def precision_gate(self) -> GateResult | None:
        return gate_against_fp32(self.clf) if self.clf.backend.precision in GATED_AT_VERIFY else None

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """The artifact's unit-norm text embeddings [Q, D] of ``texts`` (``Classifier.encode_text``); one
        ``InputError`` line when the artifact has no text tower."""
        if not self.clf.has_text_tower:
            raise InputError(f"--queries: {self.root}: this artifact has no text tower to embed the queries with "
                             "(re-export it with 'clip-debias export onnx --text')")
        return self.clf.encode_text(texts)

    def predict(self, records: list[Any], batch_size: int, skip_bad: bool, what: str) -> Predictions:
        runner = BatchRunner(self.clf, self.warmup, skip_bad)
        out = np.zeros((len(records), len(self.class_names)), dtype=np.float32)
        kept = np.ones(len(records), dtype=bool)  # False: unreadable and left out (skip_bad)
        emb: np.ndarray | None = None  # [n, D], allocated at the first batch read
        latencies: list[float] = []
        images: list[int] = []
        largest: list[np.ndarray] = []  # the first largest batch, to time again (Predictions.time_again)
        t_start = time.perf_counter()
        batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]
        bar = Progress(f"verify {what}", len(records), len(batches), enabled=self.progress, console=self.console)
        with ThreadPoolExecutor(max_workers=self.workers) as pool, bar:
            done = 0
            for chunk in batches:
                paths = [r.path for r in chunk]
                result = runner.run(list(pool.map(runner.decode, paths)), paths)
                kept[done : done + len(chunk)] = result.kept
                out[done : done + len(chunk)] = result.logits
                if result.embeddings is not None:
                    if emb is None:
                        emb = np.zeros((len(records), result.embeddings.shape[1]), dtype=np.float32)
                    emb[done : done + len(chunk)] = result.embeddings
                if result.ms is not None and result.x is not None:
                    latencies.append(result.ms)
                    images.append(len(result.x))
                    if not largest or len(result.x) > len(largest[0]):
                        largest[:] = [result.x]
                done += len(chunk)
                bar.advance(len(chunk))
        wall = time.perf_counter() - t_start
        time_again = (lambda: runner.time_again(largest[0])) if largest else None
        return Predictions(out, kept, latencies, wall, images, time_again, emb)


def gate_against_fp32(clf: Classifier) -> GateResult:
    """``clf`` (reduced precision) vs the same artifact's fp32 graph on ONNX Runtime CPU, on the gate batch."""
    reference = load(clf.root, backend="onnxruntime", device="cpu", precision="fp32")
    return precision_gate(clf, reference)


def check_finite(clf: Classifier, logits: np.ndarray, emb: np.ndarray, paths: list[Any]) -> None:
    """``Classifier.check_outputs``, the error naming the image (``paths[i]`` is batch item i's file)."""
    try:
        clf.check_outputs(logits, emb)
    except InputError as e:
        bad = np.flatnonzero(~(np.isfinite(logits).all(axis=1) & np.isfinite(emb).all(axis=1)))
        raise InputError(f"{paths[int(bad[0])]}: {e}") from None
