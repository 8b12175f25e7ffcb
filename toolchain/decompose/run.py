"""Decompose a whole dataset split into a ``DecompositionCache`` (batched, with a progress bar)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clip_debias.runtime.datasets import DatasetIndex
from clip_debias.toolchain.decompose.cache import DecompositionCache
from clip_debias.toolchain.decompose.contributions import Decomposer
from clip_debias.toolchain.models.loading import LoadedClip
from clip_debias.toolchain.models.tower import ExplicitViT


def decompose_dataset(
    clip: LoadedClip,
    index: DatasetIndex,
    layers: list[int],
    batch_size: int = 32,
    device: str = "cpu",
    skip_bad: bool = False,
    skipped_log: Path | None = None,
    progress: bool = True,
    **reading: Any,
) -> DecompositionCache:
    """Run every image of ``index`` through open_clip's preprocessing and the ``Decomposer`` for ``layers``.

    Rows follow the order of the images that loaded (with ``skip_bad``, unreadable ones are left out and listed in
    ``skipped_log``). Terms are stored in float32 whatever the compute dtype. ``reading``: ``max_skipped``,
    ``max_pixels``, ``force`` of ``iter_batches``.
    """
    from clip_debias.toolchain.datasets import iter_batches

    tower = ExplicitViT.from_open_clip(clip.model.visual)
    decomposer = Decomposer(tower, layers).to(device)
    dtype = tower.conv1.weight.dtype
    heads, rest, labels, groups, attrs, paths = [], [], [], [], [], []
    for batch in iter_batches(index, clip.preprocess, batch_size=batch_size, skip_bad=skip_bad,
                              skipped_log=skipped_log, progress=progress, **reading):
        hc = decomposer(batch.images.to(device=device, dtype=dtype))
        heads.append(hc.heads.float().cpu())
        rest.append(hc.rest.float().cpu())
        labels.append(batch.labels)
        groups.append(batch.groups)
        if batch.attributes is not None:
            attrs.append(batch.attributes)
        paths.extend(batch.paths)
    if not heads:
        from clip_debias.toolchain.errors import ClipDebiasError

        raise ClipDebiasError(f"{index.root}: no image of split '{index.split}' could be read")
    return DecompositionCache(
        heads=torch.cat(heads), rest=torch.cat(rest), labels=torch.cat(labels), groups=torch.cat(groups),
        attributes=torch.cat(attrs) if attrs else None,
        layers=list(layers), identity=clip.identity, dataset=index.dataset, split=index.split,
        class_names=list(index.class_names), group_names=list(index.group_names),
        attribute_names=list(index.attribute_names), paths=paths,
    )
