"""The text tower's tokenizer, torch-free: open_clip's ``SimpleTokenizer`` as a ``tokenizers`` ``tokenizer.json``.

``export onnx --text`` converts open_clip's BPE once (``exporters.text_export.tokenizer_json``): vocab + merges
(``</w>`` end-of-word suffix), byte-level alphabet, the pre-tokenization regex (contractions, letter runs, single
digits, runs of other non-space characters), ``<start_of_text> $A <end_of_text>``, truncation to the context
length keeping EOT last, padding with id 0. The normalizer in the file (NFC, whitespace runs -> one space, strip,
lower case) is what ``tokenizers`` can express of open_clip's cleaning; the rest -- ``ftfy.fix_text`` (mojibake,
width and quote fixes) and two rounds of ``html.unescape`` -- runs first, here, in ``clean_text`` (pure Python,
the ``ftfy`` package). ``TextTokenizer(texts)`` therefore gives the ids of open_clip's
``SimpleTokenizer(texts)`` (tests/test_text.py checks them on a corpus of ASCII, unicode, emoji, whitespace runs,
HTML entities and over-long strings). Known difference: a special-token string glued to other punctuation
(``<<start_of_text>``) is one special token here and punctuation runs in open_clip.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np

from clip_debias.runtime.errors import ArtifactError, InputError

TOKENIZER_NAME = "tokenizer.json"
MAX_TEXT_CHARS = 10_000  # longer texts are refused (the context keeps ~75 tokens; this bounds the cleaning work)


def clean_text(text: str) -> str:
    """open_clip's ``_clean_lower``: ``ftfy.fix_text``, ``html.unescape`` twice, whitespace runs -> one space,
    strip, lower case."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class TextTokenizer:
    """``tokenizer.json`` + the artifact's context length: ``texts -> int64 [N, context_length]`` token ids,
    ``<start_of_text>``, the text's ids, ``<end_of_text>``, then 0s (open_clip's layout). Thread-safe: the wrapper
    holds no mutable state and ``tokenizers`` encodes without any."""

    def __init__(self, path: str | Path, context_length: int) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ArtifactError(f"{path}: reading the text tokenizer needs the 'tokenizers' package "
                                "(pip install tokenizers)") from None
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a plain Exception on a malformed file
            raise ArtifactError(f"{path}: not a tokenizers tokenizer.json ({str(e).splitlines()[0][:200]})") from None
        self.context_length = int(context_length)
        trunc, pad = self._tok.truncation, self._tok.padding
        if not trunc or trunc.get("max_length") != self.context_length or not pad or pad.get("length") != \
                self.context_length:
            raise ArtifactError(f"{path}: truncation / padding must be fixed at the manifest's context length "
                                f"{self.context_length}")

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """``texts`` (a list of strings) -> int64 [N, context_length]; one ``InputError`` for a non-string, an
        empty list or a text over ``MAX_TEXT_CHARS`` characters."""
        texts = check_texts(texts)
        encodings = self._tok.encode_batch([clean_text(t) for t in texts])
        return np.asarray([e.ids for e in encodings], dtype=np.int64)


def check_texts(texts: Sequence[str] | str) -> list[str]:
    """The input checks of every text call: a non-empty list of strings, each at most ``MAX_TEXT_CHARS``."""
    if isinstance(texts, str):
        raise InputError("texts must be a list of strings, got one string (wrap it: [text])")
    try:
        items = list(texts)
    except TypeError:
        raise InputError(f"texts must be a list of strings, got {type(texts).__name__}") from None
    if not items:
        raise InputError("no texts given")
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise InputError(f"texts[{i}] is {type(t).__name__}, expected a string")
        if len(t) > MAX_TEXT_CHARS:
            raise InputError(f"texts[{i}] has {len(t)} characters, over the limit of {MAX_TEXT_CHARS}")
    return items
