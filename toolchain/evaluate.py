"""Evaluate: a built model on a dataset split, or the methods side by side on cached terms.

Metrics come from ``runtime.metrics``: ``accuracy_report`` (unweighted average accuracy, every image counting once;
worst-group accuracy and the per-group table) and ``bias_metrics`` (the Whac-A-Mole shortcut gaps, the counterfactual
flip rate, MaxSkew@k, the EO / DP gaps: each where the data allows it, from the same logits), computed exactly as
``verify`` computes them.

``compare_methods`` computes, from ONE cache of the evaluated split and the same edit functions the baked model
uses (``EditSet.apply`` -> ``corrected_embedding``), the rows (``row_names``):
    zero-shot | ablate | ablate + project, <renorm> | PerceptionCLIP | ablate + project, <renorm> + PerceptionCLIP
for each salient-projection ``renorm`` asked for (stepwise, keep norm; PerceptionCLIP rows only when contexts are
given). Ablation means come from the calibration cache (``protocol="default"``) or from the evaluated cache itself
(``protocol="reference"``: transductive, see ``toolchain.protocol``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from pydantic.dataclasses import dataclass as format_dataclass

from clip_debias.runtime.limits import IndexChecks
from clip_debias.runtime.metric_inputs import MetricOptions, metric_inputs
from clip_debias.runtime.metrics import (AccuracyReport, BiasInputs, BiasMetrics, CounterfactualReport, FairnessGaps,
                                         ShortcutGaps, SkewReport, accuracy_report, bias_metrics)
from clip_debias.runtime.ownership import json_rows_with, register_file_kind
from clip_debias.runtime.schema import FORMAT, read_model
from clip_debias.toolchain.correct.build import (BuildOptions, EditSet, check_plan, make_edits, make_head,
                                                 require_convention)
from clip_debias.toolchain.decompose.cache import DecompositionCache
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.locate.ltc import LocatePlan, require_layers, require_same_backbone
from clip_debias.toolchain.models.loading import LoadedClip
from clip_debias.toolchain.prompts.files import ContextSpec
from clip_debias.toolchain.prompts.text import DEFAULT_TEMPLATES
from clip_debias.toolchain.protocol import policy

RENORM_LABELS = {"stepwise": "stepwise renorm", "keep": "keep norm", "unit-once": "unit norm once"}


def row_names(renorms: tuple[str, ...] | list[str], perception: bool) -> list[str]:
    """The names of ``compare_methods``' rows, in order (each says what the row computes)."""
    ltc = [f"ablate + project, {RENORM_LABELS[r]}" for r in renorms]
    names = ["zero-shot", "ablate", *ltc]
    return names + (["PerceptionCLIP", *(f"{n} + PerceptionCLIP" for n in ltc)] if perception else [])


@dataclass
class MethodResult:
    """One row: method name, what was edited, its accuracy report on the evaluated split (and its logits [N, C]) and
    the bias metrics of the same predictions (None: not computed)."""

    method: str
    edits: str
    report: AccuracyReport
    logits: torch.Tensor | None = field(default=None, repr=False, compare=False)
    bias: BiasMetrics | None = None

    def to_dict(self) -> dict[str, Any]:
        bias = asdict(self.bias).items() if self.bias is not None else ()
        return {"method": self.method, "edits": self.edits, **self.report.to_dict(), **dict(bias)}


def report_of(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
              group_names: list[str]) -> AccuracyReport:
    """``accuracy_report`` of argmax predictions."""
    return accuracy_report(logits.argmax(dim=-1).cpu().numpy(), labels.cpu().numpy(), groups.cpu().numpy(), group_names,
                           expected=group_names)


def bias_of(logits: torch.Tensor, labels: torch.Tensor, inputs: BiasInputs) -> BiasMetrics:
    """``bias_metrics`` of the logits (as float64 numpy)."""
    return bias_metrics(logits.double().cpu().numpy(), labels.cpu().numpy(), inputs)


def _describe(edits: EditSet) -> str:
    parts = [f"ablate {edits.ablated}" if edits.ablated else "",
             f"project {edits.salient} (rank {edits.basis.shape[0]}, "
             f"renorm {edits.renorm})" if edits.salient and edits.basis is not None else ""]
    return "; ".join(p for p in parts if p) or "none"


@torch.no_grad()
def compare_methods(cache_test: DecompositionCache, plan: LocatePlan, calibration: DecompositionCache | None,
                    clip: LoadedClip, *, contexts: ContextSpec | None = None,
                    attribute_pairs: list[tuple[str, str]] | None = None, tau: float = 1.0, z_from: str = "joint",
                    renorms: tuple[str, ...] = ("stepwise", "keep"), pair_embeddings: str | None = None,
                    allow_test_calibration: bool = False, templates: list[str] | None = None,
                    protocol: str = "default", metric_options: MetricOptions | None = None,
                    protected: str | None = None) -> list[MethodResult]:
    """The side-by-side rows on ``cache_test`` (see module doc). All caches and the plan must come from ``clip``'s
    backbone and the plan's decomposition convention; ``cache_test`` must hold the layers of every planned head,
    ``calibration`` those of the spurious ones. Under ``protocol="reference"`` the calibration is ``cache_test``
    itself (a ``calibration`` given is ignored) and only the stepwise rows are the reference's own. Each row carries
    the bias metrics the cache allows (``DecompositionCache.metric_source``, its protected attribute replaced by
    ``protected`` when given; ``metric_options``: see ``runtime.metric_inputs``)."""
    calibration = policy(protocol).means_from(cache_test, calibration)
    check_plan(plan, clip, clip.tower)
    require_convention(plan, cache_test, f"cache {cache_test.dataset}/{cache_test.split}")
    require_same_backbone(clip.identity, cache_test.identity, f"cache {cache_test.dataset}/{cache_test.split}")
    require_layers(cache_test.layers, plan.spurious_heads() + plan.salient_heads(),
                   f"cache {cache_test.dataset}/{cache_test.split}")
    if cache_test.class_names and len(cache_test.class_names) != len(plan.class_names):
        raise ClipDebiasError(f"cache {cache_test.dataset}/{cache_test.split} has {len(cache_test.class_names)} "
                              f"classes, the plan {len(plan.class_names)} ({', '.join(plan.class_names)})")
    base = BuildOptions(attribute_pairs=attribute_pairs, contexts=contexts, tau=tau, z_from=z_from,
                        pair_embeddings=pair_embeddings, allow_test_calibration=allow_test_calibration,
                        templates=templates, protocol=protocol)
    templates = list(templates or plan.templates or DEFAULT_TEMPLATES)
    hints = {"pairs_hint": "--attribute-pairs FILE; the 'ablate + project' rows need them",
             "calibration_hint": "--calibration CACHE"}  # the options of 'evaluate --compare'
    ltc = make_edits(plan, calibration, clip, base, **hints)  # stepwise; the other renorms reuse its means and basis
    variants = {"none": EditSet(), "ablate": make_edits(plan, calibration, clip, replace(base, project=False), **hints),
                **{r: replace(ltc, renorm=r) for r in renorms}}
    embeddings = {k: v.apply(cache_test) for k, v in variants.items()}
    names = row_names(renorms, contexts is not None)
    edits = ["none", "ablate", *renorms] + (["none", *renorms] if contexts is not None else [])
    kinds = ["zeroshot"] * (2 + len(renorms)) + ["perception"] * (len(names) - 2 - len(renorms))
    heads = {kind: make_head(clip, plan.class_names, templates, replace(base, classifier=kind)) for kind in set(kinds)}
    labels, groups = cache_test.labels.long(), cache_test.groups.long()
    inputs = metric_inputs(cache_test.metric_source().with_protected(protected), metric_options)
    inputs.class_names = list(plan.class_names)
    out = []
    for name, kind, edit in zip(names, kinds, edits):
        logits = heads[kind](embeddings[edit])
        out.append(MethodResult(name, _describe(variants[edit]) + ("" if kind == "zeroshot" else "; perception head"),
                                report_of(logits, labels, groups, cache_test.group_names), logits,
                                bias_of(logits, labels, inputs)))
    return out


@torch.no_grad()
def evaluate_model(model_dir: str | Path, dataset: str, data: str | Path, split: str = "test", *,
                   batch_size: int = 32, device: str = "cpu", skip_bad: bool = False,
                   classes: list[str] | None = None, allow_outside_root: bool = False, target: str | None = None,
                   protected: str | None = None, metric_options: MetricOptions | None = None,
                   index_checks: IndexChecks | None = None, **reading: Any) -> MethodResult:
    """Run a saved ``DebiasedClassifier`` over one split of a dataset (open_clip's eval transform from the model's
    recorded preprocessing) and report its accuracy over the dataset's groups (every group of its definition, an
    empty one with n = 0) and the bias metrics the data allows (a row named by ``model_dir``). ``target``,
    ``protected``, ``index_checks``: see ``runtime.datasets.load_index``. ``reading``: ``max_skipped``,
    ``max_pixels`` of ``iter_batches``."""
    from clip_debias.runtime.datasets import load_index
    from clip_debias.toolchain.correct.classifier import DebiasedClassifier
    from clip_debias.toolchain.datasets import eval_transform, iter_batches

    model = DebiasedClassifier.load(model_dir, device=device)
    index = load_index(dataset, Path(data), split, classes=classes, allow_outside_root=allow_outside_root,
                       target=target, protected=protected, checks=index_checks)
    inputs = metric_inputs(index, metric_options)
    inputs.class_names = list(model.spec.class_names)
    if len(index.class_names) != len(model.spec.class_names):
        raise ClipDebiasError(f"{model_dir}: the model has {len(model.spec.class_names)} classes, {dataset}/{split} "
                              f"has {len(index.class_names)} ({', '.join(index.class_names)})")
    transform = eval_transform(model.spec.preprocess)
    dtype = model.tower.conv1.weight.dtype
    outputs, labels, groups, rows = [], [], [], []
    batches = iter_batches(index, transform, batch_size=batch_size, skip_bad=skip_bad, what="evaluate", **reading)
    for batch in batches:
        logits, _ = model(batch.images.to(device=device, dtype=dtype))
        outputs.append(logits.float().cpu())
        labels.append(batch.labels)
        groups.append(batch.groups)
        rows.extend(batch.indices.tolist())
    logits, labels_t = torch.cat(outputs), torch.cat(labels)
    keep = np.zeros(len(index), dtype=bool)
    keep[rows] = True  # batches follow the record order, so the kept rows are in it too
    report = report_of(logits, labels_t, torch.cat(groups), index.group_names)
    return MethodResult(str(model_dir), "", report, logits, bias_of(logits, labels_t, inputs.rows(keep)))


def print_reports(rows: list[MethodResult], console: Any = None) -> None:
    """One row per method: average and worst-group accuracy (%), then each group's accuracy; a group's image count is
    in its column header when every row has the same (one split), else in each cell. Then, when the rows carry bias
    metrics, their summary (``runtime.metric_tables.summary``) and why a section was not computed. ``runtime.tables``:
    readable at any width (cells fold on a narrow terminal, nothing is cut; natural width through a pipe)."""
    from clip_debias.runtime.metric_tables import summary
    from clip_debias.runtime.tables import output_console, table

    console = console or output_console()
    names = list(dict.fromkeys(g for m in rows for g in m.report.groups))
    counts = {g: {m.report.groups[g].n for m in rows if g in m.report.groups} for g in names}
    same_n = all(len(c) == 1 for c in counts.values())
    headers = [f"{g} (n={next(iter(counts[g]))})" if same_n else g for g in names]
    t = table(["method", "avg acc %", "worst group %", *headers], right=set(range(1, 3 + len(names))))
    for m in rows:
        r = m.report
        cells = [_cell(r.groups[g], not same_n) if g in r.groups else "-" for g in names]
        t.add_row(m.method, f"{r.accuracy * 100:.2f}", f"{r.worst_group_accuracy * 100:.2f} ({r.worst_group})",
                  *cells)
    console.print(t)
    summaries = [(m.method, summary(m.bias)) for m in rows if m.bias is not None]
    columns = list(dict.fromkeys(c for _, s in summaries for c in s))
    if columns:
        bias_table = table(["method", *columns], title="bias metrics (runtime.metrics, as verify computes them)",
                           right=set(range(1, 1 + len(columns))))
        for method, s in summaries:
            bias_table.add_row(method, *(s.get(c, "-") for c in columns))
        console.print(bias_table)
    first = next((m.bias for m in rows if m.bias is not None), None)
    for section, why in (first.not_computed.items() if first is not None else ()):
        console.print(f"{section}: not computed ({why})", markup=False, highlight=False, style="dim")
    missing = next((m.report.missing for m in rows if m.report.missing), [])
    if missing:
        console.print(f"warning: group(s) {', '.join(missing)} have no image in this split (n = 0): the worst group "
                      "above is over the other groups only", markup=False, highlight=False)


def _cell(g: Any, with_n: bool) -> str:
    """'87.50' (with_n: '87.50 (n=40)'); a group with no image: '-'."""
    acc = "-" if g.accuracy is None else f"{g.accuracy * 100:.2f}"
    return f"{acc} (n={g.n})" if with_n else acc


# ---- compare.json -----------------------------------------------------------------------------------------------

COMPARE_WHAT = "results written by 'clip-debias evaluate --json'"
register_file_kind("compare-file", f"{COMPARE_WHAT} (or the demo's compare.json)",
                   json_rows_with({"method", "accuracy", "worst_group_accuracy"}))


@format_dataclass(config=FORMAT)
class CompareRow(AccuracyReport):
    """One method's row: its ``AccuracyReport`` with the method's name, (``--compare``) what it edited, and the bias
    sections (``runtime.metrics.BiasMetrics``; None: not computed, or a file written before they existed)."""

    method: str = ""
    edits: str = ""
    shortcut_gaps: Optional[ShortcutGaps] = None
    counterfactual: Optional[CounterfactualReport] = None
    skew: Optional[SkewReport] = None
    parity: Optional[FairnessGaps] = None
    not_computed: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # sections of metric families beyond those four


@format_dataclass(config=FORMAT)
class SplitRef:
    dataset: str
    split: str
    n: Optional[int] = None


@format_dataclass(config=FORMAT)
class CompareFile:
    """What ``evaluate --json`` (and the demo's ``compare.json``) holds: the rows, and where they come from —
    ``--compare``: the evaluated and located splits, the calibration split, each row's edits; a model directory: its
    path, the dataset split and the model's recorded plan."""

    rows: list[CompareRow]
    evaluated: Optional[SplitRef] = None
    located: Optional[SplitRef] = None
    calibration: Optional[str] = None
    test_calibration: Optional[bool] = None
    protocol: Optional[str] = None  # default | reference
    convention: Optional[str] = None  # the plan's decomposition convention
    transductive: Optional[bool] = None  # reference protocol: ablation means from the evaluated split itself
    edits: Optional[dict[str, str]] = None
    model_dir: Optional[str] = None
    dataset: Optional[str] = None
    split: Optional[str] = None
    model_plan: Optional[dict[str, Any]] = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, indent=2)

    @classmethod
    def load(cls, path: str | Path) -> "CompareFile":
        return read_model(cls, path, COMPARE_WHAT)


def compare_file(rows: list[tuple[str, AccuracyReport]] | list[MethodResult], **provenance: Any) -> CompareFile:
    """The ``CompareFile`` of (name, report) rows or ``MethodResult`` rows (with their edits and bias metrics)."""
    out = [CompareRow(**r.to_dict()) if isinstance(r, MethodResult) else CompareRow(**r[1].to_dict(), method=r[0])
           for r in rows]
    return CompareFile(rows=out, **provenance)
