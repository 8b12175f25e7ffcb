"""Shipped prompt defaults (``waterbirds.yaml``, ``celeba.yaml``) and the readers of user prompt files.

A prompt source is ``defaults`` (the defaults of the cache's dataset), a dataset name (``waterbirds``/``celeba``)
or a YAML/JSON file. A file may be a full defaults file (a mapping holding the wanted key) or just that key's value.
Keys: ``classes`` [str], ``templates`` [str with "{}"], ``attribute_prompts`` {value: str | [str]},
``attribute_pairs`` [[p+, p-]], ``perception`` {template, class_free, contexts: {attribute: [values]}},
``minority_groups`` [group ids] (the dataset's known minority groups, group = 2y + a).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clip_debias.toolchain.errors import ClipDebiasError

DEFAULTS_DIR = Path(__file__).parent
DATASETS = ("waterbirds", "celeba")


def read_config(path: str | Path) -> Any:
    """Parse a YAML (or JSON) file; one clear line when it is missing or malformed."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ClipDebiasError(f"{path}: not found (expected a YAML or JSON prompt file)")
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as e:
        raise ClipDebiasError(f"{path}: cannot parse ({str(e).splitlines()[0][:160]})") from e


def dataset_defaults(dataset: str) -> dict[str, Any]:
    """The shipped defaults of ``dataset``."""
    if dataset not in DATASETS:
        raise ClipDebiasError(f"no shipped defaults for dataset '{dataset}' "
                              f"(defaults exist for {', '.join(DATASETS)}); "
                              "pass a prompt file instead")
    return read_config(DEFAULTS_DIR / f"{dataset}.yaml")


def resolve(source: str | Path | None, dataset: str | None, key: str, optional: bool = False
            ) -> tuple[Any, str] | None:
    """(value of ``key``, where it came from) for a prompt source, or None when ``source`` is None.

    ``source`` = ``defaults`` uses ``dataset``'s shipped file (None when ``optional`` and there is none); a dataset
    name uses that one; anything else is a file."""
    if source is None:
        return None
    source = str(source)
    if source == "defaults":
        if dataset not in DATASETS and optional:
            return None
        if dataset not in DATASETS:
            raise ClipDebiasError(f"'defaults' asked for {key}, but dataset '{dataset}' has no shipped defaults "
                                  f"({', '.join(DATASETS)}); pass a YAML file")
        source = dataset
    if source in DATASETS:
        cfg, origin = dataset_defaults(source), f"defaults:{source}"
    else:
        cfg, origin = read_config(source), source
    if isinstance(cfg, dict) and key in cfg:
        cfg = cfg[key]
    if cfg is None:
        raise ClipDebiasError(f"{origin}: no '{key}' found")
    return cfg, origin


def _strings(value: Any, where: str) -> list[str]:
    """A str or a non-empty list of str as a list."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(s, str) and s.strip() for s in items):
        raise ClipDebiasError(f"{where}: expected a prompt string or a non-empty list of prompt strings")
    return items


def parse_templates(value: Any, origin: str) -> list[str]:
    """A list of class templates, each with one ``{}`` for the class name."""
    templates = _strings(value, f"{origin}: field 'templates'")
    for t in templates:
        if "{}" not in t:
            raise ClipDebiasError(f"{origin}: template {t!r} has no '{{}}' for the class name")
    return templates


def parse_attribute_prompts(value: Any, origin: str) -> tuple[list[str], list[list[str]]]:
    """{value name: prompt | [prompts]} -> (value names, prompts per value), in file order (at least two values)."""
    if not isinstance(value, dict) or len(value) < 2:
        raise ClipDebiasError(f"{origin}: field 'attribute_prompts' must map at least two attribute values to prompts")
    return [str(k) for k in value], [_strings(v, f"{origin}: attribute_prompts.{k}") for k, v in value.items()]


def parse_attribute_pairs(value: Any, origin: str) -> list[tuple[str, str]]:
    """[[p+, p-], ...] -> list of (p+, p-) prompt pairs."""
    ok = isinstance(value, list) and value and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(s, str) and s.strip() for s in p)
        for p in value)
    if not ok:
        raise ClipDebiasError(f"{origin}: field 'attribute_pairs' must be a non-empty list of [positive, negative] "
                              "prompt pairs")
    return [(p[0], p[1]) for p in value]


def read_template_file(path: str | Path) -> list[str]:
    """Class templates from a ``.txt`` (one per line, blank lines and ``#`` comments ignored) or a YAML/JSON file."""
    path = Path(path)
    if path.suffix == ".txt":
        if not path.is_file():
            raise ClipDebiasError(f"{path}: not found (expected a template file, one template with '{{}}' per line)")
        lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines()]
        return parse_templates([s for s in lines if s and not s.startswith("#")], str(path))
    value, origin = resolve(path, None, "templates")
    return parse_templates(value, origin)


def prompt_matrix(clip: Any, rows: list[list[str]]):
    """[K, D] unit-norm text directions: row k = normalize(mean of the unit-norm embeddings of ``rows[k]``), all
    prompts encoded in one text-tower batch (CLIP prompt ensembling, as ``class_text_matrix``)."""
    import torch

    flat = [p for prompts in rows for p in prompts]
    emb = clip.encode_text(flat, normalize=True).float()
    means = torch.stack([chunk.mean(dim=0) for chunk in emb.split([len(r) for r in rows])])
    return torch.nn.functional.normalize(means, dim=-1)


# ---- one resolver per kind of prompt option (CLI values -> parsed prompts, or None) ------------------------------

def templates_for(file: str | Path | None, dataset: str | None) -> list[str] | None:
    """A template file when given, else the dataset's shipped templates, else None (the caller's default)."""
    if file is not None:
        return read_template_file(file)
    found = resolve("defaults", dataset, "templates", optional=True)
    return parse_templates(*found) if found else None


def classes_for(value: str | None, dataset: str | None) -> list[str] | None:
    """``--classes a,b`` when given, else the dataset's shipped class names, else None (the cache's)."""
    if value:
        return [c.strip() for c in value.split(",") if c.strip()]
    found = resolve("defaults", dataset, "classes", optional=True)
    return [str(c) for c in found[0]] if found else None


def attribute_prompts_for(source: str | Path | None, dataset: str | None) -> tuple[list[str], list[list[str]]] | None:
    """(attribute value names, prompts per value) from ``--attribute-prompts FILE|defaults``, or None."""
    found = resolve(source, dataset, "attribute_prompts")
    return parse_attribute_prompts(*found) if found else None


def attribute_pairs_for(source: str | Path | None, dataset: str | None,
                        optional: bool = True) -> list[tuple[str, str]] | None:
    """(p+, p-) pairs from ``--attribute-pairs FILE|defaults``; None when the dataset has no defaults."""
    found = resolve(source, dataset, "attribute_pairs", optional=optional)
    return parse_attribute_pairs(*found) if found else None


def known_minority_groups(dataset: str | None) -> list[int] | None:
    """The shipped dataset's minority group ids (group = 2y + a, from its train-split counts), else None."""
    found = resolve("defaults", dataset, "minority_groups", optional=True)
    return [int(g) for g in found[0]] if found else None


def contexts_for(source: str | Path | None, dataset: str | None, optional: bool = True):
    """A ``ContextSpec`` from ``--contexts waterbirds|celeba|FILE.yaml|defaults``; None when nothing applies."""
    from clip_debias.toolchain.correct.perception import ContextSpec

    found = resolve(source, dataset, "perception", optional=optional)
    return ContextSpec.parse(*found) if found else None
