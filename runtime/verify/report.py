"""verify's report: ``VerifyReport`` (its ``to_dict`` is the JSON report) and ``aggregate``, which computes every
number of it from any engine's ``Predictions`` -- one implementation for all engines.

Numbers (``runtime.metrics``): accuracy = mean over the images read of [argmax logits == label]; worst-group
accuracy = min over the groups present of the group's accuracy; the metric sections each family's module defines;
latency (``runtime.verify.timing``). Every image is counted exactly once; the last batch may be smaller. Every
threshold's result records what it was computed over (``over``), its interval and n where it is interval-based, and
its decision; the run's ``decision`` is FAIL when a gate FAILs, INCONCLUSIVE when one is (unless
``allow_inconclusive``), else PASS, and ``passed`` is ``decision == PASS``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clip_debias.runtime.atomic_output import write_atomic
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.metrics.bias import SECTIONS, bias_metrics
from clip_debias.runtime.metrics.counterfactual import CounterfactualReport
from clip_debias.runtime.metrics.evidence import Decision
from clip_debias.runtime.metrics.fairness_gaps import FairnessGaps
from clip_debias.runtime.metrics.accuracy import accuracy_report
from clip_debias.runtime.ownership import json_object_with, register_file_kind
from clip_debias.runtime.metrics.shortcut_gaps import ShortcutGaps
from clip_debias.runtime.metrics.skew import SkewReport
from clip_debias.runtime.metrics.spec import GateContext, ThresholdResult
from clip_debias.runtime.precision_gate import GateResult
from clip_debias.runtime.verify.engine import Predictions
from clip_debias.runtime.verify.gates import judge, overall
from clip_debias.runtime.verify.timing import time_calls

VERIFY_REPORT = "clip-debias verify"  # the 'report' field of the JSON report (how runtime.ownership recognises it)
register_file_kind("verify-report", "a report written by 'clip-debias verify --json'",
                   json_object_with({"accuracy", "worst_group_accuracy", "thresholds", "passed", "backend"},
                                    ("report", VERIFY_REPORT)))


@dataclass
class VerifyReport:
    """The result of ``verify``; ``to_dict`` is the JSON report."""

    accuracy: float
    worst_group_accuracy: float
    worst_group: str
    groups: dict[str, dict[str, float | int | None]]  # name -> {n, accuracy}; an expected group with no image: n 0
    latency_ms: dict[str, float]  # p50, p95, p99, mean: ms per model call on a batch of latency_batch_size images
    throughput_per_s: float
    thresholds: dict[str, ThresholdResult]
    passed: bool
    artifact: str = ""
    dataset: str = ""
    data: str = ""
    split: str = ""
    n: int = 0  # images read and counted
    batch_size: int = 0
    n_batches: int = 0
    backend: dict[str, Any] = field(default_factory=dict)
    end_to_end_per_s: float = 0.0
    class_names: list[str] = field(default_factory=list)
    dataset_class_names: list[str] = field(default_factory=list)
    class_names_match: bool = True
    skipped: list[str] = field(default_factory=list)  # unreadable images left out (skip_bad), not counted in n
    precision_gate: dict[str, Any] | None = None  # GateResult vs the artifact's fp32 graph (GATED_AT_VERIFY)
    n_split: int = 0  # images the split lists (n + skipped)
    duplicates_dropped: int = 0  # rows naming a file already listed, dropped under --allow-duplicates
    expected_groups: list[str] = field(default_factory=list)
    groups_from: str = ""  # dataset | --groups | manifest | csv group ids | classes
    missing_groups: list[str] = field(default_factory=list)  # expected groups with no image counted
    artifact_digest: str | None = None
    latency_unit: str = ""  # e.g. "ms per model call on a batch of 32 images"
    latency_batch_size: int = 0  # images per timed call (batch_size, or the split's size when smaller)
    latency_batches: int = 0  # timed calls the percentiles rest on
    latency_extra_runs: int = 0  # of them, repeats of one batch to reach latency_batches
    latency_warnings: list[str] = field(default_factory=list)  # percentiles on fewer calls than they need
    report: str = VERIFY_REPORT
    protected: str | None = None  # the attribute skew, parity and the counterfactual pairs are about
    shortcut_gaps: ShortcutGaps | None = None  # runtime.metrics (the module docstring says how each is computed)
    counterfactual: CounterfactualReport | None = None
    skew: SkewReport | None = None
    parity: FairnessGaps | None = None  # equal opportunity / demographic parity gaps
    not_computed: dict[str, str] = field(default_factory=dict)  # bias section -> why the data does not give it
    metrics: dict[str, Any] = field(default_factory=dict)  # sections of metric families beyond those four
    decision: str = ""  # PASS | FAIL | INCONCLUSIVE (runtime.metrics.evidence)
    confidence: float = 0.0  # of the gates' intervals
    min_group_size: int = 0
    allow_inconclusive: bool = False
    transductive: bool = False  # built under --protocol reference: ablation means from the test split itself
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def write_json(self, path: str | Path, force: bool = False) -> Path:
        """Write the JSON report (temp file + rename; an existing file is replaced only when it is a verify report,
        or with ``force``: ``runtime.atomic_output``)."""
        write_atomic(path, self.to_json() + "\n", "verify-report", force)
        return Path(path)



def aggregate(job: Any, run: Predictions, backend_info: dict[str, Any], *, digest: str | None = None,
              gate: GateResult | None = None) -> VerifyReport:
    """The report of ``run`` (any engine's ``Predictions`` for ``job``'s records, a ``runtime.verify.run.VerifyJob``):
    accuracy, groups, latency, the metric sections and every threshold (module docstring). ``backend_info``: what
    ran the model (``Classifier.info()``); ``gate``: the precision gate's result, when one ran."""
    records, kept, t = job.index.records, run.kept, job.thresholds
    if not kept.any():
        raise ClipDebiasError(f"{job.data}: none of the {len(records)} images of split '{job.split}' could be read")
    n = int(kept.sum())
    skipped = [str(r.path) for r, ok in zip(records, kept) if not ok]
    logits, labels = run.logits[kept], job.labels[kept]
    acc = accuracy_report(logits.argmax(axis=1), labels, job.group_ids[kept], job.group_names,
                          expected=job.group_names)
    pairs_in_split = (len(np.unique(job.inputs.pairs[job.inputs.pairs >= 0]))
                      if job.inputs.pairs is not None else 0)
    bias = bias_metrics(logits, labels, job.inputs.rows(kept), pairs_in_split,
                        None if run.embeddings is None else run.embeddings[kept])
    timing = time_calls(run, job.latency_batches)
    lat = timing.percentiles()
    latency_over = {"statistic": "p95 of the model time per call", "unit": timing.unit, "batches": len(timing.ms),
                    "batch_size": timing.batch_size, "extra_runs": timing.extra_runs, "warmup_runs": job.warmup,
                    "backend": backend_info.get("backend"), "device": backend_info.get("device"),
                    "precision": backend_info.get("precision")}
    context = GateContext(job.evidence, {"images_in_split": len(records), "skipped": len(skipped),
                                         "groups_from": job.groups_from, "expected_groups": job.group_names})
    sections = {"accuracy": acc, **{name: getattr(bias, name) for name in SECTIONS}, **bias.metrics}
    checks: dict[str, ThresholdResult] = judge(t, sections, bias.not_computed, context, p95_ms=lat["p95"],
                                               latency_over=latency_over, skipped=len(skipped),
                                               n_split=len(records), skip_bad=job.skip_bad)
    decision = overall(checks, job.allow_inconclusive)
    if gate is not None and not gate.passed:
        decision = Decision.FAIL
    index = job.index
    return VerifyReport(
        accuracy=acc.accuracy,
        worst_group_accuracy=acc.worst_group_accuracy,
        worst_group=acc.worst_group,
        groups={k: {"n": g.n, "accuracy": g.accuracy} for k, g in acc.groups.items()},
        latency_ms=lat,
        throughput_per_s=float(n / max(sum(run.latencies_ms) / 1000.0, 1e-9)),
        thresholds=checks,
        passed=decision is Decision.PASS,
        artifact=job.artifact,
        dataset=job.dataset,
        data=job.data,
        split=job.split,
        n=n,
        batch_size=job.batch_size,
        n_batches=len(run.latencies_ms),
        backend=backend_info,
        end_to_end_per_s=float(n / max(run.wall_s, 1e-9)),
        class_names=job.class_names,
        dataset_class_names=list(index.class_names),
        class_names_match=list(index.class_names) == job.class_names,
        skipped=skipped,
        precision_gate=gate.to_dict() if gate is not None else None,
        n_split=len(records),
        duplicates_dropped=int(getattr(index, "duplicates_dropped", 0)),
        expected_groups=job.group_names,
        groups_from=job.groups_from,
        missing_groups=acc.missing,
        artifact_digest=digest,
        latency_unit=timing.unit,
        latency_batch_size=timing.batch_size,
        latency_batches=len(timing.ms),
        latency_extra_runs=timing.extra_runs,
        latency_warnings=timing.warnings(),
        protected=index.protected,
        decision=decision.value,
        confidence=job.evidence.confidence,
        min_group_size=job.evidence.min_group_size,
        allow_inconclusive=job.allow_inconclusive,
        transductive=job.transductive,
        warnings=list(job.warnings),
        **bias.sections(),  # type: ignore[arg-type]
    )
