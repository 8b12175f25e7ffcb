"""Linear probes of each head's direct contribution for the spurious attribute — the check that the heads locate
calls spurious are the ones that carry the background (or gender) cue.

For head (l, h): fit ridge regression w = argmin ||[C 1] w - t||^2 + lambda ||w||^2 on the probe-fit split (C [N, D]
the head terms, t = +1/-1 the attribute), then accuracy of sign([C 1] w) on the probe-test split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clip_debias.toolchain.decompose.cache import DecompositionCache
from clip_debias.toolchain.errors import ClipDebiasError


def attribute_probe(fit: DecompositionCache, test: DecompositionCache, ridge: float = 1e-3) -> torch.Tensor:
    """[L, H] test accuracy of a per-head ridge probe for the binary attribute (caches need ``attributes``); one
    head's terms in memory at a time."""
    for c in (fit, test):
        if c.attributes is None:
            raise ClipDebiasError(f"cache {c.dataset}/{c.split} has no attribute labels to probe")
    if fit.layers != test.layers:
        raise ClipDebiasError(f"probe caches cover different layers ({fit.layers} vs {test.layers})")
    t = fit.attributes.double() * 2 - 1  # [N]
    _, n_layers, n_heads, _ = fit.heads.shape
    acc = torch.zeros(n_layers, n_heads)
    for i in range(n_layers):
        for h in range(n_heads):
            x = fit.heads.select([(i, h)])[:, 0].double()  # [N, D]
            scale = x.std(dim=0, keepdim=True).clamp_min(1e-12)

            def design(terms: torch.Tensor) -> torch.Tensor:  # [N, D] -> [N, D+1]
                return torch.cat([terms / scale, torch.ones(terms.shape[0], 1, dtype=terms.dtype)], dim=-1)

            xf, xt = design(x), design(test.heads.select([(i, h)])[:, 0].double())
            gram = xf.T @ xf + ridge * xf.shape[0] * torch.eye(xf.shape[-1], dtype=xf.dtype)
            w = torch.linalg.solve(gram, xf.T @ t[:, None])  # [D+1, 1]
            acc[i, h] = ((xt @ w).squeeze(-1) > 0).eq(test.attributes.bool()).double().mean()
    return acc



@dataclass
class MarginShifts:
    """How each head's class vote moves, in logits. s_{l,h}(x) = logit_scale * c_{l,h}(x) . (t_1 - t_0).

    background [L, H]: mean over classes y of E[s | y, a=1] - E[s | y, a=0]  (attribute flipped, class held fixed)
    object     [L, H]: mean over attributes a of E[s | y=1, a] - E[s | y=0, a]  (class flipped, attribute held fixed)
    A spurious head has a large |background| shift; a salient head a large object shift.
    """

    background: torch.Tensor
    object: torch.Tensor


def margin_shifts(cache: DecompositionCache, text: torch.Tensor, logit_scale: float = 100.0) -> MarginShifts:
    """Per-head shifts of the binary class margin (see ``MarginShifts``); needs ``cache.attributes`` and 2 classes."""
    if cache.attributes is None:
        raise ClipDebiasError(f"cache {cache.dataset}/{cache.split} has no attribute labels to probe")
    if text.shape[0] != 2:
        raise ClipDebiasError("margin_shifts needs a binary task (2 class text embeddings)")
    direction = (text[1] - text[0]).double()
    s = logit_scale * torch.cat([torch.einsum("nlhd,d->lhn", chunk.double(), direction)
                                 for _, chunk in cache.heads.chunks()], dim=-1)
    y, a = cache.labels, cache.attributes

    def mean(mask: torch.Tensor) -> torch.Tensor:
        if not mask.any():
            raise ClipDebiasError(f"cache {cache.dataset}/{cache.split} lacks a (class, attribute) group to probe")
        return s[..., mask].mean(dim=-1)

    bg = torch.stack([mean((y == c) & (a == 1)) - mean((y == c) & (a == 0)) for c in (0, 1)]).mean(dim=0)
    obj = torch.stack([mean((y == 1) & (a == v)) - mean((y == 0) & (a == v)) for v in (0, 1)]).mean(dim=0)
    return MarginShifts(background=bg.float(), object=obj.float())
