"""Augmentation types of the Last Layer Ensemble (``correct.lle``): each makes, from one training image, an image of
its *shift type*, on which that type's head learns (numpy/PIL, seeded by the caller's generator).

An augmentation is a function ``fn(sample, donors, rng) -> image`` (``AugmentFn``): ``sample`` is the image [H, W, 3]
uint8 with its class and coverage masks (``Sample``), ``donors.other_class(label, rng)`` draws another training image
of a different class (``donors.same_class`` one of the same class), ``rng`` a ``numpy.random.Generator``; it returns
an RGB image of the same size (a PIL image or a [H, W, 3] uint8 array). ``AUGMENT_TYPES`` is the table of the built-in
types; a user's own function is a hook (``load_hook``: ``NAME=module:function`` or ``NAME=file.py:function``).

Coverage masks (``runtime.datasets``: ``fg`` the foreground, ``object`` a co-occurring object; 255 where the part
fully covers the pixel, 0 where it does not touch it) give alpha = mask / 255, and a part is pasted onto a canvas as
``canvas (1 - alpha) + image alpha`` (a soft edge keeps a little of the source's own background, as in the
authors' compositing). A *clean background* is an image with every masked part (mask > 0) removed: each removed
pixel takes the value of an unmasked pixel of the same image at one common offset per piece (``fill_holes``: the
nearest offset whose copy lies inside the image and outside every mask; a piece no offset fits is halved until one
does), so the fill keeps the background's own texture.

Two swap types on two-shortcut data, as the authors' UrbanCars LLE (facebookresearch/Whac-A-Mole
``urbancars_trainers/lle.py``, ``dataset/urbancars_aug.py``); ``--lle-redraw`` picks what they take besides the
swapped part:

- ``background-swap`` (needs ``fg`` masks, and ``object`` masks on data with a co-object). ``cross`` (default, the
  authors'): the clean background of a random image of another class, the co-object of a random image of the *same*
  class pasted where it stood in that image, then the sample's foreground. ``own`` (ours): the clean background of
  another class's image, then the sample's own co-object and foreground where they were.
- ``object-swap`` (needs ``fg`` and ``object`` masks). ``cross`` (default, the authors'): the clean background of a
  random image of the *same* class, the co-object of a random image of another class pasted where it stood in that
  image, then the sample's foreground. ``own`` (ours): the sample's own clean background, the other class's co-object
  moved so its centre of coverage lands on the sample's object's (clipped at the border), then the sample's
  foreground.

The mask-free and texture types of their ImageNet LLE (``imagenet_trainers/lle.py``; selectable, never in ``auto``
when a swap applies):

- ``watermark`` (no masks): 4-8 random letters and digits in white, PIL's own font (``ImageFont.load_default`` at a
  size of 14-23 % of the image height), from the left edge at a random height, blended with opacity 0.1-0.9.
- ``texture`` (needs ``fg`` masks): a style-transfer-free stand-in for their Stylized-ImageNet head: a random texture
  of c x c cells (c drawn in 4..16, each cell a uniformly drawn RGB colour) blended over the foreground with opacity
  ``TEXTURE_OPACITY`` x its coverage, so the shape stays and its texture changes.
- ``edge-map`` (no masks, deterministic): a stand-in for their DexiNed edge images (dark edges on white,
  ``1 - sigmoid(edges)``): the Sobel gradient magnitude m of the luminance (0.299 R + 0.587 G + 0.114 B, borders
  replicated), 255 (1 - m / max m) in all three channels (white where the image is flat).

Differences from the authors' augmentations that remain: their background comes from a separately stored inpainted
background-only image, ours from the fill above; they flip (and on ImageNet crop) the images and redraw every epoch,
ours are drawn once per image and type (``--lle-copies`` draws; the frozen features are computed once per drawn
image); their watermark (ImageNet-W) draws 8 random CJK characters in a CJK font, ours Latin letters and digits in
PIL's font; their texture and edge heads read stored Stylized-ImageNet and DexiNed images, ours the stand-ins above.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clip_debias.runtime.datasets import DatasetIndex
from clip_debias.toolchain.errors import ClipDebiasError

MASK_COLUMNS = {"fg": "fg_mask", "object": "object_mask"}  # part -> the metadata.csv column of its mask paths
PART_WORDS = {"fg": "foreground", "object": "co-object"}


@dataclass
class Sample:
    """One training image [H, W, 3] uint8, its class and its coverage masks by part ([H, W] uint8)."""

    image: np.ndarray
    label: int
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    def alpha(self, part: str) -> np.ndarray:
        """[H, W] float32 coverage of ``part`` in [0, 1] (zeros when the sample has no such mask)."""
        m = self.masks.get(part)
        return np.zeros(self.image.shape[:2], np.float32) if m is None else m.astype(np.float32) / 255.0

    def parts_hole(self) -> np.ndarray:
        """[H, W] bool: pixels any masked part touches (mask > 0)."""
        hole = np.zeros(self.image.shape[:2], bool)
        for m in self.masks.values():
            hole |= m > 0
        return hole


class Donors(Protocol):
    """Where an augmentation draws other training images from."""

    def other_class(self, label: int, rng: np.random.Generator) -> Sample:
        """A training image of a class other than ``label`` (drawn uniformly), at the sample's size."""
        ...

    def same_class(self, label: int, rng: np.random.Generator) -> Sample:
        """A training image of class ``label`` (drawn uniformly, the sample itself included), at the sample's size."""
        ...


AugmentFn = Callable[[Sample, Donors, np.random.Generator], "np.ndarray | Image.Image"]


# ---- compositing --------------------------------------------------------------------------------------------------
def paste(canvas: np.ndarray, image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """canvas (1 - alpha) + image alpha, float32 [H, W, 3] (alpha [H, W] in [0, 1])."""
    a = alpha[..., None]
    return canvas.astype(np.float32) * (1 - a) + image.astype(np.float32) * a


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 255] rounded to uint8."""
    return np.clip(np.floor(image + 0.5), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _offsets(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Every offset (dy, dx) != (0, 0) that stays inside an h x w image, nearest first (ties: row-major)."""
    dy, dx = np.meshgrid(np.arange(-(h - 1), h), np.arange(-(w - 1), w), indexing="ij")
    dy, dx = dy.ravel(), dx.ravel()
    keep = (dy != 0) | (dx != 0)
    dy, dx = dy[keep], dx[keep]
    order = np.lexsort((dx, dy, dy * dy + dx * dx))
    return dy[order], dx[order]


def fill_holes(image: np.ndarray, hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(filled image, source [H, W, 2]): every ``hole`` pixel p takes the value of image[p + o] for one offset o per
    piece such that the piece's bounding box moved by o lies inside the image and outside the hole (the nearest such
    o); a piece no offset fits is split in two along its longer side, down to single pixels. ``source`` holds for each
    pixel the (row, col) its value came from (itself outside the hole). Needs at least one pixel outside the hole."""
    h, w = hole.shape
    out = image.copy()
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    source = np.stack([rows, cols], axis=-1)
    if not hole.any():
        return out, source
    if hole.all():
        raise ValueError("fill_holes: every pixel is in the hole")
    integral = np.pad(hole.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    dys, dxs = _offsets(h, w)
    pieces = [(0, h, 0, w)]
    while pieces:
        y0, y1, x0, x1 = pieces.pop()
        ys, xs = np.nonzero(hole[y0:y1, x0:x1])
        if len(ys) == 0:
            continue
        y0, y1, x0, x1 = y0 + ys.min(), y0 + ys.max() + 1, x0 + xs.min(), x0 + xs.max() + 1  # tight box
        ty0, tx0 = y0 + dys, x0 + dxs
        ty1, tx1 = ty0 + (y1 - y0), tx0 + (x1 - x0)
        inside = (ty0 >= 0) & (tx0 >= 0) & (ty1 <= h) & (tx1 <= w)
        ty0c, tx0c, ty1c, tx1c = (np.clip(v, 0, lim) for v, lim in ((ty0, h), (tx0, w), (ty1, h), (tx1, w)))
        count = integral[ty1c, tx1c] - integral[ty0c, tx1c] - integral[ty1c, tx0c] + integral[ty0c, tx0c]
        fits = np.flatnonzero(inside & (count == 0))
        if len(fits):
            dy, dx = int(dys[fits[0]]), int(dxs[fits[0]])
            m = hole[y0:y1, x0:x1]
            out[y0:y1, x0:x1][m] = image[y0 + dy:y1 + dy, x0 + dx:x1 + dx][m]
            source[y0:y1, x0:x1][m] = source[y0 + dy:y1 + dy, x0 + dx:x1 + dx][m]
        elif y1 - y0 >= x1 - x0:
            mid = (y0 + y1) // 2
            pieces += [(y0, mid, x0, x1), (mid, y1, x0, x1)]
        else:
            mid = (x0 + x1) // 2
            pieces += [(y0, y1, x0, mid), (y0, y1, mid, x1)]
    return out, source


def clean_background(sample: Sample) -> np.ndarray:
    """The sample's image [H, W, 3] uint8 with every masked part removed (``fill_holes`` over mask > 0)."""
    return fill_holes(sample.image, sample.parts_hole())[0]


def centre(alpha: np.ndarray) -> tuple[float, float] | None:
    """The coverage-weighted centre (row, col) of ``alpha``, or None when it covers nothing."""
    total = float(alpha.sum())
    if total <= 0:
        return None
    rows, cols = np.indices(alpha.shape)
    return float((rows * alpha).sum() / total), float((cols * alpha).sum() / total)


def translate(image: np.ndarray, alpha: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``alpha`` moved by (dy, dx) pixels; what leaves the frame is dropped, alpha 0 where nothing
    lands."""
    h, w = alpha.shape
    moved, cover = np.zeros_like(image), np.zeros_like(alpha)
    ys, yd = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
    xs, xd = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
    moved[yd, xd], cover[yd, xd] = image[ys, xs], alpha[ys, xs]
    return moved, cover


# ---- the built-in types -------------------------------------------------------------------------------------------
def background_swap(sample: Sample, donors: Donors, rng: np.random.Generator) -> np.ndarray:
    """The authors' (``cross``): another class's clean background, a same-class image's co-object where it stood there
    (on data with a co-object), the sample's foreground on top (module docstring)."""
    canvas = clean_background(donors.other_class(sample.label, rng)).astype(np.float32)
    if "object" in sample.masks:
        mate = donors.same_class(sample.label, rng)
        canvas = paste(canvas, mate.image, mate.alpha("object"))
    return to_uint8(paste(canvas, sample.image, sample.alpha("fg")))


def object_swap(sample: Sample, donors: Donors, rng: np.random.Generator) -> np.ndarray:
    """The authors' (``cross``): a same-class image's clean background, another class's co-object where it stood
    there, the sample's foreground on top (module docstring)."""
    canvas = clean_background(donors.same_class(sample.label, rng)).astype(np.float32)
    donor = donors.other_class(sample.label, rng)
    canvas = paste(canvas, donor.image, donor.alpha("object"))
    return to_uint8(paste(canvas, sample.image, sample.alpha("fg")))


def background_swap_own(sample: Sample, donors: Donors, rng: np.random.Generator) -> np.ndarray:
    """Ours (``own``): another class's clean background, the sample's co-object and foreground pasted on it."""
    donor = donors.other_class(sample.label, rng)
    canvas = clean_background(donor).astype(np.float32)
    for part in ("object", "fg"):  # the foreground last: it is in front
        if part in sample.masks:
            canvas = paste(canvas, sample.image, sample.alpha(part))
    return to_uint8(canvas)


def object_swap_own(sample: Sample, donors: Donors, rng: np.random.Generator) -> np.ndarray:
    """Ours (``own``): the sample's clean background, another class's co-object moved onto the sample's object's
    centre, the sample's foreground on top."""
    donor = donors.other_class(sample.label, rng)
    obj = donor.alpha("object")
    to, frm = centre(sample.alpha("object")), centre(obj)
    dy, dx = (0, 0) if to is None or frm is None else (int(round(to[0] - frm[0])), int(round(to[1] - frm[1])))
    image, cover = translate(donor.image, obj, dy, dx)
    canvas = paste(clean_background(sample), image, cover)
    return to_uint8(paste(canvas, sample.image, sample.alpha("fg")))


TEXTURE_OPACITY = 0.5
TEXTURE_CELLS = (4, 16)  # the cell side c in pixels is drawn in this range (inclusive)


def random_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """[H, W, 3] float64: c x c cells (c uniform in ``TEXTURE_CELLS``), each one uniformly drawn RGB colour."""
    c = int(rng.integers(TEXTURE_CELLS[0], TEXTURE_CELLS[1] + 1))
    colours = rng.integers(0, 256, (-(-height // c), -(-width // c), 3)).astype(np.float64)
    return np.repeat(np.repeat(colours, c, axis=0), c, axis=1)[:height, :width]


def texture(sample: Sample, donors: Donors, rng: np.random.Generator) -> np.ndarray:
    """image (1 - a) + T a with a = ``TEXTURE_OPACITY`` (fg mask / 255), T = ``random_texture`` (float64)."""
    h, w = sample.image.shape[:2]
    a = (TEXTURE_OPACITY * (sample.masks["fg"].astype(np.float64) / 255.0))[..., None]
    return to_uint8(sample.image.astype(np.float64) * (1 - a) + random_texture(h, w, rng) * a)


SOBEL = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.int64)
LUMA = np.array([299, 587, 114], np.int64)  # 1000 x (0.299, 0.587, 0.114): integer, so the gradients are exact


def edge_map(sample: Sample, donors: Donors, rng: np.random.Generator) -> np.ndarray:
    """255 (1 - m / max m) in every channel, m the Sobel gradient magnitude of the luminance (module docstring;
    computed on 1000 x the luminance in integers, so m is exact up to the square root); white where flat."""
    grey = sample.image.astype(np.int64) @ LUMA
    h, w = grey.shape
    padded = np.pad(grey, 1, mode="edge")
    gx, gy = np.zeros_like(grey), np.zeros_like(grey)
    for dy in range(3):
        for dx in range(3):
            window = padded[dy:dy + h, dx:dx + w]
            gx += SOBEL[dy, dx] * window
            gy += SOBEL[dx, dy] * window
    m = np.sqrt((gx * gx + gy * gy).astype(np.float64))
    top = m.max()
    edges = 255.0 * (1.0 - (m / top if top > 0 else m))
    return to_uint8(np.repeat(edges[..., None], 3, axis=2))


WATERMARK_CHARS = string.ascii_letters + string.digits
WATERMARK_OPACITIES = tuple(round(0.1 * k, 1) for k in range(1, 10))


@dataclass(frozen=True)
class Watermark:
    """One drawn watermark: its coverage [H, W] in [0, 1], colour (RGB) and opacity."""

    coverage: np.ndarray
    colour: tuple[int, int, int]
    opacity: float

    def apply(self, image: np.ndarray) -> np.ndarray:
        """image (1 - opacity coverage) + colour opacity coverage, as uint8."""
        a = (self.opacity * self.coverage)[..., None]
        return to_uint8(image.astype(np.float32) * (1 - a) + np.asarray(self.colour, np.float32) * a)


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's default font at ``size`` pixels (loaded once per size)."""
    return ImageFont.load_default(size)


def draw_watermark(height: int, width: int, rng: np.random.Generator) -> Watermark:
    """4-8 random letters/digits, white, PIL's default font at 14-23 % of ``height``, from x = 0 at a top of
    0.1-0.9 of the free height, opacity one of 0.1 .. 0.9 (see the module docstring)."""
    size = max(6, int(round(rng.uniform(0.14, 0.23) * height)))
    text = "".join(rng.choice(list(WATERMARK_CHARS), int(rng.integers(4, 9))))
    top = int(round(rng.choice(np.arange(1, 10) / 10) * max(height - size, 0)))
    layer = Image.new("L", (width, height), 0)
    ImageDraw.Draw(layer).text((0, top), text, fill=255, font=_font(size))
    return Watermark(np.asarray(layer, np.float32) / 255.0, (255, 255, 255), float(rng.choice(WATERMARK_OPACITIES)))


def watermark(sample: Sample, donors: Donors, rng: np.random.Generator) -> np.ndarray:
    """Random text drawn over the image (``draw_watermark``)."""
    h, w = sample.image.shape[:2]
    return draw_watermark(h, w, rng).apply(sample.image)


# ---- the table ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentType:
    """One shift type: its ``name`` (the head's name in config.json), its function, and the mask parts it needs
    (``needs``: always; ``needs_if_present``: when the dataset has an attribute of that name, e.g. ``object``)."""

    name: str
    fn: AugmentFn
    needs: tuple[str, ...] = ()
    needs_if_present: tuple[str, ...] = ()
    help: str = ""
    auto: bool = False  # in ``auto`` (the authors' UrbanCars set) when the data has its masks
    own: AugmentFn | None = None  # ours, keeping the image's own other part (``--lle-redraw own``)
    own_help: str = ""

    def redrawn(self, redraw: str) -> "AugmentType":
        """This type with ``--lle-redraw`` ``redraw`` (``cross``: the authors', ``own``: ours) where it has both."""
        if redraw == "own" and self.own is not None:
            return replace(self, fn=self.own, help=self.own_help, own=None)
        return self

    def parts(self, index: DatasetIndex) -> tuple[str, ...]:
        """The mask parts this type needs on ``index``'s dataset."""
        present = {a.name for a in index.attributes}
        return tuple(dict.fromkeys(self.needs + tuple(p for p in self.needs_if_present if p in present)))


AUGMENT_TYPES: dict[str, AugmentType] = {t.name: t for t in (
    AugmentType("background-swap", background_swap, ("fg",), ("object",),
                "the authors' (cross-redraw): the foreground pasted onto the clean background of another class's "
                "image, with a same-class image's co-object", auto=True, own=background_swap_own,
                own_help="ours (own parts): the foreground and its own co-object pasted onto the clean background of "
                         "another class's image"),
    AugmentType("object-swap", object_swap, ("fg", "object"), (),
                "the authors' (cross-redraw): another class's co-object on a same-class image's clean background, "
                "with the foreground", auto=True, own=object_swap_own,
                own_help="ours (own parts): another class's co-object moved into the image's own in place of its own"),
    AugmentType("watermark", watermark, (), (), "random text drawn over the image"),
    AugmentType("texture", texture, ("fg",), (),
                "a random cell texture blended over the foreground (a stand-in for Stylized-ImageNet)"),
    AugmentType("edge-map", edge_map, (), (), "the Sobel edge map, dark on white (a stand-in for DexiNed edges)"),
)}
AUTO = "auto"  # the auto types (the authors' UrbanCars set) the data has masks for; without any: watermark
AUTO_FALLBACK = "watermark"


def mask_gap(aug: AugmentType, index: DatasetIndex) -> str | None:
    """None when every image of ``index`` has the masks ``aug`` needs, else one line naming what is missing."""
    source = index.root / "metadata.csv" if index.dataset == "waterbirds" else index.root
    for part in aug.parts(index):
        lacking = [r for r in index.records if part not in r.masks]
        if len(lacking) == len(index.records):
            return (f"--augment {aug.name} needs {PART_WORDS[part]} masks: {source} has none (column "
                    f"'{MASK_COLUMNS[part]}' in the waterbirds layout's metadata.csv, e.g. 'clip-debias lab make-data "
                    "--masks')")
        if lacking:
            return (f"--augment {aug.name} needs {PART_WORDS[part]} masks: {len(lacking)} of {len(index.records)} "
                    f"images of split '{index.split}' in {source} have none (first: {lacking[0].path})")
    return None


def load_hook(spec: str) -> AugmentType:
    """A user's augmentation function from ``[NAME=]module:function`` or ``[NAME=]path/file.py:function`` (NAME
    defaults to the function's name); one line when it cannot be imported or is not callable."""
    name, _, target = spec.rpartition("=") if "=" in spec else ("", "", spec)
    where, _, func = target.rpartition(":")
    if not where or not func:
        raise ClipDebiasError(f"--augment {spec}: expected a built-in type ({', '.join(AUGMENT_TYPES)}, {AUTO}) or "
                              "NAME=module:function / NAME=file.py:function")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ClipDebiasError(f"--augment {spec}: {path} not found")
            module_spec = importlib.util.spec_from_file_location(f"clip_debias_augment_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(where)
    except ClipDebiasError:
        raise
    except Exception as e:  # noqa: BLE001 -- the user's module: any error while importing it is theirs
        raise ClipDebiasError(f"--augment {spec}: cannot import {where} ({type(e).__name__}: {e})") from e
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ClipDebiasError(f"--augment {spec}: {where} has no function '{func}'")
    name = name or func
    if name in AUGMENT_TYPES or name == AUTO or name == "original":
        raise ClipDebiasError(f"--augment {spec}: the name '{name}' is taken by a built-in type; choose another "
                              "NAME=")
    return AugmentType(name, fn, help=f"{where}:{func}")


def run_augment(aug: AugmentType, sample: Sample, donors: Donors, rng: np.random.Generator) -> np.ndarray:
    """``aug``'s image of ``sample`` as [H, W, 3] uint8; one line when a (user's) function returns anything else."""
    out = aug.fn(sample, donors, rng)
    if isinstance(out, Image.Image):
        out = np.asarray(out.convert("RGB"))
    h, w = sample.image.shape[:2]
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != (h, w, 3):
        got = (f"an array {out.dtype} {tuple(out.shape)}" if isinstance(out, np.ndarray) else type(out).__name__)
        raise ClipDebiasError(f"--augment {aug.name}: the function returned {got}, expected an RGB image of {w}x{h} "
                              "(a PIL image or a [H, W, 3] uint8 array)")
    return out
