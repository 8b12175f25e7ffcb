"""What a metric family declares to the registry (``runtime.metrics.registry``): what it needs, how it computes its
section, its gates (name, CLI option, direction, limits, how each is judged), its tables and summary cells.

A gate's result is a ``ThresholdResult``: the limit, the point value, the interval and the n behind it, the decision
(``runtime.metrics.evidence``: PASS / FAIL / INCONCLUSIVE) and what the value was computed over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from clip_debias.runtime.errors import InputError
from clip_debias.runtime.metrics.evidence import Decision, Direction, Evidence, Interval, decide
from clip_debias.runtime.metrics.text import TextTable, pct


@dataclass
class ThresholdResult:
    """One checked threshold: the limit, the measured point value (None: nothing to measure), whether it passed
    (``decision == PASS``), what the value was computed over, why it did not pass when the value alone does not say;
    for an accuracy-type gate the ``interval`` of the value at the run's confidence and the ``n`` (images or pairs)
    of the group the decision rests on (None: a point gate)."""

    threshold: float
    value: float | None
    passed: bool
    over: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    interval: list[float] | None = None
    n: int | None = None
    decision: str = ""

    def __post_init__(self) -> None:
        if not self.decision:
            self.decision = (Decision.PASS if self.passed else Decision.FAIL).value


def judged(limit: float, value: float | None, decision: Decision, over: dict[str, Any], reason: str = "",
           interval: Interval | None = None, n: int | None = None) -> ThresholdResult:
    """A ``ThresholdResult`` from a decision."""
    return ThresholdResult(limit, value, decision is Decision.PASS, over, reason,
                           None if interval is None else [float(interval[0]), float(interval[1])], n,
                           decision.value)


def interval_decision(interval: Interval, limit: float, direction: Direction, small: list[str],
                      evidence: Evidence) -> tuple[Decision, str]:
    """The decision on ``interval``; never PASS or FAIL when ``small`` names groups below ``min_group_size``."""
    decision = decide(interval, limit, direction)
    if small:
        return Decision.INCONCLUSIVE, (f"{', '.join(small[:6])}{' ...' if len(small) > 6 else ''}: under "
                                       f"--min-group-size {evidence.min_group_size} images")
    if decision is Decision.INCONCLUSIVE:
        return decision, (f"the {100 * evidence.confidence:g}% interval [{interval[0]:.4f}, {interval[1]:.4f}] "
                          f"straddles {limit:g}")
    return decision, ""


@dataclass
class GateContext:
    """What a gate is judged with: the evidence settings and the facts of the split that ``over`` reports."""

    evidence: Evidence
    split: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateSpec:
    """One gate of a family: ``name`` is the ``Thresholds`` field and the JSON key (a keyed gate, ``keys`` set,
    writes ``NAME_KEY`` per key, e.g. ``max_gap_bg``); ``option``/``metavar``/``help`` its CLI option (a keyed one:
    repeatable ``NAME=VALUE``); ``check`` refuses a bad limit (one line); ``evaluate(section, limit, context)`` ->
    {JSON key: result}; ``shown``/``fmt`` write it in the thresholds table, ``over_text`` what it rests on."""

    name: str
    option: str
    metavar: str
    help: str
    direction: Direction
    shown: str
    evaluate: Callable[[Any, Any, GateContext], dict[str, ThresholdResult]]
    fmt: Callable[[float | None], str] = pct
    over_text: Callable[[dict[str, Any]], str] = lambda over: ""
    lower: float = 0.0
    upper: float | None = 1.0
    bound_hint: str = "must be a fraction in [0, 1] (0.9 means 90%)"
    keys: tuple[str, ...] = ()
    key_noun: str = "key"  # what a key is, in messages ("gap")
    evidence: bool = True  # an interval-based (accuracy-type) gate; False: a point gate

    def check(self, limit: Any) -> None:
        """One ``InputError`` line for a limit out of bounds (a keyed gate: each value, and unknown keys)."""
        if self.keys:
            for key, v in limit.items():
                if key not in self.keys:
                    raise InputError(f"threshold {self.name}: unknown {self.key_noun} '{key}' (expected "
                                     f"{', '.join(self.keys)})")
                if not self._in_bounds(v):
                    raise InputError(f"threshold {self.name} {key} = {v} {self.bound_hint}")
        elif not self._in_bounds(limit):
            raise InputError(f"threshold {self.name} = {limit} {self.bound_hint}")

    def _in_bounds(self, v: float) -> bool:
        return v >= self.lower and (self.upper is None or v <= self.upper)

    def is_set(self, limit: Any) -> bool:
        return limit not in (None, {})


@dataclass
class MetricData:
    """What a family computes from: ``logits`` [N, C] float64 and ``labels`` [N] of the rows counted, their
    ``predictions`` (argmax), the ``inputs`` (``runtime.metrics.inputs.BiasInputs``), the pair ids of the whole split
    (``pairs_in_split``), the rows' group ids [N] with the group names and those expected in the split, and the rows'
    unit-norm image ``embeddings`` [N, D] (None: the caller has none)."""

    logits: np.ndarray
    labels: np.ndarray
    inputs: Any
    pairs_in_split: int | None = None
    groups: np.ndarray | None = None
    group_names: list[str] | None = None
    expected_groups: list[str] | None = None
    embeddings: np.ndarray | None = None

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)


@dataclass(frozen=True)
class MetricFamily:
    """One metric family: ``name`` is its JSON section (and ``not_computed`` key); ``needs`` the inputs it reads
    (``BiasInputs`` fields: ``protected``, ``shortcuts``, ``pairs``, ``queries``; ``groups``: the split's groups;
    ``embeddings``: the rows' image embeddings); ``compute`` returns the section (None: not computed;
    ``unavailable`` then says why); ``gates``; ``tables`` and ``summary``
    write the section (``runtime.metric_tables``); ``section_type`` reads it back from JSON. ``order`` places it among
    the families. ``top_level``: its numbers are the report's own fields (accuracy), not a section."""

    name: str
    needs: tuple[str, ...]
    compute: Callable[[MetricData], Any]
    gates: tuple[GateSpec, ...] = ()
    tables: Callable[[Any], list[TextTable]] = lambda section: []
    summary: Callable[[Any], dict[str, str]] = lambda section: {}
    section_type: type | None = None
    order: int = 100
    top_level: bool = False
    unavailable: Callable[[MetricData], str | None] = lambda data: None
