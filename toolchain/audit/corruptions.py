"""Low-level corruptions for the audit: how much of what separates two sources survives when low-level signatures
(resolution, sharpness, sensor noise, colour) are destroyed (Liu and He's corruption study, ICLR 2025).

Every corruption acts on the image the model sees, after the model's own preprocessing has resized, centre-cropped
and converted it to RGB, as float pixels x in [0, 1] of shape [3, H, W], right before the normalization
(``corrupted_preprocess`` inserts it into open_clip's eval transform; images are decoded by the one loader,
``runtime.images.load_image``). Sizes are in model-input pixels, so the same corruption means the same thing for
every source whatever its native resolution. Outputs stay in [0, 1] and are not re-quantized to 8 bits.

- ``lowresN``: resized down so that the short side has N pixels (the long side round(N * long / short)), then back
  up to H x W; bicubic both ways with PIL's filter (``torch.nn.functional.interpolate`` with ``antialias=True``:
  a = -0.5, widened on the way down); clipped to [0, 1]. No-op when min(H, W) <= N (e.g. ``lowres64`` on the bias
  lab's 64 px model).
- ``blurR``: Gaussian blur with standard deviation R pixels: separable kernel w(t) = exp(-t^2 / (2 R^2)) / sum over
  the integer taps t = -m..m, m = min(ceil(3 R), min(H, W) - 1), edges mirrored without repeating the edge pixel
  (``torchvision.transforms.functional.gaussian_blur``).
- ``noiseS``: x + S * e, e ~ N(0, 1) independent per pixel and channel, clipped to [0, 1]. S is a fraction of the
  pixel range, at most ``MAX_NOISE`` = 1 (``noise0.1``; 8-bit levels are S x 255, so ``noise25`` is refused rather
  than read as 25 times the range).
- ``jitterS``: colour jitter of strength S as SimCLR defines it (Chen et al. 2020: torchvision's ColorJitter with
  brightness, contrast and saturation 0.8 S, hue 0.2 S): factors b, c, s ~ U[max(0, 1 - 0.8 S), 1 + 0.8 S] and
  a hue shift f ~ U[-0.2 S, 0.2 S], applied always and in this fixed order (torchvision draws the order at random):
  x <- clip(b x); x <- clip(c x + (1 - c) mean(gray(x))); x <- clip(s x + (1 - s) gray(x)) with
  gray = 0.2989 R + 0.587 G + 0.114 B (torchvision's weights); hue h <- (h + f) mod 1 in HSV (torchvision's
  tensor functions). S <= 2.5.
  SimCLR's random grayscale and its 0.8 application probability are not part of it.

Random draws (noise, jitter) come from a generator seeded by the audit's seed and a CRC32 of the image's own pixels,
so an image gets the same corruption in every run, whatever the batch or the order.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from clip_debias.toolchain.errors import ClipDebiasError

KINDS = ("lowres", "blur", "noise", "jitter")
ALL = ("lowres64", "lowres32", "blur3", "blur5", "noise0.2", "jitter1")  # Liu and He's study, as the issue lists it
MAX_NOISE = 1.0  # noise standard deviation as a fraction of the [0, 1] pixel range (above it the image is gone)
MAX_JITTER = 2.5  # hue shift 0.2 S must stay within torchvision's [-0.5, 0.5]
_NAME = re.compile(r"(lowres|blur|noise|jitter)(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Corruption:
    """One corruption: ``kind`` (one of ``KINDS``) and its ``value`` (N pixels, R pixels, S std, S strength)."""

    kind: str
    value: float

    @property
    def name(self) -> str:
        v = int(self.value) if float(self.value).is_integer() else self.value
        return f"{self.kind}{v}"

    def describe(self) -> str:
        """One line saying what it does (audit.json records it)."""
        v = self.name[len(self.kind):]
        return {
            "lowres": f"resized to {v} px on the short side and back (bicubic, antialiased)",
            "blur": f"Gaussian blur, standard deviation {v} px (taps to 3 std)",
            "noise": f"additive Gaussian noise, std {v} on [0, 1] pixels, clipped",
            "jitter": f"SimCLR colour jitter of strength {v} (brightness, contrast, saturation, hue; fixed order)",
        }[self.kind]

    def is_noop(self, height: int, width: int) -> bool:
        """True when it cannot change an H x W model input (lowres at or above its resolution)."""
        return self.kind == "lowres" and min(height, width) <= self.value

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """x [3, H, W] float in [0, 1] -> the corrupted image, same shape and dtype."""
        return {"lowres": lowres, "blur": blur, "noise": noise, "jitter": jitter}[self.kind](x, self.value, rng)


def parse_corruptions(text: str | None) -> list[Corruption]:
    """``--corruptions``: comma-separated names (lowres64, blur3, noise0.2, jitter1, ...), ``all`` (Liu and He's six:
    ``ALL``) or ``none``; one line for anything else."""
    if text is None or text.strip().lower() in ("", "none"):
        return []
    names = list(ALL) if text.strip().lower() == "all" else [t.strip() for t in text.split(",")]
    out: list[Corruption] = []
    for name in names:
        m = _NAME.fullmatch(name)
        if m is None:
            raise ClipDebiasError(f"--corruptions {text}: '{name}' is not a corruption (expected lowresN, blurR, "
                                  "noiseS, jitterS such as lowres32,blur3,noise0.2,jitter1, or all, or none)")
        kind, value = m.group(1), float(m.group(2))
        if kind == "lowres" and (not value.is_integer() or value < 1):
            raise ClipDebiasError(f"--corruptions {text}: '{name}': lowres takes a whole number of pixels >= 1")
        if value <= 0:
            raise ClipDebiasError(f"--corruptions {text}: '{name}': expected a value > 0")
        if kind == "noise" and value > MAX_NOISE:
            raise ClipDebiasError(f"--corruptions {text}: '{name}': noise S is a fraction of the pixel range, at most "
                                  f"{MAX_NOISE:g} (noise0.1 = 25.5 of 255 levels)")
        if kind == "jitter" and value > MAX_JITTER:
            raise ClipDebiasError(f"--corruptions {text}: '{name}': jitter strength at most {MAX_JITTER} (the hue "
                                  "shift 0.2 S must stay within half the hue circle)")
        c = Corruption(kind, value)
        if c in out:
            raise ClipDebiasError(f"--corruptions {text}: '{name}' is given twice")
        out.append(c)
    return out


# ---- the corruptions (x: [3, H, W] float in [0, 1]) ------------------------------------------------------------------
def lowres(x: torch.Tensor, n: float, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Down to short side ``n``, back up to H x W (module docstring); unchanged when min(H, W) <= n."""
    from torch.nn.functional import interpolate

    h, w = x.shape[-2:]
    short = min(h, w)
    if short <= n:
        return x
    size = (int(n), round(n * w / h)) if h <= w else (round(n * h / w), int(n))
    small = interpolate(x[None].double(), size=size, mode="bicubic", antialias=True, align_corners=False)
    big = interpolate(small, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return big[0].clamp(0.0, 1.0).to(x.dtype)


def blur_taps(radius: float, height: int, width: int) -> int:
    """m: the kernel spans the integer taps -m..m (ceil(3 R), at most one less than the short side)."""
    return max(0, min(math.ceil(3 * radius), min(height, width) - 1))


def blur(x: torch.Tensor, radius: float, rng: np.random.Generator | None = None) -> torch.Tensor:
    """Gaussian blur of standard deviation ``radius`` pixels (module docstring)."""
    from torchvision.transforms.functional import gaussian_blur

    m = blur_taps(radius, *x.shape[-2:])
    if m == 0:
        return x
    return gaussian_blur(x.double(), [2 * m + 1, 2 * m + 1], [radius, radius]).clamp(0.0, 1.0).to(x.dtype)


def noise(x: torch.Tensor, std: float, rng: np.random.Generator) -> torch.Tensor:
    """x + std * N(0, 1) per pixel and channel, clipped to [0, 1]."""
    e = torch.from_numpy(rng.standard_normal(tuple(x.shape)))
    return (x.double() + std * e).clamp(0.0, 1.0).to(x.dtype)


@dataclass(frozen=True)
class JitterFactors:
    """The draws of one jitter: brightness, contrast, saturation factors and the hue shift (fraction of the circle)."""

    brightness: float
    contrast: float
    saturation: float
    hue: float

    @classmethod
    def draw(cls, strength: float, rng: np.random.Generator) -> "JitterFactors":
        lo, hi = max(0.0, 1.0 - 0.8 * strength), 1.0 + 0.8 * strength
        b, c, s = (float(rng.uniform(lo, hi)) for _ in range(3))
        return cls(b, c, s, float(rng.uniform(-0.2 * strength, 0.2 * strength)))


def apply_jitter(x: torch.Tensor, f: JitterFactors) -> torch.Tensor:
    """Brightness, contrast, saturation, hue in that order (torchvision's tensor functions; each clips to [0, 1])."""
    import torchvision.transforms.functional as F

    y = F.adjust_brightness(x, f.brightness)
    y = F.adjust_contrast(y, f.contrast)
    y = F.adjust_saturation(y, f.saturation)
    return F.adjust_hue(y, f.hue)


def jitter(x: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """SimCLR colour jitter of ``strength`` (module docstring)."""
    return apply_jitter(x, JitterFactors.draw(strength, rng))


# ---- inside the model's preprocessing --------------------------------------------------------------------------------
def image_rng(x: torch.Tensor, seed: int) -> np.random.Generator:
    """The generator of one image: seeded by ``seed`` and the CRC32 of its float32 pixels."""
    crc = zlib.crc32(np.ascontiguousarray(x.detach().cpu().float().numpy()).tobytes())
    return np.random.default_rng([seed, crc])


class CorruptStep:
    """A transform step: [3, H, W] float in [0, 1] -> the corrupted image (a picklable callable, for loader
    workers)."""

    def __init__(self, corruption: Corruption, seed: int):
        self.corruption, self.seed = corruption, seed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.corruption(x, image_rng(x, self.seed))

    def __repr__(self) -> str:
        return f"CorruptStep({self.corruption.name}, seed={self.seed})"


def corrupted_preprocess(preprocess: Callable, corruption: Corruption, seed: int) -> Callable:
    """The model's preprocessing (open_clip's eval ``Compose``: resize, crop, RGB, to tensor, normalize) with
    ``corruption`` inserted right before its final ``Normalize``; one line when it is not built that way."""
    from torchvision.transforms import Compose, Normalize

    steps: list[Any] = list(getattr(preprocess, "transforms", []))
    if not isinstance(preprocess, Compose) or not steps or not isinstance(steps[-1], Normalize):
        raise ClipDebiasError(f"--corruptions: the model's preprocessing ({type(preprocess).__name__}) is not "
                              "open_clip's eval transform ending in Normalize; cannot place the corruption in it")
    return Compose([*steps[:-1], CorruptStep(corruption, seed), steps[-1]])
