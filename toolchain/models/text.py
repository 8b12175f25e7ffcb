"""Text-side constants: prompt embeddings computed once with the CLIP text tower."""

from __future__ import annotations

import torch

from clip_debias.toolchain.models.loading import LoadedClip

DEFAULT_TEMPLATES = ("a photo of a {}.",)


@torch.no_grad()
def class_text_matrix(clip: LoadedClip, class_names: list[str],
                      templates: tuple[str, ...] | list[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
    """Zero-shot classifier weights T [C, D]: per class, the mean of the unit-norm embeddings of its templated
    prompts, renormalized to unit norm (CLIP's prompt ensembling; one template = that prompt's embedding)."""
    rows = []
    for name in class_names:
        emb = clip.encode_text([t.format(name) for t in templates], normalize=True).float()
        rows.append(torch.nn.functional.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows)
