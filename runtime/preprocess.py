"""open_clip's eval image transform, reproduced with PIL + numpy (no torch, no torchvision).

The order of operations is the one open_clip's ``image_transform(..., is_train=False)`` uses, because it matters
for RGBA (PIL resizes premultiplied alpha), palette (PIL resizes "P" images with NEAREST) and grayscale images:

1. resize in the image's own mode (PIL ``Image.resize``, antialiased, like torchvision on PIL images):
   - ``shortest``, square target S: short side -> S, long side -> ``int(S * long / short)`` (torchvision ``Resize(S)``);
   - ``shortest``, non-square [H, W]: ``r = min(h/H, w/W)``, size ``(round(h/r), round(w/r))``, always bicubic
     (open_clip's ``ResizeKeepRatio(size)`` is built without the interpolation argument);
   - ``longest``: ``r = max(h/H, w/W)``, size ``(round(h/r), round(w/r))`` with the recorded interpolation;
   - ``squash``: straight to (H, W).
   A resize to the image's current size is skipped (torchvision returns the image unchanged).
2. centre crop to [H, W]; if the image is smaller, first pad with ``fill_color`` (left/top get ``d // 2``, right/bottom
   ``(d + 1) // 2``); crop offsets ``int(round((h - H) / 2.0))`` (torchvision / open_clip ``center_crop_or_pad``).
3. ``convert('RGB')`` (RGBA drops alpha, L/P/CMYK/... converted by PIL);
4. float32 ``x / 255`` then ``(x - mean) / std`` per channel, in float32, channels first: [3, H, W].

Image files are decoded by ``runtime.images.load_image`` (the loader the toolchain uses too: pixel limit, 16-bit
images scaled to 8 bits, undefined sample ranges refused); a PIL image passed in goes through the same bit-depth rule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps

from clip_debias.runtime.errors import InputError
from clip_debias.runtime.images import load_image, to_8bit
from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS
from clip_debias.runtime.manifest import Preprocessing

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
RESIZE_MODES = ("shortest", "longest", "squash")


__all__ = ["Preprocessor", "as_pil", "load_image", "RESIZE_MODES"]


@dataclass(frozen=True)
class Preprocessor:
    """Callable ``image -> float32 [3, H, W]`` for one artifact's recorded ``Preprocessing``. ``max_pixels``: image
    files over this many pixels are refused before decoding (None: PIL's own limit only)."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    @classmethod
    def from_manifest(cls, p: Preprocessing, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> "Preprocessor":
        """Build from the manifest's record; an unknown mode/interpolation is an ``ArtifactError``-worthy bug, so it
        raises ``ValueError`` here and the loader turns it into a one-line artifact error."""
        if p.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode {p.resize_mode!r} not one of {RESIZE_MODES}")
        if p.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation {p.interpolation!r} not one of {tuple(_RESAMPLE)}")
        h, w = (int(s) for s in p.size)
        if h <= 0 or w <= 0:
            raise ValueError(f"size {p.size!r} must be two positive ints")
        if any(float(s) == 0.0 for s in p.std):
            raise ValueError("std has a zero entry")
        return cls(
            size=(h, w),
            mean=tuple(float(m) for m in p.mean),  # type: ignore[arg-type]
            std=tuple(float(s) for s in p.std),  # type: ignore[arg-type]
            interpolation=p.interpolation,
            resize_mode=p.resize_mode,
            fill_color=int(p.fill_color),
            max_pixels=max_pixels,
        )

    # -- geometry ---------------------------------------------------------------------------------------------
    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(new_h, new_w) the resize step produces for a ``width`` x ``height`` image."""
        th, tw = self.size
        h, w = height, width
        if self.resize_mode == "squash":
            return th, tw
        if self.resize_mode == "shortest" and th == tw:
            # torchvision _compute_resized_output_size with size=[S]: int() truncation of the long side.
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = th, int(th * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
            return new_h, new_w
        # open_clip ResizeKeepRatio (timm): longest=1 -> max ratio, longest=0 -> min ratio; Python round().
        longest = 1.0 if self.resize_mode == "longest" else 0.0
        rh, rw = h / th, w / tw
        ratio = max(rh, rw) * longest + min(rh, rw) * (1.0 - longest)
        return round(h / ratio), round(w / ratio)

    def _resample(self) -> Image.Resampling:
        if self.resize_mode == "shortest" and self.size[0] != self.size[1]:
            return Image.Resampling.BICUBIC  # ResizeKeepRatio(image_size) keeps its default interpolation
        return _RESAMPLE[self.interpolation]

    def _fill(self, img: Image.Image) -> Any:
        """torchvision ``_parse_fill``: an int fill is repeated per band; ints except for mode F."""
        bands = len(img.getbands())
        fill: Any = self.fill_color
        if bands > 1:
            fill = tuple([fill] * bands)
        if img.mode != "F":
            fill = tuple(int(x) for x in fill) if isinstance(fill, tuple) else int(fill)
        return fill

    def _crop_or_pad(self, img: Image.Image) -> Image.Image:
        th, tw = self.size
        w, h = img.size
        if tw > w or th > h:
            border = (
                (tw - w) // 2 if tw > w else 0,
                (th - h) // 2 if th > h else 0,
                (tw - w + 1) // 2 if tw > w else 0,
                (th - h + 1) // 2 if th > h else 0,
            )
            palette = img.getpalette() if img.mode == "P" else None
            img = ImageOps.expand(img, border=border, fill=self._fill(img))
            if palette is not None:
                img.putpalette(palette)
            w, h = img.size
            if (w, h) == (tw, th):
                return img
        top = int(round((h - th) / 2.0))
        left = int(round((w - tw) / 2.0))
        return img.crop((left, top, left + tw, top + th))

    # -- public -----------------------------------------------------------------------------------------------
    def to_pil(self, image: Image.Image) -> Image.Image:
        """Steps 1-3: resized, cropped/padded RGB PIL image of size (W, H)."""
        new_h, new_w = self.resized_size(*image.size)
        if (new_h, new_w) != (image.height, image.width):
            if new_h <= 0 or new_w <= 0:
                raise InputError(f"image of size {image.width}x{image.height} is too thin to resize")
            image = image.resize((new_w, new_h), self._resample())
        image = self._crop_or_pad(image)
        return image.convert("RGB")

    def __call__(self, image: Any) -> np.ndarray:
        """PIL image or image path -> float32 [3, H, W], normalized. Raises ``InputError`` for anything else."""
        img = as_pil(image, self.max_pixels)
        try:
            rgb = self.to_pil(img)
        except (ValueError, OSError) as e:  # PIL cannot resize/convert this mode, truncated data, ...
            where = f"{image}: " if isinstance(image, (str, os.PathLike)) else ""
            raise InputError(f"{where}cannot preprocess a {img.mode} {img.width}x{img.height} image ({e})") from None
        x = np.asarray(rgb, dtype=np.uint8).astype(np.float32) / np.float32(255.0)  # [H, W, 3]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def batch(self, images: Sequence[Any] | Iterable[Any]) -> np.ndarray:
        """Many images -> float32 [N, 3, H, W]."""
        arrays = [self(im) for im in images]
        if not arrays:
            raise InputError("no images given")
        return np.stack(arrays)


def as_pil(image: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A PIL image, a path, or an HxW / HxWx{1,3,4} uint8 array -> PIL image with 8-bit samples (a file decoded by
    ``runtime.images.load_image``; the array as PIL would read it)."""
    if isinstance(image, Image.Image):
        return to_8bit(image)
    if isinstance(image, (str, os.PathLike, Path)):
        return load_image(image, max_pixels)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
            raise InputError(
                f"image array must be uint8 HxW or HxWx{{1,3,4}}, got {image.dtype} {list(image.shape)} "
                "(pass a preprocessed float32 [N, 3, H, W] batch to predict_logits instead)"
            )
        return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    raise InputError(f"expected a PIL image or an image path, got {type(image).__name__}")
