"""TextSpan (Gandelsman et al.): describe what an attention head writes with a few text descriptions.

For one head, C [N, D] are its direct contributions over N images (cache rows), centred over images. T [M, D] are the
description pool's unit-norm text embeddings, centred over the pool. With V_r [r, D] the top-r right singular vectors
of C (the head's output space), the texts are projected onto that space: T <- T V_r^T V_r. Then, greedily, k times:

    Sigma = C^T C / N                                    (covariance of the residual C, [D, D])
    score(m) = t_m Sigma t_m^T                           (variance of C @ t_m over images)
    pick m* = argmax score,  u = t_{m*} / ||t_{m*}||
    record u Sigma u^T / trace(Sigma_0)                  (share of the head's total variance along u)
    C <- C (I - u u^T),  T <- T (I - u u^T)              (remove the direction from both)

The score uses the projected text as it is, not renormalized (as the original TextSpan does): a text with a tiny
component in the head's space could otherwise point anywhere in that space and win on its direction alone. The
recorded share is that of the removed unit direction u. Texts are always projected on the complement of the
chosen directions, so the chosen u are orthonormal and the recorded shares add up (to at most 1). Everything runs
on the [D, D] covariance, never on an [N, M] product.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, field
from pathlib import Path
from typing import Any, Optional

import torch
from pydantic.dataclasses import dataclass

from clip_debias.runtime.schema import FORMAT
from clip_debias.toolchain.decompose.terms import HeadTerms
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.loading import LoadedClip

VARIANCE_KEPT = 0.99  # automatic rank: smallest r whose singular values keep this share of the variance


@dataclass(config=FORMAT)
class SpanEntry:
    """One chosen description: its pool index and the share of the head's variance its direction explains."""

    text: str
    variance: float
    index: int


@dataclass(config=FORMAT)
class HeadSpan:
    """TextSpan result of one head (absolute ``layer``, ``head``), with the rank of the output space used."""

    layer: int
    head: int
    rank: int
    total_variance: float  # trace of the centred covariance of the head's terms
    entries: list[SpanEntry] = field(default_factory=list)
    role: Optional[str] = None  # spurious | salient (from a plan), else None

    @property
    def explained(self) -> float:
        """Share of the head's variance explained by all chosen descriptions together."""
        return float(sum(e.variance for e in self.entries))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "explained": self.explained}


def auto_rank(singular_values: torch.Tensor, kept: float = VARIANCE_KEPT) -> int:
    """Smallest r with sum_{i<r} s_i^2 >= kept * sum_i s_i^2 (at least 1); ``singular_values`` sorted descending."""
    energy = singular_values.double() ** 2
    total = float(energy.sum())
    if total <= 0:
        return 1
    cum = torch.cumsum(energy, 0) / total
    return int(torch.searchsorted(cum, torch.tensor(kept, dtype=cum.dtype)).item()) + 1


def output_space(sigma: torch.Tensor, rank: int | None = None) -> torch.Tensor:
    """V_r [r, D]: the top-r eigenvectors of the covariance Sigma [D, D] of the centred terms (= their top-r right
    singular vectors, s_i^2 = N lambda_i); ``rank`` None or 0 = ``auto_rank``."""
    evals, evecs = torch.linalg.eigh(sigma)  # ascending
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    r = auto_rank(evals.sqrt()) if not rank else rank
    return evecs[:, : max(1, min(r, evecs.shape[1]))].T


def textspan(terms: torch.Tensor, texts: torch.Tensor, k: int, rank: int | None = None
             ) -> tuple[list[int], list[float], int, float]:
    """Greedy TextSpan on one head (see the module docstring).

    terms [N, D] (the head's contributions), texts [M, D] (pool embeddings, unit norm or not). Returns the chosen
    pool indices (at most ``k``, fewer if the texts run out), the variance share of each, the rank used and the
    total variance trace(Sigma_0).

    The projected texts lie in span(V_r), so everything runs in its r coordinates: texts T V_r^T [M, r] and
    S = V_r Sigma V_r^T [r, r]; removing u = u_r V_r maps to S <- (I - u_r u_r^T) S (I - u_r u_r^T). This is exact
    and costs O(M r^2) per step instead of O(M D^2)."""
    if terms.ndim != 2 or texts.ndim != 2 or terms.shape[1] != texts.shape[1]:
        raise ClipDebiasError(f"textspan: terms {tuple(terms.shape)} and texts {tuple(texts.shape)} must be [N, D] "
                              "and [M, D] with the same D")
    if terms.shape[0] < 2:
        raise ClipDebiasError("textspan: need at least two images to measure a head's variance")
    c = terms.double() - terms.double().mean(dim=0, keepdim=True)
    sigma = c.T @ c / c.shape[0]  # [D, D]
    total = float(torch.trace(sigma))
    basis = output_space(sigma, rank)  # [r, D]
    t = torch.nn.functional.normalize(texts.double(), dim=-1)
    t = (t - t.mean(dim=0, keepdim=True)) @ basis.T  # centred over the pool, coordinates in the head's space [M, r]
    s = basis @ sigma @ basis.T  # [r, r]
    chosen: list[int] = []
    shares: list[float] = []
    for _ in range(min(k, texts.shape[0])):
        score = ((t @ s) * t).sum(dim=-1)
        m = int(score.argmax())
        if total <= 0 or float(score[m]) <= 1e-12 * total:
            break  # nothing left to explain, or no text left in the head's space
        u = t[m] / t[m].norm()
        chosen.append(m)
        shares.append(float(u @ s @ u) / total)
        su = s @ u
        s = s - torch.outer(u, su) - torch.outer(su, u) + float(u @ su) * torch.outer(u, u)  # P S P, P = I - uu^T
        t = t - torch.outer(t @ u, u)
    return chosen, shares, basis.shape[0], total


@torch.no_grad()
def encode_pool(clip: LoadedClip, texts: list[str], batch_size: int = 256) -> torch.Tensor:
    """[M, D] unit-norm float32 text embeddings of ``texts``, in batches (``LoadedClip.encode_text``)."""
    out = [clip.encode_text(texts[i:i + batch_size], normalize=True).float().cpu()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def cached_pool_embeddings(clip: LoadedClip, texts: list[str], path: str | Path,
                           reuse: str | Path | None = None) -> torch.Tensor:
    """``encode_pool`` with a safetensors cache written to ``path`` and read from ``reuse`` (default ``path``: e.g.
    the previous output folder's copy), reused only when its metadata names the same backbone (``ModelIdentity``)
    and the same texts (sha256 of the lines); otherwise encoded again."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = Path(path)
    key = {"model": json.dumps(clip.identity.to_dict(), sort_keys=True),
           "texts_sha256": hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()}
    source = Path(reuse) if reuse is not None else path
    emb = None
    if source.is_file():
        try:
            with safe_open(str(source), framework="pt") as f:
                if {k: (f.metadata() or {}).get(k) for k in key} == key:
                    emb = f.get_tensor("texts")
        except Exception:  # unreadable or foreign file: re-encode and overwrite
            pass
    if emb is not None and source == path:
        return emb
    emb = encode_pool(clip, texts) if emb is None else emb
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"texts": emb.contiguous()}, str(path), metadata=key)
    return emb


def require_cached_heads(layers: list[int], n_heads: int, wanted: list[tuple[int, int]], where: str = "") -> None:
    """Refuse any wanted (absolute layer, head) that a cache of ``layers`` x ``n_heads`` does not hold; cheap, so
    callers run it before encoding the pool or writing anything. ``where`` (the cache file) starts the line."""
    missing = [[l, h] for l, h in wanted if l not in layers or not 0 <= h < n_heads]
    if missing:
        what = f"head {missing[0]} is" if len(missing) == 1 else f"heads {missing} are"
        raise ClipDebiasError(f"{where + ': ' if where else ''}{what} not in the cache (layers {layers}, {n_heads} "
                              "heads each); pick cached heads or decompose with --layers covering them")


def explain_heads(heads: HeadTerms, layers: list[int], wanted: list[tuple[int, int]], texts: list[str],
                  text_emb: torch.Tensor, k: int, rank: int | None = None,
                  roles: dict[tuple[int, int], str] | None = None) -> list[HeadSpan]:
    """TextSpan for each wanted (absolute layer, head) of a cache's ``heads`` [N, L, H, D] (``layers`` = the cache's
    absolute layer indices); each head's terms are read on their own."""
    require_cached_heads(layers, heads.shape[2], wanted)
    row = {layer: i for i, layer in enumerate(layers)}
    out = []
    for layer, head in wanted:
        idx, shares, r, total = textspan(heads.select([(row[layer], head)])[:, 0], text_emb, k, rank)
        entries = [SpanEntry(texts[i], s, i) for i, s in zip(idx, shares)]
        out.append(HeadSpan(layer, head, r, total, entries, (roles or {}).get((layer, head))))
    return out


def descriptions_markdown(spans: list[HeadSpan], title: str = "TextSpan descriptions") -> str:
    """A readable Markdown page: one table per head (rank, description, variance share)."""
    lines = [f"# {title}", ""]
    for s in spans:
        role = f" ({s.role})" if s.role else ""
        lines += [f"## layer {s.layer}, head {s.head}{role}", "",
                  f"output-space rank {s.rank}; the {len(s.entries)} descriptions explain "
                  f"{100 * s.explained:.1f}% of the head's variance", "",
                  "| # | description | variance |", "|---|---|---|"]
        lines += [f"| {i + 1} | {e.text.replace('|', '/')} | {100 * e.variance:.2f}% |"
                  for i, e in enumerate(s.entries)]
        lines.append("")
    return "\n".join(lines)
