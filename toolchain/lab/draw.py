"""Drawing the bias lab's images (numpy/PIL, seeded): backgrounds, the "bird", clutter and the co-occurring object.

Two renderers:

- ``render`` (one random stream per image): today's background-shortcut data. Its stream order is frozen, so a seed
  gives the bytes it always gave.
- ``render_scene`` (one stream per part: background, clutter, layout, bird, co-object): every part is drawn from its
  own stream, so two images that share the streams and differ in one attribute (the place, or the co-object's kind)
  are identical except for that part: the counterfactual pairs. Also returns the parts' coverage masks.

Coverage (masks): alpha in [0, 1] of a shape at each pixel (1 inside, a one-pixel soft edge, 0 outside); the painted
pixel is ``(1 - alpha) * below + alpha * colour``. Saved masks keep 0 and 255 exact (``coverage_to_uint8``), so a
pixel with mask 0 owes nothing to the shape and one with mask 255 nothing to what lies below it.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image

from clip_debias.runtime.datasets import WATERBIRDS_OBJECTS

# (class y, shape) per species; the folder is f"{index:03d}.{class}_{shape}".
SPECIES: tuple[tuple[int, str], ...] = (
    (0, "triangle"), (0, "square"), (0, "cross"),
    (1, "disk"), (1, "ring"), (1, "crescent"),
)
# The co-occurring object's kinds (kind 0 goes with class 0, landbird; kind 1 with class 1, waterbird): a shape and
# a hue range (fractions of the hue circle) per kind.
OBJECT_NAMES = tuple(WATERBIRDS_OBJECTS)  # ("flower", "boat"): the names runtime.datasets gives column ``object``
OBJECT_HUES = ((0.10, 0.17), (0.95, 1.02))  # yellow-orange flowers, red boats
BIRD_EXTENT = 1.07  # every species' shape lies within BIRD_EXTENT * r of its centre (the cross's arm corners)
OBJECT_GAP = (2.0, 5.0)  # pixels between the bird's and the object's extents (at 64 px; the upper end scales)


# ---- parts ----------------------------------------------------------------------------------------------------------
def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """[size, size] smooth noise in [0, 1]: a random ``cells`` x ``cells`` grid, bilinearly upsampled."""
    grid = rng.random((cells, cells), dtype=np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BILINEAR), dtype=np.float32)


def land(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] float RGB in [0, 255]: green/brown ground, two octaves of noise plus grain."""
    green = np.array([70, 125, 50], np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)
    brown = np.array([130, 95, 55], np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)
    mix = (0.65 * _value_noise(rng, size, int(rng.integers(3, 6)))
           + 0.35 * _value_noise(rng, size, int(rng.integers(8, 14))))
    img = green * (1 - mix[..., None]) + brown * mix[..., None]
    return img + rng.normal(0, 9, (size, size, 1)).astype(np.float32)


def water(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] float RGB in [0, 255]: blue with sinusoidal wave stripes, slow shading plus grain."""
    base = np.array([45, 105, 185], np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    freq, tilt, phase = rng.uniform(4, 9), rng.uniform(-0.35, 0.35), rng.uniform(0, 2 * np.pi)
    waves = np.sin(2 * np.pi * freq * (yy + tilt * xx) + phase + 0.6 * np.sin(2 * np.pi * 2 * xx))
    shade = _value_noise(rng, size, 3) - 0.5
    light = rng.uniform(14, 28) * waves + 30 * shade
    img = base + light[..., None] * np.array([0.6, 0.8, 1.0], np.float32)
    return img + rng.normal(0, 6, (size, size, 1)).astype(np.float32)


BACKGROUNDS = (land, water)  # by place id


def shape_sdf(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Signed distance-like field (< 0 inside) of ``shape`` with radius ``r`` in rotated pixel coordinates (u, v)."""
    d = np.hypot(u, v)
    if shape in ("triangle", "square"):
        n = 3 if shape == "triangle" else 4
        ang = np.mod(np.arctan2(v, u), 2 * np.pi / n) - np.pi / n
        return d * np.cos(ang) - r * np.cos(np.pi / n)
    if shape == "cross":
        a, b = r, r * 0.36
        return np.minimum(np.maximum(np.abs(u) - a, np.abs(v) - b), np.maximum(np.abs(u) - b, np.abs(v) - a))
    if shape == "disk":
        return d - r * 0.9
    if shape == "ring":
        return np.maximum(d - r * 0.95, r * 0.5 - d)
    if shape == "crescent":
        return np.maximum(d - r * 0.95, r * 0.75 - np.hypot(u - r * 0.5, v))
    if shape == "flower":  # five round petals: radius r (0.55 + 0.45 cos 5 phi), within r
        return d - r * (0.55 + 0.45 * np.cos(5 * np.arctan2(v, u)))
    if shape == "boat":  # a hull: a trapezoid 2r wide on deck, 1.2r at the keel, 0.8r high, within r
        return np.maximum(np.abs(v) - 0.4 * r, np.abs(u) + 0.5 * v - 0.8 * r)
    raise ValueError(shape)


def hsv_colour(rng: np.random.Generator, hues: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """A random saturated RGB colour (float, 0..255) with hue in ``hues`` (wrapping past 1)."""
    h = hues[0] + rng.random() * (hues[1] - hues[0])
    s, v = rng.uniform(0.45, 1.0), rng.uniform(0.55, 1.0)
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


def _window(size: int, cx: float, cy: float, r: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """The pixel box around (cx, cy) with half-side ``r`` + 2, clipped to the image, and its coordinates
    relative to (cx, cy)."""
    y0, y1 = max(int(cy - r) - 2, 0), min(int(cy + r) + 3, size)
    x0, x1 = max(int(cx - r) - 2, 0), min(int(cx + r) + 3, size)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return slice(y0, y1), slice(x0, x1), xx - cx, yy - cy


def _paint(img: np.ndarray, sdf: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Alpha-blend ``colour`` (RGB or [h, w, 3]) where ``sdf`` < 0, with a one-pixel soft edge, in place; returns the
    coverage alpha [h, w]."""
    alpha = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]
    img *= 1 - alpha
    img += alpha * colour
    return alpha[..., 0]


@dataclass(frozen=True)
class Placement:
    """Where a shape goes: radius ``r`` and centre (cx, cy) in pixels."""

    r: float
    cx: float
    cy: float


def bird(rng: np.random.Generator, img: np.ndarray, label: int, shape: str, object_scale: tuple[float, float],
         class_texture: float, at: Placement | None = None) -> tuple[slice, slice, np.ndarray]:
    """Draw one textured, randomly coloured, rotated "bird" of class ``label`` and ``shape`` on ``img`` in place, at
    ``at`` (None: radius and centre drawn from ``rng`` first, inside the image). The texture follows the class
    (landbird striped, waterbird spotted) with prob ``class_texture``, else it is drawn uniformly from solid /
    stripes / spots. Returns the window (rows, cols) and the coverage there."""
    size = img.shape[0]
    if at is None:
        r = rng.uniform(*object_scale) * size
        cx, cy = rng.uniform(r + 1, size - r - 1, 2)
        at = Placement(r, cx, cy)
    theta = rng.uniform(0, 2 * np.pi)
    ys, xs, x, y = _window(size, at.cx, at.cy, at.r * 1.5)
    u, v = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
    c1 = hsv_colour(rng)
    c2 = c1 * rng.uniform(0.35, 0.7)
    linked = rng.random() < class_texture
    texture = (1 + label) if linked else int(rng.integers(0, 3))  # 0 solid, 1 stripes, 2 spots
    if texture == 0:
        t = np.zeros_like(u)
    elif texture == 1:
        t = (np.sin(u * 2 * np.pi / rng.uniform(3, 5)) > 0).astype(np.float32)
    else:
        p = rng.uniform(3, 5)
        t = ((np.sin(u * 2 * np.pi / p) > 0.3) & (np.sin(v * 2 * np.pi / p) > 0.3)).astype(np.float32)
    colour = c1 * (1 - t[..., None]) + c2 * t[..., None]
    return ys, xs, _paint(img[ys, xs], shape_sdf(shape, u, v, at.r), colour)


def co_object(rng: np.random.Generator, img: np.ndarray, kind: int, at: Placement) -> tuple[slice, slice, np.ndarray]:
    """Draw the co-occurring object of ``kind`` (``OBJECT_NAMES``) at ``at`` on ``img`` in place: its shape, a solid
    colour from its hue range, a random rotation. The stream's draws do not depend on ``kind``, so the two kinds
    drawn from equal streams differ only in shape and hue. Returns the window and the coverage there."""
    theta, hue_u = rng.uniform(0, 2 * np.pi), rng.random()
    s, v = rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0)
    lo, hi = OBJECT_HUES[kind]
    colour = np.array(colorsys.hsv_to_rgb((lo + hue_u * (hi - lo)) % 1.0, s, v), np.float32) * 255
    ys, xs, x, y = _window(img.shape[0], at.cx, at.cy, at.r * 1.5)
    u, w = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
    return ys, xs, _paint(img[ys, xs], shape_sdf(OBJECT_NAMES[kind], u, w, at.r), colour)


def clutter(rng: np.random.Generator, img: np.ndarray, k: int) -> None:
    """Draw ``k`` small random blobs (pebbles, leaves, foam) on ``img`` in place."""
    size = img.shape[0]
    for _ in range(k):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.8, 2.5, 2) * size / 64
        ys, xs, x, y = _window(size, cx, cy, max(rx, ry))
        sdf = (np.hypot(x / rx, y / ry) - 1) * min(rx, ry)
        _paint(img[ys, xs], sdf, hsv_colour(rng) * rng.uniform(0.5, 1.0))


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 255] rounded to uint8."""
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def coverage_to_uint8(alpha: np.ndarray) -> np.ndarray:
    """A coverage map in [0, 1] as a uint8 mask: 255 exactly where fully covered (alpha 1), 0 exactly where not
    touched (alpha 0), round(255 alpha) clipped to 1..254 on the soft edge."""
    edge = np.clip(np.floor(alpha * 255 + 0.5), 1, 254)
    return np.where(alpha >= 1, 255, np.where(alpha <= 0, 0, edge)).astype(np.uint8)


# ---- today's renderer (one stream) ---------------------------------------------------------------------------------
def render(rng: np.random.Generator, species: int, place: int, image_size: int, clutter_max: int,
           object_scale: tuple[float, float], class_texture: float) -> tuple[np.ndarray, np.ndarray]:
    """One image of the background-shortcut data: background of ``place``, clutter, then the bird of ``species``, all
    from ``rng`` in that order. Returns (image [size, size, 3] uint8, bird coverage [size, size] float32)."""
    img = BACKGROUNDS[place](rng, image_size)
    clutter(rng, img, int(rng.integers(0, clutter_max + 1)))
    mask = np.zeros((image_size, image_size), np.float32)
    ys, xs, alpha = bird(rng, img, SPECIES[species][0], SPECIES[species][1], object_scale, class_texture)
    mask[ys, xs] = alpha
    return to_uint8(img), mask


# ---- the per-part renderer -----------------------------------------------------------------------------------------
STREAMS = ("background", "clutter", "layout", "bird", "object")


@dataclass(frozen=True)
class Scene:
    """What one image shows: the bird's ``species``, the ``place`` and the co-object's ``kind`` (None: no object)."""

    species: int
    place: int
    kind: int | None = None


@dataclass
class Rendered:
    """An image [size, size, 3] uint8 and the coverage [size, size] float32 of its bird and of its co-object (None
    without one)."""

    image: np.ndarray
    bird: np.ndarray
    object: np.ndarray | None


def layout(rng: np.random.Generator, size: int, object_scale: tuple[float, float],
           co_object_scale: tuple[float, float] | None) -> tuple[Placement, Placement | None]:
    """The bird's placement and, when ``co_object_scale`` is given, the co-object's beside it: at a random angle, its
    extent ``OBJECT_GAP`` pixels from the bird's, both inside the image (the bird's centre is drawn among the
    positions where both fit; ``min_image_fraction`` says when there are some)."""
    r = rng.uniform(*object_scale) * size
    if co_object_scale is None:
        cx, cy = rng.uniform(r + 1, size - r - 1, 2)
        return Placement(r, cx, cy), None
    ro = rng.uniform(*co_object_scale) * size
    gap = rng.uniform(OBJECT_GAP[0], OBJECT_GAP[0] + (OBJECT_GAP[1] - OBJECT_GAP[0]) * size / 64)
    phi = rng.uniform(0, 2 * np.pi)
    dist = BIRD_EXTENT * r + ro + gap
    dx, dy = dist * np.cos(phi), dist * np.sin(phi)
    lo_x, hi_x = max(r + 1, ro + 1 - dx), min(size - r - 1, size - ro - 1 - dx)
    lo_y, hi_y = max(r + 1, ro + 1 - dy), min(size - r - 1, size - ro - 1 - dy)
    cx, cy = lo_x + rng.random() * max(hi_x - lo_x, 0.0), lo_y + rng.random() * max(hi_y - lo_y, 0.0)
    return Placement(r, cx, cy), Placement(ro, cx + dx, cy + dy)


def min_image_fraction(object_scale_max: float, co_object_scale_max: float, size: int) -> float:
    """The fraction of the image side a bird and its co-object need side by side at their largest (plus the gap and
    the one-pixel margins): ``layout`` always finds a place when this is <= 1."""
    gap = OBJECT_GAP[0] + (OBJECT_GAP[1] - OBJECT_GAP[0]) * size / 64
    return ((1 + BIRD_EXTENT) * object_scale_max * size + 2 * co_object_scale_max * size + gap + 2) / size


def render_scene(streams: dict[str, np.random.Generator], scene: Scene, image_size: int, clutter_max: int,
                 object_scale: tuple[float, float], class_texture: float,
                 co_object_scale: tuple[float, float] | None) -> Rendered:
    """One image drawn part by part, each part from its own stream (``STREAMS``): background of ``scene.place``,
    clutter, then the co-object of ``scene.kind`` (when not None) and the bird beside it (they never overlap)."""
    size = image_size
    img = BACKGROUNDS[scene.place](streams["background"], size)
    rc = streams["clutter"]
    clutter(rc, img, int(rc.integers(0, clutter_max + 1)))
    at_bird, at_object = layout(streams["layout"], size, object_scale,
                                co_object_scale if scene.kind is not None else None)
    object_mask = None
    if scene.kind is not None and at_object is not None:
        object_mask = np.zeros((size, size), np.float32)
        ys, xs, alpha = co_object(streams["object"], img, scene.kind, at_object)
        object_mask[ys, xs] = alpha
    bird_mask = np.zeros((size, size), np.float32)
    ys, xs, alpha = bird(streams["bird"], img, SPECIES[scene.species][0], SPECIES[scene.species][1], object_scale,
                         class_texture, at=at_bird)
    bird_mask[ys, xs] = alpha
    return Rendered(to_uint8(img), bird_mask, object_mask)
