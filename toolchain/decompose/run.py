"""Decompose a whole dataset split into a ``DecompositionCache`` (batched, with a progress bar), streamed to a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from clip_debias.runtime.datasets import DatasetIndex
from clip_debias.runtime.metric_inputs import source_of_index
from clip_debias.toolchain.decompose.cache import CacheWriter, DecompositionCache, load_cache
from clip_debias.toolchain.decompose.conventions import DEFAULT_CONVENTION
from clip_debias.toolchain.decompose.towers import decomposer_for
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.loading import LoadedClip


def decompose_dataset(
    clip: LoadedClip,
    index: DatasetIndex,
    layers: list[int],
    batch_size: int = 32,
    device: str = "cpu",
    skip_bad: bool = False,
    skipped_log: Path | None = None,
    progress: bool = True,
    convention: str = DEFAULT_CONVENTION,
    out: str | Path | None = None,
    terms_dtype: torch.dtype = torch.float32,
    force: bool = False,
    preprocess: Callable | None = None,
    **reading: Any,
) -> DecompositionCache:
    """Run every image of ``index`` through open_clip's preprocessing and the ``Decomposer`` for ``layers``.

    With ``out``, each batch's terms go to that file as they come (memory: one batch, plus [N, D] tensors) and the
    cache returned reads them from there; without it, everything stays in memory. Rows follow the order of the images
    that loaded (with ``skip_bad``, unreadable ones are left out and listed in ``skipped_log``). ``force`` replaces
    files that are not ours (``out``, the skipped list); ``preprocess`` replaces the model's own (the audit's
    corruptions insert a step into it); ``reading``: ``max_skipped``, ``max_pixels`` of ``iter_batches``."""
    from clip_debias.toolchain.datasets import iter_batches

    tower = clip.tower
    decomposer = decomposer_for(tower, layers, convention).to(device)
    dtype = next(clip.model.visual.parameters()).dtype
    shape = (len(layers), tower.heads, tower.embed_dim)
    source = source_of_index(index)
    table = torch.from_numpy(np.stack([a.ids for a in source.attributes], axis=1)) if source.attributes else None
    pairs = torch.from_numpy(source.pairs) if source.pairs is not None else None

    def metric_rows(batch: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The batch's rows of the attribute table and of the pair ids."""
        return (table[batch.indices] if table is not None else None,
                pairs[batch.indices] if pairs is not None else None)

    fields = dict(layers=list(layers), identity=clip.identity, dataset=index.dataset, split=index.split,
                  class_names=list(index.class_names), group_names=list(index.group_names),
                  attribute_names=list(index.attribute_names), convention=convention,
                  tower_layers=tower.layers, attribute_columns=[a.name for a in source.attributes],
                  attribute_values=[list(a.names) for a in source.attributes], protected=source.protected,
                  train_correlation=source.train_correlation,
                  train_correlation_from=source.train_correlation_from)
    batches = iter_batches(index, preprocess or clip.preprocess, batch_size=batch_size, skip_bad=skip_bad,
                           skipped_log=skipped_log, progress=progress, force=force, what="decompose", **reading)
    if out is None:
        parts: dict[str, list] = {"heads": [], "rest": [], "emb": [], "labels": [], "groups": [], "attrs": [],
                                  "paths": [], "table": [], "pairs": []}
        for batch in batches:
            hc = decomposer(batch.images.to(device=device, dtype=dtype))
            for key, value in (("heads", hc.heads), ("rest", hc.rest), ("emb", hc.embeddings)):
                parts[key].append(value.float().cpu())
            parts["labels"].append(batch.labels)
            parts["groups"].append(batch.groups)
            if batch.attributes is not None:
                parts["attrs"].append(batch.attributes)
            parts["paths"].extend(batch.paths)
            rows_table, rows_pairs = metric_rows(batch)
            parts["table"] += [rows_table] if rows_table is not None else []
            parts["pairs"] += [rows_pairs] if rows_pairs is not None else []
        if not parts["heads"]:
            raise ClipDebiasError(f"{index.root}: no image of split '{index.split}' could be read")
        return DecompositionCache(
            heads=torch.cat(parts["heads"]), rest=torch.cat(parts["rest"]), labels=torch.cat(parts["labels"]),
            groups=torch.cat(parts["groups"]), attributes=torch.cat(parts["attrs"]) if parts["attrs"] else None,
            paths=parts["paths"], stored_embeddings=torch.cat(parts["emb"]),
            attribute_table=torch.cat(parts["table"]) if parts["table"] else None,
            pairs=torch.cat(parts["pairs"]) if parts["pairs"] else None, **fields)
    all_paths = [str(r.path) for r in index.records]
    with CacheWriter(out, shape=shape, max_rows=len(index.records), max_paths=all_paths, terms_dtype=terms_dtype,
                     force=force, pairs=pairs is not None, **fields) as writer:
        for batch in batches:
            hc = decomposer(batch.images.to(device=device, dtype=dtype))
            writer.add(hc.heads, hc.rest, hc.embeddings, batch.labels, batch.groups, batch.attributes, batch.paths,
                       *metric_rows(batch))
        if writer.rows == 0:
            raise ClipDebiasError(f"{index.root}: no image of split '{index.split}' could be read")
        writer.close()
    return load_cache(out)
