"""The bias lab's synthetic image set: "birds" on land or water, in the Waterbirds layout.

A foreground "bird" whose class is carried by its *shape* (three shape families, "species", per class; colour,
texture, size, rotation and position vary freely) is drawn on a background of one of two kinds: land (green/brown
ground with procedural noise) or water (blue with wave stripes). With ``shortcuts=("background", "object")`` a small
co-occurring object stands beside the bird: a flower (goes with landbirds) or a boat (with waterbirds). In the train
split each shortcut agrees with the class for ``correlation`` of the images (independently); val and test are
balanced over the groups (``groups``: 2*y + place, or 4*y + 2*place + object). The bird covers a small part of the
image, so the background (and the object) are the easier cues and a model trained on them leans on them.

Layout (as Waterbirds): ``DIR/metadata.csv`` with columns ``img_filename,y,split,place`` (split 0/1/2 =
train/val/test), then, when present: ``object`` (0 flower, 1 boat), ``pair`` (counterfactual pair id on the test
split, empty elsewhere), ``fg_mask`` and ``object_mask`` (paths of the coverage masks, below). PNG images in one
sub-folder per species; masks under ``masks/`` with the image's path, ``_fg.png`` (the bird) / ``_object.png``
(the co-object) for ``.png``: 8-bit grey, 255 where the part fully covers the pixel, 0 where it does not touch it,
round(coverage x 255) in 1..254 on its one-pixel soft edge.
``DIR/lab.json`` records the generator's parameters. ``signature`` post-processes every image (``signature``).

Bounded work (refused in one line before anything is drawn or allocated): ``--image-size`` at most
``MAX_LAB_IMAGE_SIZE`` (1024) px, each split at most ``MAX_LAB_SPLIT`` (10^6) images, and the product -- the memory
the generation needs (``ROW_BYTES`` per image planned + ``RENDER_BYTES_PER_PIXEL`` x side^2 per worker) against
MemAvailable, the files it writes (at least ``PNG_BYTES_PER_PIXEL`` x side^2 each) against the free disk of --out.

Everything is numpy/PIL and seeded per image, so a seed reproduces the same bytes. Data with one shortcut and no
pairs is drawn by ``draw.render`` exactly as before (same seed and arguments, same images and metadata.csv); the
rest by ``draw.render_scene``, one stream per part, which makes the counterfactual pairs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clip_debias.runtime.atomic_output import staged_directory
from clip_debias.runtime.choices import Split
from clip_debias.runtime.limits import MAX_LAB_IMAGE_SIZE, MAX_LAB_SPLIT, check_at_most, check_memory, size_text
from clip_debias.toolchain.choices import LabShortcuts
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.lab.draw import (OBJECT_NAMES, SPECIES, STREAMS, Rendered, Scene, coverage_to_uint8,
                                            min_image_fraction, render, render_scene)
from clip_debias.toolchain.lab.groups import Row, n_groups, split_rows
from clip_debias.toolchain.lab.signature import parse_signature

GENERATOR_VERSION = 2  # 2: co-occurring object, masks, counterfactual pairs, signatures (version 1's data unchanged)
LAB_MARKER = "lab.json"  # the generator's parameters, written last (ownership: runtime.ownership's marker)
CLASS_NAMES = ("landbird", "waterbird")
PLACE_NAMES = ("land", "water")
SPLIT_NAMES = Split.values()  # metadata.csv's split 0/1/2
MASK_DIR = "masks"
SCENE_TAG = 2  # the last entropy word of render_scene's stream seeds [seed, split, bird, stream, SCENE_TAG]
ROW_BYTES = 512  # planning one image: its Row, job tuple and metadata line (measured 322 B)
RENDER_BYTES_PER_PIXEL = 96  # drawing one image: its float layers (measured 62-83 B per pixel at 512-1024 px)
PNG_BYTES_PER_PIXEL = 1.0  # one image file on disk, at least (measured 1.6 B per pixel at 256 px, compress_level 1)


@dataclass(frozen=True)
class LabDataConfig:
    """The parameters that fix a generated lab data set (with ``GENERATOR_VERSION``)."""

    n_train: int = 4800
    n_val: int = 600
    n_test: int = 1200
    correlation: float = 0.85  # the shipped weights' data (toolchain/lab/recipe.json, make_data.args)
    image_size: int = 64
    seed: int = 0
    object_scale: tuple[float, float] = (0.15, 0.22)  # the bird's radius as a fraction of the image side
    clutter: int = 4  # at most this many small distractor blobs per image
    class_texture: float = 0.75  # prob. that the bird's texture follows its class (else uniform)
    shortcuts: tuple[str, ...] = ("background",)  # or ("background", "object")
    co_object_scale: tuple[float, float] = (0.08, 0.11)  # the co-object's radius / image side (with "object")
    counterfactual: bool = False  # test split made of counterfactual pairs
    signature: str | None = None  # a planted low-level signature, "colour-cast:S" / "jpeg:Q" (lab.signature)
    masks: bool = False  # write the coverage masks

    @property
    def two_shortcuts(self) -> bool:
        return "object" in self.shortcuts

    def uses_scenes(self, split: int) -> bool:
        """Whether ``split`` is drawn part by part (``draw.render_scene``) rather than by today's ``draw.render``."""
        return self.two_shortcuts or (self.counterfactual and split == 2)


def parse_shortcuts(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``background`` or ``background,object`` (text or a sequence) as a tuple; anything else one line."""
    names = tuple(v.strip() for v in value.split(",")) if isinstance(value, str) else tuple(value)
    LabShortcuts.parse(",".join(names), "--shortcuts")
    return names


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
    check_at_most(cfg.image_size, MAX_LAB_IMAGE_SIZE, "--image-size", "pixels a side; the lab model reads 64")
    if cfg.two_shortcuts:
        olo, ohi = cfg.co_object_scale
        if not 0.02 <= olo <= ohi <= 0.2:
            raise ClipDebiasError(f"--co-object-scale {olo},{ohi}: expected 0.02 <= min <= max <= 0.2 "
                                  "(radius / image side)")
        need = min_image_fraction(hi, ohi, cfg.image_size)
        if need > 1:
            raise ClipDebiasError(f"--object-scale {lo},{hi} / --co-object-scale {olo},{ohi}: a bird and its "
                                  f"co-object at their largest need {need:.2f} of the image side beside each other; "
                                  "expected <= 1 (make them smaller)")
    for name in ("n_train", "n_val", "n_test"):
        if getattr(cfg, name) < 0:
            raise ClipDebiasError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: expected a count >= 0")
        check_at_most(getattr(cfg, name), MAX_LAB_SPLIT, f"--{name.replace('_', '-')}", "images per split")
    groups = n_groups(cfg.two_shortcuts)
    for name in ("n_val", "n_test"):
        if getattr(cfg, name) % groups:
            raise ClipDebiasError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: expected a multiple of {groups} "
                                  f"(val and test are balanced over the {groups} groups)")
    if cfg.counterfactual and cfg.two_shortcuts and cfg.n_test % 16:
        raise ClipDebiasError(f"--n-test {cfg.n_test}: expected a multiple of 16 with --counterfactual and two "
                              "shortcuts (half the pairs swap the place, half the object, each half balanced)")
    if total_images(cfg) == 0:
        raise ClipDebiasError("--n-train/--n-val/--n-test: expected at least one image in total")
    parse_signature(cfg.signature)


# ---- one image ------------------------------------------------------------------------------------------------------
def image_name(split: int, i: int, row: Row) -> str:
    """The image's path in the data dir: ``NNN.class_shape/split_IIIII.png``."""
    y, shape = SPECIES[row.species]
    return f"{row.species:03d}.{CLASS_NAMES[y]}_{shape}/{SPLIT_NAMES[split]}_{i:05d}.png"


def mask_names(image: str) -> tuple[str, str]:
    """The (bird, co-object) mask paths of ``image`` (see the module docstring)."""
    stem = f"{MASK_DIR}/{image[:-len('.png')]}"
    return f"{stem}_fg.png", f"{stem}_object.png"


def render_row(cfg: LabDataConfig, split: int, i: int, row: Row) -> Rendered:
    """Image ``i`` of ``split`` (with the signature applied) and its masks."""
    if cfg.uses_scenes(split):
        streams = {name: np.random.default_rng([cfg.seed, split, row.bird, k, SCENE_TAG])
                   for k, name in enumerate(STREAMS)}
        out = render_scene(streams, Scene(row.species, row.place, row.kind), cfg.image_size, cfg.clutter,
                           cfg.object_scale, cfg.class_texture,
                           cfg.co_object_scale if cfg.two_shortcuts else None)
    else:
        image, bird = render(np.random.default_rng([cfg.seed, split, i]), row.species, row.place, cfg.image_size,
                             cfg.clutter, cfg.object_scale, cfg.class_texture)
        out = Rendered(image, bird, None)
    signature = parse_signature(cfg.signature)
    if signature is not None:
        out.image = signature.apply(out.image)
    return out


def _write_chunk(tmp: Path, jobs: list[tuple[LabDataConfig, int, int, Row]]) -> None:
    """Render and save the images (and masks) of ``jobs`` (cfg, split, index, row) under ``tmp``."""
    for cfg, split, i, row in jobs:
        out = render_row(cfg, split, i, row)
        name = image_name(split, i, row)
        Image.fromarray(out.image).save(tmp / name, compress_level=1)
        if cfg.masks:
            fg, obj = mask_names(name)
            Image.fromarray(coverage_to_uint8(out.bird)).save(tmp / fg, compress_level=1)
            if out.object is not None:
                Image.fromarray(coverage_to_uint8(out.object)).save(tmp / obj, compress_level=1)


def lab_data_config(
    n_train: int = 4800,
    correlation: float = LabDataConfig.correlation,
    image_size: int = 64,
    seed: int = 0,
    n_val: int = 600,
    n_test: int = 1200,
    object_scale: tuple[float, float] = (0.15, 0.22),
    class_texture: float = 0.75,
    shortcuts: str | tuple[str, ...] = ("background",),
    co_object_scale: tuple[float, float] = LabDataConfig.co_object_scale,
    counterfactual: bool = False,
    signature: str | None = None,
    masks: bool | None = None,
) -> LabDataConfig:
    """The checked config that ``make_lab_data`` draws with these arguments (``masks`` None: written with two
    shortcuts or counterfactual pairs, not for today's data, whose bytes it keeps; the signature stored as
    KIND:STRENGTH, or None)."""
    shortcuts = parse_shortcuts(shortcuts)
    if masks is None:
        masks = "object" in shortcuts or counterfactual
    cfg = LabDataConfig(n_train=n_train, n_val=n_val, n_test=n_test, correlation=correlation,
                        image_size=image_size, seed=seed, object_scale=tuple(object_scale),
                        class_texture=class_texture, shortcuts=shortcuts, co_object_scale=tuple(co_object_scale),
                        counterfactual=counterfactual, signature=signature, masks=masks)
    _check(cfg)
    signed = parse_signature(cfg.signature)
    return replace(cfg, signature=signed.spec() if signed else None)


def make_lab_data(out: str | Path, overwrite: bool = False, workers: int | None = None, **args: Any) -> Path:
    """Generate the lab data set of ``lab_data_config(**args)`` into ``out`` (written to a temporary sibling,
    renamed at the end); returns ``out``. The bytes depend only on ``args`` (each image has its own seed), not on
    ``workers`` (default: all cores)."""
    cfg = lab_data_config(**args)
    out = Path(out)
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise ClipDebiasError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    check_resources(cfg, out, workers)
    with staged_directory(out, "lab-data", complete=LAB_MARKER) as tmp:
        _write_data(tmp, cfg, workers)
    return out


def total_images(cfg: LabDataConfig) -> int:
    return cfg.n_train + cfg.n_val + cfg.n_test


def worker_count(workers: int | None, images: int) -> int:
    """Processes that draw ``images`` images: ``workers`` (default all cores), at most 8, one per 200 images."""
    return max(1, min(workers or os.cpu_count() or 1, 8, images // 200))


def check_resources(cfg: LabDataConfig, out: Path, workers: int | None) -> None:
    """Refuse (one line) a data set whose generation would need more memory than is available, or whose files more
    disk than is free where ``out`` goes (the estimates of the module docstring)."""
    n, side = total_images(cfg), cfg.image_size
    what = f"lab make-data: {n:,} images of {side}x{side} px"
    check_memory(n * ROW_BYTES + worker_count(workers, n) * side * side * RENDER_BYTES_PER_PIXEL, what)
    need = n * side * side * PNG_BYTES_PER_PIXEL * (2 if cfg.masks else 1)
    folder = next((p for p in (out, *out.resolve().parents) if p.is_dir()), None)
    free = shutil.disk_usage(folder).free if folder is not None else None
    if free is not None and need > free:
        raise ClipDebiasError(f"{what}: the files need at least {size_text(need)} of disk, more than the "
                              f"{size_text(free)} free in {folder}")


def _columns(cfg: LabDataConfig) -> list[str]:
    """metadata.csv's columns for ``cfg`` (see the module docstring)."""
    cols = ["img_filename", "y", "split", "place"]
    cols += ["object"] if cfg.two_shortcuts else []
    cols += ["pair"] if cfg.counterfactual else []
    cols += (["fg_mask"] + (["object_mask"] if cfg.two_shortcuts else [])) if cfg.masks else []
    return cols


def made_with(out: str | Path, **args: object) -> bool:
    """``out`` holds lab data that ``make_lab_data(out, **args)`` would write: its ``lab.json`` records the same
    parameters and generator version (False when it is missing or unreadable)."""
    want = {"generator": "clip-debias lab", "version": GENERATOR_VERSION,
            **json.loads(json.dumps(asdict(lab_data_config(**args))))}  # type: ignore[arg-type]
    try:
        have = json.loads((Path(out) / LAB_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(have, dict) and all(have.get(k) == v for k, v in want.items())


def _write_data(tmp: Path, cfg: LabDataConfig, workers: int | None) -> None:
    """Render every image of ``cfg`` into ``tmp``, then ``metadata.csv`` and ``lab.json`` (the marker, last)."""
    for i, (y, shape) in enumerate(SPECIES):
        (tmp / f"{i:03d}.{CLASS_NAMES[y]}_{shape}").mkdir(parents=True)
        if cfg.masks:
            (tmp / MASK_DIR / f"{i:03d}.{CLASS_NAMES[y]}_{shape}").mkdir(parents=True)
    jobs = [(cfg, split, i, row)
            for split, n in enumerate((cfg.n_train, cfg.n_val, cfg.n_test))
            for i, row in enumerate(split_rows(cfg.seed, split, n, cfg.correlation, cfg.two_shortcuts,
                                               cfg.counterfactual))]
    n_workers = worker_count(workers, len(jobs))
    chunks = [(tmp, jobs[k::n_workers]) for k in range(n_workers)]
    if n_workers == 1:
        _write_chunk(*chunks[0])
    else:
        import multiprocessing as mp

        with mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(n_workers) as pool:
            pool.starmap(_write_chunk, chunks)
    with open(tmp / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(_columns(cfg))
        for _, split, i, row in jobs:
            name = image_name(split, i, row)
            values = [name, row.y, split, row.place]
            values += [row.kind] if cfg.two_shortcuts else []
            values += ["" if row.pair is None else row.pair] if cfg.counterfactual else []
            values += list(mask_names(name)[:2 if cfg.two_shortcuts else 1]) if cfg.masks else []
            w.writerow(values)
    info = {"generator": "clip-debias lab", "version": GENERATOR_VERSION, **asdict(cfg),
            "class_names": list(CLASS_NAMES), "place_names": list(PLACE_NAMES),
            "species": [f"{CLASS_NAMES[y]}_{s}" for y, s in SPECIES]}
    if cfg.two_shortcuts:
        info["object_names"] = list(OBJECT_NAMES)
    (tmp / LAB_MARKER).write_text(json.dumps(info, indent=2) + "\n")


INT_COLUMNS = ("y", "split", "place", "object", "pair")


def read_metadata(data: str | Path) -> list[dict[str, int | str | None]]:
    """The rows of ``DIR/metadata.csv`` as dicts: img_filename (str), y, split, place (int) and, when the columns
    exist, object (int), pair (int, None when empty), fg_mask / object_mask (str)."""
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
            return [{k: (None if v == "" else int(v)) if k in INT_COLUMNS else v for k, v in r.items()}
                    for r in reader]
        except ValueError as e:
            raise ClipDebiasError(f"{path}: y/split/place/object/pair must be integers ({e})") from e
