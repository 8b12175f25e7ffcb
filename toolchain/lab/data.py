"""The bias lab's synthetic image set: "birds" on land or water, in the Waterbirds layout.

A foreground object whose class is carried by its *shape* (three shape families, "species", per class; colour,
texture, size, rotation and position vary freely) is pasted on a background of one of two kinds: land (green/brown
ground with procedural noise) or water (blue with wave stripes). In the train split class and background agree for
``correlation`` of the images; val and test are balanced over the four groups (group = 2*y + place). The object
covers a small part of the image, so the background is the easier cue and a model trained on it leans on it.

Layout (as Waterbirds): ``DIR/metadata.csv`` with ``img_filename,y,split,place`` (split 0/1/2 = train/val/test),
PNG images in one sub-folder per species, and ``DIR/lab.json`` recording the generator's parameters.
Everything is numpy/PIL and seeded per image, so a seed reproduces the same bytes.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clip_debias.runtime.atomic_output import staged_directory
from clip_debias.toolchain.errors import ClipDebiasError

GENERATOR_VERSION = 1
LAB_MARKER = "lab.json"  # the generator's parameters, written last (ownership: runtime.ownership's marker)
CLASS_NAMES = ("landbird", "waterbird")
PLACE_NAMES = ("land", "water")
SPLIT_NAMES = ("train", "val", "test")
# (class y, shape) per species; the folder is f"{index:03d}.{class}_{shape}".
SPECIES: tuple[tuple[int, str], ...] = (
    (0, "triangle"), (0, "square"), (0, "cross"),
    (1, "disk"), (1, "ring"), (1, "crescent"),
)


@dataclass(frozen=True)
class LabDataConfig:
    """The parameters that fix a generated lab data set (with ``GENERATOR_VERSION``)."""

    n_train: int = 4800
    n_val: int = 600
    n_test: int = 1200
    correlation: float = 0.85  # the shipped weights' data (toolchain/lab/recipe.json, make_data.args)
    image_size: int = 64
    seed: int = 0
    object_scale: tuple[float, float] = (0.15, 0.22)  # object radius as a fraction of the image side
    clutter: int = 4  # at most this many small distractor blobs per image
    class_texture: float = 0.75  # prob. that the object's texture follows its class (else uniform)


# ---- drawing --------------------------------------------------------------------------------------------------------
def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """[size, size] smooth noise in [0, 1]: a random ``cells`` x ``cells`` grid, bilinearly upsampled."""
    grid = rng.random((cells, cells), dtype=np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BILINEAR), dtype=np.float32)


def _land(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] float RGB in [0, 255]: green/brown ground, two octaves of noise plus grain."""
    green = np.array([70, 125, 50], np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)
    brown = np.array([130, 95, 55], np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)
    mix = (0.65 * _value_noise(rng, size, int(rng.integers(3, 6)))
           + 0.35 * _value_noise(rng, size, int(rng.integers(8, 14))))
    img = green * (1 - mix[..., None]) + brown * mix[..., None]
    return img + rng.normal(0, 9, (size, size, 1)).astype(np.float32)


def _water(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] float RGB in [0, 255]: blue with sinusoidal wave stripes, slow shading plus grain."""
    base = np.array([45, 105, 185], np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    freq, tilt, phase = rng.uniform(4, 9), rng.uniform(-0.35, 0.35), rng.uniform(0, 2 * np.pi)
    waves = np.sin(2 * np.pi * freq * (yy + tilt * xx) + phase + 0.6 * np.sin(2 * np.pi * 2 * xx))
    shade = _value_noise(rng, size, 3) - 0.5
    light = rng.uniform(14, 28) * waves + 30 * shade
    img = base + light[..., None] * np.array([0.6, 0.8, 1.0], np.float32)
    return img + rng.normal(0, 6, (size, size, 1)).astype(np.float32)


def _shape_sdf(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
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
    raise ValueError(shape)


def _hsv_colour(rng: np.random.Generator) -> np.ndarray:
    """A random saturated RGB colour (float, 0..255)."""
    import colorsys

    h, s, v = rng.random(), rng.uniform(0.45, 1.0), rng.uniform(0.55, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255


def _window(size: int, cx: float, cy: float, r: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """The pixel box around (cx, cy) with half-side ``r`` + 2, clipped to the image, and its coordinates
    relative to (cx, cy)."""
    y0, y1 = max(int(cy - r) - 2, 0), min(int(cy + r) + 3, size)
    x0, x1 = max(int(cx - r) - 2, 0), min(int(cx + r) + 3, size)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return slice(y0, y1), slice(x0, x1), xx - cx, yy - cy


def _paint(img: np.ndarray, sdf: np.ndarray, colour: np.ndarray) -> None:
    """Alpha-blend ``colour`` (RGB or [h, w, 3]) where ``sdf`` < 0, with a one-pixel soft edge, in place."""
    alpha = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]
    img *= 1 - alpha
    img += alpha * colour


def _object(rng: np.random.Generator, img: np.ndarray, label: int, shape: str, cfg: LabDataConfig) -> None:
    """Draw one textured, randomly coloured, rotated and placed object of class ``label`` and ``shape`` on ``img`` in
    place. The texture follows the class (landbird striped, waterbird spotted) with prob ``cfg.class_texture``,
    else it is drawn uniformly from solid / stripes / spots."""
    size = img.shape[0]
    r = rng.uniform(*cfg.object_scale) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    theta = rng.uniform(0, 2 * np.pi)
    ys, xs, x, y = _window(size, cx, cy, r * 1.5)
    u, v = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
    c1 = _hsv_colour(rng)
    c2 = c1 * rng.uniform(0.35, 0.7)
    linked = rng.random() < cfg.class_texture
    texture = (1 + label) if linked else int(rng.integers(0, 3))  # 0 solid, 1 stripes, 2 spots
    if texture == 0:
        t = np.zeros_like(u)
    elif texture == 1:
        t = (np.sin(u * 2 * np.pi / rng.uniform(3, 5)) > 0).astype(np.float32)
    else:
        p = rng.uniform(3, 5)
        t = ((np.sin(u * 2 * np.pi / p) > 0.3) & (np.sin(v * 2 * np.pi / p) > 0.3)).astype(np.float32)
    colour = c1 * (1 - t[..., None]) + c2 * t[..., None]
    _paint(img[ys, xs], _shape_sdf(shape, u, v, r), colour)


def _clutter(rng: np.random.Generator, img: np.ndarray, k: int) -> None:
    """Draw ``k`` small random blobs (pebbles, leaves, foam) on ``img`` in place."""
    size = img.shape[0]
    for _ in range(k):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.8, 2.5, 2) * size / 64
        ys, xs, x, y = _window(size, cx, cy, max(rx, ry))
        sdf = (np.hypot(x / rx, y / ry) - 1) * min(rx, ry)
        _paint(img[ys, xs], sdf, _hsv_colour(rng) * rng.uniform(0.5, 1.0))


def render(rng: np.random.Generator, species: int, place: int, cfg: LabDataConfig) -> np.ndarray:
    """One [size, size, 3] uint8 image: background of ``place``, clutter, then the object of ``species``."""
    img = (_water if place else _land)(rng, cfg.image_size)
    _clutter(rng, img, int(rng.integers(0, cfg.clutter + 1)))
    _object(rng, img, SPECIES[species][0], SPECIES[species][1], cfg)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# ---- the data set ---------------------------------------------------------------------------------------------------
def group_counts(n: int, correlation: float | None) -> list[int]:
    """Exact images per group (group = 2*y + place): balanced when ``correlation`` is None, else the class agrees
    with the background for round(correlation * n) images, classes balanced."""
    if correlation is None:
        return [n // 4 + (1 if g < n % 4 else 0) for g in range(4)]
    agree = int(round(correlation * n))
    minority = n - agree
    return [agree - agree // 2, minority // 2, minority - minority // 2, agree // 2]  # (0,0) (0,1) (1,0) (1,1)


def _split_rows(cfg: LabDataConfig, split: int, n: int) -> list[tuple[int, int, int]]:
    """(y, place, species) for each image of ``split``, in a seeded shuffled order."""
    counts = group_counts(n, cfg.correlation if split == 0 else None)
    groups = np.repeat(np.arange(4), counts)
    rng = np.random.default_rng([cfg.seed, split, 1 << 20])
    groups = rng.permutation(groups)
    per_class = [[i for i, (c, _) in enumerate(SPECIES) if c == y] for y in (0, 1)]
    rows = []
    for g in groups:
        y, place = int(g) // 2, int(g) % 2
        rows.append((y, place, int(rng.choice(per_class[y]))))
    return rows


def _check(cfg: LabDataConfig) -> None:
    """One clear line (naming the CLI option) for each parameter outside its meaningful range."""
    if not 0.0 <= cfg.correlation <= 1.0:
        raise ClipDebiasError(f"--correlation {cfg.correlation}: expected a fraction in [0, 1]")
    if not 0.0 <= cfg.class_texture <= 1.0:
        raise ClipDebiasError(f"--class-texture {cfg.class_texture}: expected a probability in [0, 1]")
    if cfg.seed < 0:
        raise ClipDebiasError(f"--seed {cfg.seed}: expected an integer >= 0")
    lo, hi = cfg.object_scale
    if not 0.02 <= lo <= hi <= 0.45:
        raise ClipDebiasError(f"--object-scale {lo},{hi}: expected 0.02 <= min <= max <= 0.45 (radius / image side)")
    if cfg.image_size < 16:
        raise ClipDebiasError(f"--image-size {cfg.image_size}: expected at least 16 pixels")
    for name in ("n_train", "n_val", "n_test"):
        if getattr(cfg, name) < 0:
            raise ClipDebiasError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: expected a count >= 0")
    for name in ("n_val", "n_test"):
        if getattr(cfg, name) % 4:
            raise ClipDebiasError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: expected a multiple of 4 "
                                  "(val and test are balanced over the 4 groups)")
    if cfg.n_train + cfg.n_val + cfg.n_test == 0:
        raise ClipDebiasError("--n-train/--n-val/--n-test: expected at least one image in total")


def _write_chunk(tmp: Path, jobs: list[tuple[LabDataConfig, int, int, int, int, int]]) -> list[str]:
    """Render and save the images of ``jobs`` (cfg, split, index, y, place, species) under ``tmp``; their names."""
    names = []
    for cfg, split, i, y, place, species in jobs:
        img = render(np.random.default_rng([cfg.seed, split, i]), species, place, cfg)
        name = f"{species:03d}.{CLASS_NAMES[y]}_{SPECIES[species][1]}/{SPLIT_NAMES[split]}_{i:05d}.png"
        Image.fromarray(img).save(tmp / name, compress_level=1)
        names.append(name)
    return names


def make_lab_data(
    out: str | Path,
    n_train: int = 4800,
    correlation: float = LabDataConfig.correlation,
    image_size: int = 64,
    seed: int = 0,
    n_val: int = 600,
    n_test: int = 1200,
    overwrite: bool = False,
    workers: int | None = None,
    object_scale: tuple[float, float] = (0.15, 0.22),
    class_texture: float = 0.75,
) -> Path:
    """Generate the lab data set into ``out`` (written to a temporary sibling, renamed at the end); returns ``out``.
    The bytes depend only on the arguments (each image has its own seed), not on ``workers`` (default: all cores)."""
    cfg = LabDataConfig(n_train=n_train, n_val=n_val, n_test=n_test, correlation=correlation,
                        image_size=image_size, seed=seed, object_scale=tuple(object_scale),
                        class_texture=class_texture)
    _check(cfg)
    out = Path(out)
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise ClipDebiasError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    with staged_directory(out, "lab-data", complete=LAB_MARKER) as tmp:
        _write_data(tmp, cfg, workers)
    return out


def _write_data(tmp: Path, cfg: LabDataConfig, workers: int | None) -> None:
    """Render every image of ``cfg`` into ``tmp``, then ``metadata.csv`` and ``lab.json`` (the marker, last)."""
    for i, (y, shape) in enumerate(SPECIES):
        (tmp / f"{i:03d}.{CLASS_NAMES[y]}_{shape}").mkdir(parents=True)
    jobs = [(cfg, split, i, y, place, species)
            for split, n in enumerate((cfg.n_train, cfg.n_val, cfg.n_test))
            for i, (y, place, species) in enumerate(_split_rows(cfg, split, n))]
    n_workers = max(1, min(workers or os.cpu_count() or 1, 8, len(jobs) // 200))
    chunks = [(tmp, jobs[k::n_workers]) for k in range(n_workers)]
    if n_workers == 1:
        names = [_write_chunk(*chunks[0])]
    else:
        import multiprocessing as mp

        with mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(n_workers) as pool:
            names = pool.starmap(_write_chunk, chunks)
    name_of = {(j[1], j[2]): nm for chunk, nms in zip(chunks, names) for j, nm in zip(chunk[1], nms)}
    rows = [(name_of[(split, i)], y, split, place) for _, split, i, y, place, _ in jobs]
    with open(tmp / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("img_filename", "y", "split", "place"))
        w.writerows(rows)
    info = {"generator": "clip-debias lab", "version": GENERATOR_VERSION, **asdict(cfg),
            "class_names": list(CLASS_NAMES), "place_names": list(PLACE_NAMES),
            "species": [f"{CLASS_NAMES[y]}_{s}" for y, s in SPECIES]}
    (tmp / LAB_MARKER).write_text(json.dumps(info, indent=2) + "\n")


def read_metadata(data: str | Path) -> list[dict[str, int | str]]:
    """The rows of ``DIR/metadata.csv`` as dicts (img_filename: str; y, split, place: int)."""
    path = Path(data) / "metadata.csv"
    if not path.is_file():
        raise ClipDebiasError(f"{path}: not found (expected a Waterbirds-layout data dir, "
                              "e.g. from `clip-debias lab make-data`)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"img_filename", "y", "split", "place"} - set(reader.fieldnames or ())
        if missing:
            raise ClipDebiasError(f"{path}: missing columns {sorted(missing)} (expected img_filename,y,split,place)")
        try:
            return [{"img_filename": r["img_filename"], "y": int(r["y"]), "split": int(r["split"]),
                     "place": int(r["place"])} for r in reader]
        except ValueError as e:
            raise ClipDebiasError(f"{path}: y/split/place must be integers ({e})") from e
