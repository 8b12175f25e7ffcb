"""Text directions from prompts with the CLIP text tower: the default template and the one prompt-ensembling
function every stage uses (zero-shot classes, attribute values, PerceptionCLIP contexts)."""

from __future__ import annotations

import torch

from clip_debias.toolchain.models.loading import LoadedClip

DEFAULT_TEMPLATE = "a photo of a {}."  # the zero-shot template when neither the user nor the dataset gives one
DEFAULT_TEMPLATES = (DEFAULT_TEMPLATE,)


def class_prompts(class_names: list[str], templates: tuple[str, ...] | list[str] = DEFAULT_TEMPLATES
                  ) -> list[list[str]]:
    """Row c = every template filled with class c's name."""
    return [[t.format(name) for t in templates] for name in class_names]


@torch.no_grad()
def prompt_matrix(clip: LoadedClip, rows: list[list[str]]) -> torch.Tensor:
    """[K, D] float32 unit-norm text directions, CLIP's prompt ensembling: row k = normalize(mean of the unit-norm
    embeddings of the prompts ``rows[k]``) (one prompt: its embedding). All prompts go through the text tower
    (``clip.encode_text``) in one batch."""
    if not rows or any(not r for r in rows):
        raise ValueError("prompt_matrix: every row needs at least one prompt")
    emb = clip.encode_text([p for prompts in rows for p in prompts], normalize=True).float()
    means = torch.stack([chunk.mean(dim=0) for chunk in emb.split([len(r) for r in rows])])
    return torch.nn.functional.normalize(means, dim=-1)


def class_text_matrix(clip: LoadedClip, class_names: list[str],
                      templates: tuple[str, ...] | list[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
    """Zero-shot classifier weights T [C, D]: ``prompt_matrix`` of each class's templated prompts."""
    return prompt_matrix(clip, class_prompts(class_names, templates))
