"""The corrections of Locate-Then-Correct, as pure functions on head terms. The same functions run on cached
decomposition terms (``locate``/``evaluate`` on a cache) and inside the baked ``DebiasedClassifier``, so the two
agree by construction.

All terms live in the normalized embedding space: e = sum_{l,h} c_{l,h} + rest, ||e|| = 1 (``HeadContributions``).

- Mean ablation (spurious heads): c_{l,h}(x) <- mu_{l,h}, the mean of c_{l,h} over a calibration split.
- Orthogonal projection (salient heads, RoboShot's "accept" step): with attribute-pair directions
  v_k = E_T(p+_k) - E_T(p-_k), u = orthonormal basis of span(v) (QR), and for each k in turn
  c <- c + cos(c, u_k) u_k / ||u_k||, then the norm of c is set by ``renorm``:
    ``stepwise`` (default; the reference code's accept step): c <- c / ||c|| after EACH basis vector, so c ends
                 with unit norm;
    ``keep``:     no rescaling inside the loop; at the end c is rescaled to its original norm ||c||;
    ``unit-once``: no rescaling inside the loop; at the end c is rescaled to unit norm (this project's earlier
                 default; neither the reference nor norm-preserving: kept for comparison and for older models).
"""

from __future__ import annotations

import torch

from clip_debias.toolchain.choices import Renorm

RENORMS = Renorm.values()
LEGACY_RENORMS = {"unit": "unit-once"}  # config.json of models built before the rename
_EPS = 1e-12


def orthonormal_basis(directions: torch.Tensor) -> torch.Tensor:
    """v [K, D] -> u [K', D] orthonormal rows spanning the v_k (reduced QR of v^T, in float64; columns whose
    R diagonal is ~0 — linearly dependent directions — are dropped)."""
    q, r = torch.linalg.qr(directions.double().T, mode="reduced")  # q [D, K]
    keep = r.diagonal().abs() > 1e-8 * r.diagonal().abs().max().clamp_min(_EPS)
    return q[:, keep].T.to(directions.dtype)


def _unit(c: torch.Tensor) -> torch.Tensor:
    return c / c.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def project_salient(c: torch.Tensor, basis: torch.Tensor, renorm: Renorm = "stepwise") -> torch.Tensor:
    """c [..., D], basis u [K, D] -> c' [..., D]: c <- c + cos(c, u_k) u_k / ||u_k|| for k = 1..K in turn, norms as
    ``renorm`` says (module doc)."""
    renorm = LEGACY_RENORMS.get(renorm, renorm)  # type: ignore[assignment]
    if renorm not in RENORMS:
        raise ValueError(f"renorm {renorm!r}: expected one of {', '.join(RENORMS)}")
    norm0 = c.norm(dim=-1, keepdim=True)
    for k in range(basis.shape[0]):
        u = basis[k]
        cos = (c @ u)[..., None] / (c.norm(dim=-1, keepdim=True) * u.norm()).clamp_min(_EPS)
        c = c + cos * u / u.norm().clamp_min(_EPS)
        if renorm == "stepwise":
            c = _unit(c)
    if renorm == "keep":
        return _unit(c) * norm0
    return _unit(c)


def corrected_embedding(
    embedding: torch.Tensor,
    ablated_terms: torch.Tensor | None = None,
    ablation_means: torch.Tensor | None = None,
    salient_terms: torch.Tensor | None = None,
    basis: torch.Tensor | None = None,
    renorm: Renorm = "stepwise",
) -> torch.Tensor:
    """e' = e + sum_a (mu_a - c_a) + sum_s (P(c_s) - c_s), returned unit-norm.

    embedding [B, D] (the normalized e); ablated_terms [B, A, D] with ablation_means [A, D]; salient_terms [B, S, D]
    with basis [K, D]. Missing pieces are no-ops. The final division by ||e'|| is ours (the reference takes the
    argmax of the unnormalized sum: the same zero-shot predictions).
    """
    e = embedding
    if ablated_terms is not None and ablated_terms.shape[1] > 0:
        e = e + (ablation_means[None] - ablated_terms).sum(dim=1)
    if salient_terms is not None and salient_terms.shape[1] > 0 and basis is not None and basis.shape[0] > 0:
        e = e + (project_salient(salient_terms, basis, renorm) - salient_terms).sum(dim=1)
    return e / e.norm(dim=-1, keepdim=True).clamp_min(_EPS)
