"""The prompt file format (YAML or JSON) and the PerceptionCLIP context spec, as strict models.

A prompt file holds any of: ``classes`` [str], ``templates`` (str or [str], each with "{}" for the class name),
``minority_groups`` [group ids] (group = 2y + a), ``attribute_prompts`` {value: prompt | [prompts]} (at least two
values, in the dataset's attribute order), ``attribute_pairs`` [[p+, p-]], ``perception`` {template with
"{class}" and "{context}", optional class_free with "{context}", contexts {attribute: [values]}}. The shipped
defaults (``data/*.yaml``) hold all of them.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict
from typing import Annotated, Any, Optional

from pydantic import AfterValidator, Field, field_validator
from pydantic.dataclasses import dataclass

from clip_debias.runtime.schema import FORMAT, describe_value

PROMPT_FILE_WHAT = "a prompt file (a YAML/JSON mapping of classes, templates, attribute_prompts, ...)"


def _prompt(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty prompt string, got {describe_value(value)}")
    return value


def _prompts(value: Any) -> list[str]:
    """A prompt or a non-empty list of prompts, as a list."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError(f"expected a prompt string or a non-empty list of prompt strings, got {describe_value(value)}")
    for item in items:
        _prompt(item)
    return items


def _templates(value: Any) -> list[str]:
    templates = _prompts(value)
    bad = next((t for t in templates if "{}" not in t), None)
    if bad is not None:
        raise ValueError(f"template {bad!r} has no '{{}}' for the class name")
    return templates


Prompt = Annotated[str, AfterValidator(_prompt)]
Prompts = Annotated[Any, AfterValidator(_prompts), Field(description="a prompt or a non-empty list of prompts")]
Templates = Annotated[Any, AfterValidator(_templates),
                      Field(description="a template with '{}' for the class name, or a list of them")]
AttributePrompts = Annotated[dict[str, Prompts], Field(
    min_length=2, description="an object mapping at least two attribute values to their prompts")]
PromptPair = Annotated[list[Prompt], Field(min_length=2, max_length=2,
                                           description="a [positive, negative] prompt pair")]
PromptPairs = Annotated[list[PromptPair], Field(min_length=1,
                                                description="a non-empty list of [positive, negative] prompt pairs")]
NonEmptyStrings = Annotated[list[str], Field(min_length=1, description="a non-empty list of strings")]
ContextValues = Annotated[dict[str, NonEmptyStrings], Field(
    min_length=1, description="an object mapping each context attribute to a non-empty list of values")]


@dataclass(config=FORMAT)
class PerceptionPrompts:
    """A prompt file's ``perception`` entry: prompt template with ``{class}`` and ``{context}``, the context
    attributes {name: [values]} (combinations in row-major order of the attributes as given) and an optional
    class-free template with ``{context}``."""

    template: str
    contexts: ContextValues
    class_free: Optional[str] = None

    @field_validator("template")
    @classmethod
    def _template(cls, template: str) -> str:
        if "{class}" not in template or "{context}" not in template:
            raise ValueError(f"expected a template with '{{class}}' and '{{context}}', got {describe_value(template)}")
        return template

    @field_validator("class_free")
    @classmethod
    def _class_free(cls, template: str | None) -> str | None:
        if template is not None and "{context}" not in template:
            raise ValueError(f"expected a template with '{{context}}', got {describe_value(template)}")
        return template


@dataclass(config=FORMAT)
class ContextSpec(PerceptionPrompts):
    """PerceptionCLIP contexts with where they came from (``origin``: a file or 'defaults:DATASET'), as a built
    model's config.json records them (``head.context_spec``)."""

    origin: str = ""

    def combinations(self) -> list[str]:
        """The Z context phrases: values of one combination joined with ", "."""
        return [", ".join(combo) for combo in itertools.product(*self.contexts.values())]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(config=FORMAT)
class PromptFile:
    """A prompt file (see module doc). Every key may be left out (then None); a null value is refused."""

    classes: list[str] = None  # type: ignore[assignment]
    templates: Templates = None
    minority_groups: list[int] = None  # type: ignore[assignment]
    attribute_prompts: AttributePrompts = None
    attribute_pairs: PromptPairs = None
    perception: PerceptionPrompts = None  # type: ignore[assignment]
