"""What the metrics beyond accuracy read from a dataset index (torch-free): ``metric_inputs(index, options)`` ->
``runtime.metrics.BiasInputs``.

- **protected attribute**: ``index.protected`` (``load_index``'s ``protected``, default the dataset's first
  attribute: waterbirds/lab ``place``, celeba ``Male``, fairface ``gender`` (``race`` for target gender), a csv's
  first attribute column).
- **shortcut attributes** (Whac-A-Mole gaps): ``options.shortcut_attributes`` (background-like, co-object-like),
  else the dataset's attributes when it has exactly two (lab data made with ``--shortcuts background,object``:
  ``place``, ``object``); each must have one value per class (value v agrees with class v).
- **train correlation**, one per shortcut attribute (Whac-A-Mole's ``bg_ratio`` and ``co_occur_obj_ratio``):
  ``options.train_correlation`` (one fraction for both, or ``{"background": p, "object": p}``), else
  ``DATA/lab.json``'s ``correlations`` per attribute name or its ``correlation`` for both (bias-lab data: the
  agreement of its own train split), else UrbanCars' 0.95 for both.
- **pairs**: the records' counterfactual pair ids (csv ``pair`` column; lab data made with ``--counterfactual``).

A section the data cannot give is named in ``BiasInputs.missing`` with the reason, the words ``verify`` uses to
refuse a gate that would need it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clip_debias.runtime.datasets import DatasetIndex
from clip_debias.runtime.errors import InputError
from clip_debias.runtime.metrics import (DEFAULT_P_AGREE, DEFAULT_SKEW_K, AttributeColumn, BiasInputs,
                                         class_aligned)

ROLES = ("background", "object")  # the two shortcut attributes' roles (--train-correlation background=P,object=P)

LAB_INFO = "lab.json"  # written by 'clip-debias lab make-data' (toolchain.lab.data.LAB_MARKER)
LAB_GENERATOR = "clip-debias lab"


@dataclass(frozen=True)
class MetricOptions:
    """The options of the metrics beyond accuracy (``verify`` / ``evaluate``): ``shortcut_attributes``
    (``--shortcut-attributes BG,COOBJ``), ``train_correlation`` (``--train-correlation``: one fraction for both
    shortcut attributes, or one per role in ``ROLES``), ``skew_k`` (``--skew-k``)."""

    shortcut_attributes: tuple[str, str] | None = None
    train_correlation: float | dict[str, float] | None = None
    skew_k: tuple[int, ...] = DEFAULT_SKEW_K

    def __post_init__(self) -> None:
        given = self.train_correlation
        values = given.values() if isinstance(given, dict) else [] if given is None else [given]
        if isinstance(given, dict) and set(given) != set(ROLES):
            raise InputError(f"--train-correlation: expected one fraction, or both of {', '.join(ROLES)} "
                             "(background=0.95,object=0.9)")
        if any(not 0.0 <= v <= 1.0 for v in values):
            raise InputError(f"--train-correlation {given}: expected a fraction in [0, 1] (one per attribute, or one "
                             "for both)")
        if not self.skew_k or any(k < 1 for k in self.skew_k):
            raise InputError(f"--skew-k {','.join(map(str, self.skew_k))}: expected integers >= 1")
        if self.shortcut_attributes is not None and (len(self.shortcut_attributes) != 2
                                                     or len(set(self.shortcut_attributes)) != 2):
            raise InputError(f"--shortcut-attributes {','.join(self.shortcut_attributes)}: expected two different "
                             "attribute names (background-like, co-object-like)")


def lab_correlation(root: Path) -> float | dict[str, float] | None:
    """What ``root/lab.json`` (the bias lab's generator's) records of its train split's agreement: ``correlations``
    ({attribute name: fraction}) when present, else the ``correlation`` of every attribute; None when there is no
    such file. A lab.json that is not the generator's, or without a valid value, is one ``InputError`` line."""
    path = root / LAB_INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e}); pass --train-correlation to set p_agree") from None
    if not isinstance(info, dict) or info.get("generator") != LAB_GENERATOR:
        return None  # someone else's lab.json: not ours to read
    per = info.get("correlations")
    if isinstance(per, dict):
        return {str(k): _fraction(path, f"correlations.{k}", v) for k, v in per.items()}
    return _fraction(path, "correlation", info.get("correlation"))


def _fraction(path: Path, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InputError(f"{path}: field '{name}': expected a fraction in [0, 1], got {value!r}; pass "
                         "--train-correlation to set p_agree")
    return float(value)


@dataclass
class MetricSource:
    """The rows' metadata the metrics read, from a dataset index (``source_of_index``) or a decomposition cache:
    ``where`` names the data in reasons; ``attributes`` every attribute with its value id per row; ``protected``
    one of their names (or None); ``pairs`` [N] pair ids (-1: not in a pair; None: no pair at all);
    ``train_correlation`` what the data records of its train split (None: nothing) and the file it was read from."""

    where: str
    dataset: str
    class_names: list[str]
    attributes: list[AttributeColumn]
    protected: str | None
    pairs: np.ndarray | None
    train_correlation: float | dict[str, float] | None = None  # one for every attribute, or per attribute name
    train_correlation_from: str = ""

    def attribute(self, name: str) -> AttributeColumn:
        return next(a for a in self.attributes if a.name == name)

    def with_protected(self, name: str | None) -> "MetricSource":
        """This source with ``name`` as the protected attribute (None: unchanged); one line when it has no such
        attribute."""
        if name is None:
            return self
        names = [a.name for a in self.attributes]
        if name not in names:
            raise InputError(f"--protected {name}: {self.where} has "
                             + (f"the attribute(s) {', '.join(names)}" if names else "no attribute"))
        return dataclasses.replace(self, protected=name)


def source_of_index(index: DatasetIndex) -> MetricSource:
    """The ``MetricSource`` of every record of ``index`` (the train correlation from ``DATA/lab.json``)."""
    columns = [AttributeColumn(a.name, np.asarray(index.attribute_ids(a.name), dtype=np.int64), tuple(a.values))
               for a in index.all_attributes()]
    pair_ids = np.asarray([-1 if r.pair is None else r.pair for r in index.records], dtype=np.int64)
    recorded = lab_correlation(index.root)
    return MetricSource(f"{index.root} ({index.dataset}, split {index.split})", index.dataset,
                        list(index.class_names), columns, index.protected,
                        pair_ids if (pair_ids >= 0).any() else None, recorded,
                        f"{index.root / LAB_INFO}" if recorded is not None else "")


def _shortcuts(source: MetricSource, chosen: tuple[str, str] | None
               ) -> tuple[tuple[AttributeColumn, AttributeColumn] | None, str]:
    """The two shortcut attributes, or None and why not. A name ``chosen`` that the data lacks: ``InputError``."""
    names = [a.name for a in source.attributes]
    if chosen is not None:
        unknown = [n for n in chosen if n not in names]
        if unknown:
            raise InputError(f"--shortcut-attributes {','.join(chosen)}: {source.where} has no attribute "
                             f"{unknown[0]} (its attributes: {', '.join(names) or 'none'})")
    elif len(names) != 2:
        return None, (f"the gaps need two spurious attributes; {source.where} has {len(names)}"
                      + (f" ({', '.join(names)})" if names else "")
                      + ("; name two with --shortcut-attributes" if len(names) > 2 else ""))
    pair = tuple(source.attribute(n) for n in (chosen or names))
    unaligned = [a for a in pair if not class_aligned(a, source.class_names)]
    if unaligned:
        a = unaligned[0]
        return None, (f"attribute '{a.name}' has {len(a.names)} values for {len(source.class_names)} classes (the "
                      "gaps need one value per class: value v agrees with class v)")
    return pair, ""  # type: ignore[return-value]


def _p_agree(source: MetricSource, given: float | dict[str, float] | None,
             shortcuts: tuple[AttributeColumn, AttributeColumn]) -> tuple[float, float, str]:
    """(background's, object's train correlation, where they come from)."""
    if given is not None:
        pair = (given["background"], given["object"]) if isinstance(given, dict) else (given, given)
        return *pair, "--train-correlation"
    recorded = source.train_correlation
    if isinstance(recorded, dict):
        absent = [a.name for a in shortcuts if a.name not in recorded]
        if absent:
            raise InputError(f"{source.train_correlation_from}: 'correlations' has no value for attribute "
                             f"{absent[0]}; pass --train-correlation background=P,object=P")
        recorded_pair = (recorded[shortcuts[0].name], recorded[shortcuts[1].name])
        return *recorded_pair, f"{source.train_correlation_from} (the correlations of its train split)"
    if recorded is not None:
        return recorded, recorded, f"{source.train_correlation_from} (the correlation of its train split)"
    return (DEFAULT_P_AGREE, DEFAULT_P_AGREE,
            "UrbanCars' default (the data records no train correlation; set --train-correlation)")


def metric_inputs(source: MetricSource | DatasetIndex, options: MetricOptions | None = None) -> BiasInputs:
    """The ``BiasInputs`` of the source's rows (a ``DatasetIndex``: every record; see the module docstring)."""
    if isinstance(source, DatasetIndex):
        source = source_of_index(source)
    options = options or MetricOptions()
    missing: dict[str, str] = {}
    protected = source.attribute(source.protected) if source.protected is not None else None
    if protected is None:
        reason = (f"{source.where} has no protected attribute"
                  + (" (a csv names its attributes by extra columns)" if source.dataset == "csv" else ""))
        missing["skew"] = missing["parity"] = reason
    shortcuts, why = _shortcuts(source, options.shortcut_attributes)
    p_agree, p_object, p_from = (_p_agree(source, options.train_correlation, shortcuts) if shortcuts is not None
                                 else (DEFAULT_P_AGREE, DEFAULT_P_AGREE, ""))
    if shortcuts is None:
        missing["shortcut_gaps"] = why
    if source.pairs is None:
        missing["counterfactual"] = (f"{source.where} has no counterfactual pairs (a csv 'pair' column; lab data "
                                     "made with 'lab make-data --counterfactual')")
    return BiasInputs(list(source.class_names), protected, shortcuts, source.pairs, p_agree, p_from,
                      tuple(options.skew_k), missing, p_object)
