"""Accuracy gates: one graph's outputs against a reference's on the gate batch (torch-free, numpy only).

The export gates compare each exported graph with the torch model (``exporters.onnx_export``); ``verify`` compares
a bf16 run -- which no export writes a file for -- with the same artifact's fp32 graph on ONNX Runtime
(``precision_gate``). Gate batch: seeded N(0, 1) images [4, 3, H, W] (``gate_images``). With
``m = max(1, max |logits_ref|)``:

- fp32: max |logits - logits_ref| <= 1e-4 * m and max |e - e_ref| <= 1e-5 (see ``exporters.onnx_export``).
- fp16: max |logit diff| <= 2e-2 * m = 40 u16 * m (u16 = 2^-11, the fp16 unit roundoff: the accumulated rounding
  of ~L sequential blocks) and min cos(e16, e) >= 0.999.
- bf16: the same budget in bf16's unit roundoff: u = 2^-8 (8 significant bits; fp16 has 11), so max |logit diff|
  <= 40 u * m = 0.156 m, and min cos(e, e_ref) >= 1 - (40 u)^2 / 2 = 0.988 (||e - e_ref|| <= 40 u for unit
  vectors: ||a - b||^2 = 2 (1 - cos)). bf16 keeps fp32's exponent range, so no overflow concern; OpenVINO
  accumulates its bf16 products in fp32, so the error is the rounding of each GEMM's inputs, as in fp16.
- int8: max |logit diff| <= 0.1 * m and min cos >= 0.995 (see ``exporters.onnx_export``).
- all: identical argmax on every gate row whose reference top-2 margin exceeds the logit tolerance (a near-tie
  inside the error bound has no defined order at that precision); ``argmax_agree`` is over all rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

GATE_BATCH = 4
BF16_UNIT_ROUNDOFF = 2.0 ** -8
LOGIT_RTOL = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 40 * BF16_UNIT_ROUNDOFF, "int8": 0.1}
MIN_COSINE = {"fp16": 0.999, "bf16": 1 - (40 * BF16_UNIT_ROUNDOFF) ** 2 / 2, "int8": 0.995}
FP32_EMBED_ATOL = 1e-5


@dataclass
class GateResult:
    """Parity of one graph's outputs against the reference's on the gate batch."""

    precision: str
    max_logit_diff: float
    max_embedding_diff: float
    logit_tolerance: float
    min_cosine: float
    argmax_agree: float  # fraction of gate rows with the same argmax
    argmax_checked: int  # rows whose reference top-2 margin exceeds the tolerance
    passed: bool
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.precision}: max |logit diff| {self.max_logit_diff:.3g} (tol {self.logit_tolerance:.3g}), "
                f"max |embedding diff| {self.max_embedding_diff:.3g}, min cosine {self.min_cosine:.5f}, "
                f"argmax agree {100 * self.argmax_agree:.0f}%")


def gate_images(height: int, width: int, batch: int = GATE_BATCH, seed: int = 0) -> np.ndarray:
    """Seeded N(0, 1) float32 images [batch, 3, H, W] (already in normalized-pixel space)."""
    return np.random.default_rng(seed).standard_normal((batch, 3, height, width)).astype(np.float32)


def compare(precision: str, logits: np.ndarray, emb: np.ndarray, ref_logits: np.ndarray,
            ref_emb: np.ndarray) -> GateResult:
    """Gate one graph's outputs against the reference's (tolerances: module docstring)."""
    scale = max(1.0, float(np.abs(ref_logits).max()))
    dl = float(np.abs(logits - ref_logits).max())
    de = float(np.abs(emb - ref_emb).max())
    cos = float((np.sum(emb * ref_emb, -1) / (np.linalg.norm(emb, axis=-1) * np.linalg.norm(ref_emb, axis=-1))).min())
    min_cos = MIN_COSINE.get(precision)
    tol = LOGIT_RTOL[precision] * scale
    same = logits.argmax(-1) == ref_logits.argmax(-1)
    top2 = np.sort(ref_logits, axis=-1)[:, -2:] if ref_logits.shape[-1] > 1 else np.zeros((len(ref_logits), 2))
    decided = (top2[:, 1] - top2[:, 0]) > tol
    reasons = []
    if not np.isfinite(logits).all() or not np.isfinite(emb).all():
        reasons.append("non-finite outputs")
    if not dl <= tol:
        reasons.append(f"max |logit diff| {dl:.3g} > {tol:.3g}")
    if precision == "fp32" and not de <= FP32_EMBED_ATOL:
        reasons.append(f"max |embedding diff| {de:.3g} > {FP32_EMBED_ATOL:.3g}")
    if min_cos is not None and not cos >= min_cos:
        reasons.append(f"min embedding cosine {cos:.6f} < {min_cos}")
    if not same[decided].all():
        reasons.append(f"argmax differs on {int((~same[decided]).sum())} of {int(decided.sum())} gate images")
    return GateResult(precision, dl, de, tol, cos, float(same.mean()), int(decided.sum()), not reasons,
                      "; ".join(reasons))


def precision_gate(classifier: Any, reference: Any, batch: int = GATE_BATCH, seed: int = 0) -> GateResult:
    """``classifier`` (a ``runtime.Classifier`` at a reduced precision) against ``reference`` (the same artifact at
    fp32) on the gate batch of the artifact's image size."""
    _, h, w = classifier.input_shape
    x = gate_images(h, w, batch, seed)
    return compare(classifier.backend.precision, *classifier.run(x), *reference.run(x))
