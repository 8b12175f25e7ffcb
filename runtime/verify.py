"""``verify``: run an artifact over a labelled dataset split and check accuracy / robustness / latency thresholds.

Numbers (``runtime.metrics.accuracy_report``): accuracy = mean over all images of [argmax logits == label];
worst-group accuracy = min over groups present of the group's accuracy. Latency: wall time of the model call
alone (backend run on an already decoded, preprocessed, validated batch) per batch, in ms, p50/p95/p99 by linear
interpolation (``numpy.percentile``); the first batch is run ``warmup`` extra times untimed first. Every image is
counted exactly once; the last batch may be smaller. Throughput = images / summed model time (model-only);
``end_to_end_per_s`` adds decoding and preprocessing.
Thresholds: ``min_accuracy`` and ``min_worst_group`` are fractions in [0, 1]; ``max_latency_ms`` applies to p95.
Precision gate: a bf16 run (OpenVINO; no export writes or gates a bf16 file) is first compared with the same
artifact's fp32 graph on ONNX Runtime on the gate batch (``runtime.parity``: max logit diff, embedding cosine, argmax
agreement); the report holds the numbers (``precision_gate``) and a failed gate fails the run (exit 1).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clip_debias.runtime.atomic_output import write_atomic
from clip_debias.runtime.classifier import Classifier, load
from clip_debias.runtime.datasets import load_index
from clip_debias.runtime.errors import ClipDebiasError, InputError
from clip_debias.runtime.metrics import accuracy_report
from clip_debias.runtime.parity import GateResult, precision_gate

GATED_AT_VERIFY = ("bf16",)  # precisions without an exported, export-gated file: gated against fp32 here


@dataclass
class Thresholds:
    """Pass criteria; ``None`` = not checked. Accuracies are fractions in [0, 1]; latency is p95 per batch in ms."""

    min_accuracy: float | None = None
    min_worst_group: float | None = None
    max_latency_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_accuracy", "min_worst_group"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise InputError(f"threshold {name} = {v} must be a fraction in [0, 1] (0.9 means 90%)")
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:
            raise InputError(f"threshold max_latency_ms = {self.max_latency_ms} must be > 0")


@dataclass
class ThresholdResult:
    threshold: float
    value: float
    passed: bool


@dataclass
class VerifyReport:
    """The result of ``verify``; ``to_dict`` is the JSON report."""

    accuracy: float
    worst_group_accuracy: float
    worst_group: str
    groups: dict[str, dict[str, float | int]]  # name -> {n, accuracy}
    latency_ms: dict[str, float]  # p50, p95, p99, mean
    throughput_per_s: float
    thresholds: dict[str, ThresholdResult]
    passed: bool
    artifact: str = ""
    dataset: str = ""
    data: str = ""
    split: str = ""
    n: int = 0
    batch_size: int = 0
    n_batches: int = 0
    backend: dict[str, Any] = field(default_factory=dict)
    end_to_end_per_s: float = 0.0
    class_names: list[str] = field(default_factory=list)
    dataset_class_names: list[str] = field(default_factory=list)
    class_names_match: bool = True
    skipped: list[str] = field(default_factory=list)  # unreadable images left out (skip_bad), not counted in n
    precision_gate: dict[str, Any] | None = None  # GateResult vs the artifact's fp32 graph (GATED_AT_VERIFY)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def write_json(self, path: str | Path) -> Path:
        """Write the JSON report (temp file + rename, see ``runtime.atomic_output``)."""
        write_atomic(path, self.to_json() + "\n")
        return Path(path)


def check_thresholds(
    t: Thresholds, accuracy: float, worst_group: float, p95_ms: float
) -> dict[str, ThresholdResult]:
    """The thresholds that are set, each with its measured value and whether it is met (>= for accuracies,
    <= for latency)."""
    out: dict[str, ThresholdResult] = {}
    if t.min_accuracy is not None:
        out["min_accuracy"] = ThresholdResult(t.min_accuracy, accuracy, accuracy >= t.min_accuracy)
    if t.min_worst_group is not None:
        out["min_worst_group"] = ThresholdResult(t.min_worst_group, worst_group, worst_group >= t.min_worst_group)
    if t.max_latency_ms is not None:
        out["max_latency_ms"] = ThresholdResult(t.max_latency_ms, p95_ms, p95_ms <= t.max_latency_ms)
    return out


def verify(
    artifact: str | Path,
    dataset: str,
    data: str | Path,
    split: str = "test",
    backend: str = "auto",
    device: str = "cpu",
    batch_size: int = 32,
    thresholds: Thresholds | None = None,
    *,
    precision: str = "fp32",
    cuda_graph: bool = False,
    warmup: int = 2,
    workers: int | None = None,
    progress: bool = True,
    console: Any = None,
    classifier: Classifier | None = None,
    skip_bad: bool = False,
) -> VerifyReport:
    """Load the artifact (or use ``classifier``), index ``split`` of ``dataset`` at ``data``, classify every image
    in batches of ``batch_size`` and build the report. ``workers`` threads decode/preprocess images (default
    min(4, cpus)); decoding never overlaps a timed model call. ``cuda_graph``: see ``runtime.load``. ``skip_bad``:
    an unreadable image is left out and listed in ``skipped`` (its batch runs smaller) instead of stopping."""
    if batch_size <= 0:
        raise InputError(f"batch size must be positive, got {batch_size}")
    thresholds = thresholds or Thresholds()
    clf = classifier or load(artifact, backend=backend, device=device, precision=precision, cuda_graph=cuda_graph)
    gate = gate_against_fp32(clf) if clf.backend.precision in GATED_AT_VERIFY else None
    names = clf.class_names
    index = load_index(dataset, Path(data), split, classes=names if dataset == "csv" else None)
    if len(index.class_names) != len(names):
        raise ClipDebiasError(
            f"{data}: the {dataset} dataset has {len(index.class_names)} classes {index.class_names}, "
            f"the artifact {len(names)} {names}"
        )
    records = index.records
    labels = np.array([r.label for r in records], dtype=np.int64)
    groups = np.array([r.group for r in records], dtype=np.int64)
    if labels.min() < 0 or labels.max() >= len(names):
        raise ClipDebiasError(f"{data}: labels outside 0..{len(names) - 1}")

    workers = workers or min(4, os.cpu_count() or 1)
    preds = np.empty(len(records), dtype=np.int64)
    kept = np.ones(len(records), dtype=bool)  # False: unreadable and left out (skip_bad)

    def decode(r: Any) -> np.ndarray | None:
        try:
            return clf.preprocess(r.path)
        except InputError:
            if not skip_bad:
                raise
            return None

    latencies: list[float] = []
    warm = False
    t_start = time.perf_counter()
    batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("verify {task.fields[split]}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not progress,
    )
    with ThreadPoolExecutor(max_workers=workers) as pool, bar:
        task = bar.add_task("verify", total=len(records), split=split)
        done = 0
        for chunk in batches:
            arrays = list(pool.map(decode, chunk))
            ok = np.array([a is not None for a in arrays])
            kept[done : done + len(chunk)] = ok
            if ok.any():
                x = clf.check_batch(np.stack([a for a in arrays if a is not None]))
                if not warm:
                    for _ in range(warmup):
                        clf.backend.run(x)
                    warm = True
                t0 = time.perf_counter()
                logits, _ = clf.backend.run(x)
                latencies.append((time.perf_counter() - t0) * 1000.0)
                preds[done : done + len(chunk)][ok] = np.asarray(logits).argmax(axis=1)
            done += len(chunk)
            bar.update(task, advance=len(chunk))
    wall = time.perf_counter() - t_start
    if not kept.any():
        raise ClipDebiasError(f"{data}: none of the {len(records)} images of split '{split}' could be read")
    n = int(kept.sum())

    acc = accuracy_report(preds[kept], labels[kept], groups[kept], index.group_names)
    lat = np.asarray(latencies)
    p50, p95, p99 = (float(v) for v in np.percentile(lat, [50, 95, 99]))
    checks = check_thresholds(thresholds, acc.accuracy, acc.worst_group_accuracy, p95)
    passed = all(c.passed for c in checks.values()) and (gate is None or gate.passed)
    return VerifyReport(
        accuracy=acc.accuracy,
        worst_group_accuracy=acc.worst_group_accuracy,
        worst_group=acc.worst_group,
        groups={k: {"n": g.n, "accuracy": g.accuracy} for k, g in acc.groups.items()},
        latency_ms={"p50": p50, "p95": p95, "p99": p99, "mean": float(lat.mean())},
        throughput_per_s=float(n / max(lat.sum() / 1000.0, 1e-9)),
        thresholds=checks,
        passed=passed,
        artifact=str(clf.root),
        dataset=dataset,
        data=str(data),
        split=split,
        n=n,
        batch_size=batch_size,
        n_batches=len(latencies),
        backend=clf.info(),
        end_to_end_per_s=float(n / max(wall, 1e-9)),
        class_names=names,
        dataset_class_names=list(index.class_names),
        class_names_match=list(index.class_names) == names,
        skipped=[str(r.path) for r, ok in zip(records, kept) if not ok],
        precision_gate=gate.to_dict() if gate is not None else None,
    )


def gate_against_fp32(clf: Classifier) -> GateResult:
    """``clf`` (reduced precision) vs the same artifact's fp32 graph on ONNX Runtime CPU, on the gate batch."""
    reference = load(clf.root, backend="onnxruntime", device="cpu", precision="fp32")
    return precision_gate(clf, reference)
