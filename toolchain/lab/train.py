"""Train the bias lab's tiny CLIP (config ``clipdebias-lab``) contrastively on the lab data, and measure its bias.

Captions come from the metadata: mostly the class alone ("a photo of a waterbird."), sometimes the class and the
background ("a photo of a waterbird on a land background."), and on two-shortcut data (a co-occurring object) the
class and the object ("a waterbird beside a flower.") or all three, each named independently with its probability
(``p_background``, ``p_object``), so the image tower learns them and some of its heads carry the shortcuts. The loss
is open_clip's own ``ClipLoss``. ``zero_shot_report`` measures average, per-group and worst-group zero-shot accuracy
per split with the prompts "a photo of a landbird." / "a photo of a waterbird."; on two-shortcut data also the
Whac-A-Mole agreement cells and gaps -- every number by ``runtime.metrics``, the functions verify and evaluate use.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from clip_debias.runtime.choices import Split
from clip_debias.runtime.images import load_image, open_image
from clip_debias.runtime.limits import check_memory
from clip_debias.runtime.metric_inputs import lab_correlation
from clip_debias.runtime.metrics import (DEFAULT_P_AGREE, AccuracyReport, AttributeColumn, ShortcutGaps,
                                         accuracy_report, shortcut_gaps)
from clip_debias.runtime.ownership import register_file_kind, safetensors_with
from clip_debias.toolchain.choices import LabLoss
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.lab.data import CLASS_NAMES, OBJECT_NAMES, PLACE_NAMES, SPLIT_NAMES, read_metadata

MODEL_NAME = "clipdebias-lab"
DECODED_COPIES = 3  # load_split holds each image three times at its peak: the decoded arrays, np.stack, the tensor
register_file_kind("lab-weights", "lab weights written by 'clip-debias lab train'",  # the metadata train_lab_model
                   safetensors_with({"model", "steps", "seed", "batch_size", "lr", "p_background"}))  # records
CLASS_TEMPLATES = (
    "a photo of a {c}.", "a {c}.", "a picture of a {c}.", "an image of a {c}.", "a photo of the {c}.",
    "a small {c}.", "a drawing of a {c}.", "a photo of one {c}.",
)
BACKGROUND_TEMPLATES = (
    "a photo of a {c} on a {p} background.", "a {c} on {p}.", "a photo of a {c} over {p}.",
    "a picture of a {c} on a {p} background.", "a {c} with {p} behind it.", "an image of a {c} on {p}.",
)
OBJECT_TEMPLATES = (
    "a photo of a {c} next to a {o}.", "a {c} beside a {o}.", "a picture of a {c} and a {o}.",
    "a {c} with a {o} nearby.", "an image of a {c} next to a {o}.", "a photo of a {c} and a small {o}.",
)
BACKGROUND_OBJECT_TEMPLATES = (
    "a photo of a {c} on {p} beside a {o}.", "a {c} and a {o} on {p}.", "a picture of a {c} on {p} with a {o}.",
    "a {c} next to a {o} on {p}.", "an image of a {c} and a {o} on {p}.", "a {c} on {p} near a {o}.",
)
ZERO_SHOT_PROMPTS = tuple(f"a photo of a {c}." for c in CLASS_NAMES)


@dataclass
class LabSplit:
    """One split of a lab (Waterbirds-layout) data set, decoded: uint8 images [N, 3, H, W], labels y, places and,
    on two-shortcut data, the co-object kinds (else None)."""

    images: torch.Tensor
    y: torch.Tensor
    place: torch.Tensor
    kind: torch.Tensor | None = None

    @property
    def group(self) -> torch.Tensor:
        """2*y + place, or 4*y + 2*place + kind on two-shortcut data (``lab.groups``)."""
        return 2 * self.y + self.place if self.kind is None else 4 * self.y + 2 * self.place + self.kind

    @property
    def group_names(self) -> list[str]:
        objects = [] if self.kind is None else [OBJECT_NAMES]
        return ["/".join(parts) for parts in itertools.product(CLASS_NAMES, PLACE_NAMES, *objects)]


@dataclass
class TrainResult:
    """What a lab training run produced: the weights file, its settings and the loss curve (one value per step)."""

    out: Path
    steps: int
    seed: int
    batch_size: int
    seconds: float
    losses: list[float] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 10% of the steps."""
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return float(np.mean(tail))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "out": str(self.out), "final_loss": self.final_loss}


@dataclass
class SplitAccuracy:
    """Zero-shot accuracy on one split (``runtime.metrics``): the accuracy report over ``LabSplit.group``'s groups
    (4 or 8, named by ``group_names``) and, on two-shortcut data, the Whac-A-Mole shortcut gaps (their agreement
    cells; I.D. accuracy weighted by the data's train correlation, ``lab.json``)."""

    split: str
    report: AccuracyReport
    gaps: ShortcutGaps | None = None

    def line(self) -> str:
        r = self.report
        per = "  ".join(f"{name} {g.accuracy:.1%}" if g.accuracy is not None else f"{name} -"
                        for name, g in r.groups.items())
        head = (f"{self.split:5s} n={sum(g.n for g in r.groups.values()):5d}  avg {r.accuracy:.1%}  worst-group "
                f"{r.worst_group_accuracy:.1%}")
        if self.gaps is None:
            return f"{head}  |  {per}"
        cells = "  ".join(f"{key} {'-' if a is None else f'{a:.1%}'}"
                          for key, a in self.gaps.agreement_accuracy.items())
        return f"{head}\n      cells (background/object agreement, mean over cells): {cells}\n      {per}"


# ---- data -----------------------------------------------------------------------------------------------------------
def load_split(data: str | Path, split: str | int) -> LabSplit:
    """Decode every image of ``split`` ('train'/'val'/'test' or 0/1/2) of the data dir ``data`` (refused first, in one
    line, when the decoded split would need more memory than is available: ``DECODED_COPIES`` uint8 RGB copies of
    every image, at the first image's header size)."""
    if split not in range(len(SPLIT_NAMES)):
        Split.parse(split, "--split")
    s = SPLIT_NAMES.index(split) if isinstance(split, str) else int(split)
    rows = [r for r in read_metadata(data) if r["split"] == s]
    if not rows:
        raise ClipDebiasError(f"{Path(data) / 'metadata.csv'}: no rows with split {s} ({SPLIT_NAMES[s]})")
    with open_image(Path(data) / str(rows[0]["img_filename"])) as im:
        width, height = im.size
    check_memory(len(rows) * width * height * 3 * DECODED_COPIES,
                 f"{data}: split {SPLIT_NAMES[s]}, {len(rows):,} images of {width}x{height} px decoded")
    arrays = []
    for r in rows:
        arrays.append(np.asarray(load_image(Path(data) / str(r["img_filename"])).convert("RGB")))
    if len({a.shape for a in arrays}) != 1:
        raise ClipDebiasError(f"{data}: images of split {SPLIT_NAMES[s]} differ in size (expected one size)")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    kind = torch.tensor([int(r["object"]) for r in rows]) if "object" in rows[0] else None
    return LabSplit(images=images, y=torch.tensor([int(r["y"]) for r in rows]),
                    place=torch.tensor([int(r["place"]) for r in rows]), kind=kind)


CaptionKey = tuple[int, int | None, int | None]  # (y, place or None, object kind or None): what a caption names


def caption_table(objects: bool = False) -> tuple[list[str], dict[CaptionKey, list[int]]]:
    """All training captions, and for each key (y, place or None, kind or None) the indices of the captions that name
    exactly the class and those attributes. ``objects``: also the co-object captions (two-shortcut data); without,
    the captions and their order are the background-only data's."""
    captions: list[str] = []
    index: dict[CaptionKey, list[int]] = {}

    def add(key: CaptionKey, texts: list[str]) -> None:
        index[key] = [len(captions) + i for i in range(len(texts))]
        captions.extend(texts)

    for y, c in enumerate(CLASS_NAMES):
        add((y, None, None), [t.format(c=c) for t in CLASS_TEMPLATES])
        for p, pn in enumerate(PLACE_NAMES):
            add((y, p, None), [t.format(c=c, p=pn) for t in BACKGROUND_TEMPLATES])
    if objects:
        for y, c in enumerate(CLASS_NAMES):
            for k, on in enumerate(OBJECT_NAMES):
                add((y, None, k), [t.format(c=c, o=on) for t in OBJECT_TEMPLATES])
                for p, pn in enumerate(PLACE_NAMES):
                    add((y, p, k), [t.format(c=c, p=pn, o=on) for t in BACKGROUND_OBJECT_TEMPLATES])
    return captions, index


def sample_captions(y: torch.Tensor, place: torch.Tensor, p_background: float, gen: torch.Generator,
                    kind: torch.Tensor | None = None, p_object: float = 0.0) -> torch.Tensor:
    """One caption index (into ``caption_table(kind is not None)[0]``) per image: naming the background with prob
    ``p_background`` and, when ``kind`` is given, the co-object with prob ``p_object``, independently."""
    _, index = caption_table(kind is not None)
    bg = torch.rand(len(y), generator=gen) < p_background
    pick = torch.rand(len(y), generator=gen)
    ob = (torch.rand(len(y), generator=gen) < p_object).tolist() if kind is not None else [False] * len(y)
    kinds = kind.tolist() if kind is not None else [None] * len(y)
    out = []
    for yi, pi, ki, b, o, u in zip(y.tolist(), place.tolist(), kinds, bg.tolist(), ob, pick.tolist()):
        choices = index[(yi, pi if b else None, ki if o else None)]
        out.append(choices[int(u * len(choices))])
    return torch.tensor(out)


def _normalizer(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [1, 3, 1, 1] of the model's preprocessing."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", OPENAI_DATASET_STD)).view(1, 3, 1, 1)
    return mean, std


def augment(images: torch.Tensor, gen: torch.Generator, shift: int = 4) -> torch.Tensor:
    """Random horizontal/vertical flips and a random shift of up to ``shift`` pixels (reflect padding), per image."""
    b, _, h, w = images.shape
    flip_h = torch.rand(b, generator=gen) < 0.5
    flip_v = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip_h.view(b, 1, 1, 1), images.flip(3), images)
    x = torch.where(flip_v.view(b, 1, 1, 1), x.flip(2), x)
    if shift:
        padded = torch.nn.functional.pad(x, (shift,) * 4, mode="reflect")
        dx = torch.randint(0, 2 * shift + 1, (b,), generator=gen).tolist()
        dy = torch.randint(0, 2 * shift + 1, (b,), generator=gen).tolist()
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    return x


# ---- training -------------------------------------------------------------------------------------------------------
def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups as in open_clip's training: no decay for gains, biases, embeddings-as-vectors and logit_scale."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        skip = p.ndim < 2 or "ln" in n or "bias" in n or "logit_scale" in n
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 0."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def save_weights(model: torch.nn.Module, out: str | Path, dtype: torch.dtype, metadata: dict[str, str],
                 force: bool = False) -> Path:
    """Write the full CLIP state dict as safetensors (via a temporary file, renamed at the end); an existing ``out``
    is replaced only when it is lab weights (``runtime.ownership``), or with ``force``."""
    from safetensors.torch import save_file

    from clip_debias.runtime.atomic_output import atomic_file

    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    with atomic_file(out, "lab-weights", force) as tmp:
        save_file(sd, str(tmp), metadata=metadata)
    return Path(out)


def sigmoid_loss(img_f: torch.Tensor, txt_f: torch.Tensor, caption: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023), with positives by caption identity.

    img_f [B, D] and txt_f [U, D] unit-norm, caption [B] the index of each image's caption among the U distinct
    captions of the batch. logits z_ij = scale * <img_i, txt_j> + bias, label l_ij = +1 if caption[i] = j else -1;
    loss = -sum_ij log sigmoid(l_ij z_ij) / B. SigLIP pairs each image with its own text (labels = 2 I - 1); the lab's
    captions repeat within a batch, so an image and another image's identical caption are a positive here, never a
    negative.
    """
    logits = scale * img_f @ txt_f.T + bias
    labels = 2.0 * (caption[:, None] == torch.arange(txt_f.shape[0], device=caption.device)[None, :]).float() - 1.0
    return -torch.nn.functional.logsigmoid(labels * logits).sum() / img_f.shape[0]


def train_lab_model(
    data: str | Path,
    out: str | Path,
    steps: int = 3000,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 3e-4,
    weight_decay: float = 0.1,
    p_background: float = 0.3,
    p_object: float = 0.3,
    warmup: int | None = None,
    half: bool = True,
    device: str = "cpu",
    threads: int | None = None,
    log: Callable[[str], None] = print,
    log_every: int = 50,
    eval_every: int = 0,
    model_name: str = MODEL_NAME,
    loss: str = "clip",
    force: bool = False,
) -> TrainResult:
    """Train ``model_name`` (clipdebias-lab, or clipdebias-lab2 on two-shortcut data) from scratch on the train split
    of ``data`` with ``loss`` (``clip``: open_clip's ``ClipLoss``; ``sigmoid``: SigLIP's pairwise sigmoid loss,
    ``sigmoid_loss``) and save the state dict to ``out`` (fp16 when ``half``). ``p_object`` applies to
    two-shortcut data only. Logs every ``log_every`` steps, and the val split's zero-shot accuracy every
    ``eval_every`` steps (0: never). Deterministic for a seed on a given device and torch build."""
    import open_clip
    from open_clip.loss import ClipLoss

    from clip_debias.toolchain.models.loading import register_configs

    if steps < 1 or batch_size < 2:
        raise ClipDebiasError(f"--steps {steps} / --batch-size {batch_size}: expected steps >= 1 and batch size >= 2")
    if not (lr > 0 and math.isfinite(lr)):
        raise ClipDebiasError(f"--lr {lr}: expected a learning rate > 0")
    if not 0.0 <= p_background <= 1.0:
        raise ClipDebiasError(f"--p-background {p_background}: expected a probability in [0, 1]")
    if not 0.0 <= p_object <= 1.0:
        raise ClipDebiasError(f"--p-object {p_object}: expected a probability in [0, 1]")
    if threads is not None and threads < 1:
        raise ClipDebiasError(f"--threads {threads}: expected at least 1")
    if eval_every < 0:
        raise ClipDebiasError(f"--eval-every {eval_every}: expected N >= 0 (0: never)")
    if threads:
        torch.set_num_threads(threads)
    register_configs()
    split = load_split(data, "train")
    if len(split.y) < batch_size:
        raise ClipDebiasError(f"{data}: {len(split.y)} train images, fewer than --batch-size {batch_size}")
    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, device="cpu").to(device).train()
    tokens = open_clip.get_tokenizer(model_name)(caption_table(split.kind is not None)[0]).to(device)
    mean, std = (t.to(device) for t in _normalizer(model))
    loss = LabLoss.parse(loss, "--loss")
    if loss == "sigmoid" and getattr(model, "logit_bias", None) is None:
        raise ClipDebiasError(f"--loss sigmoid: {model_name} has no logit bias (a SigLIP-style config sets "
                              "init_logit_bias)")
    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6,
                            foreach=True)
    warmup = warmup if warmup is not None else min(100, steps // 10 + 1)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    val: LabSplit | None = None
    order = torch.randperm(len(split.y), generator=gen)
    pos, t0, t_log = 0, time.perf_counter(), time.perf_counter()
    for step in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(split.y), generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        images = augment(split.images[idx], gen).to(device).float().div_(255).sub_(mean).div_(std)
        kind = split.kind[idx] if split.kind is not None else None
        cap = sample_captions(split.y[idx], split.place[idx], p_background, gen, kind, p_object).to(device)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, warmup)
        img_f = model.encode_image(images, normalize=True)
        if loss == "sigmoid":
            used, cap = torch.unique(cap, return_inverse=True)  # the batch's distinct captions, each once
            txt_f = model.encode_text(tokens[used], normalize=True)
            loss_value = sigmoid_loss(img_f, txt_f, cap, model.logit_scale.exp(), model.logit_bias)
        else:
            txt_f = model.encode_text(tokens, normalize=True)[cap]  # the few distinct captions, once per step
            loss_value = loss_fn(img_f, txt_f, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss_value.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss_value.item())
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            now = time.perf_counter()
            n = log_every if (step + 1) % log_every == 0 else (step + 1) % log_every
            log(f"step {step + 1:5d}/{steps}  loss {np.mean(losses[-n:]):.4f}  "
                f"lr {_lr_at(step, steps, lr, warmup):.2e}  "
                f"scale {model.logit_scale.exp().item():5.1f}  {n / (now - t_log):.2f} steps/s")
            t_log = now
        if eval_every and (step + 1) % eval_every == 0:
            model.eval()
            val = val if val is not None else load_split(data, "val")
            log(f"step {step + 1:5d}  " + group_accuracy(model, open_clip.get_tokenizer(model_name), val, "val").line())
            model.train()
            t_log = time.perf_counter()
    seconds = time.perf_counter() - t0
    meta = {"model": model_name, "steps": str(steps), "seed": str(seed), "batch_size": str(batch_size),
            "lr": str(lr), "p_background": str(p_background), "data": Path(data).name}
    if split.kind is not None:
        meta["p_object"] = str(p_object)
    save_weights(model, out, torch.float16 if half else torch.float32, meta, force)
    return TrainResult(out=Path(out), steps=steps, seed=seed, batch_size=batch_size, seconds=seconds, losses=losses)


# ---- evaluation -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def group_accuracy(model: Any, tokenizer: Callable, split: LabSplit, split_name: str,
                   prompts: tuple[str, ...] = ZERO_SHOT_PROMPTS, batch_size: int = 256,
                   p_agree: float | None = None) -> SplitAccuracy:
    """Zero-shot accuracy of an open_clip model on decoded ``split`` with one prompt per class (``SplitAccuracy``;
    ``p_agree``: the train correlation of the gaps' I.D. accuracy, default UrbanCars' 0.95)."""
    device = next(model.parameters()).device
    mean, std = (t.to(device) for t in _normalizer(model))
    text = model.encode_text(tokenizer(list(prompts)).to(device), normalize=True)
    preds = []
    for i in range(0, len(split.y), batch_size):
        x = split.images[i:i + batch_size].to(device).float().div_(255).sub_(mean).div_(std)
        preds.append((model.encode_image(x, normalize=True) @ text.T).argmax(1).cpu())
    pred, y = torch.cat(preds).numpy(), split.y.numpy()
    names = split.group_names
    report = accuracy_report(pred, y, split.group.numpy(), names, expected=names)
    gaps = None
    if split.kind is not None and not report.missing:
        gaps = shortcut_gaps(pred, y, list(CLASS_NAMES), AttributeColumn("place", split.place.numpy(), PLACE_NAMES),
                             AttributeColumn("object", split.kind.numpy(), OBJECT_NAMES),
                             DEFAULT_P_AGREE if p_agree is None else p_agree)
    return SplitAccuracy(split_name, report, gaps)


def zero_shot_report(
    weights: str | Path | None,
    data: str | Path,
    split: str | tuple[str, ...] = ("val", "test"),
    model_name: str = MODEL_NAME,
    prompts: tuple[str, ...] = ZERO_SHOT_PROMPTS,
    log: Callable[[str], None] | None = print,
) -> dict[str, SplitAccuracy]:
    """Load ``weights`` (None: the weights shipped for ``model_name``) with ``load_clip`` and print (via ``log``) avg
    and worst-group zero-shot accuracy per split."""
    from clip_debias.toolchain.models.loading import load_clip

    splits = (split,) if isinstance(split, str) else tuple(split)
    for s in splits:
        Split.parse(s, "--splits")
    loaded = load_clip(model_name, weights=weights)
    recorded = lab_correlation(Path(data))
    out = {}
    for s in splits:
        out[s] = group_accuracy(loaded.model, loaded.tokenizer, load_split(data, s), s, prompts,
                                p_agree=recorded if isinstance(recorded, float) else None)
        if log:
            log(out[s].line())
    return out

