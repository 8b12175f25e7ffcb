"""The text tokenizer of a model: open_clip's own, or a local Hugging Face tokenizer (``--tokenizer FILE|DIR``).

SigLIP, SigLIP2, PE and other ``hf_tokenizer_name`` models tokenize through open_clip's ``HFTokenizer``, which loads
from the Hugging Face hub (and needs ``transformers``). Offline, ``--tokenizer`` names a ``tokenizer.json`` of the
``tokenizers`` library (or a folder holding one); ``LocalTokenizer`` then does what ``HFTokenizer`` does in its
standard mode: open_clip's text cleaning named by the model config, the tokenizer's own special tokens, truncation
and padding to the context length (with the tokenizer's padding token), the separator token zeroed when the config
says ``strip_sep_token``. Without ``--tokenizer``, a hub tokenizer that cannot be loaded fails only when text is
tokenized, in one line saying so (image-only stages such as ``decompose`` never need it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.checkpoint import first_sentence

TOKENIZER_FILE = "tokenizer.json"
PAD_TOKENS = ("<pad>", "[PAD]", "<|pad|>")
SEP_TOKENS = ("[SEP]", "</s>")
OFFLINE_HINT = (f"offline, pass --tokenizer FILE|DIR: a {TOKENIZER_FILE} of the Hugging Face tokenizers library, "
                "or a folder holding one")


def tokenizer_file(path: str | Path) -> Path:
    """``path`` if it is a file, ``path/tokenizer.json`` if it is a folder holding one; else one line."""
    p = Path(path)
    if p.is_dir():
        p = p / TOKENIZER_FILE
    if not p.is_file():
        raise ClipDebiasError(f"--tokenizer {path}: no such file; {OFFLINE_HINT.split(': ', 1)[1]}")
    return p


def _token_id(tok: Any, names: Sequence[str]) -> int | None:
    return next((i for i in (tok.token_to_id(n) for n in names) if i is not None), None)


class LocalTokenizer:
    """texts -> [N, context_length] int64 token ids from a ``tokenizer.json`` (see the module docstring)."""

    def __init__(self, path: str | Path, context_length: int, clean: str = "whitespace",
                 strip_sep_token: bool = False):
        from open_clip.tokenizer import get_clean_fn
        from tokenizers import Tokenizer

        file = tokenizer_file(path)
        try:
            self.tokenizer = Tokenizer.from_file(str(file))
        except Exception as e:  # not a tokenizer.json
            raise ClipDebiasError(f"--tokenizer {path}: {file} is not a tokenizers-library tokenizer.json "
                                  f"({first_sentence(e)})") from e
        padding = self.tokenizer.padding or {}
        pad_id = padding.get("pad_id") if padding else _token_id(self.tokenizer, PAD_TOKENS)
        if pad_id is None:
            raise ClipDebiasError(f"--tokenizer {path}: the tokenizer has no padding token (one of "
                                  f"{', '.join(PAD_TOKENS)}, or a padding setting in {TOKENIZER_FILE})")
        self.sep_id = _token_id(self.tokenizer, SEP_TOKENS) if strip_sep_token else None
        if strip_sep_token and self.sep_id is None:
            raise ClipDebiasError(f"--tokenizer {path}: the model strips the separator token, and the tokenizer has "
                                  f"none of {', '.join(SEP_TOKENS)}")
        self.context_length = context_length
        self.clean = get_clean_fn(clean)
        self.tokenizer.enable_truncation(max_length=context_length)
        self.tokenizer.enable_padding(length=context_length, pad_id=pad_id,
                                      pad_token=self.tokenizer.id_to_token(pad_id) or "")

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = torch.tensor([e.ids for e in self.tokenizer.encode_batch([self.clean(t) for t in texts])],
                           dtype=torch.long).reshape(len(texts), self.context_length)
        if self.sep_id is not None:
            ids = torch.where(ids == self.sep_id, torch.zeros_like(ids), ids)
        return ids


class UnavailableTokenizer:
    """Stands in for a hub tokenizer that could not be loaded: raises ``reason`` (one line) when called."""

    def __init__(self, reason: str):
        self.reason = reason

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        raise ClipDebiasError(self.reason)


def model_tokenizer(name: str, tokenizer: str | Path | None = None) -> Callable[[Sequence[str]], torch.Tensor]:
    """The tokenizer of open_clip model ``name``: ``LocalTokenizer(tokenizer)`` when given (with the context length
    and cleaning of ``name``'s text config), else open_clip's ``get_tokenizer(name)``; a hub tokenizer that cannot
    be loaded becomes an ``UnavailableTokenizer``."""
    import open_clip

    text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    if tokenizer is not None:
        clean, strip = kwargs.get("clean", "whitespace"), bool(kwargs.get("strip_sep_token", False))
        return LocalTokenizer(tokenizer, int(text_cfg.get("context_length", 77)), clean=clean, strip_sep_token=strip)
    try:
        return open_clip.get_tokenizer(name)
    except Exception as e:  # a hub tokenizer offline, or without transformers
        hub = text_cfg.get("hf_tokenizer_name")
        if not hub:
            raise
        return UnavailableTokenizer(f"--model {name}: its tokenizer comes from the Hugging Face hub ('{hub}') and "
                                    f"could not be loaded ({type(e).__name__}: {first_sentence(e, 120)}); "
                                    f"{OFFLINE_HINT}")
