"""Shipped prompt defaults (``data/waterbirds.yaml``, ``data/celeba.yaml``) and the readers of user prompt files.

A prompt source is ``defaults`` (the defaults of the cache's dataset), a dataset name (``waterbirds``/``celeba``)
or a YAML/JSON file. A file may be a full prompt file (a mapping of the keys of ``files.PromptFile``, validated as
one) or just one key's value. Every value is validated by ``PromptFile``: one line naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from clip_debias.runtime.schema import validate
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.prompts.files import PROMPT_FILE_WHAT, ContextSpec, PromptFile

DEFAULTS_DIR = Path(__file__).parent / "data"
DATASETS = ("waterbirds", "celeba")
PROMPT_KEYS = tuple(f.name for f in dataclasses.fields(PromptFile))


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
    """The shipped defaults of ``dataset`` (raw mapping)."""
    if dataset not in DATASETS:
        raise ClipDebiasError(f"no shipped defaults for dataset '{dataset}' "
                              f"(defaults exist for {', '.join(DATASETS)}); "
                              "pass a prompt file instead")
    return read_config(DEFAULTS_DIR / f"{dataset}.yaml")


def prompt_value(key: str, value: Any, origin: str) -> Any:
    """``value`` validated as the prompt file's field ``key`` (lines name ``origin`` and the field)."""
    return getattr(validate(PromptFile, {key: value}, origin, PROMPT_FILE_WHAT), key)


def resolve(source: str | Path | None, dataset: str | None, key: str, optional: bool = False
            ) -> tuple[Any, str] | None:
    """(validated value of ``key``, where it came from) for a prompt source, or None when ``source`` is None.

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
    if isinstance(cfg, dict) and set(cfg) & set(PROMPT_KEYS):  # a prompt file: every key is checked
        value = getattr(validate(PromptFile, cfg, origin, PROMPT_FILE_WHAT), key)
    else:  # the value of ``key`` alone
        value = prompt_value(key, cfg, origin) if cfg is not None else None
    if value is None:
        raise ClipDebiasError(f"{origin}: no '{key}' found")
    return value, origin


def read_template_file(path: str | Path) -> list[str]:
    """Class templates from a ``.txt`` (one per line, blank lines and ``#`` comments ignored) or a YAML/JSON file."""
    path = Path(path)
    if path.suffix == ".txt":
        if not path.is_file():
            raise ClipDebiasError(f"{path}: not found (expected a template file, one template with '{{}}' per line)")
        lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines()]
        return prompt_value("templates", [s for s in lines if s and not s.startswith("#")], str(path))
    return resolve(path, None, "templates")[0]


# ---- one resolver per kind of prompt option (CLI values -> validated prompts, or None) -------------------------

def templates_for(file: str | Path | None, dataset: str | None) -> list[str] | None:
    """A template file when given, else the dataset's shipped templates, else None (the caller's default)."""
    if file is not None:
        return read_template_file(file)
    found = resolve("defaults", dataset, "templates", optional=True)
    return found[0] if found else None


def classes_for(value: str | None, dataset: str | None) -> list[str] | None:
    """``--classes a,b`` when given, else the dataset's shipped class names, else None (the cache's)."""
    if value:
        return [c.strip() for c in value.split(",") if c.strip()]
    found = resolve("defaults", dataset, "classes", optional=True)
    return found[0] if found else None


def attribute_prompts_for(source: str | Path | None, dataset: str | None) -> tuple[list[str], list[list[str]]] | None:
    """(attribute value names, prompts per value) from ``--attribute-prompts FILE|defaults``, or None."""
    found = resolve(source, dataset, "attribute_prompts")
    return (list(found[0]), list(found[0].values())) if found else None


def attribute_pairs_for(source: str | Path | None, dataset: str | None,
                        optional: bool = True) -> list[tuple[str, str]] | None:
    """(p+, p-) pairs from ``--attribute-pairs FILE|defaults``; None when the dataset has no defaults."""
    found = resolve(source, dataset, "attribute_pairs", optional=optional)
    return [(p, n) for p, n in found[0]] if found else None


def known_minority_groups(dataset: str | None, n_groups: int = 4) -> list[int] | None:
    """The shipped dataset's minority group ids (group = 2y + a, from its train-split counts), else None; None too
    when the data has ``n_groups`` != 4 (e.g. the two-shortcut lab data's 8 groups 4y + 2place + object, where the
    ids mean other groups)."""
    found = resolve("defaults", dataset, "minority_groups", optional=True)
    return found[0] if found and n_groups == 4 else None


def contexts_for(source: str | Path | None, dataset: str | None, optional: bool = True) -> ContextSpec | None:
    """A ``ContextSpec`` from ``--contexts waterbirds|celeba|FILE.yaml|defaults``; None when nothing applies."""
    found = resolve(source, dataset, "perception", optional=optional)
    return ContextSpec(**dataclasses.asdict(found[0]), origin=found[1]) if found else None
