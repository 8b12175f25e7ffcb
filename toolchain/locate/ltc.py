"""Locate (Locate-Then-Correct, arXiv 2505.17425): which attention heads carry the spurious attribute and which the
class.

For image n with zero-shot prediction y_hat (text T [C, D], logits ~ e @ T^T), let o = the true label when y_hat is
wrong, else the runner-up class. Head margin  d_{l,h}(n) = c_{l,h}(n) . (t_{y_hat} - t_o)  with c the cached direct
contribution [N, L, H, D] (read in row chunks: never all of it in memory). The argmax below runs over every cached
(layer, head); the published method's runs over every layer of the tower, which is what a cache of every layer (the
default of ``decompose``) gives. On the minority groups S, split into correct C and wrong W:

    n_{l,h}(S') = |{n in S' : argmax_{l,h} d(n) = (l,h)}| / |S'|
    K = #{(l,h) : n_W > 0 or n_C > 0},  threshold = 1/K
    spurious = {n_W - n_C > 1/K},  salient = {n_C - n_W > 1/K},  each sorted by the difference (largest first)

with optional caps on how many of each are kept (the published method has none). Heads are stored as absolute
``[layer, head]``. ``protocol="reference"`` (``toolchain.protocol``) checks that the cache and groups are the
published pipeline's: TextSpan terms of every layer, the train split, true group labels, the dataset's default
minority groups.

A plan of ``method="pairs"`` comes from ``toolchain.locate.pairs`` (``locate --from-pairs``): the same rule on
counterfactual pairs in place of wrong minority images (``n_wrong_grid`` holds n_P, the fraction of pairs whose largest
margin change is at (l, h); ``n_correct_grid`` zeros) and ``pair_change_grid`` each head's mean margin change.
"""

from __future__ import annotations

import json
from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import torch
from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from clip_debias.runtime.ownership import json_object_with, register_file_kind
from clip_debias.runtime.schema import FORMAT, FieldError, read_json, stored_as_dict, validate
from clip_debias.toolchain.choices import MinoritySource
from clip_debias.toolchain.decompose.cache import DecompositionCache
from clip_debias.toolchain.decompose.conventions import CONVENTIONS
from clip_debias.toolchain.decompose.terms import HeadTerms
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.locate.groups import (MinorityChoice, minority_from_counts, minority_from_predictions,
                                     minority_from_user, predicted_groups)
from clip_debias.toolchain.models.loading import LoadedClip, ModelIdentity
from clip_debias.toolchain.prompts.defaults import known_minority_groups
from clip_debias.toolchain.prompts.text import DEFAULT_TEMPLATES, class_text_matrix, prompt_matrix
from clip_debias.toolchain.protocol import PROTOCOLS, policy

PLAN_FORMAT = 2
PLAN_WHAT = "a plan written by 'clip-debias locate'"
register_file_kind("locate-plan", PLAN_WHAT,
                   json_object_with({"spurious", "salient", "n_wrong_grid", "n_correct_grid", "threshold"}))
MINORITY_SOURCES = MinoritySource.values()

HeadIndex = Annotated[list[int], Field(min_length=2, max_length=2, description="a [layer, head] pair (two integers)")]
IdentityRecord = stored_as_dict(ModelIdentity)  # validated as a ModelIdentity, kept as its dict


@dataclass(config=FORMAT)
class HeadScore:
    """One located head: absolute ``[layer, head]``, n(W), n(C) and the score (the difference that selected it); a
    pairs plan: n(W) = n_P, n(C) = 0 and ``pair_change`` the head's mean |d(x) - d(x')| over the pairs."""

    head: HeadIndex
    n_wrong: float
    n_correct: float
    score: float
    pair_change: Optional[float] = None


@dataclass(config=FORMAT)
class LocatePlan:
    """What ``clip-debias locate`` found and everything needed to trust and rebuild it (saved as JSON). Validated on
    construction and load: the grids are len(layers) x n_heads, every head lies in that grid, once per list, and no
    head is both spurious and salient (``check_plan_heads``)."""

    spurious: list[HeadScore]
    salient: list[HeadScore]
    k: int
    threshold: float
    layers: list[int]  # absolute layer indices of the cache (rows of the grids)
    n_heads: int
    n_wrong_grid: list[list[float]]  # [L][H] n(W)
    n_correct_grid: list[list[float]]  # [L][H] n(C)
    minority_groups: list[int]
    minority_group_names: list[str]
    minority_source: str  # user | counts | defaults | predictions
    minority_note: str
    group_source: str  # labels | predicted
    n_minority: int
    n_wrong: int
    n_correct: int
    dataset: str
    split: str
    n: int
    identity: IdentityRecord
    class_names: list[str]
    templates: list[str]
    convention: Literal[CONVENTIONS]  # the cache's decomposition convention: build and evaluate match it
    protocol: Literal[PROTOCOLS]  # toolchain.protocol
    tower_layers: Optional[int]  # the tower's layer count (None: the cache did not record it)
    attribute_names: list[str] = field(default_factory=list)  # predicted groups: attribute values used
    max_spurious: Optional[int] = None
    max_salient: Optional[int] = None
    cache_path: str = ""  # the located cache (build's default calibration cache)
    method: Literal["ltc", "pairs"] = "ltc"  # pairs: toolchain.locate.pairs (n_wrong_grid = n_P, n_correct zeros)
    pair_change_grid: Optional[list[list[float]]] = None  # pairs: [L][H] mean |d(x) - d(x')| over the pairs
    n_pairs: Optional[int] = None  # pairs: the pairs scored
    format: int = PLAN_FORMAT
    source: str = field(default="", init=False, compare=False, repr=False)  # the file it was loaded from (not saved)

    @model_validator(mode="after")
    def _check(self) -> "LocatePlan":
        if self.format != PLAN_FORMAT:
            raise FieldError("format", f"is {self.format}, expected {PLAN_FORMAT}")
        rows, cols = len(self.layers), self.n_heads
        if (self.method == "pairs") != (self.pair_change_grid is not None):
            raise FieldError("pair_change_grid", "expected with method 'pairs' only")
        if self.method == "pairs" and self.salient:
            raise FieldError("salient", "a pairs plan has no salient heads")
        for name in ("n_wrong_grid", "n_correct_grid", "pair_change_grid"):
            grid = getattr(self, name)
            if grid is None:
                continue
            bad = next((i for i, row in enumerate(grid) if len(row) != cols), None)
            if len(grid) != rows or bad is not None:
                got = (f"{len(grid)} row{'s' * (len(grid) != 1)}" if len(grid) != rows
                       else f"{len(grid[bad])} numbers in row {bad}")
                raise FieldError(name, f"expected {rows} rows (one per entry of 'layers') of {cols} numbers "
                                       f"('n_heads'), got {got}")
        problem = head_problem(self)
        if problem is not None:
            raise problem
        return self

    @property
    def model_identity(self) -> ModelIdentity:
        return ModelIdentity.from_dict(self.identity)

    def spurious_heads(self) -> list[tuple[int, int]]:
        return [(s.head[0], s.head[1]) for s in self.spurious]

    def salient_heads(self) -> list[tuple[int, int]]:
        return [(s.head[0], s.head[1]) for s in self.salient]

    def roles(self) -> dict[tuple[int, int], str]:
        """{(layer, head): 'spurious' | 'salient'} in plan order."""
        return {**{h: "spurious" for h in self.spurious_heads()}, **{h: "salient" for h in self.salient_heads()}}

    def diff_grid(self) -> torch.Tensor:
        """n(W) - n(C) [L, H] (a pairs plan: n_P)."""
        return torch.tensor(self.n_wrong_grid) - torch.tensor(self.n_correct_grid)

    def summary(self) -> dict[str, Any]:
        """The provenance a built model records: heads, threshold, minority groups and the located split."""
        return {
            "spurious": [s.head for s in self.spurious], "salient": [s.head for s in self.salient],
            "k": self.k, "threshold": self.threshold, "minority_groups": self.minority_groups,
            "minority_group_names": self.minority_group_names, "minority_source": self.minority_source,
            "group_source": self.group_source,
            "located_on": {"dataset": self.dataset, "split": self.split, "n": self.n, "layers": self.layers},
            "templates": self.templates, "convention": self.convention, "protocol": self.protocol,
            "method": self.method,
        }

    @property
    def all_layers(self) -> bool:
        """True when the heads of every layer of the tower were scored."""
        return self.tower_layers is not None and list(self.layers) == list(range(self.tower_layers))

    def where(self) -> str:
        """How error lines name this plan: its file when loaded from one, else 'plan'."""
        return self.source or "plan"

    def save(self, path: str | Path, force: bool = False) -> Path:
        """Write the plan as JSON (temp file + rename); an existing ``path`` is replaced only when it is a plan, or
        with ``force`` (``runtime.atomic_output``)."""
        from clip_debias.runtime.atomic_output import write_atomic

        data = asdict(self)
        data.pop("source")
        write_atomic(path, json.dumps(data, indent=2), "locate-plan", force)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "LocatePlan":
        """Read a plan written by ``save``; one clear line naming the file and the field for anything malformed. The
        format is checked first (a newer plan is refused for its format, not for its fields)."""
        path = Path(path)
        if not path.is_file():
            raise ClipDebiasError(f"{path}: plan not found (write one with 'clip-debias locate')")
        raw = read_json(path, PLAN_WHAT)
        if isinstance(raw, dict) and raw.get("format", PLAN_FORMAT) != PLAN_FORMAT:
            raise ClipDebiasError(f"{path}: field 'format': is {json.dumps(raw['format'])}, expected {PLAN_FORMAT}"
                                  + (" (a plan of an earlier clip-debias: locate again)" if raw["format"] == 1 else ""))
        plan = validate(cls, raw, str(path), PLAN_WHAT)
        plan.source = str(path)
        return plan


def head_problem(plan: LocatePlan) -> FieldError | None:
    """The first head outside the plan's layers x n_heads grid, listed twice in one list, or both spurious and
    salient (it would be ablated and projected at once); None when there is none."""
    seen: dict[tuple[int, int], str] = {}
    for role, entries in (("spurious", plan.spurious), ("salient", plan.salient)):
        for i, s in enumerate(entries):
            entry, head = f"{role}[{i}]", (s.head[0], s.head[1])
            if head[0] not in plan.layers or not 0 <= head[1] < plan.n_heads:
                return FieldError(f"{entry}.head", f"{list(head)} is not in the plan's grid (layers {plan.layers} x "
                                                   f"{plan.n_heads} heads)")
            if head in seen:
                if seen[head].startswith(role):
                    return FieldError(f"{entry}.head", f"{list(head)} is listed twice (also '{seen[head]}'); each "
                                                       "head once per list")
                return FieldError(f"{entry}.head", f"{list(head)} is also spurious ('{seen[head]}'); a head is "
                                                   "either ablated (spurious) or projected (salient), not both")
            seen[head] = entry
    return None


def check_plan_heads(plan: LocatePlan, where: str | None = None) -> None:
    """``head_problem`` as a one-line ``ClipDebiasError`` starting with ``where`` (default: the plan's file)."""
    problem = head_problem(plan)
    if problem is not None:
        raise ClipDebiasError(problem.line(where or plan.where()))


# ---- checks shared by locate, build and evaluate ----------------------------------------------------------------

def require_same_backbone(expected: ModelIdentity, got: ModelIdentity, what: str) -> None:
    """Refuse ``what`` when it comes from another backbone than ``expected`` (name, pretrained tag, weights hash)."""
    if not expected.same_backbone(got):
        raise ClipDebiasError(f"{what} comes from {got.describe()}, but the model is {expected.describe()} "
                              "(same --model and --pretrained/--weights expected)")


def require_layers(layers: list[int], heads: list[tuple[int, int]], what: str) -> None:
    """Refuse when the cache ``layers`` do not hold every head's layer."""
    missing = sorted({l for l, _ in heads} - set(layers))
    if missing:
        raise ClipDebiasError(f"{what}: layers {missing} of the plan's heads are not in the cache (it holds layers "
                              f"{layers}); decompose with --layers covering them")


# ---- scoring ----------------------------------------------------------------------------------------------------

def head_margins(heads: HeadTerms | torch.Tensor, embeddings: torch.Tensor, text: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d [N, L, H] = c . (t_{y_hat} - t_o), predictions y_hat [N]); o = label if wrong else runner-up. The terms are
    read chunk by chunk (memory: one chunk plus d)."""
    if text.shape[0] < 2:
        raise ClipDebiasError("locate needs at least two classes")
    if isinstance(heads, torch.Tensor):
        heads = HeadTerms(heads)
    text = text.float()
    top2 = (embeddings.float() @ text.T).topk(2, dim=-1).indices
    y_hat, runner = top2[:, 0], top2[:, 1]
    other = torch.where(y_hat == labels, runner, labels)
    direction = text[y_hat] - text[other]  # [N, D]
    margins = torch.empty(heads.shape[:3])
    for start, chunk in heads.chunks():
        stop = start + chunk.shape[0]
        margins[start:stop] = torch.einsum("nlhd,nd->nlh", chunk, direction[start:stop])
    return margins, y_hat


def argmax_fractions(margins: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """n [L, H]: fraction of the images in ``mask`` whose largest head margin is at (l, h) (zeros if none)."""
    n, l, h = margins.shape
    hits = torch.bincount(margins[mask].reshape(-1, l * h).argmax(dim=-1), minlength=l * h).double()
    return (hits / max(int(mask.sum()), 1)).reshape(l, h)


def select_heads(n_wrong: torch.Tensor, n_correct: torch.Tensor, layers: list[int], max_spurious: int | None = None,
                 max_salient: int | None = None) -> tuple[list[HeadScore], list[HeadScore], int, float]:
    """(spurious, salient, K, 1/K) from n_W, n_C [L, H]; ties broken by (layer, head)."""
    active = (n_wrong > 0) | (n_correct > 0)
    k = int(active.sum())
    if k == 0:
        return [], [], 0, 0.0
    threshold = 1.0 / k

    def pick(diff: torch.Tensor, cap: int | None) -> list[HeadScore]:
        found = [HeadScore([layers[i], j], float(n_wrong[i, j]), float(n_correct[i, j]), float(diff[i, j]))
                 for i, j in (diff > threshold).nonzero().tolist()]
        found.sort(key=lambda s: (-s.score, s.head))
        return found[:cap] if cap is not None else found

    return pick(n_wrong - n_correct, max_spurious), pick(n_correct - n_wrong, max_salient), k, threshold


# ---- from a cache -----------------------------------------------------------------------------------------------

def choose_minority(labels: torch.Tensor, groups: torch.Tensor, group_names: list[str], predictions: torch.Tensor,
                    minority_groups: list[int] | None, minority_from: str, where: str,
                    known_minority: list[int] | None = None,
                    given_by: str = "--minority-groups") -> MinorityChoice:
    """``minority_groups`` when given (named by ``given_by``, in errors), else derived from counts (falling back to
    ``known_minority`` on balanced counts) or zero-shot accuracy (see ``toolchain.locate.groups``)."""
    if minority_groups:
        return minority_from_user(list(minority_groups), groups, group_names, given_by, where)
    MinoritySource.parse(minority_from, "--minority-from")
    if minority_from == "predictions":
        return minority_from_predictions(labels, groups, predictions, group_names)
    return minority_from_counts(labels, groups, group_names, where, known=known_minority)


def locate_terms(cache: DecompositionCache, text: torch.Tensor, *, class_names: list[str] | None = None,
                 templates: list[str] | None = None, attribute_text: torch.Tensor | None = None,
                 attribute_names: list[str] | None = None, minority_groups: list[int] | None = None,
                 minority_from: str = "counts", max_spurious: int | None = None, max_salient: int | None = None,
                 known_minority: list[int] | None = None, protocol: str = "default") -> LocatePlan:
    """Locate on a cache with the class text matrix ``text`` [C, D] already computed.

    Groups are the cache's labels, or predicted (group = A*y + argmax_a cos(e, attribute_text[a])) when
    ``attribute_text`` [A, D] is given. ``protocol`` decides what is refused and which minority groups count
    (``toolchain.protocol.ProtocolPolicy.check_locate``; the reference protocol's: the dataset's defaults)."""
    rules = policy(protocol)
    given_by = "--minority-groups"
    if rules.fixed_locate and known_minority:
        given_by = f"{rules.option}'s minority groups (the dataset's defaults, {known_minority})"
    minority_groups = rules.check_locate(cache, {"--attribute-prompts": attribute_text is not None,
                                                 "--minority-from": minority_from != "counts",
                                                 "--max-spurious": max_spurious is not None,
                                                 "--max-salient": max_salient is not None},
                                         known_minority, minority_groups)
    class_names = list(class_names or cache.class_names)
    if text.shape[0] != len(class_names):
        raise ClipDebiasError(f"{len(class_names)} class names but a text matrix of {text.shape[0]} rows")
    if cache.class_names and len(class_names) != len(cache.class_names):
        raise ClipDebiasError(f"--classes: {len(class_names)} names given, the cache has {len(cache.class_names)} "
                              f"classes ({', '.join(cache.class_names)})")
    embeddings = cache.embeddings()
    labels = cache.labels.long()
    if attribute_text is not None:
        groups, group_names = predicted_groups(embeddings, labels, attribute_text, class_names,
                                               list(attribute_names or []))
        group_source = "predicted"
    else:
        groups, group_names, group_source = cache.groups.long(), list(cache.group_names), "labels"
    margins, predictions = head_margins(cache.heads, embeddings, text, labels)
    where = f"{cache.dataset}/{cache.split} cache ({group_source} groups)"
    choice = choose_minority(labels, groups, group_names, predictions, minority_groups, minority_from, where,
                             known_minority, given_by)
    if rules.fixed_locate:
        choice = MinorityChoice(choice.groups, choice.names, "defaults", "the dataset's default minority groups "
                                f"({rules.name} protocol)")
    minority = torch.isin(groups, torch.tensor(choice.groups))
    correct = predictions == labels
    n_w = argmax_fractions(margins, minority & ~correct)
    n_c = argmax_fractions(margins, minority & correct)
    spurious, salient, k, threshold = select_heads(n_w, n_c, cache.layers, max_spurious, max_salient)
    return LocatePlan(
        spurious=spurious, salient=salient, k=k, threshold=threshold, layers=list(cache.layers),
        n_heads=int(cache.heads.shape[2]), n_wrong_grid=n_w.tolist(), n_correct_grid=n_c.tolist(),
        minority_groups=choice.groups, minority_group_names=choice.names, minority_source=choice.source,
        minority_note=choice.note, group_source=group_source, n_minority=int(minority.sum()),
        n_wrong=int((minority & ~correct).sum()), n_correct=int((minority & correct).sum()),
        dataset=cache.dataset, split=cache.split, n=len(cache), identity=cache.identity.to_dict(),
        class_names=class_names, templates=list(templates or []), convention=cache.convention, protocol=protocol,
        tower_layers=cache.tower_layers, attribute_names=list(attribute_names or []), max_spurious=max_spurious,
        max_salient=max_salient,
    )


def locate_cache(cache: DecompositionCache, clip: LoadedClip, *, class_names: list[str] | None = None,
                 templates: list[str] | None = None, attribute_prompts: tuple[list[str], list[list[str]]] | None = None,
                 minority_groups: list[int] | None = None, minority_from: str = "counts",
                 max_spurious: int | None = None, max_salient: int | None = None,
                 protocol: str = "default") -> LocatePlan:
    """Locate on ``cache`` with the text tower of ``clip`` (a ``LoadedClip`` of the cache's backbone).

    ``templates`` default to ``DEFAULT_TEMPLATES``; ``attribute_prompts`` = (value names, prompts per value) switches to
    predicted groups. For a shipped dataset, its known minority groups back up balanced group counts."""
    require_same_backbone(clip.identity, cache.identity, f"cache {cache.dataset}/{cache.split}")
    class_names = list(class_names or cache.class_names)
    templates = list(templates or DEFAULT_TEMPLATES)
    text = class_text_matrix(clip, class_names, templates)
    attribute_text, attribute_names = None, None
    if attribute_prompts is not None:
        attribute_names, rows = attribute_prompts
        attribute_text = prompt_matrix(clip, rows)
    return locate_terms(cache, text, class_names=class_names, templates=templates, attribute_text=attribute_text,
                        attribute_names=attribute_names, minority_groups=minority_groups, minority_from=minority_from,
                        max_spurious=max_spurious, max_salient=max_salient,
                        known_minority=known_minority_groups(cache.dataset, len(cache.group_names)),
                        protocol=protocol)
