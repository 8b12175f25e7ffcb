"""The audit job: can the model tell the sources apart, from which heads, and does it survive low-level corruptions?

Steps (Liu and He's dataset-classification test, ICLR 2025, on a CLIP's own features):

1. Sample N images from every source (``--per-source``; default the smallest source's size, at most
   ``DEFAULT_PER_SOURCE_CAP``), each source with its own seeded generator.
2. Decompose them (``toolchain.decompose.run.decompose_dataset``: the model's one preprocessing and the one image
   loader; every layer's head terms in the decomposition convention) into a cache per source, streamed to the output
   folder's staging area; a source that is a cache is read as it is. Features are read from the caches in pieces
   (``HeadTerms``): the final embedding, every (layer, head) term alone, and with ``--model-dir`` the corrected
   embedding of a built model (its baked edits applied to the cached terms: ``correct.build.EditSet``).
3. The dataset classifier (``classify``) on each feature, over ``--seeds`` train/validation resplits.
4. Control: the control source's audited images split at random into k parts, audited the same way (embedding).
5. Corruptions: every source's audited images again through the preprocessing with the corruption inserted
   (``corruptions``), embedding (and corrected embedding) audited.
6. ``audit.json``, ``heads.png``, ``accuracy.png`` in ``--out`` (an output folder of kind ``audit``: written to a
   staging folder and renamed when complete; the caches are kept in ``caches/`` only with ``keep_caches``).
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from clip_debias.runtime.atomic_output import check_directory_target, staged_directory
from clip_debias.runtime.datasets import DatasetIndex, ImageRecord
from clip_debias.runtime.limits import IndexChecks
from clip_debias.toolchain.audit.classify import C_GRID, Accuracy, classify, control_limit, make_splits, part_sizes
from clip_debias.toolchain.audit.corruptions import Corruption, corrupted_preprocess
from clip_debias.toolchain.audit.figures import ACCURACY_PNG, HEADS_PNG, save_accuracy_png, save_heads_png
from clip_debias.toolchain.audit.files import (AUDIT_JSON, AuditFile, ControlRecord, CorruptionRow, GateRecord,
                                               HeadGrid, HeadRank, SourceRecord, record)
from clip_debias.toolchain.audit.sources import Source, open_sources, sample_rows
from clip_debias.toolchain.correct.build import EditSet
from clip_debias.toolchain.decompose.cache import DecompositionCache
from clip_debias.toolchain.decompose.conventions import DEFAULT_CONVENTION, check_convention
from clip_debias.toolchain.decompose.layers import resolve_layers
from clip_debias.toolchain.decompose.run import decompose_dataset
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.locate.ltc import require_layers, require_same_backbone
from clip_debias.toolchain.models.loading import LoadedClip, ModelIdentity

DEFAULT_PER_SOURCE_CAP = 1000
AUDIT_KIND = "audit"  # its output kind (runtime.ownership.FOLDER_KINDS)
MIN_PER_SPLIT = 2

Log = Callable[[str], None]


def _quiet(line: str) -> None:
    pass


@dataclass
class AuditOptions:
    """What to audit and how (the CLI's options; see ``clip-debias audit --help``)."""

    per_source: int | None = None
    val_fraction: float = 0.25
    seeds: int = 5
    seed: int = 0
    control: str | None = None  # a source name; default the first source
    corruptions: list[Corruption] = field(default_factory=list)
    model_dir: Path | None = None
    max_accuracy: float | None = None
    layers: str | None = None  # --layers for image sources (default every layer, or the caches' layers)
    convention: str | None = None  # default: the caches', else the model dir's, else DEFAULT_CONVENTION
    top: int = 5
    batch_size: int = 32
    device: str = "cpu"
    skip_bad: bool = False
    reading: dict[str, Any] = field(default_factory=dict)  # max_skipped, max_pixels (toolchain.datasets)
    allow_outside_root: bool = False
    keep_caches: bool = False
    index_checks: IndexChecks | None = None  # row limit and duplicate rule of the sources (runtime.limits)

    def check(self) -> None:
        """One line per option out of range."""
        if not 0.0 < self.val_fraction < 1.0:
            raise ClipDebiasError(f"--val-fraction {self.val_fraction}: expected a fraction between 0 and 1")
        if self.seeds < 1:
            raise ClipDebiasError(f"--seeds {self.seeds}: expected at least 1")
        if self.seed < 0:
            raise ClipDebiasError(f"--seed {self.seed}: expected an integer >= 0")
        if self.per_source is not None and self.per_source < 1:
            raise ClipDebiasError(f"--per-source {self.per_source}: expected at least 1")
        if self.max_accuracy is not None and not 0.0 <= self.max_accuracy <= 1.0:
            raise ClipDebiasError(f"--max-accuracy {self.max_accuracy}: expected a fraction 0..1 (0.6 = 60%)")
        if self.top < 1:
            raise ClipDebiasError(f"--top {self.top}: expected at least 1")
        if self.convention is not None:
            check_convention(self.convention)


@dataclass
class Sample:
    """What is audited: the sources, the rows of each, N per source and the split sizes."""

    sources: list[Source]
    rows: list[np.ndarray]  # per source: rows of its images (image sources) or cache rows (caches)
    per_source: int
    control: int  # position of the control source

    @property
    def k(self) -> int:
        return len(self.sources)


def _check_split_sizes(n: int, fraction: float, what: str) -> None:
    train, val = part_sizes(n, fraction)
    if min(train, val) < MIN_PER_SPLIT:
        raise ClipDebiasError(f"{what}: {n} image(s) give {train} train and {val} validation image(s) at "
                              f"--val-fraction {fraction}; each split needs at least {MIN_PER_SPLIT}")


def plan_sample(sources: list[Source], options: AuditOptions) -> Sample:
    """N, the rows of every source and the control, checked before any work (one line each)."""
    sizes = [len(s) for s in sources]
    smallest = int(np.argmin(sizes))
    if options.per_source is not None:
        for s, size in zip(sources, sizes):
            if size < options.per_source:
                raise ClipDebiasError(f"--per-source {options.per_source}: source '{s.name}' holds only {size} "
                                      "image(s)")
        n = options.per_source
    else:
        n = min(sizes[smallest], DEFAULT_PER_SOURCE_CAP)
    _check_split_sizes(n, options.val_fraction, f"source '{sources[smallest].name}' ({sizes[smallest]} images)"
                       if options.per_source is None else f"--per-source {n}")
    names = [s.name for s in sources]
    control = 0 if options.control is None else (names.index(options.control) if options.control in names else -1)
    if control < 0:
        raise ClipDebiasError(f"--control {options.control}: no source of that name (sources: {', '.join(names)})")
    check_control(n, len(sources), options.val_fraction, sources[control].name)
    rows = [sample_rows(size, n, options.seed, i) for i, size in enumerate(sizes)]
    return Sample(sources, rows, n, control)


def check_control(n: int, k: int, fraction: float, name: str) -> None:
    _check_split_sizes(n // k, fraction, f"the control ('{name}' in {k} random parts of {n // k})")


@dataclass
class Terms:
    """Which terms every source is decomposed into: the layers and the convention (all sources alike)."""

    layers: list[int]
    convention: str


def resolve_terms(sources: list[Source], clip: LoadedClip, options: AuditOptions, edits_convention: str | None) -> Terms:
    """The layers and convention: those of the cache sources (which must agree with each other, with the model and
    with ``--layers``/``--convention`` when given), else ``--layers`` (default all) and ``--convention`` (default the
    model dir's, else ``DEFAULT_CONVENTION``)."""
    n_layers = clip.tower.layers
    caches = [s for s in sources if s.cache is not None]
    for s in caches:
        require_same_backbone(clip.identity, s.cache.identity, f"source {s.text}")  # type: ignore[union-attr]
    first = caches[0] if caches else None
    for s in caches[1:]:
        for what in ("layers", "convention"):
            a, b = getattr(first.cache, what), getattr(s.cache, what)  # type: ignore[union-attr]
            if a != b:
                raise ClipDebiasError(f"sources {first.text} and {s.text}: caches of different {what} ({a} and {b}); "
                                      "decompose both alike")
    if first is not None:
        cached = first.cache
        if options.convention is not None and options.convention != cached.convention:  # type: ignore[union-attr]
            raise ClipDebiasError(f"--convention {options.convention}: source {first.text} holds "
                                  f"'{cached.convention}' terms")  # type: ignore[union-attr]
        if options.layers is not None and resolve_layers(options.layers, n_layers) != cached.layers:  # type: ignore
            raise ClipDebiasError(f"--layers {options.layers}: source {first.text} holds layers "
                                  f"{cached.layers}")  # type: ignore[union-attr]
        return Terms(list(cached.layers), cached.convention)  # type: ignore[union-attr]
    return Terms(resolve_layers(options.layers, n_layers),
                 options.convention or edits_convention or DEFAULT_CONVENTION)


def load_edits(model_dir: Path, clip: LoadedClip, terms: Terms) -> EditSet:
    """The edits of a built model, checked against the audited model and terms."""
    from clip_debias.toolchain.correct.classifier import DebiasedClassifier

    model = DebiasedClassifier.load(model_dir)
    where = f"--model-dir {model_dir}"
    require_same_backbone(clip.identity, ModelIdentity.from_dict(model.spec.identity), where)
    if model.spec.convention != terms.convention:
        raise ClipDebiasError(f"{where}: built on '{model.spec.convention}' terms, the audit's are "
                              f"'{terms.convention}' (decompose the sources with --convention {model.spec.convention})")
    edits = EditSet.of_model(model)
    require_layers(terms.layers, edits.ablated + edits.salient, where)
    return edits


def model_convention(model_dir: Path | None) -> str | None:
    """The decomposition convention a model directory was built with (its config.json), before any model loads."""
    if model_dir is None:
        return None
    from clip_debias.toolchain.correct.classifier import CONFIG_NAME, read_spec

    if not (model_dir / CONFIG_NAME).is_file():
        raise ClipDebiasError(f"--model-dir {model_dir}: no {CONFIG_NAME} (expected a model directory written by "
                              "'clip-debias build')")
    return read_spec(model_dir / CONFIG_NAME).convention


# ---- features --------------------------------------------------------------------------------------------------------
@dataclass
class Decomposed:
    """Every source's cache and the rows of it that are audited (all of an image source's cache)."""

    caches: list[DecompositionCache]
    rows: list[np.ndarray]

    @property
    def counts(self) -> list[int]:
        return [len(r) for r in self.rows]

    def labels(self) -> np.ndarray:
        return np.concatenate([np.full(len(r), i) for i, r in enumerate(self.rows)])

    def embeddings(self) -> np.ndarray:
        """[sum n, D] the final unit-norm embeddings, source after source."""
        return np.concatenate([c.embeddings()[torch.as_tensor(r, dtype=torch.long)].numpy()
                               for c, r in zip(self.caches, self.rows)])

    def corrected(self, edits: EditSet) -> np.ndarray:
        """[sum n, D] the corrected embeddings of a built model's edits."""
        return np.concatenate([edits.apply(c, r).numpy() for c, r in zip(self.caches, self.rows)])

    def layer_terms(self, layer_row: int) -> np.ndarray:
        """[sum n, H, D] every head's term of the cache's ``layer_row``-th layer."""
        heads = self.caches[0].heads.shape[2]
        return np.concatenate([c.heads.select([(layer_row, h) for h in range(heads)], r).numpy()
                               for c, r in zip(self.caches, self.rows)])


def _file_name(i: int, name: str) -> str:
    return f"{i}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"


def decompose_sources(sample: Sample, clip: LoadedClip, terms: Terms, options: AuditOptions, folder: Path,
                      log: Log) -> tuple[Decomposed, list[int]]:
    """Image sources decomposed into ``folder/caches`` (cache sources as they are); with ``skip_bad`` every source
    is then cut to the smallest number of images read. Returns the features' sources and the images skipped per
    source."""
    caches, rows, skipped = [], [], []
    (folder / "caches").mkdir(exist_ok=True)
    for i, (source, picked) in enumerate(zip(sample.sources, sample.rows)):
        if source.cache is not None:
            caches.append(source.cache)
            rows.append(np.asarray(picked))
            skipped.append(0)
            continue
        log(f"decomposing {len(picked)} images of '{source.name}'")
        name = _file_name(i, source.name)
        cache = decompose_dataset(
            clip, source.image_index(picked), terms.layers, batch_size=options.batch_size, device=options.device,
            skip_bad=options.skip_bad, skipped_log=folder / f"{name}.skipped.txt" if options.skip_bad else None,
            convention=terms.convention, out=folder / "caches" / f"{name}.safetensors", **options.reading)
        caches.append(cache)
        rows.append(np.arange(len(cache)))
        skipped.append(len(picked) - len(cache))
    n = min(len(r) for r in rows)
    if n < sample.per_source:  # images left out with --skip-bad: the same number from every source
        _check_split_sizes(n, options.val_fraction, f"the images read ({n} of {sample.per_source} per source)")
        check_control(n, sample.k, options.val_fraction, sample.sources[sample.control].name)
        rows = [r[:n] for r in rows]
    return Decomposed(caches, rows), skipped


def images_of(name: str, cache: DecompositionCache, rows: np.ndarray) -> DatasetIndex:
    """The images of a cache's ``rows`` (the paths it recorded), in that order, as a ``DatasetIndex`` of ``name``."""
    records = [ImageRecord(Path(cache.paths[int(i)]), 0, 0) for i in rows]
    return DatasetIndex(name, Path(cache.source or "."), cache.split, records, ["image"], ["image"])


def corrupted_features(decomposed: Decomposed, sample: Sample, corruption: Corruption, clip: LoadedClip, terms: Terms,
                       edits: EditSet | None, options: AuditOptions, log: Log) -> tuple[np.ndarray, np.ndarray | None]:
    """The audited images of every source again, ``corruption`` inserted into the preprocessing: (embeddings,
    corrected embeddings or None), decomposed in memory over the edited heads' layers only (the last layer without
    edits: the embedding is exact whatever layers are decomposed)."""
    layers = sorted({l for l, _ in edits.ablated + edits.salient}) if edits is not None else []
    layers = layers or [terms.layers[-1]]
    preprocess = corrupted_preprocess(clip.preprocess, corruption, options.seed)
    emb, corrected = [], []
    for source, cache, r in zip(sample.sources, decomposed.caches, decomposed.rows):
        index = images_of(source.name, cache, r)
        log(f"{corruption.name}: {len(index.records)} images of '{source.name}'")
        part = decompose_dataset(clip, index, layers, batch_size=options.batch_size, device=options.device,
                                 convention=terms.convention, preprocess=preprocess, **options.reading)
        emb.append(part.embeddings().numpy())
        if edits is not None:
            corrected.append(edits.apply(part).numpy())
    return np.concatenate(emb), (np.concatenate(corrected) if edits is not None else None)


# ---- the job ---------------------------------------------------------------------------------------------------------
def head_grid(decomposed: Decomposed, layers: list[int], labels: np.ndarray, splits: list, k: int,
              log: Log) -> HeadGrid:
    """Every head's term alone through the same classifier: the [L, H] grid and the ranking."""
    n_heads = decomposed.caches[0].heads.shape[2]
    mean = np.zeros((len(layers), n_heads))
    std = np.zeros((len(layers), n_heads))
    for i, layer in enumerate(layers):
        log(f"per-head classifiers: layer {layer} ({n_heads} heads)")
        x = decomposed.layer_terms(i)
        for h in range(n_heads):
            acc = classify(x[:, h], labels, splits, k)
            mean[i, h], std[i, h] = acc.mean, acc.std
    order = sorted(((i, h) for i in range(len(layers)) for h in range(n_heads)),
                   key=lambda p: (-mean[p], layers[p[0]], p[1]))
    ranking = [HeadRank(layers[i], h, float(mean[i, h]), float(std[i, h])) for i, h in order]
    return HeadGrid(list(layers), n_heads, mean.tolist(), std.tolist(), ranking)


def control_audit(x: np.ndarray, sample: Sample, n: int, options: AuditOptions, seeds: list[int]) -> ControlRecord:
    """The control source's n audited images (rows ``x``) in k random parts of n // k, audited on ``x``."""
    k = sample.k
    per_part = n // k
    order = np.random.default_rng([options.seed, 3]).permutation(n)[: per_part * k]
    xs = x[order]
    labels = np.repeat(np.arange(k), per_part)
    acc = classify(xs, labels, make_splits([per_part] * k, options.val_fraction, seeds), k)
    limit = control_limit(acc)
    return ControlRecord(sample.sources[sample.control].name, k, per_part, record(acc), limit,  # type: ignore
                         acc.mean <= limit)


def run_audit(texts: list[str], load_clip: Callable[[], Any], out: Path, options: AuditOptions,
              log: Log = _quiet) -> AuditFile:
    """The whole audit (module docstring); cheap checks first (sources, sizes, options, ``out``), then the model."""
    options.check()
    out = check_directory_target(out, AUDIT_KIND)
    sources = open_sources(texts, options.allow_outside_root, options.index_checks)
    sample = plan_sample(sources, options)
    if options.corruptions:
        for s, r in zip(sources, sample.rows):
            if s.cache is not None:
                missing = [s.cache.paths[int(i)] for i in r if not Path(s.cache.paths[int(i)]).is_file()] \
                    if s.cache.paths else ["(no image paths recorded)"]
                if missing:
                    raise ClipDebiasError(f"--corruptions: source {s.text}: image {missing[0]} not found (a cache's "
                                          "images are read again to corrupt them)")
    edits_convention = model_convention(options.model_dir)
    clip = load_clip()
    terms = resolve_terms(sources, clip, options, edits_convention)
    edits = load_edits(options.model_dir, clip, terms) if options.model_dir is not None else None
    seeds = list(range(options.seed, options.seed + options.seeds))
    seconds: dict[str, float] = {}
    with staged_directory(out, AUDIT_KIND, complete=AUDIT_JSON) as tmp:
        t0 = time.perf_counter()
        decomposed, skipped = decompose_sources(sample, clip, terms, options, tmp, log)
        seconds["decompose"] = time.perf_counter() - t0
        n = min(decomposed.counts)
        labels = decomposed.labels()
        splits = make_splits(decomposed.counts, options.val_fraction, seeds)
        t0 = time.perf_counter()
        log(f"classifiers: embedding, {len(seeds)} seeds, C from {list(C_GRID)}")
        x = decomposed.embeddings()
        embedding = classify(x, labels, splits, sample.k)
        corrected = classify(decomposed.corrected(edits), labels, splits, sample.k) if edits is not None else None
        control = control_audit(x[sample.control * n:(sample.control + 1) * n], sample, n, options, seeds)
        seconds["classify"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        heads = head_grid(decomposed, terms.layers, labels, splits, sample.k, log)
        seconds["heads"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        size = tuple(clip.preprocess_cfg.get("size") or (0, 0))
        rows = []
        for c in options.corruptions:
            if c.is_noop(*size):
                rows.append(CorruptionRow(c.name, c.describe(), True))
                continue
            xc, cc = corrupted_features(decomposed, sample, c, clip, terms, edits, options, log)
            rows.append(CorruptionRow(c.name, c.describe(), False, record(classify(xc, labels, splits, sample.k)),
                                      record(classify(cc, labels, splits, sample.k)) if cc is not None else None))
        seconds["corruptions"] = time.perf_counter() - t0
        doc = AuditFile(
            model=clip.identity.to_dict(), convention=terms.convention, layers=list(terms.layers),
            sources=[SourceRecord(s.name, s.text, s.kind, str(s.path), s.split, len(s), n, left_out)
                     for s, left_out in zip(sources, skipped)],
            per_source=n, val_fraction=options.val_fraction, seeds=seeds, sample_seed=options.seed,
            c_grid=list(C_GRID), embedding=record(embedding), control=control, heads=heads, corruptions=rows,
            model_dir=str(options.model_dir) if options.model_dir is not None else None, corrected=record(corrected),
            gate=gate(options.max_accuracy, embedding, corrected), warnings=control_warnings(control),
            seconds=seconds)
        doc.save(tmp / AUDIT_JSON)
        save_heads_png(doc, tmp / HEADS_PNG, options.top)
        save_accuracy_png(doc, tmp / ACCURACY_PNG)
        if not options.keep_caches:
            shutil.rmtree(tmp / "caches")
    return doc


def gate(max_accuracy: float | None, embedding: Accuracy, corrected: Accuracy | None) -> GateRecord | None:
    """``--max-accuracy``: passed when every audited embedding's mean accuracy is at most the limit."""
    if max_accuracy is None:
        return None
    values = {"embedding": embedding.mean, **({"corrected": corrected.mean} if corrected is not None else {})}
    return GateRecord(max_accuracy, values, all(v <= max_accuracy for v in values.values()))


def control_warnings(control: ControlRecord) -> list[str]:
    if control.at_chance:
        return []
    return [f"the control is NOT at chance: random parts of '{control.source}' were told apart with "
            f"{100 * control.accuracy.mean:.1f}% accuracy, above chance {100 * control.accuracy.chance:.1f}% + 3 "
            f"standard errors ({100 * control.limit:.1f}%); something other than the source separates the images "
            "(duplicates across the split, an ordering or file-format effect): the audit's accuracies are suspect"]
