"""Every metric family the inputs allow, from one call (``bias_metrics``), and every set gate judged
(``check_gates``) -- both driven by the registry (``runtime.metrics.registry``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clip_debias.runtime.metrics.counterfactual import CounterfactualReport
from clip_debias.runtime.metrics.fairness_gaps import FairnessGaps
from clip_debias.runtime.metrics.inputs import BiasInputs
from clip_debias.runtime.metrics.registry import families, section_families
from clip_debias.runtime.metrics.shortcut_gaps import ShortcutGaps
from clip_debias.runtime.metrics.skew import SkewReport
from clip_debias.runtime.metrics.spec import GateContext, MetricData, ThresholdResult, judged
from clip_debias.runtime.metrics.evidence import Decision

# The sections of the first release: top-level JSON keys of verify's and evaluate's reports. A family registered
# since writes its section under ``metrics`` (``metrics.NAME``).
SECTIONS = ("shortcut_gaps", "counterfactual", "skew", "parity")


@dataclass
class BiasMetrics:
    """The sections ``bias_metrics`` computed (None: not computed, ``not_computed[section]`` says why); ``metrics``
    the sections of the families beyond ``SECTIONS``."""

    shortcut_gaps: ShortcutGaps | None = None
    counterfactual: CounterfactualReport | None = None
    skew: SkewReport | None = None
    parity: FairnessGaps | None = None
    not_computed: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def sections(self) -> dict[str, object]:
        """The sections, ``not_computed`` and ``metrics`` as keyword arguments of a report that holds them (verify,
        evaluate)."""
        return {name: getattr(self, name) for name in (*SECTIONS, "not_computed", "metrics")}

    def section(self, name: str) -> Any:
        return getattr(self, name) if name in SECTIONS else self.metrics.get(name)


def section_of(report: Any, name: str) -> Any:
    """Section ``name`` of any report holding the sections (``BiasMetrics``, ``VerifyReport``, a row read back)."""
    return getattr(report, name, None) if name in SECTIONS else (getattr(report, "metrics", None) or {}).get(name)


def bias_metrics(logits: np.ndarray, labels: np.ndarray, inputs: BiasInputs,
                 pairs_in_split: int | None = None, embeddings: np.ndarray | None = None) -> BiasMetrics:
    """Every section the inputs allow, from logits [N, C] and labels [N] of the rows counted (each family's module
    says how). ``pairs_in_split``: pair ids of the whole split, rows not read included (see ``counterfactual``);
    ``embeddings``: the rows' image embeddings [N, D] (the retrieval skew's index)."""
    data = MetricData(np.asarray(logits, dtype=np.float64), np.asarray(labels).reshape(-1), inputs, pairs_in_split,
                      embeddings=embeddings)
    out = BiasMetrics(not_computed=dict(inputs.missing))
    for family in section_families():
        if family.name in inputs.missing:
            continue
        section = family.compute(data)
        if section is None:
            why = family.unavailable(data)
            if why:
                out.not_computed[family.name] = why
        elif family.name in SECTIONS:
            setattr(out, family.name, section)
        else:
            out.metrics[family.name] = section
    return out


def check_gates(limits: dict[str, Any], sections: dict[str, Any], not_computed: dict[str, str],
                context: GateContext) -> dict[str, ThresholdResult]:
    """Every set metric gate (``limits``: {gate name: limit}) judged on its family's section (``sections``: {family
    name: section}); a section not computed FAILs its gates with the reason."""
    out: dict[str, ThresholdResult] = {}
    for family in families():
        for gate in family.gates:
            limit = limits.get(gate.name)
            if not gate.is_set(limit):
                continue
            section = sections.get(family.name)
            if section is None:
                why = not_computed.get(family.name, f"{family.name} was not computed")
                keys = [f"{gate.name}_{k}" for k in limit] if gate.keys else [gate.name]
                out.update({key: judged(limit[key.rpartition("_")[2]] if gate.keys else limit, None, Decision.FAIL,
                                        {}, why) for key in keys})
                continue
            out.update(gate.evaluate(section, limit, context))
    return out
