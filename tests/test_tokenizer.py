"""``--tokenizer FILE|DIR``: a local tokenizer.json (built here with the tokenizers library) stands in for a model's
Hugging Face hub tokenizer; every failure is one line naming the option."""

from __future__ import annotations

import pytest
import torch

from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.tokenizer import UnavailableTokenizer, model_tokenizer

VOCAB = ["<pad>", "</s>", "<unk>", "a", "photo", "of", "water", "land", "bird"]


def write_tokenizer(folder, pad: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(VOCAB if pad else VOCAB[1:])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def test_local_tokenizer_pads_truncates_and_cleans(tmp_path):
    file = write_tokenizer(tmp_path / "tok")
    for source in (file, file.parent):  # the file, or the folder holding it
        tokenize = model_tokenizer("ViT-B-16-SigLIP", source)  # context 64, 'canonicalize' cleaning
        ids = tokenize(["A photo of WATER!", "bird " * 100])
        assert ids.dtype == torch.long and ids.shape == (2, 64)
        assert ids[0, :5].tolist() == [3, 4, 5, 6, 1]  # lower-cased, punctuation removed, then </s>
        assert (ids[0, 5:] == 0).all()  # padded with <pad>
        assert ids[1, -1].item() == 1 and (ids[1, :-1] == 8).all()  # truncated to 64 with its </s> kept


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.json", "no such file"),
    (lambda p: (p / "bad.json").write_text("{}") and p / "bad.json", "is not a tokenizers-library tokenizer.json"),
    (lambda p: write_tokenizer(p / "nopad", pad=False), "has no padding token"),
])
def test_local_tokenizer_errors_are_one_line(tmp_path, make, message):
    with pytest.raises(ClipDebiasError, match=message) as e:
        model_tokenizer("ViT-B-16-SigLIP", make(tmp_path))
    assert str(e.value).startswith("--tokenizer ") and "\n" not in str(e.value)


def test_hub_tokenizer_offline_fails_only_when_used():
    tokenize = model_tokenizer("ViT-B-16-SigLIP")
    if not isinstance(tokenize, UnavailableTokenizer):
        pytest.skip("the hub tokenizer loaded here (transformers and the hub reachable)")
    with pytest.raises(ClipDebiasError, match="pass --tokenizer FILE") as e:
        tokenize(["a photo"])
    assert "timm/ViT-B-16-SigLIP" in str(e.value) and "\n" not in str(e.value)
