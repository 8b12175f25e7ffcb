"""``verify``: run an artifact over a labelled dataset split and check accuracy / robustness / latency thresholds.

Numbers (``runtime.metrics.accuracy_report``): accuracy = mean over the images read of [argmax logits == label];
worst-group accuracy = min over the groups present of the group's accuracy. Every image is counted exactly once;
the last batch may be smaller.

Latency is **per model call on a batch of ``batch_size`` images** (``latency_batch_size``), in ms: the wall time of
the backend run alone, on an already decoded, preprocessed, validated batch; the first batch is run ``warmup`` extra
times untimed first. p50/p95/p99 by linear interpolation (``numpy.percentile``) over the full-size batches only (a
smaller last batch would mix another batch size into the statistic). A p-th percentile of n timed calls is an
observed tail value only when the (100 - p) % tail holds at least one call: n >= 20 for p95 (the gated one), 100 for
p99. So when the split gives fewer than ``latency_batches`` (default ``MIN_LATENCY_BATCHES`` = 20) full batches,
one full batch is run again, timed, until there are that many (``latency_extra_runs``; the model time of a ViT does
not depend on the pixel values, so a repeat measures the same call); a split smaller than one batch is timed at its
own size (the report says which). Percentiles that still rest on fewer calls than they need are listed in
``latency_warnings``. Throughput = images / summed model time of the pass (model-only); ``end_to_end_per_s`` adds
decoding and preprocessing.

A gate cannot pass by omission:

- **Groups**: verify knows the groups the split must hold (``expected_groups``, see ``resolve_groups``): the dataset's
  own (waterbirds, celeba); for a csv with a ``group`` column the names ``--groups`` gives, else the manifest's group
  names (when it names every id of the file), else ``group_N`` for every id of the file; for a csv without one, its
  classes. A group with no image (absent from the split, or every image skipped) is listed with n = 0 and makes
  ``min_worst_group`` FAIL, naming it.
- **Skipped images** (``skip_bad``): at most ``max_skipped`` (default 1 % of the split) may be left out; beyond it
  the ``max_skipped`` threshold FAILs.
- **Bias gates** (``max_gap``, ``max_flip_rate``, ``max_skew``, ``max_eo_gap``, ``max_dp_gap``): asked for on data
  that lacks what the metric needs (two class-aligned spurious attributes, counterfactual pairs, a protected
  attribute with two values in the split) they are refused in one line before the model runs; a metric left
  undefined by the images read (every pair incomplete, a (class, value) cell with no image) FAILs its gate.
- Every threshold's result records what it was computed over (``over``).

Bias metrics (``runtime.metrics.bias_metrics``, from the logits of the images read; inputs from
``runtime.metric_inputs``): the Whac-A-Mole ``shortcut_gaps``, the ``counterfactual`` flip rate, MaxSkew@k
(``skew``) and the equal-opportunity / demographic-parity gaps (``parity``), each in the report when the data allows
it, else named in ``not_computed`` with the reason.

Thresholds: ``min_accuracy`` and ``min_worst_group`` are fractions in [0, 1]; ``max_latency_ms`` applies to p95;
``max_skipped`` is a ``MaxSkipped``; ``max_gap`` maps a gap name (``bg``, ``coobj``, ``bg+coobj``) to the largest
|gap| allowed; ``max_flip_rate``, ``max_eo_gap``, ``max_dp_gap`` are fractions; ``max_skew`` bounds MaxSkew@k (a
natural log, >= 0) over every class and k.
Precision gate: a bf16 run (OpenVINO; no export writes or gates a bf16 file) is first compared with the same
artifact's fp32 graph on ONNX Runtime on the gate batch (``runtime.parity``: max logit diff, embedding cosine, argmax
agreement); the report holds the numbers (``precision_gate``) and a failed gate fails the run (exit 1).
Engines: the model runs over the split in this process (``LocalEngine``, the default) or elsewhere
(``clip_debias.serving.ray_verify.RayEngine``: a Ray Data pipeline); every engine returns ``Predictions`` and the
numbers above (the bias metrics too: ``Predictions`` carry the logits) are computed here from them by ``aggregate``,
one implementation for all; ``prepare`` does everything before the model runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from clip_debias.runtime.atomic_output import write_atomic
from clip_debias.runtime.classifier import Classifier, load
from clip_debias.runtime.datasets import DatasetIndex, load_index
from clip_debias.runtime.errors import ClipDebiasError, InputError
from clip_debias.runtime.integrity import check_digest
from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SKIPPED, MIN_LATENCY_BATCHES, MaxSkipped
from clip_debias.runtime.ownership import json_object_with, register_file_kind
from clip_debias.runtime.metric_inputs import MetricOptions, metric_inputs
from clip_debias.runtime.metrics import (GAP_CELLS, GAP_NAMES, AccuracyReport, BiasInputs, BiasMetrics,
                                         CounterfactualReport, ParityReport, ShortcutGaps, SkewReport,
                                         accuracy_report, bias_metrics)
from clip_debias.runtime.parity import GateResult, precision_gate
from clip_debias.runtime.progress import Progress

PERCENTILE_MIN_CALLS = {"p95": 20, "p99": 100}
log = logging.getLogger("clip_debias.verify")
GATED_AT_VERIFY = ("bf16",)  # precisions without an exported, export-gated file: gated against fp32 here
VERIFY_REPORT = "clip-debias verify"  # the 'report' field of the JSON report (how runtime.ownership recognises it)
register_file_kind("verify-report", "a report written by 'clip-debias verify --json'",
                   json_object_with({"accuracy", "worst_group_accuracy", "thresholds", "passed", "backend"},
                                    ("report", VERIFY_REPORT)))


@dataclass
class Thresholds:
    """Pass criteria; ``None`` = not checked. Accuracies are fractions in [0, 1]; latency is p95 per batch in ms;
    ``max_skipped`` applies with ``skip_bad`` (None there: ``DEFAULT_MAX_SKIPPED``, 1 %)."""

    min_accuracy: float | None = None
    min_worst_group: float | None = None
    max_latency_ms: float | None = None
    max_skipped: MaxSkipped | None = None
    max_gap: dict[str, float] = field(default_factory=dict)
    max_flip_rate: float | None = None
    max_skew: float | None = None
    max_eo_gap: float | None = None
    max_dp_gap: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_accuracy", "min_worst_group", "max_flip_rate", "max_eo_gap", "max_dp_gap"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise InputError(f"threshold {name} = {v} must be a fraction in [0, 1] (0.9 means 90%)")
        if self.max_latency_ms is not None and not self.max_latency_ms > 0:
            raise InputError(f"threshold max_latency_ms = {self.max_latency_ms} must be > 0")
        if self.max_skew is not None and not self.max_skew >= 0:
            raise InputError(f"threshold max_skew = {self.max_skew} must be >= 0 (MaxSkew is a log ratio, >= 0)")
        for name, v in self.max_gap.items():
            if name not in GAP_NAMES:
                raise InputError(f"threshold max_gap: unknown gap '{name}' (expected {', '.join(GAP_NAMES)})")
            if not 0.0 <= v <= 1.0:
                raise InputError(f"threshold max_gap {name} = {v} must be a fraction in [0, 1] (the largest |gap|)")

    def sections(self) -> dict[str, str]:
        """{threshold: the bias section it needs} for the bias gates that are set."""
        need = {"max_gap": "shortcut_gaps", "max_flip_rate": "counterfactual", "max_skew": "skew",
                "max_eo_gap": "parity", "max_dp_gap": "parity"}
        return {name: section for name, section in need.items() if getattr(self, name) not in (None, {})}


@dataclass
class ThresholdResult:
    """One checked threshold: the limit, the measured value (None: nothing to measure), the verdict, what the value
    was computed over, and why it failed when the value alone does not say."""

    threshold: float
    value: float | None
    passed: bool
    over: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


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
    parity: ParityReport | None = None
    not_computed: dict[str, str] = field(default_factory=dict)  # bias section -> why the data does not give it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def write_json(self, path: str | Path, force: bool = False) -> Path:
        """Write the JSON report (temp file + rename; an existing file is replaced only when it is a verify report,
        or with ``force``: ``runtime.atomic_output``)."""
        write_atomic(path, self.to_json() + "\n", "verify-report", force)
        return Path(path)


def resolve_groups(index: DatasetIndex, manifest_groups: list[str], groups: list[str] | None
                   ) -> tuple[list[str], str]:
    """(names of group ids 0..G-1, where they come from): every one of them is expected in the split (see the module
    docstring). ``groups``: the ``--groups`` names, for a csv dataset with a ``group`` column only."""
    where = f"{index.root} ({index.dataset})"
    if index.group_source == "dataset":
        if groups:
            raise InputError(f"--groups: the {index.dataset} dataset defines its groups "
                             f"({', '.join(index.group_names)}); --groups names the ids of a csv 'group' column")
        return list(index.group_names), "dataset"
    if index.group_source == "labels":
        if groups:
            raise InputError(f"--groups: {where} has no 'group' column, so its groups are its classes "
                             f"({', '.join(index.class_names)}); add a 'group' column to name others")
        return list(index.class_names), "classes"
    ids = len(index.group_names)  # over the whole file
    if groups:
        if len(groups) < ids or len(set(groups)) != len(groups):
            raise InputError(f"--groups {','.join(groups)}: expected {ids} or more distinct names, one per group id "
                             f"0..{ids - 1} of {where}")
        return list(groups), "--groups"
    if manifest_groups and len(manifest_groups) >= ids:
        return list(manifest_groups), "manifest"
    return list(index.group_names), "csv group ids"


def check_thresholds(t: Thresholds, acc: AccuracyReport, p95_ms: float, over: dict[str, dict[str, Any]],
                     skipped: int = 0, n_split: int = 0, skip_bad: bool = False) -> dict[str, ThresholdResult]:
    """The thresholds that are set, each with its measured value, verdict (>= for accuracies, <= for latency and
    skipped images) and ``over`` (what it was computed over). ``min_worst_group`` also fails when an expected group
    has no image; ``max_skipped`` is checked with ``skip_bad`` only."""
    out: dict[str, ThresholdResult] = {}
    if t.min_accuracy is not None:
        out["min_accuracy"] = ThresholdResult(t.min_accuracy, acc.accuracy, acc.accuracy >= t.min_accuracy,
                                              over["accuracy"])
    if t.min_worst_group is not None:
        v = acc.worst_group_accuracy
        reason = (f"group(s) {', '.join(acc.missing)} have no image (absent from the split, or every image of them "
                  "skipped)" if acc.missing else "")
        out["min_worst_group"] = ThresholdResult(t.min_worst_group, v, v >= t.min_worst_group and not acc.missing,
                                                 over["worst_group"], reason)
    if t.max_latency_ms is not None:
        out["max_latency_ms"] = ThresholdResult(t.max_latency_ms, p95_ms, p95_ms <= t.max_latency_ms,
                                                over["latency"])
    if skip_bad:
        m = t.max_skipped or DEFAULT_MAX_SKIPPED
        limit = m.limit(n_split)
        out["max_skipped"] = ThresholdResult(
            float(limit), float(skipped), skipped <= limit,
            {"images_in_split": n_split, "max_skipped": m.to_dict(), "limit_images": limit},
            f"{skipped} of {n_split} images unreadable, over --max-skipped {m.describe()}" if skipped > limit else "")
    return out


def require_gate_data(t: Thresholds, inputs: BiasInputs, index: DatasetIndex) -> None:
    """Refuse (one ``InputError`` line) a bias gate the data cannot feed: the section it needs is missing from
    ``inputs``, or (``max_skew``) the protected attribute has under two values in the split."""
    for name, section in t.sections().items():
        if section in inputs.missing:
            raise InputError(f"threshold {name} (--{name.replace('_', '-')}): {inputs.missing[section]}")
        if section == "skew" and inputs.protected is not None and np.unique(inputs.protected.ids).size < 2:
            raise InputError(f"threshold {name} (--max-skew): the protected attribute '{inputs.protected.name}' has "
                             f"{np.unique(inputs.protected.ids).size} value in split '{index.split}' of "
                             f"{index.root} (a skew compares at least two)")


def _undefined(section: str, bias: BiasMetrics) -> str:
    return bias.not_computed.get(section, f"{section} was not computed")


def check_bias_thresholds(t: Thresholds, bias: BiasMetrics) -> dict[str, ThresholdResult]:
    """The bias gates that are set, each with its value, verdict and ``over``; a value the images read leave
    undefined (None) FAILs with the reason."""
    out: dict[str, ThresholdResult] = {}
    g = bias.shortcut_gaps
    for name, limit in t.max_gap.items():
        key = f"max_gap_{name}"
        if g is None:
            out[key] = ThresholdResult(limit, None, False, {}, _undefined("shortcut_gaps", bias))
            continue
        value = g.gaps[name]
        over = {"statistic": f"|acc({GAP_CELLS[name]}) - I.D. accuracy| (background/object agreement)",
                "attributes": g.attributes, "p_agree": g.p_agree, "p_agree_from": g.p_agree_from,
                "groups": {k: v.n for k, v in g.groups.items()}, "missing": g.missing}
        reason = (f"group(s) {', '.join(g.missing)} have no image" if value is None else
                  f"|{value:.4f}| > {limit}" if abs(value) > limit else "")
        out[key] = ThresholdResult(limit, value, value is not None and abs(value) <= limit, over, reason)
    c = bias.counterfactual
    if t.max_flip_rate is not None:
        limit = t.max_flip_rate
        if c is None:
            out["max_flip_rate"] = ThresholdResult(limit, None, False, {}, _undefined("counterfactual", bias))
        else:
            over = {"statistic": "fraction of pairs whose predicted labels differ", "pairs": c.pairs,
                    "pairs_in_split": c.pairs_in_split, "excluded": c.excluded, "protected": c.protected}
            reason = ("no complete pair" + (f" differing in '{c.protected}'" if c.protected else "") + " was read"
                      if c.flip_rate is None else "")
            out["max_flip_rate"] = ThresholdResult(limit, c.flip_rate, c.flip_rate is not None and
                                                   c.flip_rate <= limit, over, reason)
    s = bias.skew
    if t.max_skew is not None:
        if s is None:
            out["max_skew"] = ThresholdResult(t.max_skew, None, False, {}, _undefined("skew", bias))
        else:
            worst = max(s.at_k, key=lambda a: a.max_max_skew)
            over = {"statistic": "max over classes and k of MaxSkew@k", "attribute": s.attribute,
                    "values": s.values, "k": [a.k for a in s.at_k], "images": s.n,
                    "worst": {"class": worst.max_class, "k": worst.k,
                              "value": worst.classes[worst.max_class].max_value}}
            out["max_skew"] = ThresholdResult(t.max_skew, worst.max_max_skew, worst.max_max_skew <= t.max_skew,
                                              over)
    p = bias.parity
    for name, label in (("max_eo_gap", "eo"), ("max_dp_gap", "dp")):
        limit = getattr(t, name)
        if limit is None:
            continue
        if p is None:
            out[name] = ThresholdResult(limit, None, False, {}, _undefined("parity", bias))
            continue
        value, where = getattr(p, f"max_{label}_gap"), getattr(p, f"max_{label}_class")
        if label == "eo":
            statistic, empty = "max over classes of max_a recall - min_a recall", p.missing
        else:
            statistic = "max over classes of max_a P(pred = c | A = a) - min_a P(pred = c | A = a)"
            empty = [v for v in p.values if all(cp.positive_rate[v] is None for cp in p.classes.values())]
        over = {"statistic": statistic, "attribute": p.attribute, "values": p.values, "classes": len(p.classes),
                "worst_class": where, "missing": empty}
        reason = (f"{'cell(s)' if label == 'eo' else 'value(s)'} {', '.join(empty[:6])} have no image" if empty
                  else "no class has images of two values" if value is None else "")
        out[name] = ThresholdResult(limit, value, value is not None and value <= limit and not empty, over, reason)
    return out


@dataclass
class Predictions:
    """What an engine returns for the split's records (dataset order): ``logits`` [n, C] float32 (undefined where not
    ``kept``), ``kept`` [n] bool (False: unreadable and left out, ``skip_bad``), the model time of each call in ms
    (every engine times the backend call alone, after its warm-up) with the images of that call (``call_images``,
    same length), and the wall time. ``time_again``: times one more call on a batch of the largest size and returns
    its ms (``latency_batches``' top-up); None where the engine cannot (the calls ran elsewhere)."""

    logits: np.ndarray
    kept: np.ndarray
    latencies_ms: list[float]
    wall_s: float
    call_images: list[int]
    time_again: Callable[[], float] | None = None

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

    def info(self) -> dict[str, Any]: ...

    def precision_gate(self) -> GateResult | None: ...

    def predict(self, records: list[Any], batch_size: int, skip_bad: bool, what: str) -> Predictions: ...


class LocalEngine:
    """This process: ``workers`` threads decode/preprocess a batch, then the backend runs it (timed alone)."""

    def __init__(self, clf: Classifier, warmup: int = 2, workers: int | None = None, progress: bool = True,
                 console: Any = None) -> None:
        self.clf, self.warmup, self.progress, self.console = clf, warmup, progress, console
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.root, self.class_names, self.group_names = clf.root, clf.class_names, clf.group_names
        self.digest = clf.digest

    def info(self) -> dict[str, Any]:
        return self.clf.info()

    def precision_gate(self) -> GateResult | None:
        return gate_against_fp32(self.clf) if self.clf.backend.precision in GATED_AT_VERIFY else None

    def predict(self, records: list[Any], batch_size: int, skip_bad: bool, what: str) -> Predictions:
        clf, warmup, workers = self.clf, self.warmup, self.workers
        out = np.zeros((len(records), len(self.class_names)), dtype=np.float32)
        kept = np.ones(len(records), dtype=bool)  # False: unreadable and left out (skip_bad)

        def decode(r: Any) -> np.ndarray | None:
            try:
                return clf.preprocess(r.path)
            except InputError:
                if not skip_bad:
                    raise
                return None

        latencies: list[float] = []
        images: list[int] = []
        largest: list[np.ndarray] = []  # the first largest batch, to time again (Predictions.time_again)
        warm = False
        t_start = time.perf_counter()
        batches = [records[i : i + batch_size] for i in range(0, len(records), batch_size)]

        bar = Progress(f"verify {what}", len(records), len(batches), enabled=self.progress, console=self.console)
        with ThreadPoolExecutor(max_workers=workers) as pool, bar:
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
                    logits, emb = clf.backend.run(x)
                    latencies.append((time.perf_counter() - t0) * 1000.0)
                    images.append(len(x))
                    if not largest or len(x) > len(largest[0]):
                        largest[:] = [x]
                    check_finite(clf, logits, emb, [r.path for r, a in zip(chunk, arrays) if a is not None])
                    out[done : done + len(chunk)][ok] = np.asarray(logits, dtype=np.float32)
                done += len(chunk)
                bar.advance(len(chunk))
        wall = time.perf_counter() - t_start

        def time_again() -> float:
            t0 = time.perf_counter()
            clf.backend.run(largest[0])
            return (time.perf_counter() - t0) * 1000.0

        return Predictions(out, kept, latencies, wall, images, time_again if largest else None)


@dataclass
class VerifyJob:
    """What verify knows before the model runs: the split's index and labels, the groups it must hold, the bias
    metrics' inputs, the thresholds and how the run is batched."""

    artifact: str
    dataset: str
    data: str
    split: str
    index: DatasetIndex
    class_names: list[str]  # the artifact's
    labels: np.ndarray
    group_ids: np.ndarray
    group_names: list[str]
    groups_from: str
    inputs: BiasInputs
    thresholds: Thresholds
    batch_size: int
    skip_bad: bool
    warmup: int
    latency_batches: int = MIN_LATENCY_BATCHES


def prepare(artifact: str | Path, class_names: list[str], manifest_groups: list[str], dataset: str,
            data: str | Path, split: str = "test", thresholds: Thresholds | None = None, *, batch_size: int = 32,
            skip_bad: bool = False, warmup: int = 2, groups: list[str] | None = None,
            allow_outside_root: bool = False, target: str | None = None, protected: str | None = None,
            metric_options: MetricOptions | None = None, latency_batches: int = MIN_LATENCY_BATCHES) -> VerifyJob:
    """Index the split, check it against the artifact's classes, resolve its groups and the bias inputs, and refuse
    (one line) a bias gate the data cannot feed -- all before the model runs. Arguments: see ``verify``."""
    if batch_size <= 0:
        raise InputError(f"batch size must be positive, got {batch_size}")
    if latency_batches < 0:
        raise InputError(f"latency batches must be >= 0, got {latency_batches}")
    thresholds = thresholds or Thresholds()
    index = load_index(dataset, Path(data), split, classes=class_names if dataset == "csv" else None,
                       allow_outside_root=allow_outside_root, target=target, protected=protected)
    if len(index.class_names) != len(class_names):
        raise ClipDebiasError(
            f"{data}: the {dataset} dataset has {len(index.class_names)} classes {index.class_names}, "
            f"the artifact {len(class_names)} {class_names}"
        )
    group_names, groups_from = resolve_groups(index, manifest_groups, groups)
    labels = np.array([r.label for r in index.records], dtype=np.int64)
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise ClipDebiasError(f"{data}: labels outside 0..{len(class_names) - 1}")
    inputs = metric_inputs(index, metric_options)
    inputs.class_names = list(class_names)
    require_gate_data(thresholds, inputs, index)
    return VerifyJob(str(artifact), dataset, str(data), split, index, list(class_names), labels,
                     np.array([r.group for r in index.records], dtype=np.int64), group_names, groups_from, inputs,
                     thresholds, batch_size, skip_bad, warmup, latency_batches)


def aggregate(job: VerifyJob, run: Predictions, backend_info: dict[str, Any], *, digest: str | None = None,
              gate: GateResult | None = None) -> VerifyReport:
    """The report of ``run`` (any engine's ``Predictions`` for ``job``'s records): accuracy, groups, latency, the
    bias metrics and every threshold (module docstring). ``backend_info``: what ran the model
    (``Classifier.info()``); ``gate``: the precision gate's result, when one ran."""
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
    bias = bias_metrics(logits, labels, job.inputs.rows(kept), pairs_in_split)
    timing = time_calls(run, job.latency_batches)
    lat = timing.ms
    p50, p95, p99 = (float(v) for v in np.percentile(lat, [50, 95, 99]))
    over = {
        "accuracy": {"images": n, "images_in_split": len(records), "skipped": len(skipped),
                     "statistic": "mean over the images read of [argmax logits == label]"},
        "worst_group": {"groups": {k: g.n for k, g in acc.groups.items()}, "expected_groups": job.group_names,
                        "groups_from": job.groups_from, "missing": acc.missing,
                        "statistic": "min over the groups with images of the group's accuracy"},
        "latency": {"statistic": "p95 of the model time per call", "unit": timing.unit, "batches": len(lat),
                    "batch_size": timing.batch_size, "extra_runs": timing.extra_runs, "warmup_runs": job.warmup,
                    "backend": backend_info.get("backend"), "device": backend_info.get("device"),
                    "precision": backend_info.get("precision")},
    }
    checks = check_thresholds(t, acc, p95, over, len(skipped), len(records), job.skip_bad)
    checks.update(check_bias_thresholds(t, bias))
    passed = all(c.passed for c in checks.values()) and (gate is None or gate.passed)
    index = job.index
    return VerifyReport(
        accuracy=acc.accuracy,
        worst_group_accuracy=acc.worst_group_accuracy,
        worst_group=acc.worst_group,
        groups={k: {"n": g.n, "accuracy": g.accuracy} for k, g in acc.groups.items()},
        latency_ms={"p50": p50, "p95": p95, "p99": p99, "mean": float(lat.mean())},
        throughput_per_s=float(n / max(sum(run.latencies_ms) / 1000.0, 1e-9)),
        thresholds=checks,
        passed=passed,
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
        expected_groups=job.group_names,
        groups_from=job.groups_from,
        missing_groups=acc.missing,
        artifact_digest=digest,
        latency_unit=timing.unit,
        latency_batch_size=timing.batch_size,
        latency_batches=len(lat),
        latency_extra_runs=timing.extra_runs,
        latency_warnings=timing.warnings(),
        protected=index.protected,
        **bias.sections(),  # type: ignore[arg-type]
    )


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
    groups: list[str] | None = None,
    expected_digest: str | None = None,
    allow_outside_root: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    engine: Engine | None = None,
    target: str | None = None,
    protected: str | None = None,
    metric_options: MetricOptions | None = None,
    latency_batches: int = MIN_LATENCY_BATCHES,
) -> VerifyReport:
    """Load the artifact (or use ``classifier``), index ``split`` of ``dataset`` at ``data``, classify every image
    in batches of ``batch_size`` and build the report (``prepare`` -> ``engine.predict`` -> ``aggregate``).
    ``workers`` threads decode/preprocess images (default min(4, cpus)); decoding never overlaps a timed model call.
    ``cuda_graph``, ``expected_digest``, ``max_pixels``: see ``runtime.load``. ``skip_bad``: an unreadable image is
    left out and listed in ``skipped`` (its batch runs smaller) instead of stopping, up to
    ``thresholds.max_skipped``. ``groups``: names of a csv's group ids (see ``resolve_groups``).
    ``allow_outside_root``, ``target`` (fairface), ``protected``: see ``runtime.datasets.load_index``.
    ``metric_options``: the bias metrics' options (``runtime.metric_inputs``). ``engine``: where the model runs
    (default: ``LocalEngine`` on ``classifier`` or the loaded artifact; the loading, ``warmup``, ``workers`` and
    ``progress`` arguments are then the engine's, ``expected_digest`` is checked against ``engine.digest``).
    ``latency_batches``: the least number of timed full-batch calls (module docstring; 0: only the split's own
    batches; an engine that cannot time a call again, ``Predictions.time_again`` None, keeps its own)."""
    if batch_size <= 0:
        raise InputError(f"batch size must be positive, got {batch_size}")
    loaded_here = engine is None and classifier is None  # then load() checked expected_digest itself
    if engine is None:
        clf = classifier or load(artifact, backend=backend, device=device, precision=precision,
                                 cuda_graph=cuda_graph, expected_digest=expected_digest, max_image_pixels=max_pixels)
        engine = LocalEngine(clf, warmup=warmup, workers=workers, progress=progress, console=console)
    if expected_digest is not None and not loaded_here:
        check_digest(engine.root, engine.digest or "not computed (loaded with check_sha256=False)", expected_digest)
    gate = engine.precision_gate()
    job = prepare(engine.root, engine.class_names, engine.group_names, dataset, data, split, thresholds,
                  batch_size=batch_size, skip_bad=skip_bad, warmup=warmup, groups=groups,
                  allow_outside_root=allow_outside_root, target=target, protected=protected,
                  metric_options=metric_options, latency_batches=latency_batches)
    b = engine.info()
    log.info("verify %s: %d images of %s/%s on %s %s %s (%s), batches of %d", engine.root, len(job.index.records),
             dataset, split, b.get("backend"), b.get("device"), b.get("precision"), b.get("file"), batch_size)
    run = engine.predict(job.index.records, batch_size, skip_bad, f"{dataset}/{split}")
    return aggregate(job, run, engine.info(), digest=engine.digest, gate=gate)


@dataclass
class Timing:
    """The model calls the latency percentiles rest on: ``ms`` of calls on batches of ``batch_size`` images, of which
    ``extra_runs`` repeat one batch after the pass."""

    ms: np.ndarray
    batch_size: int
    extra_runs: int

    @property
    def unit(self) -> str:
        return f"ms per model call on a batch of {self.batch_size} image{'s' if self.batch_size != 1 else ''}"

    def warnings(self) -> list[str]:
        """One line per percentile that rests on fewer calls than it needs (``PERCENTILE_MIN_CALLS``)."""
        n = len(self.ms)
        return [f"{p} rests on {n} timed call{'s' if n != 1 else ''} of batch {self.batch_size}; it is an observed "
                f"tail value only from {need} calls on (an interpolation between the slowest ones below that)"
                for p, need in PERCENTILE_MIN_CALLS.items() if n < need]


def time_calls(run: Predictions, at_least: int) -> Timing:
    """The pass's calls on its largest batch size (``batch_size`` unless the split is smaller), topped up to
    ``at_least`` calls with ``run.time_again`` where the engine can (module docstring)."""
    size = max(run.call_images)
    ms = [t for images, t in zip(run.call_images, run.latencies_ms) if images == size]
    extra = max(0, at_least - len(ms)) if run.time_again is not None else 0
    if extra:
        mean_s = float(np.mean(ms)) / 1e3 if ms else 0.0
        log.info("latency: timing %d more calls on a batch of %d images (at least %d timed calls for p95; about %.0f s;"
                 " --latency-batches 0 keeps the split's own %d)", extra, size, at_least, extra * mean_s, len(ms))
    ms += [run.time_again() for _ in range(extra)]
    return Timing(np.asarray(ms), size, extra)


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
