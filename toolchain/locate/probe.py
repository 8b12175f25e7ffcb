"""Linear probes of each head's direct contribution for the spurious attribute — the check that the heads locate
calls spurious are the ones that carry the background (or gender) cue.

For head (l, h): fit ridge regression w = argmin ||[C 1] w - t||^2 + lambda ||w||^2 on the probe-fit split (C [N, D]
the head terms, t = +1/-1 the attribute), then accuracy of sign([C 1] w) on the probe-test split.
"""

from __future__ import annotations

import torch

from toolchain.decompose.cache import DecompositionCache
from toolchain.errors import ClipDebiasError


def attribute_probe(fit: DecompositionCache, test: DecompositionCache, ridge: float = 1e-3) -> torch.Tensor:
    """[L, H] test accuracy of a per-head ridge probe for the binary attribute (caches need ``attributes``)."""
    for c in (fit, test):
        if c.attributes is None:
            raise ClipDebiasError(f"cache {c.dataset}/{c.split} has no attribute labels to probe")
    if fit.layers != test.layers:
        raise ClipDebiasError(f"probe caches cover different layers ({fit.layers} vs {test.layers})")

    def design(heads: torch.Tensor) -> torch.Tensor:  # [N, L, H, D] -> [L, H, N, D+1], float64
        h = heads.double().permute(1, 2, 0, 3)
        scale = fit.heads.double().permute(1, 2, 0, 3).std(dim=2, keepdim=True).clamp_min(1e-12)
        return torch.cat([h / scale, torch.ones(*h.shape[:-1], 1, dtype=h.dtype)], dim=-1)

    x, xt = design(fit.heads), design(test.heads)
    t = fit.attributes.double() * 2 - 1  # [N]
    gram = x.transpose(-1, -2) @ x + ridge * x.shape[2] * torch.eye(x.shape[-1], dtype=x.dtype)
    w = torch.linalg.solve(gram, x.transpose(-1, -2) @ t[:, None])  # [L, H, D+1, 1]
    pred = (xt @ w).squeeze(-1) > 0  # [L, H, N]
    return (pred == test.attributes.bool()).double().mean(dim=-1).float()


def _auc(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """[..., P], [..., Q] -> [...] P(pos > neg) + 0.5 P(pos == neg) (Mann-Whitney AUC over all pairs)."""
    diff = pos[..., :, None] - neg[..., None, :]
    return (diff > 0).double().mean(dim=(-1, -2)) + 0.5 * (diff == 0).double().mean(dim=(-1, -2))


def margin_background_auc(cache: DecompositionCache, text: torch.Tensor) -> torch.Tensor:
    """[L, H] how strongly each head's *class margin* follows the attribute, within each class.

    s_{l,h}(x) = c_{l,h}(x) . (t_1 - t_0) is the head's push towards class 1 (binary tasks). For each class y, AUC of
    s over images with attribute 1 vs attribute 0; averaged over classes, then folded as max(AUC, 1 - AUC). 0.5 = the
    head's vote ignores the attribute; 1.0 = it is decided by the attribute alone (a spurious head)."""
    if cache.attributes is None:
        raise ClipDebiasError(f"cache {cache.dataset}/{cache.split} has no attribute labels to probe")
    if text.shape[0] != 2:
        raise ClipDebiasError("margin_background_auc needs a binary task (2 class text embeddings)")
    s = torch.einsum("nlhd,d->lhn", cache.heads.double(), (text[1] - text[0]).double())
    aucs = []
    for y in cache.labels.unique():
        in_y = cache.labels == y
        pos, neg = in_y & (cache.attributes == 1), in_y & (cache.attributes == 0)
        if pos.any() and neg.any():
            aucs.append(_auc(s[..., pos], s[..., neg]))
    auc = torch.stack(aucs).mean(dim=0)
    return torch.maximum(auc, 1 - auc).float()
