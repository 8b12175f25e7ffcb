"""File formats: strict pydantic models, and ONE formatter that turns their validation errors into one line.

Every file the project reads back (manifest, plan, model config, cache header, prompt and context files, reports)
has a model: a pydantic dataclass with ``config=FORMAT`` (unknown fields refused). Readers call ``validate`` (or
``read_json`` then ``validate``); any problem is a one-line ``ClipDebiasError`` (or the subclass the reader passes):

    FILE: field 'spurious[0].head': expected a [layer, head] pair (two integers), got [6]

Files are validated strictly, as JSON (no "1" for 1, no true for 1, no 1.5 for an integer); models built in code
validate leniently (a tuple for a list). A check that spans fields raises ``FieldError(field, message)`` from a
validator, and the line names that field. The formatter reads the model's annotations for what a field expects
(a ``Field(description=...)`` in ``Annotated`` overrides the words) and drops pydantic's union member tags from the
path. Torch-free (pydantic only).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import AfterValidator, ConfigDict, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from clip_debias.runtime.errors import ClipDebiasError

T = TypeVar("T")

FORMAT = ConfigDict(extra="forbid")  # the config of every file model: unknown fields are refused
MAX_SHOWN = 40  # characters of a found value shown in an error line


class FieldError(ValueError):
    """A semantic problem of one field (``field`` relative to the object being validated, e.g. 'spurious[1].head'),
    raised from a model validator; ``validate`` names the field in its line."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message

    def line(self, where: str) -> str:
        """The one-line error outside validation (e.g. for a model changed after it was loaded)."""
        return f"{where}: field '{self.field}': {self.message}"


def stored_as_dict(cls: type) -> Any:
    """Field type: validated as the dataclass ``cls`` (its fields and types; unknown keys refused), kept as the plain
    dict ``dataclasses.asdict`` makes of it (for fields that code reads as dicts)."""
    return Annotated[cls, AfterValidator(dataclasses.asdict)]


# ---- validation -------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _adapter(model: Any) -> TypeAdapter:
    return TypeAdapter(model)


def validate(model: type[T], data: Any, source: str, what: str, error: type[ClipDebiasError] = ClipDebiasError,
             prefix: str = "") -> T:
    """``data`` (parsed JSON or YAML) as a ``model``, validated strictly as JSON; any problem raises ``error`` with
    one line naming ``source`` (the file) and the field (under ``prefix`` when ``data`` is a part of the file).
    ``what`` says what the file should be, e.g. "a plan written by 'clip-debias locate'"."""
    try:
        text = json.dumps(data, default=str)  # YAML may hold dates: seen as strings
    except ValueError as e:  # NaN is JSON-encoded fine; only circular data lands here
        raise error(f"{source}: not {what} ({e})") from None
    try:
        return _adapter(model).validate_json(text, strict=True)
    except ValidationError as e:
        raise error(format_error(source, e, model, what, prefix)) from None


def read_json(path: str | Path, what: str, error: type[ClipDebiasError] = ClipDebiasError) -> Any:
    """The parsed JSON of ``path``; one line when it is missing, unreadable or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: not found (expected {what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None


def read_model(model: type[T], path: str | Path, what: str, error: type[ClipDebiasError] = ClipDebiasError) -> T:
    """``read_json`` then ``validate``."""
    return validate(model, read_json(path, what, error), str(path), what, error)


# ---- the formatter ----------------------------------------------------------------------------------------------

def format_error(source: str, err: ValidationError, model: Any, what: str, prefix: str = "") -> str:
    """ONE line for the first problem of ``err`` (validating ``model``): ``SOURCE: field 'a[0].b': expected X, got
    Y``; '(and N more problems)' when other fields have problems too."""
    problems = err.errors(include_url=False)
    first = problems[0]
    expected_type, loc = resolve_loc(model, tuple(first["loc"]))
    kind, found = first["type"], first.get("input")
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        message, path = cause.message, join_path(prefix, field_path(loc), cause.field)
    else:
        path = join_path(prefix, field_path(loc))
        expected = describe_type(expected_type)
        if kind == "missing":
            message = f"missing (expected {expected})"
        elif kind in ("unexpected_keyword_argument", "extra_forbidden"):
            parent = resolve_loc(model, tuple(first["loc"])[:-1])[0]
            names = [f.name for f in dataclasses.fields(parent) if f.init] if _is_dataclass(parent) else []
            message = (f"unknown field (allowed: {', '.join(names)})" if 0 < len(names) <= 10 else
                       f"unknown field (not part of {what if len(loc) == 1 else describe_type(parent)})")
        elif kind in ("value_error", "assertion_error"):
            message = str(cause) if cause is not None else first["msg"]
        elif kind == "literal_error":
            message = f"expected one of {first['ctx']['expected']}, got {describe_value(found)}"
        elif not path:
            message = f"expected {what}, got {describe_value(found)}"
        else:
            if kind in CONSTRAINTS and not _described(expected_type):  # say which bound
                expected += f" ({first['msg'][0].lower()}{first['msg'][1:]})"
            message = f"expected {expected}, got {describe_value(found)}"
    others = len({resolve_loc(model, tuple(p["loc"]))[1] for p in problems} - {loc})
    more = f" (and {others} more problem{'s' * (others > 1)})" if others else ""
    return f"{source}: field '{path}': {message}{more}" if path else f"{source}: {message}{more}"


CONSTRAINTS = ("too_short", "too_long", "greater_than", "greater_than_equal", "less_than", "less_than_equal",
               "string_too_short", "string_too_long", "string_pattern_mismatch", "multiple_of")


def _described(tp: Any) -> bool:
    """Whether ``tp`` carries its own description (``Field(description=...)``), which then states its bounds."""
    if _is_union(tp):
        return any(_described(a) for a in get_args(tp) if a is not type(None))
    return get_origin(tp) is Annotated and any(isinstance(m, FieldInfo) and m.description for m in get_args(tp)[1:])


def field_path(loc: tuple[Any, ...]) -> str:
    """('spurious', 0, 'head') -> "spurious[0].head"."""
    out = ""
    for item in loc:
        out += f"[{item}]" if isinstance(item, int) else (f".{item}" if out else str(item))
    return out


def join_path(*parts: str) -> str:
    """Join field paths: 'a', 'b[0]' -> 'a.b[0]'; 'a', '[0]' -> 'a[0]'; empty parts are skipped."""
    out = ""
    for p in (p for p in parts if p):
        out += p if not out or p.startswith("[") else f".{p}"
    return out


def describe_value(value: Any) -> str:
    """What was found, briefly: null, true, the number 1.5, the string "x", [6, 0], a list of 40 items, an object
    {a, b}."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        shown = json.dumps(value if len(value) <= MAX_SHOWN else value[:MAX_SHOWN - 3] + "...")
        return f"the string {shown}"
    if isinstance(value, list):
        shown = json.dumps(value, default=str)
        return shown if len(shown) <= MAX_SHOWN else f"a list of {len(value)} items"
    if isinstance(value, dict):
        keys = ", ".join(map(str, value))
        return "an empty object" if not value else (
            f"an object {{{keys}}}" if len(keys) <= MAX_SHOWN else f"an object of {len(value)} keys")
    return type(value).__name__


_SIMPLE = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


def describe_type(tp: Any) -> str:
    """What a field of annotation ``tp`` expects, in words: 'a list of integers', 'an object {name, pretrained}'."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        described = next((m.description for m in args[1:] if isinstance(m, FieldInfo) and m.description), None)
        return described or describe_type(args[0])
    if tp is None or tp is Any:
        return "a value"
    if origin in (Union, types.UnionType):
        members = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(members) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, set, frozenset):
        return f"a list of {_plural(describe_type(args[0]))}" if args else "a list"
    if origin is dict:
        return "an object" if len(args) < 2 or args[1] is Any else f"an object of {_plural(describe_type(args[1]))}"
    if _is_dataclass(tp):
        names = [f.name for f in dataclasses.fields(tp) if f.init]
        return "an object {" + ", ".join(names) + "}" if len(names) <= 6 else "an object"
    return _SIMPLE.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(described: str) -> str:
    """'an integer' -> 'integers', 'a [layer, head] pair (two integers)' -> '[layer, head] pairs (two integers)'."""
    for article in ("a ", "an "):
        if described.startswith(article):
            words, depth = described[len(article):].split(" "), 0
            for i, w in enumerate(words):
                if depth == 0 and w[:1].isalpha():
                    words[i] = w + "s"
                    break
                depth += w.count("[") + w.count("{") - w.count("]") - w.count("}")
            return " ".join(words)
    return described


def _unwrap(tp: Any) -> Any:
    """``tp`` without ``Annotated`` and ``| None``."""
    while True:
        origin, args = get_origin(tp), get_args(tp)
        if origin is Annotated:
            tp = args[0]
        elif origin in (Union, types.UnionType) and type(None) in args and len(args) == 2:
            tp = next(a for a in args if a is not type(None))
        else:
            return tp


def _is_dataclass(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def resolve_loc(model: Any, loc: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...]]:
    """(the annotation of the field at pydantic's ``loc`` inside ``model``, that loc without union member tags).
    The annotation is None when the path leaves the known types; a union stays the union when its member cannot be
    told (so 'expected' names every member)."""
    tp, clean = model, []
    for i, item in enumerate(loc):
        tp = _unwrap(tp)
        origin, args = get_origin(tp), get_args(tp)
        if _is_union(tp) and isinstance(item, str):  # pydantic's tag of the member it tried
            member = next((a for a in args if getattr(a, "__name__", str(a)) == item), None)
            if member is not None and i < len(loc) - 1:
                tp = member
            continue
        clean.append(item)
        if tp is None:
            continue
        if _is_dataclass(tp):
            tp = typing.get_type_hints(tp, include_extras=True).get(item) if isinstance(item, str) else None
        elif origin in (list, set, frozenset) and args:
            tp = args[0]
        elif origin is tuple and args:
            tp = args[0] if len(args) == 2 and args[1] is Ellipsis else args[min(int(item), len(args) - 1)]
        elif origin is dict and len(args) == 2:
            tp = args[1]
        else:
            tp = None
    return tp, tuple(clean)
