"""Planted low-level signatures: a post-processing of every rendered lab image, so that two lab sets rendered from the
same recipe and seed differ *only* by it (a ground truth for a dataset-bias audit).

- ``colour-cast:S``: a warm cast, ``x' = clip(x + S * (1, 0, -1))`` per pixel on the uint8 RGB values (red up, blue
  down by S levels; S an integer in 1..64, default 16).
- ``jpeg:Q``: one JPEG encode/decode round trip at quality Q (1..95, default 15; PIL, 4:2:0 chroma subsampling), the
  decoded pixels stored losslessly like every lab image.

Masks and metadata are not changed by a signature.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from clip_debias.toolchain.errors import ClipDebiasError

KINDS = {"colour-cast": (16, 1, 64), "jpeg": (15, 1, 95)}  # kind -> (default strength, min, max)


@dataclass(frozen=True)
class Signature:
    """A planted signature: ``kind`` (one of ``KINDS``) and its integer ``strength`` (cast levels / JPEG quality)."""

    kind: str
    strength: int

    def spec(self) -> str:
        """The text form ``KIND:STRENGTH`` (what ``parse_signature`` reads)."""
        return f"{self.kind}:{self.strength}"

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The signed image: ``image`` [H, W, 3] uint8 -> [H, W, 3] uint8 (see the module docstring)."""
        if self.kind == "colour-cast":
            shift = np.array([self.strength, 0, -self.strength], np.int16)
            return np.clip(image.astype(np.int16) + shift, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=self.strength)
        buf.seek(0)
        with Image.open(buf) as im:
            return np.asarray(im.convert("RGB")).copy()


def parse_signature(text: str | None) -> Signature | None:
    """``none``/None -> None; ``colour-cast[:S]`` or ``jpeg[:Q]`` -> a ``Signature``; anything else one line."""
    if text is None or text.strip().lower() in ("", "none"):
        return None
    kind, _, value = text.strip().partition(":")
    expected = "none, colour-cast[:S] (S in 1..64) or jpeg[:Q] (Q in 1..95)"
    if kind not in KINDS:
        raise ClipDebiasError(f"--signature {text}: unknown kind '{kind}' (expected {expected})")
    default, lo, hi = KINDS[kind]
    try:
        strength = int(value) if value else default
    except ValueError:
        raise ClipDebiasError(f"--signature {text}: strength '{value}' is not an integer "
                              f"(expected {expected})") from None
    if not lo <= strength <= hi:
        raise ClipDebiasError(f"--signature {text}: strength {strength} outside {lo}..{hi} (expected {expected})")
    return Signature(kind, strength)
