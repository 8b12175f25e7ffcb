"""``audit.json``: what ``clip-debias audit`` measured, as a strict model (written from it, read back by ``report``).

Accuracies are fractions of validation images (``classify.Accuracy``); ``chance`` is 1/k. ``heads.mean[i][h]`` is the
validation accuracy of head h of layer ``heads.layers[i]`` alone (mean over seeds).
"""

from __future__ import annotations

import json
from dataclasses import asdict, field
from pathlib import Path
from typing import Literal, Optional

from pydantic.dataclasses import dataclass

from clip_debias.runtime.schema import FORMAT, read_model
from clip_debias.toolchain.audit.classify import Accuracy
from clip_debias.toolchain.locate.ltc import IdentityRecord

AUDIT_JSON = "audit.json"
AUDIT_WHAT = "an audit written by 'clip-debias audit'"
AUDIT_REPORT = "clip-debias audit"
AUDIT_FORMAT = 1


@dataclass(config=FORMAT)
class AccuracyRecord(Accuracy):
    """``classify.Accuracy`` as saved."""


@dataclass(config=FORMAT)
class SourceRecord:
    """One source: how it was given, what it is, how many images it holds and how many were audited."""

    name: str
    text: str
    kind: str
    path: str
    split: Optional[str]
    size: int
    audited: int  # images sampled (after unreadable ones were left out with --skip-bad)
    skipped: int = 0


@dataclass(config=FORMAT)
class HeadRank:
    """A head and its accuracy alone (mean and std over seeds)."""

    layer: int
    head: int
    accuracy: float
    std: float


@dataclass(config=FORMAT)
class HeadGrid:
    """The per-head attribution: [len(layers), n_heads] mean and std of each head's validation accuracy, and every
    head ranked (best first; ties by layer, then head)."""

    layers: list[int]
    n_heads: int
    mean: list[list[float]]
    std: list[list[float]]
    ranking: list[HeadRank]


@dataclass(config=FORMAT)
class ControlRecord:
    """The pseudo-dataset control: ``source``'s audited images split at random into ``parts`` parts of ``per_part``
    images, audited the same way on the embedding. ``at_chance``: mean accuracy <= ``limit`` (chance + 3 standard
    errors of one validation split)."""

    source: str
    parts: int
    per_part: int
    accuracy: AccuracyRecord
    limit: float
    at_chance: bool


@dataclass(config=FORMAT)
class CorruptionRow:
    """One corruption applied to every source: the embedding's (and the corrected embedding's) accuracy, or none
    when it cannot change this model's input (``noop``)."""

    name: str
    definition: str
    noop: bool
    embedding: Optional[AccuracyRecord] = None
    corrected: Optional[AccuracyRecord] = None


@dataclass(config=FORMAT)
class GateRecord:
    """``--max-accuracy``: every audited embedding's mean accuracy must not exceed ``max_accuracy``."""

    max_accuracy: float
    values: dict[str, float]
    passed: bool


@dataclass(config=FORMAT)
class AuditFile:
    """``audit.json`` (see the module docstring)."""

    model: IdentityRecord
    convention: str
    layers: list[int]
    sources: list[SourceRecord]
    per_source: int
    val_fraction: float
    seeds: list[int]
    sample_seed: int
    c_grid: list[float]
    embedding: AccuracyRecord
    control: ControlRecord
    heads: HeadGrid
    corruptions: list[CorruptionRow] = field(default_factory=list)
    model_dir: Optional[str] = None
    corrected: Optional[AccuracyRecord] = None
    gate: Optional[GateRecord] = None
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    report: Literal["clip-debias audit"] = AUDIT_REPORT
    format: Literal[1] = AUDIT_FORMAT

    @property
    def chance(self) -> float:
        return self.embedding.chance

    def save(self, path: str | Path) -> Path:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "AuditFile":
        return read_model(cls, path, AUDIT_WHAT)


def record(acc: Accuracy | None) -> AccuracyRecord | None:
    return None if acc is None else AccuracyRecord(**asdict(acc))
