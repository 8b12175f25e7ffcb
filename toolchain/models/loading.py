"""Load an open_clip CLIP model: by name + pretrained tag, by name + a local weights file, or by the name of a model
whose weights the package ships (``models/shipped.py``); random weights only when asked for.

The model configs shipped in ``toolchain/models/configs`` (tiny test models, the bias-lab model) are
registered with open_clip on first use, so ``--model clipdebias-tiny`` works like any built-in name.
A model loaded from a file is built without its random initialization (every parameter is then replaced by the
file's tensor, without a copy: ``models/checkpoint.py`` reads the file memory-mapped).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

from clip_debias.runtime.manifest import sha256_file  # noqa: F401  (re-exported for callers of this module)
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.adapter import TowerAdapter, tower_of
from clip_debias.toolchain.models.checkpoint import Checkpoint, first_sentence, read_checkpoint
from clip_debias.toolchain.models.shipped import SHIPPED_TAG, shipped_names, shipped_weights
from clip_debias.toolchain.models.tokenizer import model_tokenizer

CONFIG_DIR = Path(__file__).parent / "configs"
_registered = False
log = logging.getLogger("clip_debias.models")


def register_configs() -> None:
    """Make the configs in ``toolchain/models/configs`` known to open_clip, and the timm towers they name known to
    timm (idempotent)."""
    global _registered
    if not _registered:
        import open_clip

        from clip_debias.toolchain.models.timm_lab import register_timm_towers

        register_timm_towers()
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


@dataclass(frozen=True)
class ModelIdentity:
    """Which weights a cache, plan or artifact came from. Exactly one of ``pretrained``/``weights_sha256`` or neither
    (random init, tests only)."""

    name: str
    pretrained: str | None = None
    weights_sha256: str | None = None
    weights_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelIdentity":
        return cls(**{k: d.get(k) for k in ("name", "pretrained", "weights_sha256", "weights_file")})

    def same_backbone(self, other: "ModelIdentity") -> bool:
        """Same architecture and same weights (the file name may differ; the hash may not)."""
        return (self.name, self.pretrained, self.weights_sha256) == (other.name, other.pretrained, other.weights_sha256)

    def describe(self) -> str:
        src = self.pretrained or (f"weights sha256 {self.weights_sha256[:12]}" if self.weights_sha256
                                  else "random init")
        return f"{self.name} ({src})"


@dataclass
class LoadedClip:
    """An open_clip model in eval mode with what every stage needs beside it."""

    model: Any  # open_clip.CLIP
    preprocess: Callable  # open_clip's eval transform: PIL image -> [3, H, W] float tensor
    tokenizer: Callable  # list[str] -> [N, context] token ids
    identity: ModelIdentity
    preprocess_cfg: dict[str, Any] = field(default_factory=dict)
    _tower: TowerAdapter | None = field(default=None, repr=False)

    @property
    def tower(self) -> TowerAdapter:
        """The image tower's adapter (``models/adapter.py``): the only way a stage reaches the tower."""
        if self._tower is None:
            self._tower = tower_of(self.model.visual)
        return self._tower

    @torch.no_grad()
    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """[len(texts), D] text embeddings (unit norm by default), on the model's device and dtype."""
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(texts).to(device)
        return self.model.encode_text(tokens, normalize=normalize)


class _SkipRandomInit(TorchFunctionMode):
    """Inside this mode, torch's random initializers (``nn.init.*`` and ``Tensor.uniform_`` / ``normal_``) return
    their tensor untouched. Used while open_clip builds a model whose every parameter is then replaced from a
    checkpoint (``_check_fits`` makes sure the keys match before ``load_state_dict(assign=True)``): the random fill
    would be thrown away, and it is most of the build (ViT-B-32 here: 4.4-4.8 s with it, 0.2 s without). Thread-local
    (a torch function mode)."""

    SKIPPED = frozenset({"uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_",
                         "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_"})

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", None) in self.SKIPPED:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _create(name: str, pretrained: str | None, skip_init: bool) -> tuple[Any, Callable]:
    """open_clip's model and eval transform, with open_clip's own log lines silenced (it warns on random init and
    logs a failed download before raising)."""
    import open_clip

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        with _SkipRandomInit() if skip_init else contextlib.nullcontext():
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device="cpu")
    except RuntimeError as e:
        if pretrained:
            raise ClipDebiasError(
                f"--pretrained {pretrained}: could not download the weights for {name} "
                f"({first_sentence(e)}); offline, pass a local checkpoint with --weights FILE"
            ) from e
        raise
    finally:
        root.setLevel(level)
    return model, preprocess


def _check_fits(model: torch.nn.Module, sd: dict[str, torch.Tensor], weights: str | Path, name: str) -> None:
    """One clear line when the state dict ``sd`` read from ``weights`` has other keys or other tensor shapes than
    ``model`` (a checkpoint of another architecture), before ``load_state_dict`` would raise a long RuntimeError."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = {k: list(getattr(v, "shape", [])) for k, v in sd.items()}
    bad = [k for k, v in own.items() if k in shape and shape[k] != list(v.shape)]
    parts = [f"{len(missing)} tensor(s) missing (first {missing[0]})" if missing else "",
             f"{len(unexpected)} unexpected (first {unexpected[0]})" if unexpected else "",
             f"{len(bad)} tensor(s) differ in shape (first {bad[0]}: {shape[bad[0]]} in the file, "
             f"{list(own[bad[0]].shape)} in the model)" if bad else ""]
    if any(parts):
        raise ClipDebiasError(f"{weights}: weights do not fit --model {name} ({'; '.join(p for p in parts if p)})")


def _load_file_weights(model: torch.nn.Module, ckpt: Checkpoint, name: str) -> None:
    """Put ``ckpt``'s tensors into ``model`` as its parameters (``assign``: no copy; a memory-mapped file stays
    mapped), each in the dtype open_clip built it in. The open_clip-side fixes are those of open_clip's own
    ``load_checkpoint``: a scalar/1-d ``logit_scale`` reshaped, a stale text ``position_ids`` dropped."""
    sd = dict(ckpt.state_dict)
    if "logit_scale" in sd and sd["logit_scale"].ndim != model.logit_scale.ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    sd.pop("text.transformer.embeddings.position_ids", None)
    _check_fits(model, sd, ckpt.path, name)
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True, assign=True)


def weights_file(name: str, pretrained: str | None, weights: str | Path | None, random_weights: bool) -> Path | None:
    """Which weights ``load_clip`` uses: a file (``weights``, or the shipped file of ``name`` for ``pretrained
    'shipped'`` or by default), None for an open_clip tag or random weights; one line when the choice is unclear."""
    shipped = shipped_weights(name)
    if pretrained and weights:
        raise ClipDebiasError("--pretrained and --weights are exclusive: give one source of weights")
    if random_weights and (pretrained or weights):
        raise ClipDebiasError(f"--random-weights and --{'pretrained' if pretrained else 'weights'} are exclusive: "
                              "give one source of weights")
    if pretrained == SHIPPED_TAG:
        if shipped is None:
            raise ClipDebiasError(f"--pretrained {SHIPPED_TAG}: no weights are shipped for --model {name} "
                                  f"(shipped: {shipped_names()})")
        return shipped
    if weights is not None:
        return Path(weights)
    if pretrained or random_weights:
        return None
    if shipped is None:
        raise ClipDebiasError(f"--model {name} has no shipped weights: pass --pretrained TAG, --weights FILE, or "
                              f"--random-weights for a random-weight model (shipped: {shipped_names()})")
    return shipped


def load_clip(
    name: str,
    pretrained: str | None = None,
    weights: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    random_weights: bool = False,
    tokenizer: str | Path | None = None,
) -> LoadedClip:
    """Build ``name`` with open_clip and load its weights from exactly one source:

    ``pretrained``: an open_clip tag (downloaded by open_clip), or ``"shipped"``: the weights this package ships for
    ``name`` (``models/shipped.py``); ``weights``: a local file (``models/checkpoint.py``: safetensors memory-mapped,
    other formats through the weights cache); neither: the shipped weights when ``name`` has them, else refused
    unless ``random_weights`` (tests, benchmarks, timing: a random-weight model's results mean nothing).
    ``tokenizer``: a local ``tokenizer.json`` or a folder holding one, for models whose tokenizer comes from the
    Hugging Face hub (``models/tokenizer.py``)."""
    import open_clip

    register_configs()
    if name not in open_clip.list_models():
        raise ClipDebiasError(f"--model {name}: unknown open_clip model name (see open_clip.list_models())")
    path = weights_file(name, pretrained, weights, random_weights)
    tag = pretrained if pretrained and pretrained != SHIPPED_TAG else None
    source = (f"weights {path}" if weights is not None else f"shipped weights {path.name}" if path is not None
              else f"open_clip pretrained '{tag}'" if tag else "random weights")
    log.info("loading %s (%s) on %s", name, source, device)
    ckpt = read_checkpoint(path) if path is not None else None
    model, preprocess = _create(name, tag, skip_init=ckpt is not None)
    identity = ModelIdentity(name=name, pretrained=tag)
    if ckpt is not None:
        _load_file_weights(model, ckpt, name)
        ckpt.remember()
        identity = ModelIdentity(name=name, weights_sha256=ckpt.sha256, weights_file=ckpt.path.name)
    tower = tower_of(model.visual)  # refuse unsupported towers now, with one clear line
    model = model.to(device=device, dtype=dtype).eval()
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", model.visual.image_size)
    cfg["size"] = [size, size] if isinstance(size, int) else list(size)
    return LoadedClip(
        model=model,
        preprocess=preprocess,
        tokenizer=model_tokenizer(name, tokenizer),
        identity=identity,
        preprocess_cfg=cfg,
        _tower=tower,
    )
