"""Locate (Locate-Then-Correct): which attention heads carry the spurious attribute and which the class.

For image n with zero-shot prediction y_hat (text T [C, D], logits ~ e @ T^T), let o = the true label when y_hat is
wrong, else the runner-up class. Head margin  d_{l,h}(n) = c_{l,h}(n) . (t_{y_hat} - t_o)  with c the cached direct
contribution [N, L, H, D]. On the minority groups S, split into correct C and wrong W:

    n_{l,h}(S') = |{n in S' : argmax_{l,h} d(n) = (l,h)}| / |S'|
    K = #{(l,h) : n_W > 0 or n_C > 0},  threshold = 1/K
    spurious = {n_W - n_C > 1/K},  salient = {n_C - n_W > 1/K},  each sorted by the difference (largest first)

with optional caps on how many of each are kept. Heads are stored as absolute ``[layer, head]``.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from clip_debias.toolchain.decompose.cache import DecompositionCache
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.locate.groups import (MinorityChoice, minority_from_counts, minority_from_predictions,
                                     minority_from_user, predicted_groups)
from clip_debias.toolchain.models.loading import ModelIdentity

PLAN_FORMAT = 1
MINORITY_SOURCES = ("counts", "predictions")


@dataclass
class HeadScore:
    """One located head: absolute ``[layer, head]``, n(W), n(C) and the score (the difference that selected it)."""

    head: list[int]
    n_wrong: float
    n_correct: float
    score: float


@dataclass
class LocatePlan:
    """What ``clip-debias locate`` found and everything needed to trust and rebuild it (saved as JSON)."""

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
    identity: dict[str, Any]
    class_names: list[str]
    templates: list[str]
    attribute_names: list[str] = field(default_factory=list)  # predicted groups: attribute values used
    max_spurious: int | None = None
    max_salient: int | None = None
    cache_path: str = ""  # the located cache (build's default calibration cache)
    format: int = PLAN_FORMAT
    source: str = field(default="", compare=False, repr=False)  # the file it was loaded from (not saved)

    @property
    def model_identity(self) -> ModelIdentity:
        return ModelIdentity.from_dict(self.identity)

    def spurious_heads(self) -> list[tuple[int, int]]:
        return [(s.head[0], s.head[1]) for s in self.spurious]

    def salient_heads(self) -> list[tuple[int, int]]:
        return [(s.head[0], s.head[1]) for s in self.salient]

    def diff_grid(self) -> torch.Tensor:
        """n(W) - n(C) [L, H]."""
        return torch.tensor(self.n_wrong_grid) - torch.tensor(self.n_correct_grid)

    def summary(self) -> dict[str, Any]:
        """The provenance a built model records: heads, threshold, minority groups and the located split."""
        return {
            "spurious": [s.head for s in self.spurious], "salient": [s.head for s in self.salient],
            "k": self.k, "threshold": self.threshold, "minority_groups": self.minority_groups,
            "minority_group_names": self.minority_group_names, "minority_source": self.minority_source,
            "group_source": self.group_source,
            "located_on": {"dataset": self.dataset, "split": self.split, "n": self.n},
            "templates": self.templates,
        }

    def where(self) -> str:
        """How error lines name this plan: its file when loaded from one, else 'plan'."""
        return self.source or "plan"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data.pop("source")
        path.write_text(json.dumps(data, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LocatePlan":
        """Read a plan written by ``save``; one clear line naming the file and the field for anything malformed."""
        path = Path(path)
        if not path.is_file():
            raise ClipDebiasError(f"{path}: plan not found (write one with 'clip-debias locate')")
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ClipDebiasError(f"{path}: not a JSON plan ({e})") from e
        if not isinstance(raw, dict):
            raise ClipDebiasError(f"{path}: not a plan (expected a JSON object written by 'clip-debias locate')")
        if raw.get("format", PLAN_FORMAT) != PLAN_FORMAT:
            raise ClipDebiasError(f"{path}: field 'format' is {json.dumps(raw['format'])}, expected {PLAN_FORMAT}")
        check_plan_fields(raw, str(path))
        for key in ("spurious", "salient"):
            raw[key] = [HeadScore(**h) for h in raw[key]]
        plan = cls(**raw, source=str(path))
        check_plan_heads(plan)
        return plan


# ---- plan file validation ---------------------------------------------------------------------------------------

def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# kind -> (test, "an X", "Xs")
_KINDS: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "int": (_int, "an integer", "integers"), "num": (_num, "a number", "numbers"),
    "str": (lambda v: isinstance(v, str), "a string", "strings"),
    "obj": (lambda v: isinstance(v, dict), "an object", "objects"),
}
# every LocatePlan field a plan file holds -> its kind ("list:K" a list of K, "?" may be null); "heads" and "grid"
# are checked by ``check_plan_fields`` itself
PLAN_FIELDS: dict[str, str] = {
    "spurious": "heads", "salient": "heads", "k": "int", "threshold": "num", "layers": "list:int", "n_heads": "int",
    "n_wrong_grid": "grid", "n_correct_grid": "grid", "minority_groups": "list:int", "minority_group_names": "list:str",
    "minority_source": "str", "minority_note": "str", "group_source": "str", "n_minority": "int", "n_wrong": "int",
    "n_correct": "int", "dataset": "str", "split": "str", "n": "int", "identity": "obj", "class_names": "list:str",
    "templates": "list:str", "attribute_names": "list:str", "max_spurious": "int?", "max_salient": "int?",
    "cache_path": "str", "format": "int",
}
HEAD_FIELDS: dict[str, str] = {"head": "pair", "n_wrong": "num", "n_correct": "num", "score": "num"}
HEAD_KEYS = "{head: [layer, head], n_wrong, n_correct, score}"
HEAD_OBJECT = f"an object {HEAD_KEYS}"


def json_kind(value: Any) -> str:
    """What a JSON value is, as an error line names it ('a list', 'null', ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    for test, name, _ in _KINDS.values():
        if test(value):
            return name
    return "a list" if isinstance(value, list) else type(value).__name__


def _expected(kind: str) -> str:
    if kind.endswith("?"):
        return f"{_expected(kind[:-1])} or null"
    if kind.startswith("list:"):
        return f"a list of {_KINDS[kind[5:]][2]}"
    return {"heads": f"a list of objects {HEAD_KEYS}", "grid": "a list of rows (lists of numbers)",
            "pair": "[layer, head] (two integers)"}.get(kind) or _KINDS[kind][1]


def _bad(where: str, name: str, kind: str, value: Any) -> ClipDebiasError:
    got = json.dumps(value) if isinstance(value, list) and len(json.dumps(value)) <= 40 else json_kind(value)
    return ClipDebiasError(f"{where}: field '{name}': expected {_expected(kind)}, got {got}")


def _check_value(where: str, name: str, kind: str, value: Any) -> None:
    """Refuse ``value`` of field ``name`` unless it is of ``kind`` (see ``PLAN_FIELDS``)."""
    if kind.endswith("?"):  # an optional scalar
        if value is not None and not _KINDS[kind[:-1]][0](value):
            raise _bad(where, name, kind, value)
        return
    if kind.startswith("list:"):
        if not isinstance(value, list):
            raise _bad(where, name, kind, value)
        for i, item in enumerate(value):
            _check_value(where, f"{name}[{i}]", kind[5:], item)
    elif kind == "pair":
        if not (isinstance(value, list) and len(value) == 2 and all(_int(v) for v in value)):
            raise _bad(where, name, kind, value)
    elif kind == "grid":
        if not isinstance(value, list):
            raise _bad(where, name, kind, value)
        for i, row in enumerate(value):
            _check_value(where, f"{name}[{i}]", "list:num", row)
    elif kind == "heads":
        if not isinstance(value, list):
            raise _bad(where, name, kind, value)
        for i, entry in enumerate(value):
            _check_object(where, f"{name}[{i}]", HEAD_FIELDS, entry, HEAD_OBJECT)
    elif not _KINDS[kind][0](value):
        raise _bad(where, name, kind, value)


def _check_object(where: str, name: str, spec: dict[str, str], value: Any, what: str,
                  optional: tuple[str, ...] = ()) -> None:
    """``value`` must be an object with exactly the keys of ``spec`` (those in ``optional`` may be left out)."""
    if not isinstance(value, dict):
        raise ClipDebiasError(f"{where}: field '{name}': expected {what}, got {json_kind(value)}")
    prefix = f"{name}." if name else ""
    for key in value:
        if key not in spec:
            raise ClipDebiasError(f"{where}: field '{prefix}{key}' is not a plan field (expected {what})")
    for key, kind in spec.items():
        if key not in value:
            if key in optional:
                continue
            raise ClipDebiasError(f"{where}: field '{prefix}{key}' is missing (expected {_expected(kind)})")
        _check_value(where, prefix + key, kind, value[key])


def check_plan_fields(raw: dict[str, Any], where: str) -> None:
    """Refuse a plan object whose fields are missing, unknown or of the wrong type, or whose grids do not have the
    shape len(layers) x n_heads; one line naming ``where`` (the file) and the field."""
    optional = tuple(f.name for f in fields(LocatePlan) if f.default is not MISSING or f.default_factory is not MISSING)
    _check_object(where, "", PLAN_FIELDS, raw, "a plan written by 'clip-debias locate'", optional)
    _check_value(where, "identity.name", "str", raw["identity"].get("name"))
    for key in ("pretrained", "weights_sha256", "weights_file"):
        _check_value(where, f"identity.{key}", "str?", raw["identity"].get(key))
    rows, cols = len(raw["layers"]), raw["n_heads"]
    for name in ("n_wrong_grid", "n_correct_grid"):
        grid = raw[name]
        bad = next((i for i, row in enumerate(grid) if len(row) != cols), None)
        if len(grid) != rows or bad is not None:
            got = (f"{len(grid)} row{'s' * (len(grid) != 1)}" if len(grid) != rows
                   else f"{len(grid[bad])} numbers in row {bad}")
            raise ClipDebiasError(f"{where}: field '{name}': expected {rows} rows (one per entry of 'layers') of "
                                  f"{cols} numbers ('n_heads'), got {got}")


def check_plan_heads(plan: LocatePlan, where: str | None = None) -> None:
    """Refuse a head outside the plan's layers x n_heads grid, listed twice in one list, or both spurious and salient
    (it would be ablated and projected at once)."""
    where = where or plan.where()
    seen: dict[tuple[int, int], str] = {}
    for role, entries in (("spurious", plan.spurious), ("salient", plan.salient)):
        for i, s in enumerate(entries):
            name, head = f"{role}[{i}]", (s.head[0], s.head[1])
            if head[0] not in plan.layers or not 0 <= head[1] < plan.n_heads:
                raise ClipDebiasError(f"{where}: field '{name}.head': {list(head)} is not in the plan's grid (layers "
                                      f"{plan.layers} x {plan.n_heads} heads)")
            if head in seen:
                first = seen[head]
                if first.startswith(role):
                    raise ClipDebiasError(f"{where}: field '{name}.head': {list(head)} is listed twice (also "
                                          f"'{first}'); each head once per list")
                raise ClipDebiasError(f"{where}: field '{name}.head': {list(head)} is also spurious ('{first}'); a "
                                      "head is either ablated (spurious) or projected (salient), not both")
            seen[head] = name


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

def head_margins(heads: torch.Tensor, embeddings: torch.Tensor, text: torch.Tensor, labels: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(d [N, L, H] = c . (t_{y_hat} - t_o), predictions y_hat [N]); o = label if wrong else runner-up."""
    if text.shape[0] < 2:
        raise ClipDebiasError("locate needs at least two classes")
    text = text.to(heads.dtype)
    top2 = (embeddings.to(heads.dtype) @ text.T).topk(2, dim=-1).indices
    y_hat, runner = top2[:, 0], top2[:, 1]
    other = torch.where(y_hat == labels, runner, labels)
    return torch.einsum("nlhd,nd->nlh", heads, text[y_hat] - text[other]), y_hat


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
                    known_minority: list[int] | None = None) -> MinorityChoice:
    """User groups when given, else derived from counts (falling back to ``known_minority`` on balanced counts) or
    zero-shot accuracy (see ``toolchain.locate.groups``)."""
    if minority_groups:
        return minority_from_user(list(minority_groups), groups, group_names)
    if minority_from not in MINORITY_SOURCES:
        raise ClipDebiasError(f"--minority-from {minority_from!r}: expected one of {', '.join(MINORITY_SOURCES)}")
    if minority_from == "predictions":
        return minority_from_predictions(labels, groups, predictions, group_names)
    return minority_from_counts(labels, groups, group_names, where, known=known_minority)


def locate_terms(cache: DecompositionCache, text: torch.Tensor, *, class_names: list[str] | None = None,
                 templates: list[str] | None = None, attribute_text: torch.Tensor | None = None,
                 attribute_names: list[str] | None = None, minority_groups: list[int] | None = None,
                 minority_from: str = "counts", max_spurious: int | None = None, max_salient: int | None = None,
                 known_minority: list[int] | None = None) -> LocatePlan:
    """Locate on a cache with the class text matrix ``text`` [C, D] already computed.

    Groups are the cache's labels, or predicted (group = A*y + argmax_a cos(e, attribute_text[a])) when
    ``attribute_text`` [A, D] is given."""
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
                             known_minority)
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
        class_names=class_names, templates=list(templates or []), attribute_names=list(attribute_names or []),
        max_spurious=max_spurious, max_salient=max_salient,
    )


def locate_cache(cache: DecompositionCache, clip: Any, *, class_names: list[str] | None = None,
                 templates: list[str] | None = None, attribute_prompts: tuple[list[str], list[list[str]]] | None = None,
                 minority_groups: list[int] | None = None, minority_from: str = "counts",
                 max_spurious: int | None = None, max_salient: int | None = None) -> LocatePlan:
    """Locate on ``cache`` with the text tower of ``clip`` (a ``LoadedClip`` of the cache's backbone).

    ``templates`` default to "a photo of a {}."; ``attribute_prompts`` = (value names, prompts per value) switches to
    predicted groups. For a shipped dataset, its known minority groups back up balanced group counts."""
    from clip_debias.toolchain.correct.defaults import known_minority_groups, prompt_matrix
    from clip_debias.toolchain.models.text import DEFAULT_TEMPLATES, class_text_matrix

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
                        known_minority=known_minority_groups(cache.dataset))
