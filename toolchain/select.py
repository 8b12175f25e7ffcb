"""Select: the correction to ship, chosen on a VALIDATION split under a stated criterion, then built.

Candidates are ``evaluate.compare_methods``' rows (one implementation for ``select``, the demo and ``evaluate
--compare``): zero-shot | ablate | ablate + project, <renorm> | PerceptionCLIP | ablate + project, <renorm> +
PerceptionCLIP; the projected rows only when the plan has salient heads (else they equal the ablation rows). Each
row name maps to the ``BuildOptions`` that build the same model (``CANDIDATES``).

The choice reads the val rows only: ``Criterion.choose`` ranks the eligible rows (val average accuracy at least
``min_average``, and at most ``max_average_drop`` below zero-shot's; zero-shot is always eligible under the drop)
by (worst-group, average) or (average, worst-group) accuracy; the first row of a tie wins (zero-shot before any
edit). A test cache, when given, is evaluated after the choice, for the table only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clip_debias.toolchain.choices import SelectRule
from clip_debias.toolchain.decompose.cache import DecompositionCache
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.evaluate import RENORM_LABELS, MethodResult, compare_methods
from clip_debias.toolchain.locate.ltc import LocatePlan

RENORMS = ("stepwise", "keep")  # the projection variants compared by default


def candidates(renorms: tuple[str, ...] | list[str] = RENORMS) -> dict[str, dict[str, Any]]:
    """``compare_methods`` row name -> the ``BuildOptions`` fields that build that row's model."""
    out: dict[str, dict[str, Any]] = {
        "zero-shot": {"ablate": False, "project": False, "classifier": "zeroshot"},
        "ablate": {"ablate": True, "project": False, "classifier": "zeroshot"},
        "PerceptionCLIP": {"ablate": False, "project": False, "classifier": "perception"}}
    for r in renorms:
        name = f"ablate + project, {RENORM_LABELS[r]}"
        out[name] = {"ablate": True, "project": True, "classifier": "zeroshot", "renorm": r}
        out[f"{name} + PerceptionCLIP"] = {"ablate": True, "project": True, "classifier": "perception", "renorm": r}
    return out


CANDIDATES = candidates(("stepwise", "keep", "unit-once"))


@dataclass(frozen=True)
class Criterion:
    """How the val rows are ranked (``rule``) and which are eligible: val average accuracy (a fraction) at least
    ``min_average`` and at least zero-shot's minus ``max_average_drop`` (None: no bound)."""

    rule: str = SelectRule.WORST_GROUP.value
    max_average_drop: float | None = None
    min_average: float | None = None

    def describe(self) -> str:
        first, then = (("worst-group", "average") if self.rule == SelectRule.WORST_GROUP else
                       ("average", "worst-group"))
        bounds = ([f"val average >= {100 * self.min_average:.1f} %"] if self.min_average is not None else []) + (
            [f"val average at most {100 * self.max_average_drop:.1f} points below zero-shot's"]
            if self.max_average_drop is not None else [])
        where = f" among the rows with {' and '.join(bounds)}" if bounds else ""
        return f"best val {first} accuracy (ties: {then}){where}"

    def eligible(self, rows: list[MethodResult]) -> list[MethodResult]:
        """The rows within the bounds, in their order; one line when none is."""
        zero = next((r.report.accuracy for r in rows if r.method == "zero-shot"), None)
        keep = [r for r in rows
                if (self.min_average is None or r.report.accuracy >= self.min_average - 1e-12)
                and (self.max_average_drop is None or zero is None
                     or r.report.accuracy >= zero - self.max_average_drop - 1e-12)]
        if not keep:
            best = max(r.report.accuracy for r in rows)
            raise ClipDebiasError(f"no candidate reaches --min-average {self.min_average:g} on val (the best average "
                                  f"is {best:.4f})")
        return keep

    def choose(self, rows: list[MethodResult]) -> str:
        """The winning row's name (the first of a tie)."""
        SelectRule.parse(self.rule, "--criterion")

        def key(r: MethodResult) -> tuple[float, float]:
            wg, avg = r.report.worst_group_accuracy, r.report.accuracy
            return (wg, avg) if self.rule == SelectRule.WORST_GROUP else (avg, wg)

        return max(self.eligible(rows), key=key).method


@dataclass
class Selection:
    """The chosen row, the criterion, and the candidates' rows on val (and on test when given: never read by the
    choice)."""

    chosen: str
    criterion: Criterion
    val: list[MethodResult]
    test: list[MethodResult] = field(default_factory=list)

    @property
    def options(self) -> dict[str, Any]:
        """The ``BuildOptions`` fields of the chosen row."""
        return dict(CANDIDATES[self.chosen])

    def rows(self) -> list[MethodResult]:
        """Val rows then test rows, each method suffixed by its split (the comparison table of ``select --json``)."""
        from dataclasses import replace

        return [replace(r, method=f"{r.method} [{split}]") for split, rs in (("val", self.val), ("test", self.test))
                for r in rs]


def candidate_rows(cache: DecompositionCache, plan: LocatePlan, calibration: DecompositionCache | None, clip: Any, *,
                   renorms: tuple[str, ...] | list[str] = RENORMS, protocol: str = "default",
                   **compare: Any) -> list[MethodResult]:
    """``compare_methods`` rows of ``cache`` (``compare``: its keyword options, contexts and attribute pairs among
    them); without salient heads the projected rows equal the ablation rows and are left out."""
    rows = compare_methods(cache, plan, calibration, clip, renorms=tuple(renorms), protocol=protocol, **compare)
    return rows if plan.salient_heads() else [r for r in rows if "project" not in r.method]


def select_correction(val: DecompositionCache, plan: LocatePlan, calibration: DecompositionCache | None, clip: Any, *,
                      criterion: Criterion = Criterion(), test: DecompositionCache | None = None,
                      renorms: tuple[str, ...] | list[str] = RENORMS, **compare: Any) -> Selection:
    """Candidates on ``val``, the winner under ``criterion`` (from the val rows alone), then the same rows on
    ``test`` when given. A ``val`` cache of the test split is refused."""
    if val.split == "test":
        raise ClipDebiasError(f"--val: cache {val.dataset}/{val.split} is a TEST split; select chooses on a "
                              "validation split (pass the test cache as --test, for the table only)")
    val_rows = candidate_rows(val, plan, calibration, clip, renorms=renorms, **compare)
    chosen = criterion.choose(val_rows)
    test_rows = candidate_rows(test, plan, calibration, clip, renorms=renorms, **compare) if test is not None else []
    return Selection(chosen, criterion, val_rows, test_rows)


def build_selection(selection: Selection, plan: LocatePlan, calibration: DecompositionCache | None, clip: Any,
                    **options: Any) -> Any:
    """The chosen row's ``DebiasedClassifier`` (``options``: the other ``BuildOptions`` fields, e.g. contexts and
    attribute pairs, as the rows were computed with)."""
    from clip_debias.toolchain.correct.build import BuildOptions, build_classifier

    return build_classifier(plan, calibration, clip, BuildOptions(**options, **selection.options))
