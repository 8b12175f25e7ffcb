"""A CLIP state dict from a local checkpoint file, cheap to read again on every load after the first.

Formats: ``.safetensors`` (memory-mapped: a tensor's pages are read when it is first used), an open_clip / PyTorch
checkpoint (optionally under ``state_dict``, optionally DDP ``module.``-prefixed) — both read by open_clip's own
``factory.load_state_dict`` — and an OpenAI TorchScript archive (read with ``torch.jit``; open_clip's reader refuses
it). OpenAI's ``input_resolution`` / ``context_length`` / ``vocab_size`` entries are dropped.

Weights cache: a file that is not safetensors (a ``.pt`` / ``.bin`` pickle or TorchScript archive has to be read in
full) is converted once into ``<cache>/<sha256 of the file>.safetensors``, which later loads of a file with the same
sha256 memory-map instead. The key is the file's content hash, recomputed on every load (it is also the model's
identity), so an edited or replaced file never meets a stale entry; an entry also records the hash it was made from
and is used only when that matches (an entry made from another file is rewritten; a file there that is not an entry,
``runtime.ownership`` kind ``weights-cache-entry``, is neither used nor overwritten). ``<cache>`` is
``$CLIP_DEBIAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/clip-debias/weights``, else ``~/.cache/clip-debias/weights``;
nothing else is ever written there, and deleting the folder (or any file in it) is always safe. Writing an entry is
best effort: when it fails (read-only or full disk, a foreign file in the way) the load goes on from the file and one
warning is logged.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clip_debias.runtime.atomic_output import atomic_file
from clip_debias.runtime.manifest import sha256_file
from clip_debias.runtime.ownership import register_file_kind, safetensors_with
from clip_debias.toolchain.errors import ClipDebiasError

log = logging.getLogger("clip_debias.weights")

CACHE_ENV = "CLIP_DEBIAS_CACHE_DIR"
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
WEIGHTS_CACHE_FORMAT = "clip-debias weights cache 1"  # metadata 'format' of a weights-cache entry
register_file_kind("weights-cache-entry", "a weights-cache entry written by clip-debias",
                   safetensors_with(format=WEIGHTS_CACHE_FORMAT))


@dataclass
class Checkpoint:
    """A state dict read from ``path`` and the sha256 of that file's bytes. ``entry``: the weights-cache file this
    state dict is (``from_cache``) or should be written to by ``remember`` (None for a safetensors file)."""

    path: Path
    sha256: str
    state_dict: dict[str, torch.Tensor]
    entry: Path | None = None
    from_cache: bool = False

    def remember(self) -> None:
        """Write the cache entry, once the caller knows the weights are usable (a checkpoint of another architecture
        is refused without leaving a copy behind). Best effort: a failure logs one warning."""
        if self.entry is not None and not self.from_cache:
            _write_entry(self.entry, self.state_dict, self.sha256, self.path)


def cache_dir() -> Path:
    """The weights cache folder (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clip-debias" / "weights"


def first_sentence(e: BaseException, limit: int = 240) -> str:
    """An exception's text on one line, cut at ``limit`` characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_checkpoint(path: str | Path) -> Checkpoint:
    """The state dict in ``path`` (see the module docstring), from the weights cache when the file was seen before
    (else ``Checkpoint.remember`` writes the entry)."""
    path = Path(path)
    if not path.is_file():
        raise ClipDebiasError(f"{path}: weights file not found (expected a .safetensors, .pt or .bin CLIP checkpoint)")
    sha = sha256_file(path)
    if path.suffix == ".safetensors":
        return Checkpoint(path, sha, _state_dict(path, _read_file(path)))
    entry = cache_dir() / f"{sha}.safetensors"
    cached = _read_entry(entry, sha)
    if cached is not None:
        return Checkpoint(path, sha, cached, entry, from_cache=True)
    return Checkpoint(path, sha, _state_dict(path, _read_file(path)), entry)


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding ``constants.pkl`` and ``code/`` (a ``torch.save`` zip has neither)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _read_file(path: Path) -> Any:
    from open_clip.factory import load_state_dict as open_clip_read

    try:
        if _is_torchscript(path):  # OpenAI's released .pt files: only torch.jit reads them
            with warnings.catch_warnings():  # torch >= 2.10 deprecates torch.jit.load; nothing for a user to do
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning)
                return torch.jit.load(str(path), map_location="cpu").state_dict()
        return open_clip_read(str(path), device="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file
        raise ClipDebiasError(f"{path}: cannot read weights ({type(e).__name__}: {first_sentence(e)})") from e


def _state_dict(path: Path, raw: Any) -> dict[str, torch.Tensor]:
    """``raw`` as a plain {name: tensor} dict without OpenAI's extra entries, or one line saying what it is instead."""
    if not isinstance(raw, dict) or not raw:
        raise ClipDebiasError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    sd = {k: v for k, v in raw.items() if k not in OPENAI_EXTRA_KEYS}
    bad = next((k for k, v in sd.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ClipDebiasError(f"{path}: entry '{bad}' is a {type(sd[bad]).__name__}, not a tensor "
                              "(expected a mapping of parameter names to tensors)")
    return sd


def _read_entry(entry: Path, sha: str) -> dict[str, torch.Tensor] | None:
    """The cached state dict made from a file of hash ``sha``, or None (absent, unreadable, or made from another)."""
    if not entry.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(entry), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != WEIGHTS_CACHE_FORMAT or meta.get("source_sha256") != sha:
            return None
        return load_file(str(entry))
    except Exception:  # unreadable: not used (and rewritten only if it is an entry of ours)
        return None


def _write_entry(entry: Path, sd: dict[str, torch.Tensor], sha: str, source: Path) -> None:
    from safetensors.torch import save_file

    try:
        with atomic_file(entry, "weights-cache-entry") as tmp:  # never over a file that is not an entry of ours
            save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp),
                      metadata={"format": WEIGHTS_CACHE_FORMAT, "source_sha256": sha, "source_name": source.name})
    except Exception as e:  # best effort: the load goes on from the file
        log.warning("warning: could not cache %s as %s (%s); it will be read in full on every load",
                    source, entry, first_sentence(e))


def save_torchscript_state_dict(sd: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write ``sd`` as a TorchScript archive whose ``state_dict()`` is ``sd`` (dotted names become submodules): the
    container of OpenAI's released ``.pt`` files, without their model code. For tests and benchmarks of the reader."""
    from torch import nn

    class Node(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Node()
    for key, value in sd.items():
        *parents, leaf = key.split(".")
        node = root
        for name in parents:
            if not hasattr(node, name):
                node.add_module(name, Node())
            node = getattr(node, name)
        node.register_buffer(leaf, value.detach().clone())
    with warnings.catch_warnings():  # torch >= 2.10 deprecates torch.jit.script / save
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.jit.save(torch.jit.script(root), str(path))
    return Path(path)
