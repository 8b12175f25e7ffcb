"""Load an open_clip CLIP model the ordinary way: by name + pretrained tag, or by name + a local weights file.

The model configs shipped in ``toolchain/models/configs`` (tiny test models, the bias-lab model) are
registered with open_clip on first use, so ``--model clipdebias-tiny`` works like any built-in name.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from clip_debias.runtime.manifest import sha256_file
from clip_debias.toolchain.errors import ClipDebiasError

CONFIG_DIR = Path(__file__).parent / "configs"
_registered = False


def register_configs() -> None:
    """Make the configs in ``toolchain/models/configs`` known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        import open_clip

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

    @torch.no_grad()
    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """[len(texts), D] text embeddings (unit norm by default), on the model's device and dtype."""
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(texts).to(device)
        return self.model.encode_text(tokens, normalize=normalize)


def _first_sentence(e: Exception, limit: int = 240) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A CLIP state dict from a local file: safetensors, an open_clip checkpoint (optionally under ``state_dict``,
    optionally DDP ``module.``-prefixed) or an OpenAI TorchScript archive."""
    path = Path(path)
    if not path.is_file():
        raise ClipDebiasError(f"{path}: weights file not found (expected a .safetensors, .pt or .bin CLIP checkpoint)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # OpenAI's released .pt files are TorchScript archives: only torch.jit reads them
                with warnings.catch_warnings():  # torch >= 2.10 deprecates torch.jit.load; nothing for a user to do
                    warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning)
                    sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    except ClipDebiasError:
        raise
    except Exception as e:  # corrupt or foreign file
        raise ClipDebiasError(f"{path}: cannot read weights ({type(e).__name__}: {_first_sentence(e)})") from e
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise ClipDebiasError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
    for k in _OPENAI_EXTRA_KEYS:
        sd.pop(k, None)
    return sd


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


def load_clip(
    name: str,
    pretrained: str | None = None,
    weights: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LoadedClip:
    """Build ``name`` with open_clip and load weights from ``pretrained`` (a tag, downloaded by open_clip)
    or ``weights`` (a local file). With neither, the weights are random (tests, benchmarks)."""
    import open_clip

    register_configs()
    if pretrained and weights:
        raise ClipDebiasError("--pretrained and --weights are exclusive: give one source of weights")
    if name not in open_clip.list_models():
        raise ClipDebiasError(f"--model {name}: unknown open_clip model name (see open_clip.list_models())")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)  # open_clip warns on random init and logs a failed download before raising
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained or None, device="cpu"
        )
    except RuntimeError as e:
        if pretrained:
            raise ClipDebiasError(
                f"--pretrained {pretrained}: could not download the weights for {name} "
                f"({_first_sentence(e)}); offline, pass a local checkpoint with --weights FILE"
            ) from e
        raise
    finally:
        root.setLevel(level)
    identity = ModelIdentity(name=name, pretrained=pretrained or None)
    if weights is not None:
        sd = read_state_dict(weights)
        if "logit_scale" in sd and sd["logit_scale"].ndim != model.logit_scale.ndim:
            sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
        sd.pop("text.transformer.embeddings.position_ids", None)
        _check_fits(model, sd, weights, name)
        model.load_state_dict(sd, strict=True)
        identity = ModelIdentity(name=name, weights_sha256=sha256_file(weights), weights_file=Path(weights).name)
    from clip_debias.toolchain.models.tower import tower_config_of

    tower_config_of(model.visual)  # refuse non-ViT / non-CLS towers now, with one clear line
    model = model.to(device=device, dtype=dtype).eval()
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", model.visual.image_size)
    cfg["size"] = [size, size] if isinstance(size, int) else list(size)
    return LoadedClip(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(name),
        identity=identity,
        preprocess_cfg=cfg,
    )
