"""Training the Last Layer Ensemble head (``correct.lle``) on a built model's frozen embeddings.

1. Embed (``embed_shifted``): every image of the training split as it is (shift type 0) and ``copies`` augmented draws
   of it per augmentation type k >= 1 (``correct.augment``), each through the built model's ``embed`` (its corrected
   unit-norm embedding e': plain, or with the LTC edits baked in) with the model's own preprocessing. Draw j of type k
   of image i is seeded by ``[seed, k, j, i]``: the same images whatever the batch size. The val split is embedded
   as it is.
2. Train (``train_lle``): W [K, C, D], b [K, C] start from the untrained head (every W_k the zero-shot s T, b = 0);
   the shift classifier W_d [K, D], b_d [K] from ``init_shift`` (``--lle-shift-init``: PyTorch's ``nn.Linear``
   default U(-1/sqrt(D), 1/sqrt(D)), the authors', or 0). They minimise
       mean_x CE(W_{d(x)} e'(x) + b_{d(x)}, y(x)) + mean_x CE(W_d e'(x) + b_d, d(x))
   by SGD (momentum 0.9) with the ``Schedule`` below: per epoch, ``n_train`` embeddings drawn without replacement
   from the pool of originals and augmented images (the authors' ``WeightedRandomSampler`` of equal weights), or
   every embedding (``grid``); batch ``batch_size``; learning rate constant or cosine; weight decay on every
   parameter, or on W and W_d only (``grid``); seeded by ``seed``.
3. Choose (``fit_lle``): the epoch of the best val worst-group accuracy (``runtime.metrics.accuracy_report`` over
   the val split's groups: the 8 groups class x place x object on two-shortcut data, the authors' "worst of 8"; ties:
   the earlier epoch), or the last epoch (``imagenet``); with a grid of (lr, wd), the best entry on the same score
   (``grid``: ties broken by the val average accuracy). What was chosen, the val scores and the data are recorded in
   config.json (``head.training``).

Schedules (``SCHEDULES``; ``--lle-schedule``):
- ``urbancars`` (default; facebookresearch/Whac-A-Mole ``urbancars_trainers/launcher.py``, ``base_trainer.py``,
  ``lle.py``): lr 1e-3 constant, weight decay 1e-4 on every parameter, batch 128, 300 epochs of n_train sampled
  embeddings each, the epoch of the best val worst-of-8;
- ``imagenet`` (their ``imagenet_trainers/``): lr 1e-3 x batch / 256 with a cosine decay lr cos(pi t / T) / 2 +
  lr / 2 per epoch t of T = 90, weight decay 1e-4 on every parameter, batch 1024, the last epoch;
- ``grid`` (this project's earlier default): lr in (0.1, 1, 10) x wd in (0, 1e-4) on W and W_d, cosine, batch 256,
  30 epochs over every embedding, the best (lr, wd, epoch) on val. Its learning rates are for unit-norm embeddings
  (one SGD step of size lr moves a logit by about lr); the authors' are for unnormalized backbone features.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from clip_debias.runtime.datasets import DatasetIndex, ImageRecord, load_index
from clip_debias.runtime.images import load_image
from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS
from clip_debias.runtime.metrics import accuracy_report
from clip_debias.runtime.progress import Progress
from clip_debias.toolchain.choices import LleRedraw, LleSchedule, LleShiftInit
from clip_debias.toolchain.correct.augment import (AUGMENT_TYPES, AUTO, AUTO_FALLBACK, AugmentFn, AugmentType, Sample,
                                                   load_hook, mask_gap, run_augment)
from clip_debias.toolchain.correct.lle import ORIGINAL, LleHead
from clip_debias.toolchain.datasets.loader import eval_transform
from clip_debias.toolchain.errors import ClipDebiasError

FIT_VERSION = 2
CACHE_BYTES = 512 * 2**20  # decoded training images kept while drawing the augmentations


@dataclass(frozen=True)
class Schedule:
    """How the heads train (module docstring): learning rates and weight decays (a grid when several), epochs, batch,
    ``cosine`` (else constant), ``scale_lr`` (lr x batch / 256), ``sample`` (n_train embeddings per epoch, else all),
    ``decay_all`` (weight decay on the biases too), ``last_epoch`` (else the best val epoch), ``tie_on_accuracy``
    (ties of the val worst group broken by the val average accuracy, else by the earlier epoch)."""

    learning_rates: tuple[float, ...]
    weight_decays: tuple[float, ...]
    epochs: int
    batch_size: int
    cosine: bool
    scale_lr: bool
    sample: bool
    decay_all: bool
    last_epoch: bool
    tie_on_accuracy: bool
    source: str

    def lr(self, base: float, epoch: int) -> float:
        """The learning rate of ``epoch`` (0-based) for the grid entry ``base``."""
        lr = base * self.batch_size / 256 if self.scale_lr else base
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs)) if self.cosine else lr


SCHEDULES: dict[str, Schedule] = {
    LleSchedule.URBANCARS.value: Schedule((1e-3,), (1e-4,), 300, 128, cosine=False, scale_lr=False, sample=True,
                                          decay_all=True, last_epoch=False, tie_on_accuracy=False,
                                          source="the authors' UrbanCars LLE (urbancars_trainers/)"),
    LleSchedule.IMAGENET.value: Schedule((1e-3,), (1e-4,), 90, 1024, cosine=True, scale_lr=True, sample=True,
                                         decay_all=True, last_epoch=True, tie_on_accuracy=False,
                                         source="the authors' ImageNet LLE (imagenet_trainers/)"),
    LleSchedule.GRID.value: Schedule((0.1, 1.0, 10.0), (0.0, 1e-4), 30, 256, cosine=True, scale_lr=False, sample=False,
                                     decay_all=False, last_epoch=False, tie_on_accuracy=True,
                                     source="ours: an (lr, wd) grid chosen on val"),
}


@dataclass
class Augmentations:
    """The augmentation types of one LLE head, in head order (head k + 1 = ``types[k]``)."""

    types: list[AugmentType]

    def names(self) -> list[str]:
        return [t.name for t in self.types]


@dataclass
class LleOptions:
    """What the LLE head trains on and how (see the module docstring). ``augment``: built-in type names
    (``augment.AUGMENT_TYPES``), ``auto`` (every built-in type whose masks the data has), hook specs
    ``NAME=module:function`` / ``NAME=file.py:function``, or names of ``hooks`` (library callers' own functions).
    ``schedule`` names a ``SCHEDULES`` entry; ``epochs``, ``batch_size``, ``learning_rates``, ``weight_decays`` override
    its values when given."""

    data: Path
    dataset: str = "waterbirds"
    train_split: str = "train"
    val_split: str = "val"
    augment: tuple[str, ...] = (AUTO,)
    hooks: dict[str, AugmentFn] = field(default_factory=dict)
    copies: int = 1
    seed: int = 0
    schedule: str = LleSchedule.URBANCARS.value
    redraw: str = LleRedraw.CROSS.value
    shift_init: str = LleShiftInit.RANDOM.value
    epochs: int | None = None  # None: the schedule's (and the same for the three below)
    batch_size: int | None = None
    learning_rates: tuple[float, ...] | None = None
    weight_decays: tuple[float, ...] | None = None
    image_batch_size: int = 64
    classes: list[str] | None = None
    allow_outside_root: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    progress: bool = True

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        self.schedule = LleSchedule.parse(self.schedule, "--lle-schedule").value
        self.redraw = LleRedraw.parse(self.redraw, "--lle-redraw").value
        self.shift_init = LleShiftInit.parse(self.shift_init, "--lle-shift-init").value
        for name, value, low in (("--lle-copies", self.copies, 1), ("--lle-epochs", self.epochs, 1),
                                 ("--lle-batch-size", self.batch_size, 1), ("--lle-seed", self.seed, 0)):
            if value is not None and value < low:
                raise ClipDebiasError(f"{name} {value}: expected an integer >= {low}")
        if self.learning_rates is not None and (not self.learning_rates or any(not lr > 0 for lr in
                                                                               self.learning_rates)):
            raise ClipDebiasError(f"LLE learning rates {self.learning_rates}: expected numbers > 0")
        if self.weight_decays is not None and (not self.weight_decays or any(not wd >= 0 for wd in
                                                                             self.weight_decays)):
            raise ClipDebiasError(f"LLE weight decays {self.weight_decays}: expected numbers >= 0")
        if self.train_split == self.val_split:
            raise ClipDebiasError(f"--lle-val-split {self.val_split}: the head is chosen on a split it was not "
                                  "trained on; expected another split than --lle-train-split")

    def plan(self) -> Schedule:
        """The schedule with this object's overrides."""
        base = SCHEDULES[self.schedule]
        overrides = {k: getattr(self, k) for k in ("epochs", "batch_size", "learning_rates", "weight_decays")
                     if getattr(self, k) is not None}
        return replace(base, **overrides)

    def index(self, split: str) -> DatasetIndex:
        """The ``split`` of the training data (read once)."""
        cache = self.__dict__.setdefault("_indexes", {})
        if split not in cache:
            cache[split] = load_index(self.dataset, self.data, split, classes=self.classes,
                                      allow_outside_root=self.allow_outside_root)
        return cache[split]

    def resolve_augmentations(self) -> Augmentations:
        """The augmentation types asked for (the swaps with ``redraw``), checked against the training split's masks
        (one line naming what is missing); ``auto`` keeps the auto types (the authors' UrbanCars set: background and
        object swap) the data has masks for, and ``watermark`` when it has none. Resolved once (a hook's module is
        imported once)."""
        if "_resolved" in self.__dict__:
            return self.__dict__["_resolved"]
        train = self.index(self.train_split)
        out: list[AugmentType] = []
        for spec in self.augment:
            spec = spec.strip()
            if spec == AUTO:
                auto = [t for t in AUGMENT_TYPES.values() if t.auto and mask_gap(t, train) is None]
                out += [t.redrawn(self.redraw) for t in auto] or [AUGMENT_TYPES[AUTO_FALLBACK]]
            elif spec in AUGMENT_TYPES:
                gap = mask_gap(AUGMENT_TYPES[spec], train)
                if gap is not None:
                    raise ClipDebiasError(gap)
                out.append(AUGMENT_TYPES[spec].redrawn(self.redraw))
            elif spec in self.hooks:
                out.append(AugmentType(spec, self.hooks[spec], help="a library caller's function"))
            else:
                out.append(load_hook(spec))
        names = [t.name for t in out]
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if dup is not None:
            raise ClipDebiasError(f"--augment: the shift type '{dup}' is listed twice")
        if not out:
            raise ClipDebiasError(f"--augment {','.join(self.augment)}: no augmentation type applies to "
                                  f"{self.data} (it has no masks; add watermark or a NAME=module:function hook)")
        self.__dict__["_resolved"] = Augmentations(out)
        return self.__dict__["_resolved"]

    def keep_images(self) -> "LleOptions":
        """Keep the drawn images in memory (about H W 3 bytes each) for the next fit with these options: a second
        model trained on the same draws (``lab.whac_a_mole``'s LLE and LTC + LLE rows) skips the drawing."""
        self.__dict__.setdefault("_images", {})
        return self

    def record(self) -> dict[str, Any]:
        """The options as config.json's ``head.training.options`` records them (hooks by name)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("hooks", "progress", "data")}
        return {**d, "data": str(self.data), "augment": list(self.augment)}


# ---- 1. embeddings ------------------------------------------------------------------------------------------------
class RecordPool:
    """Training images by class, read on demand (image and the mask parts asked for, checked to fit the image). The
    decoded images and masks are kept while they fit in ``cache_bytes`` (the first ones read; the swaps read every
    image several times: as itself once per type and as a donor)."""

    def __init__(self, index: DatasetIndex, parts: tuple[str, ...], max_pixels: int | None,
                 cache_bytes: int = CACHE_BYTES):
        self.index, self.parts, self.max_pixels = index, parts, max_pixels
        labels = [r.label for r in index.records]
        self.others = {c: [i for i, y in enumerate(labels) if y != c] for c in set(labels)}
        self.same = {c: [i for i, y in enumerate(labels) if y == c] for c in set(labels)}
        self.size: tuple[int, int] | None = None  # (W, H) of the sample being augmented
        self.cache: dict[int, tuple[Image.Image, dict[str, Image.Image]]] = {}
        self.cache_left = cache_bytes

    def _read(self, i: int) -> tuple[Image.Image, dict[str, Image.Image]]:
        """Record ``i``'s RGB image and its masks by part (from the cache when kept)."""
        if i in self.cache:
            return self.cache[i]
        r: ImageRecord = self.index.records[i]
        image = load_image(r.path, self.max_pixels).convert("RGB")
        masks = {}
        for part in self.parts:
            if part in r.masks:
                m = load_image(r.masks[part], self.max_pixels).convert("L")
                if m.size != image.size:
                    raise ClipDebiasError(f"{r.masks[part]}: mask of {m.size[0]}x{m.size[1]} pixels for an image of "
                                          f"{image.size[0]}x{image.size[1]} ({r.path})")
                masks[part] = m
        size = image.width * image.height * (3 + len(masks))
        if size <= self.cache_left:
            self.cache[i], self.cache_left = (image, masks), self.cache_left - size
        return image, masks

    def sample(self, i: int, size: tuple[int, int] | None = None) -> Sample:
        """Record ``i`` as a ``Sample`` of fresh arrays (resized to ``size`` = (W, H) when given and different)."""
        image, masks = self._read(i)
        if size is not None and image.size != size:
            image = image.resize(size, Image.BILINEAR)
            masks = {k: m.resize(size, Image.BILINEAR) for k, m in masks.items()}
        return Sample(np.array(image), self.index.records[i].label, {k: np.array(m) for k, m in masks.items()})

    def other_class(self, label: int, rng: np.random.Generator) -> Sample:
        """A uniformly drawn image of another class than ``label``, at the current sample's size."""
        others = self.others.get(label) or [i for i, r in enumerate(self.index.records) if r.label != label]
        if not others:
            raise ClipDebiasError(f"{self.index.root}: split '{self.index.split}' has images of one class only; "
                                  "the swap augmentations take their donors from another class")
        return self.sample(others[int(rng.integers(len(others)))], self.size)

    def same_class(self, label: int, rng: np.random.Generator) -> Sample:
        """A uniformly drawn image of class ``label`` (the sample itself included), at the current sample's size."""
        same = self.same[label]
        return self.sample(same[int(rng.integers(len(same)))], self.size)


class ShiftedImages(Dataset):
    """Item (i, k, j): image i of the pool, shifted by type k (0: as it is) with draw j, preprocessed."""

    def __init__(self, pool: RecordPool, types: list[AugmentType | None], copies: int, seed: int,
                 transform: Callable, memo: dict[tuple, np.ndarray] | None = None):
        self.pool, self.types, self.seed, self.transform, self.memo = pool, types, seed, transform, memo
        n = len(pool.index.records)
        self.items = [(i, 0, 0) for i in range(n)] + [(i, k, j) for k in range(1, len(types))
                                                       for j in range(copies) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, int]:
        i, k, j = self.items[item]
        aug = self.types[k]
        key = (str(self.pool.index.root), self.pool.index.split, self.seed, aug.name if aug else ORIGINAL, j, i)
        if self.memo is not None and key in self.memo:
            image = self.memo[key]
        else:
            sample = self.pool.sample(i)
            image = sample.image
            if aug is not None:
                self.pool.size = (sample.image.shape[1], sample.image.shape[0])
                image = run_augment(aug, sample, self.pool, np.random.default_rng([self.seed, k, j, i]))
            if self.memo is not None:
                self.memo[key] = image
        return self.transform(Image.fromarray(image)), self.pool.index.records[i].label, k


@dataclass
class Embedded:
    """Embeddings e' [N, D] with their class labels, shift types and groups (all [N])."""

    embeddings: torch.Tensor
    labels: torch.Tensor
    shifts: torch.Tensor
    groups: torch.Tensor




@torch.no_grad()
def embed_shifted(model: Any, index: DatasetIndex, types: list[AugmentType], copies: int, seed: int,
                  batch_size: int = 64, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  progress: bool = True, memo: dict[tuple, np.ndarray] | None = None) -> Embedded:
    """Embeddings of ``index``'s images as they are, then of ``copies`` draws per augmentation type (type k + 1 =
    ``types[k]``), through ``model.embed`` with the model's preprocessing (see the module docstring). ``memo``: the
    drawn images [H, W, 3] uint8 by (data, split, seed, type, draw, image), read from it and added to it (a second
    model trained on the same draws skips the drawing)."""
    parts = tuple(dict.fromkeys(p for t in types for p in t.parts(index)))
    pool = RecordPool(index, parts, max_pixels)
    data = ShiftedImages(pool, [None, *types], copies, seed, eval_transform(model.spec.preprocess), memo)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=0)
    dtype, device = model.tower.conv1.weight.dtype, model.tower.conv1.weight.device
    chunks, labels, shifts = [], [], []
    what = f"LLE: embed {index.dataset}/{index.split} x {1 + len(types) * copies}"
    with Progress(what, len(data), len(loader), enabled=progress) as bar:
        for images, y, k in loader:
            chunks.append(model.embed(images.to(device=device, dtype=dtype)).float().cpu())
            labels.append(y)
            shifts.append(k)
            bar.advance(len(y))
    groups = torch.tensor([index.records[i].group for i, _, _ in data.items])
    return Embedded(torch.cat(chunks), torch.cat(labels).long(), torch.cat(shifts).long(), groups)


# ---- 2. training ----------------------------------------------------------------------------------------------------
@dataclass
class Trial:
    """One (lr, wd) of the grid: its best epoch on val and the val scores there."""

    lr: float
    weight_decay: float
    epoch: int
    val_worst_group: float
    val_accuracy: float

    def key(self) -> tuple[float, float]:
        return (self.val_worst_group, self.val_accuracy)


def lle_loss(head: dict[str, torch.Tensor], e: torch.Tensor, y: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """mean CE(W_{d} e + b_{d}, y) + mean CE(W_d e + b_d, d) (the LLE objective) for a batch e [B, D]."""
    k, c, dim = head["weight"].shape
    every = (e @ head["weight"].reshape(k * c, dim).T).view(len(e), k, c)  # every head's logits [B, K, C]
    own = every[torch.arange(len(e)), d] + head["bias"][d]
    shift = e @ head["shift_weight"].T + head["shift_bias"]
    return torch.nn.functional.cross_entropy(own, y) + torch.nn.functional.cross_entropy(shift, d)


def init_shift(head: LleHead, how: str, seed: int) -> LleHead:
    """``head`` with its shift classifier at ``how``: ``random`` = PyTorch's ``nn.Linear(D, K)`` default, W_d and
    b_d uniform in [-1/sqrt(D), 1/sqrt(D)] (kaiming-uniform with a = sqrt(5)), drawn from ``torch.Generator`` seeded
    by ``seed`` (W_d first); ``zero`` = W_d = 0, b_d = 0 (every type equally likely)."""
    k, d = head.shift_weight.shape
    if how == LleShiftInit.ZERO:
        w, b = torch.zeros(k, d), torch.zeros(k)
    else:
        g, bound = torch.Generator().manual_seed(seed), 1.0 / math.sqrt(d)
        w = (torch.rand(k, d, generator=g, dtype=torch.float64) * 2 - 1) * bound
        b = (torch.rand(k, generator=g, dtype=torch.float64) * 2 - 1) * bound
    return LleHead(head.weight, head.bias, w.float(), b.float(), head.shifts, head.training_record)


def train_lle(init: LleHead, train: Embedded, lr: float, weight_decay: float, epochs: int, batch_size: int, seed: int,
              on_epoch: Callable[[int, LleHead], None] | None = None, *, schedule: Schedule | None = None,
              per_epoch: int | None = None) -> LleHead:
    """The head trained from ``init`` on ``train`` (module docstring, step 2) with learning rate ``lr`` (the grid
    entry: ``schedule.lr`` scales and decays it) and weight decay ``weight_decay``; ``per_epoch``: embeddings drawn
    per epoch when ``schedule.sample`` (default: the originals', shift type 0). ``schedule`` defaults to ``grid``'s
    rules; its epochs and batch size are those given here. ``on_epoch(epoch, head)`` after each epoch (1-based)."""
    with one_thread():
        return _train(init, train, lr, weight_decay, replace(schedule or SCHEDULES[LleSchedule.GRID.value],
                                                            epochs=epochs, batch_size=batch_size), seed, on_epoch,
                      per_epoch)


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread inside (restored after): the heads' matrices are tiny, and on busy shared cores
    the threads' synchronisation dominates (one SGD step of K = 3, D = 512, batch 128: 0.55 s on 2 threads, 0.026 s
    on one, load average 20 on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(init: LleHead, train: Embedded, lr: float, weight_decay: float, schedule: Schedule, seed: int,
           on_epoch: Callable[[int, LleHead], None] | None, per_epoch: int | None) -> LleHead:
    """``train_lle``'s loop."""
    epochs, batch_size = schedule.epochs, schedule.batch_size
    gen = torch.Generator().manual_seed(seed)
    params = {k: getattr(init, k).detach().float().clone().requires_grad_(True)
              for k in ("weight", "bias", "shift_weight", "shift_bias")}
    decayed = [params["weight"], params["shift_weight"]]
    biases = [params["bias"], params["shift_bias"]]
    groups = ([{"params": decayed + biases, "weight_decay": weight_decay}] if schedule.decay_all else
              [{"params": decayed, "weight_decay": weight_decay}, {"params": biases, "weight_decay": 0.0}])
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    x, y, d = train.embeddings.float(), train.labels, train.shifts
    n = len(x) if not schedule.sample else min(len(x), per_epoch or int((d == 0).sum()) or len(x))
    head = init
    for epoch in range(epochs):
        for group in opt.param_groups:
            group["lr"] = schedule.lr(lr, epoch)
        order = torch.randperm(len(x), generator=gen)[:n]
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            lle_loss(params, x[idx], y[idx], d[idx]).backward()
            opt.step()
        head = LleHead(params["weight"].detach(), params["bias"].detach(), params["shift_weight"].detach(),
                       params["shift_bias"].detach(), init.shifts)
        if on_epoch is not None:
            on_epoch(epoch + 1, head)
    return head


# ---- 3. choice on val -----------------------------------------------------------------------------------------------
def val_scores(head: LleHead, val: Embedded) -> tuple[float, float]:
    """(worst-group accuracy, accuracy) of ``head`` on the val embeddings (``runtime.metrics.accuracy_report``)."""
    with torch.no_grad():
        pred = head(val.embeddings).argmax(dim=-1).numpy()
    r = accuracy_report(pred, val.labels.numpy(), val.groups.numpy())
    return r.worst_group_accuracy, r.accuracy


def fit_lle(model: Any, options: Any) -> LleHead:
    """``build``'s training step for the LLE head (``correct.heads.HEAD_KINDS``): ``model`` is the built
    ``DebiasedClassifier`` whose head is the untrained ``LleHead``; ``options.lle`` the ``LleOptions``. Returns the
    head chosen on val, with ``training`` recording the choice (see the module docstring)."""
    lle: LleOptions = options.lle
    plan = lle.plan()
    init: LleHead = init_shift(model.head, lle.shift_init, lle.seed)
    types = lle.resolve_augmentations().types
    train_index, val_index = lle.index(lle.train_split), lle.index(lle.val_split)
    if len(train_index.class_names) != init.weight.shape[1]:
        raise ClipDebiasError(f"{lle.data}: {len(train_index.class_names)} classes in split '{lle.train_split}', the "
                              f"model has {init.weight.shape[1]}")
    reading = {"batch_size": lle.image_batch_size, "max_pixels": lle.max_pixels, "progress": lle.progress,
               "memo": lle.__dict__.get("_images")}
    train = embed_shifted(model, train_index, types, lle.copies, lle.seed, **reading)
    val = embed_shifted(model, val_index, [], 1, lle.seed, **reading)
    best: tuple[Trial, LleHead] | None = None
    trials: list[Trial] = []
    grid = [(lr, wd) for lr in plan.learning_rates for wd in plan.weight_decays]
    epochs = len(grid) * plan.epochs
    what = f"LLE: train {plan.epochs} epochs" + (f" x {len(grid)} (lr, wd)" if len(grid) > 1 else "")

    def key(t: Trial) -> tuple[float, ...]:
        return t.key() if plan.tie_on_accuracy else (t.val_worst_group,)

    with Progress(what, epochs, epochs, unit="epochs", enabled=lle.progress) as bar:
        for lr, wd in grid:
            found: dict[str, Any] = {}

            def keep(epoch: int, head: LleHead) -> None:
                trial = Trial(lr, wd, epoch, *val_scores(head, val))
                if "trial" not in found or plan.last_epoch or key(trial) > key(found["trial"]):
                    found["trial"], found["head"] = trial, head
                bar.advance(1)

            train_lle(init, train, lr, wd, plan.epochs, plan.batch_size, lle.seed, keep, schedule=plan)
            trials.append(found["trial"])
            if best is None or key(found["trial"]) > key(best[0]):
                best = (found["trial"], found["head"])
    assert best is not None
    chosen, head = best
    zero_shot = val_scores(init, val)
    record = {
        "version": FIT_VERSION, "method": "last layer ensemble (Li et al., CVPR 2023), frozen embedding",
        "schedule": {"name": lle.schedule, **asdict(plan)}, "redraw": lle.redraw, "shift_init": lle.shift_init,
        "chosen": asdict(chosen), "trials": [asdict(t) for t in trials],
        "val_zero_shot": {"worst_group": zero_shot[0], "accuracy": zero_shot[1]},
        "train": {"dataset": lle.dataset, "split": lle.train_split, "n_images": len(train_index),
                  "n_embeddings": int(len(train.labels)),
                  "per_shift": {name: int((train.shifts == k).sum()) for k, name in enumerate(init.shifts)}},
        "val": {"dataset": lle.dataset, "split": lle.val_split, "n_images": len(val_index)},
        "augmentations": {t.name: t.help for t in types},
        "options": lle.record(),
    }
    return LleHead(head.weight, head.bias, head.shift_weight, head.shift_bias, init.shifts, record)

