"""Locate from counterfactual pairs (``clip-debias locate --from-pairs``): the heads whose direct-effect margin changes
most between the two images of a pair -- a way to find the heads that carry the protected attribute without group
labels (no minority groups, no right/wrong split).

For a pair (x, x') of class y whose images differ only in the protected attribute, each head's LTC margin is taken
along one direction for both images, d_{l,h}(x) = c_{l,h}(x) . (t_y - t_r): y the pair's class and r the class other
than y with the largest logit averaged over the two images (two classes: the other one). This is LTC's margin
(``ltc.head_margins``) with its sign fixed by the true class instead of each image's own prediction, so that the two
images are measured on one axis (with LTC's per-image direction a pair whose prediction flips would compare margins
of opposite signs). Each head's statistic is its mean change, and the heads kept follow LTC's own rule
(``ltc.argmax_fractions`` / ``ltc.select_heads``) with pairs in place of wrong images:

    s_{l,h}  = mean over pairs |d_{l,h}(x) - d_{l,h}(x')|                    (``pair_change_grid``, ``pair_change``)
    n_P(l,h) = |{pairs whose largest |d(x) - d(x')| is at (l, h)}| / #pairs  (``n_wrong_grid``; ``n_correct`` = 0)
    K = #{n_P > 0},  spurious = {n_P > 1/K}, largest first, at most ``max_spurious``
    (K = 1, one head moving most in every pair: that head; the strict rule would keep none)

No salient heads: pairs say what moves with the attribute, not what carries the class. Pairs count as
``runtime.metrics.counterfactual_flips`` counts them: two images of one pair id, of one class, and when the cache
names a protected attribute, differing in it.
"""

from __future__ import annotations

import torch

from clip_debias.runtime.metrics import pair_rows
from clip_debias.toolchain.decompose.cache import DecompositionCache
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.locate.ltc import (HeadScore, LocatePlan, argmax_fractions, require_same_backbone,
                                              select_heads)
from clip_debias.toolchain.models.loading import LoadedClip
from clip_debias.toolchain.prompts.text import DEFAULT_TEMPLATES, class_text_matrix


def counted_pairs(cache: DecompositionCache) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(first rows [P], second rows [P], what was left out) of the cache's pairs (module docstring); one line when
    the cache has none, or no pair that counts."""
    where = cache.where()
    if cache.pairs is None:
        raise ClipDebiasError(f"--from-pairs: {where} has no counterfactual pairs (decompose a split with pair ids: a "
                              "csv 'pair' column, lab data made with 'lab make-data --counterfactual')")
    try:
        first, second, incomplete = pair_rows(cache.pairs.numpy())
    except ValueError as e:
        raise ClipDebiasError(f"--from-pairs: {where}: {e}") from None
    labels = cache.labels.numpy()
    if (labels[first] != labels[second]).any():
        bad = int(cache.pairs[int(first[labels[first] != labels[second]][0])])
        raise ClipDebiasError(f"--from-pairs: {where}: pair {bad} has two labels (a counterfactual pair shares its "
                              "class)")
    left_out = [f"{incomplete} incomplete"] if incomplete else []
    if cache.protected is not None:
        column = cache.attribute_columns.index(cache.protected)
        ids = cache.attribute_table[:, column].numpy()  # type: ignore[index]
        differs = ids[first] != ids[second]
        left_out += [f"{int((~differs).sum())} with the same {cache.protected}"] if (~differs).any() else []
        first, second = first[differs], second[differs]
    if len(first) == 0:
        raise ClipDebiasError(f"--from-pairs: {where} has no complete pair"
                              + (f" differing in '{cache.protected}'" if cache.protected else ""))
    return torch.from_numpy(first), torch.from_numpy(second), ", ".join(left_out)


def pair_directions(logits: torch.Tensor, labels: torch.Tensor, first: torch.Tensor,
                    second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [P], r [P]): each pair's class and the other class with the largest logit averaged over its two images."""
    y = labels[first]
    mean = (logits[first] + logits[second]) / 2
    mean[torch.arange(len(y)), y] = -torch.inf
    return y, mean.argmax(dim=1)


def pair_change(cache: DecompositionCache, text: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(|d(x) - d(x')| [P, L, H] of the counted pairs, what was left out); the terms are read chunk by chunk (memory:
    one chunk plus the [N, L, H] margins)."""
    first, second, left_out = counted_pairs(cache)
    text = text.float()
    labels = cache.labels.long()
    y, r = pair_directions(cache.embeddings().float() @ text.T, labels, first, second)
    direction = torch.zeros(len(cache), text.shape[1])
    direction[first] = direction[second] = text[y] - text[r]  # rows outside a counted pair: 0 (unused)
    margins = torch.empty(cache.heads.shape[:3])
    for start, chunk in cache.heads.chunks():
        stop = start + chunk.shape[0]
        margins[start:stop] = torch.einsum("nlhd,nd->nlh", chunk, direction[start:stop])
    return (margins[first] - margins[second]).abs(), left_out


def locate_pairs_terms(cache: DecompositionCache, text: torch.Tensor, *, class_names: list[str] | None = None,
                       templates: list[str] | None = None, max_spurious: int | None = None) -> LocatePlan:
    """A ``method="pairs"`` plan of ``cache`` with the class text matrix ``text`` [C, D] already computed."""
    class_names = list(class_names or cache.class_names)
    if text.shape[0] != len(class_names) or len(class_names) < 2:
        raise ClipDebiasError(f"{len(class_names)} class names for a text matrix of {text.shape[0]} rows (locate "
                              "needs at least two classes)")
    delta, left_out = pair_change(cache, text)
    n_pairs = delta.shape[0]
    n_p = argmax_fractions(delta, torch.ones(n_pairs, dtype=torch.bool))
    zeros = torch.zeros_like(n_p)
    spurious, _, k, threshold = select_heads(n_p, zeros, cache.layers, max_spurious, None)
    if k == 1 and max_spurious != 0:  # one head wins every pair: n_P = 1 = 1/K (see the module docstring)
        i, j = (n_p > 0).nonzero()[0].tolist()
        spurious = [HeadScore([cache.layers[i], j], 1.0, 0.0, 1.0)]
    change = delta.double().mean(dim=0)
    for s in spurious:
        s.pair_change = float(change[cache.layers.index(s.head[0]), s.head[1]])
    note = f"{n_pairs} counterfactual pairs" + (f" ({left_out} left out)" if left_out else "") + "; no group labels"
    return LocatePlan(
        spurious=spurious, salient=[], k=k, threshold=threshold, layers=list(cache.layers),
        n_heads=int(cache.heads.shape[2]), n_wrong_grid=n_p.tolist(), n_correct_grid=zeros.tolist(),
        minority_groups=[],
        minority_group_names=[], minority_source="pairs", minority_note=note, group_source="pairs", n_minority=0,
        n_wrong=0, n_correct=0, dataset=cache.dataset, split=cache.split, n=len(cache),
        identity=cache.identity.to_dict(), class_names=class_names, templates=list(templates or []),
        convention=cache.convention, protocol="default", tower_layers=cache.tower_layers,  # type: ignore[arg-type]
        max_spurious=max_spurious, method="pairs", pair_change_grid=change.tolist(), n_pairs=n_pairs,
    )


def locate_pairs(cache: DecompositionCache, clip: LoadedClip, *, class_names: list[str] | None = None,
                 templates: list[str] | None = None, max_spurious: int | None = None) -> LocatePlan:
    """``locate_pairs_terms`` with the text tower of ``clip`` (a ``LoadedClip`` of the cache's backbone);
    ``templates`` default to ``DEFAULT_TEMPLATES``."""
    require_same_backbone(clip.identity, cache.identity, f"cache {cache.dataset}/{cache.split}")
    class_names = list(class_names or cache.class_names)
    templates = list(templates or DEFAULT_TEMPLATES)
    return locate_pairs_terms(cache, class_text_matrix(clip, class_names, templates), class_names=class_names,
                              templates=templates, max_spurious=max_spurious)
