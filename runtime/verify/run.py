"""``verify``: run an artifact over a labelled dataset split and judge its gates (``prepare`` -> ``Engine.predict``
-> ``aggregate``), with its options as dataclasses (``VerifyOptions``: ``LoadOptions``, ``RunOptions``,
``DataOptions``, ``GateOptions``).

A gate cannot pass by omission:

- **Groups**: verify knows the groups the split must hold (``expected_groups``, see ``resolve_groups``): the dataset's
  own (waterbirds, celeba); for a csv with a ``group`` column the names ``--groups`` gives, else the manifest's group
  names (when it names every id of the file), else ``group_N`` for every id of the file; for a csv without one, its
  classes. A group with no image (absent from the split, or every image skipped) is listed with n = 0 and makes
  ``min_worst_group`` FAIL, naming it.
- **Skipped images** (``skip_bad``): at most ``max_skipped`` (default 1 % of the split) may be left out; beyond it
  the ``max_skipped`` threshold FAILs.
- **Bias gates** (``max_gap``, ``max_flip_rate``, ``max_skew``, ``max_retrieval_skew``, ``max_eo_gap``,
  ``max_dp_gap``): asked for on data that lacks what the metric needs (two class-aligned spurious attributes,
  counterfactual pairs, a protected attribute with two values in the split; text queries and an artifact with its
  text tower) they are refused in one line before the model runs; a metric left
  undefined by the images read (every pair incomplete, a (class, value) cell with no image) FAILs its gate.
- **Evidence**: an accuracy-type gate passes only when its whole confidence interval is on the passing side, and a
  group under ``min_group_size`` images makes every gate reading it INCONCLUSIVE, which fails the run unless
  ``allow_inconclusive`` (``runtime.metrics.evidence``).

Precision gate: a bf16 run (OpenVINO; no export writes or gates a bf16 file) is first compared with the same
artifact's fp32 graph on ONNX Runtime on the gate batch (``runtime.precision_gate``: max logit diff, embedding
cosine, argmax agreement); the report holds the numbers (``precision_gate``) and a failed gate fails the run.
A model built under the reference (transductive) protocol is named in a warning and ``transductive: true``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clip_debias.runtime.classifier import Classifier, load
from clip_debias.runtime.datasets import DatasetIndex, load_index
from clip_debias.runtime.errors import ClipDebiasError, InputError
from clip_debias.runtime.integrity import check_digest
from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS, MIN_LATENCY_BATCHES, IndexChecks
from clip_debias.runtime.manifest import TRANSDUCTIVE_WARNING
from clip_debias.runtime.metric_inputs import MetricOptions, metric_inputs
from clip_debias.runtime.metrics.evidence import Evidence
from clip_debias.runtime.metrics.inputs import BiasInputs
from clip_debias.runtime.verify.engine import Engine, LocalEngine
from clip_debias.runtime.verify.gates import Thresholds, require_gate_data
from clip_debias.runtime.verify.report import VerifyReport, aggregate

log = logging.getLogger("clip_debias.verify")


@dataclass(frozen=True)
class LoadOptions:
    """How the artifact is loaded (``runtime.load``)."""

    backend: str = "auto"
    device: str = "cpu"
    precision: str = "fp32"
    cuda_graph: bool = False
    expected_digest: str | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class RunOptions:
    """How the pass runs: batches, warm-up runs, decoding threads (default min(4, cpus)), progress lines (on
    ``console``), ``skip_bad`` (an unreadable image is left out and listed instead of stopping), the least number of
    timed full-batch calls (``runtime.verify.timing``)."""

    batch_size: int = 32
    warmup: int = 2
    workers: int | None = None
    progress: bool = True
    console: Any = None
    skip_bad: bool = False
    latency_batches: int = MIN_LATENCY_BATCHES


@dataclass(frozen=True)
class DataOptions:
    """How the split is read: ``groups`` (names of a csv's group ids, ``resolve_groups``), ``allow_outside_root``,
    ``target`` (fairface), ``protected`` (``runtime.datasets.load_index``), the metrics' options, ``index_checks``
    (the row limit and duplicate rule of ``load_index``: ``runtime.limits.IndexChecks``), ``queries`` (the text
    queries of the retrieval skew: ``runtime.retrieval_skew.read_queries``'s file or shipped list)."""

    groups: list[str] | None = None
    allow_outside_root: bool = False
    target: str | None = None
    protected: str | None = None
    metric_options: MetricOptions | None = None
    index_checks: IndexChecks | None = None
    queries: str | None = None


@dataclass(frozen=True)
class GateOptions:
    """What is judged and how: the thresholds, the evidence settings, and whether INCONCLUSIVE fails the run."""

    thresholds: Any = None  # Thresholds (None: none set)
    evidence: Evidence = field(default_factory=Evidence)
    allow_inconclusive: bool = False


@dataclass(frozen=True)
class VerifyOptions:
    load: LoadOptions = field(default_factory=LoadOptions)
    run: RunOptions = field(default_factory=RunOptions)
    data: DataOptions = field(default_factory=DataOptions)
    gates: GateOptions = field(default_factory=GateOptions)

    @classmethod
    def of(cls, **values: Any) -> "VerifyOptions":
        """The options from flat field names (``batch_size=8, thresholds=...``); an unknown name: TypeError."""
        parts = {"load": LoadOptions, "run": RunOptions, "data": DataOptions, "gates": GateOptions}
        chosen: dict[str, dict[str, Any]] = {p: {} for p in parts}
        for name, value in values.items():
            part = next((p for p, kind in parts.items() if name in {f.name for f in dataclasses.fields(kind)}), None)
            if part is None:
                raise TypeError(f"verify: unknown option {name!r}")
            chosen[part][name] = value
        return cls(**{p: parts[p](**v) for p, v in chosen.items()})  # type: ignore[arg-type]


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


@dataclass
class VerifyJob:
    """What verify knows before the model runs: the split's index and labels, the groups it must hold, the metrics'
    inputs, the gates and how the run is batched."""

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
    thresholds: Any
    batch_size: int
    skip_bad: bool
    warmup: int
    latency_batches: int = MIN_LATENCY_BATCHES
    evidence: Evidence = field(default_factory=Evidence)
    allow_inconclusive: bool = False
    transductive: bool = False
    warnings: list[str] = field(default_factory=list)


def prepare(artifact: str | Path, class_names: list[str], manifest_groups: list[str], dataset: str,
            data: str | Path, split: str = "test", options: VerifyOptions | None = None) -> VerifyJob:
    """Index the split, check it against the artifact's classes, resolve its groups and the metric inputs, and refuse
    (one line) a gate the data cannot feed -- all before the model runs."""
    o = options or VerifyOptions()
    if o.run.batch_size <= 0:
        raise InputError(f"batch size must be positive, got {o.run.batch_size}")
    if o.run.latency_batches < 0:
        raise InputError(f"latency batches must be >= 0, got {o.run.latency_batches}")
    thresholds = o.gates.thresholds or Thresholds()
    index = load_index(dataset, Path(data), split, classes=class_names if dataset == "csv" else None,
                       allow_outside_root=o.data.allow_outside_root, target=o.data.target,
                       protected=o.data.protected, checks=o.data.index_checks)
    if len(index.class_names) != len(class_names):
        raise ClipDebiasError(
            f"{data}: the {dataset} dataset has {len(index.class_names)} classes {index.class_names}, "
            f"the artifact {len(class_names)} {class_names}"
        )
    group_names, groups_from = resolve_groups(index, manifest_groups, o.data.groups)
    labels = np.array([r.label for r in index.records], dtype=np.int64)
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise ClipDebiasError(f"{data}: labels outside 0..{len(class_names) - 1}")
    inputs = metric_inputs(index, o.data.metric_options)
    inputs.class_names = list(class_names)
    if o.data.queries is not None:
        from clip_debias.runtime.metrics.retrieval_skew import RetrievalQueries
        from clip_debias.runtime.retrieval_skew import read_queries

        texts, desired = read_queries(o.data.queries)
        inputs.queries = RetrievalQueries(texts, str(o.data.queries), desired)
    require_gate_data(thresholds, inputs, index)
    return VerifyJob(str(artifact), dataset, str(data), split, index, list(class_names), labels,
                     np.array([r.group for r in index.records], dtype=np.int64), group_names, groups_from, inputs,
                     thresholds, o.run.batch_size, o.run.skip_bad, o.run.warmup, o.run.latency_batches,
                     o.gates.evidence, o.gates.allow_inconclusive)


def verify(artifact: str | Path, dataset: str, data: str | Path, split: str = "test",
           options: VerifyOptions | None = None, *, engine: Engine | None = None,
           classifier: Classifier | None = None, **values: Any) -> VerifyReport:
    """Load the artifact (or use ``classifier``, or run on ``engine``), index ``split`` of ``dataset`` at ``data``,
    classify every image in batches and build the report (``prepare`` -> ``engine.predict`` -> ``aggregate``).
    ``options``, or its fields by name (``VerifyOptions.of``: ``batch_size=8, thresholds=..., skip_bad=True``).
    ``engine``: where the model runs (default: ``LocalEngine`` on ``classifier`` or the loaded artifact; the loading,
    ``warmup``, ``workers`` and ``progress`` options are then the engine's, ``expected_digest`` is checked against
    ``engine.digest``)."""
    if options is not None and values:
        raise TypeError("verify: give options or option fields by name, not both")
    o = options or VerifyOptions.of(**values)
    if o.run.batch_size <= 0:
        raise InputError(f"batch size must be positive, got {o.run.batch_size}")
    loaded_here = engine is None and classifier is None  # then load() checked expected_digest itself
    if engine is None:
        lo = o.load
        clf = classifier or load(artifact, backend=lo.backend, device=lo.device, precision=lo.precision,
                                 cuda_graph=lo.cuda_graph, expected_digest=lo.expected_digest,
                                 max_image_pixels=lo.max_pixels)
        engine = LocalEngine(clf, warmup=o.run.warmup, workers=o.run.workers, progress=o.run.progress,
                             console=o.run.console)
    if o.load.expected_digest is not None and not loaded_here:
        check_digest(engine.root, engine.digest or "not computed (loaded with check_sha256=False)",
                     o.load.expected_digest)
    gate = engine.precision_gate()
    job = prepare(engine.root, engine.class_names, engine.group_names, dataset, data, split, o)
    if job.inputs.queries is not None:
        embed_queries(engine, job.inputs.queries)
    if engine.transductive:
        job.transductive = True
        job.warnings.append(TRANSDUCTIVE_WARNING)  # printed with the report (verify_cmd.print_report)
    b = engine.info()
    log.info("verify %s: %d images of %s/%s on %s %s %s (%s), batches of %d", engine.root, len(job.index.records),
             dataset, split, b.get("backend"), b.get("device"), b.get("precision"), b.get("file"), o.run.batch_size)
    run = engine.predict(job.index.records, o.run.batch_size, o.run.skip_bad, f"{dataset}/{split}")
    return aggregate(job, run, engine.info(), digest=engine.digest, gate=gate)


def embed_queries(engine: Engine, queries: Any) -> None:
    """Fill ``queries.embeddings`` (``RetrievalQueries``) with the artifact's text embeddings, before the model runs
    over the split; one ``InputError`` line when the engine cannot (no text tower; an engine that runs elsewhere)."""
    encode = getattr(engine, "encode_text", None)
    if encode is None:
        raise InputError("--queries: the retrieval skew needs the split's image embeddings and the artifact's text "
                         "tower in this process (--engine local)")
    queries.embeddings = encode(queries.texts)
