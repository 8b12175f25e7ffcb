"""Metrics of a classifier's outputs (numpy only): the one place each number is computed, for ``verify`` (runtime),
``evaluate`` (torch, its logits as numpy), the bias lab and, through their JSON, the report.

Rows are the images counted (an unreadable image skipped by ``--skip-bad`` is not a row). C classes, N images.

One module per **metric family**, each declaring a ``FAMILY`` (``spec.MetricFamily``): what it needs, how it computes
its section, its gates (name, CLI option, direction, limits), its tables and summary cells. The registry
(``registry.families``) finds them; the gate loop (``bias.check_gates``), ``Thresholds`` and the CLI's gate options
(``runtime.verify.gates``, ``toolchain.cli.options``) and the tables (``runtime.metric_tables``) are driven by it.

- ``accuracy``: average and worst-group accuracy (top-level fields of the reports).
- ``shortcut_gaps``: the Whac-A-Mole gaps (their ``_eval_split``'s cell-mean definition, any number of classes).
- ``counterfactual``: the counterfactual flip rate.
- ``skew``: MaxSkew@k / MinSkew@k.
- ``retrieval_skew``: MaxSkew@k / MinSkew@k / NDKL@k of the rows' image embeddings ranked for text queries.
- ``fairness_gaps``: equal opportunity / demographic parity gaps (JSON section ``parity``).

``evidence``: the Wilson / Newcombe (MOVER) intervals and the PASS / FAIL / INCONCLUSIVE rule of the gates.
"""

from clip_debias.runtime.metrics.accuracy import AccuracyReport, accuracy_report
from clip_debias.runtime.metrics.base import AttributeColumn, GroupAccuracy, softmax
from clip_debias.runtime.metrics.bias import SECTIONS, BiasMetrics, bias_metrics, check_gates, section_of
from clip_debias.runtime.metrics.counterfactual import (CounterfactualReport, FlipStats, counterfactual_flips,
                                                        pair_rows)
from clip_debias.runtime.metrics.fairness_gaps import ClassFairness, FairnessGaps, fairness_gaps
from clip_debias.runtime.metrics.inputs import BiasInputs
from clip_debias.runtime.metrics.shortcut_gaps import (AGREEMENT_CELLS, DEFAULT_P_AGREE, GAP_CELLS, GAP_NAMES,
                                                       GAP_TITLES, ShortcutGaps, class_aligned, shortcut_gaps)
from clip_debias.runtime.metrics.skew import DEFAULT_SKEW_K, ClassSkew, SkewAtK, SkewReport, skew_at_k, top_k_weights

__all__ = [
    "AGREEMENT_CELLS", "DEFAULT_P_AGREE", "DEFAULT_SKEW_K", "GAP_CELLS", "GAP_NAMES", "GAP_TITLES", "SECTIONS",
    "AccuracyReport", "AttributeColumn", "BiasInputs", "BiasMetrics", "ClassFairness", "ClassSkew",
    "CounterfactualReport", "FairnessGaps", "FlipStats", "GroupAccuracy", "ShortcutGaps", "SkewAtK", "SkewReport",
    "accuracy_report", "bias_metrics", "check_gates", "class_aligned", "counterfactual_flips", "fairness_gaps",
    "pair_rows", "section_of", "shortcut_gaps", "skew_at_k", "softmax", "top_k_weights",
]
