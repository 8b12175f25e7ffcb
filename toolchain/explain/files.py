"""The files explain and discover write, as strict models (written from them, read back by ``report``):
``descriptions.json`` (``Descriptions``) and ``keywords.json`` (``Keywords``). Their rows reuse the result types
of ``textspan`` and ``b2t``."""

from __future__ import annotations

import json
from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field
from pydantic.dataclasses import dataclass

from clip_debias.runtime.schema import FORMAT, describe_value, read_model
from clip_debias.toolchain.explain.b2t import ATTRIBUTE_TEMPLATE, ClassKeywords
from clip_debias.toolchain.explain.textspan import HeadSpan
from clip_debias.toolchain.locate.ltc import IdentityRecord

DESCRIPTIONS_WHAT = "head descriptions written by 'clip-debias explain'"
KEYWORDS_WHAT = "keywords written by 'clip-debias discover'"
SUGGESTED_PROMPTS = 5  # keywords per class turned into suggested prompts in keywords.json


def _rank(value: Any) -> Any:
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"expected a rank >= 1 or \"auto\", got {describe_value(value)}")
    return value


RankChoice = Annotated[Any, AfterValidator(_rank), Field(description='a rank >= 1 or "auto"')]


@dataclass(config=FORMAT)
class HeadDescription(HeadSpan):
    """A described head as saved: the ``HeadSpan`` and the share of its variance all its descriptions explain."""

    explained: float = 0.0


@dataclass(config=FORMAT)
class Descriptions:
    """``descriptions.json``: TextSpan descriptions of the heads of one cache."""

    cache: str
    dataset: str
    split: str
    n: int
    model: IdentityRecord
    pool: str  # the pool file, or shipped:NAME
    pool_size: int
    per_head: Annotated[int, Field(ge=1, description="an integer >= 1")]
    rank: RankChoice  # the --rank asked for ("auto": 99% of each head's variance)
    heads: list[HeadDescription]

    def save(self, path: str | Path) -> Path:
        Path(path).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Descriptions":
        return read_model(cls, path, DESCRIPTIONS_WHAT)


def head_description(span: HeadSpan) -> HeadDescription:
    return HeadDescription(**asdict(span), explained=span.explained)


@dataclass(config=FORMAT)
class ClassKeywordsRecord(ClassKeywords):
    """One class's keywords as saved, with the attribute prompts its top keywords suggest."""

    suggested_prompts: list[str] = field(default_factory=list)


@dataclass(config=FORMAT)
class Keywords:
    """``keywords.json``: B2T keywords per class, with what they were measured on."""

    source: str  # the cache or dataset discovered on
    dataset: str
    n: int
    model: IdentityRecord
    candidates: str  # the vocabulary file, shipped:NAME, or captions:COLUMN
    classes: list[ClassKeywordsRecord]

    def save(self, path: str | Path) -> Path:
        Path(path).write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Keywords":
        return read_model(cls, path, KEYWORDS_WHAT)


def class_keywords_record(result: ClassKeywords) -> ClassKeywordsRecord:
    prompts = [ATTRIBUTE_TEMPLATE.format(cls=result.class_name, keyword=k.keyword)
               for k in result.keywords[:SUGGESTED_PROMPTS]]
    return ClassKeywordsRecord(**asdict(result), suggested_prompts=prompts)
