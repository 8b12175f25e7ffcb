"""The text tower in the artifact: ``text.onnx`` (token ids -> unit-norm text embedding) and ``tokenizer.json``.

Graph: ``tokens`` int64 [batch, L] (L = the model's context length) -> ``text_embedding`` float32 [batch, D], the
trace of open_clip's ``encode_text(tokens, normalize=True)``: token + positional embeddings, the causal
transformer, ``ln_final``, pooling at the EOT token (open_clip's ``argmax`` pooling: the position of the largest
id, ``<end_of_text>`` = 49407 being the largest), ``text_projection``, L2 normalization.

Tokenizer: open_clip's ``SimpleTokenizer`` converted to a ``tokenizers`` ``tokenizer.json``; what ``tokenizers``
cannot express (ftfy, html unescaping) runs in ``runtime.tokenizer.clean_text`` (see there).

Gates (seeded prompts of every length up to the context, batch ``len(GATE_TEXTS)``): the graph's embeddings E
against torch's E_ref with ``runtime.precision_gate.compare``, taking as "logits" the prompt-vs-prompt similarity
s * E @ E_ref^T (s = the model's logit scale; the diagonal is each prompt's own class): fp32 max |e - e_ref| <= 1e-5,
fp16 min cos >= 0.999, int8 min cos >= 0.995, logit tolerances as for the image graph.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.precision_gate import GateResult, compare
from clip_debias.runtime.text import TEXT_INPUT, TEXT_OUTPUT
from clip_debias.runtime.tokenizer import TOKENIZER_NAME

log = logging.getLogger("clip_debias.export")

TEXT_FILES = {"fp32": "text.onnx", "fp16": "text.fp16.onnx", "int8": "text.int8.onnx"}
# the weight MatMuls of open_clip's text transformer blocks as the TorchScript exporter names them
TEXT_INT8_PATTERN = r"(?:^|/)resblocks\.\d+/(?:attn|mlp/c_fc|mlp/c_proj)/"
GATE_TEXTS = ("a photo of a landbird.", "a photo of a waterbird on a lake.", "",
              "an extremely long caption that goes on and on " * 8, "😀 Café & 'naïve' bird, 2024!")


def tokenizer_json(tok: Any) -> str:
    """open_clip's ``SimpleTokenizer`` ``tok`` as a ``tokenizers`` tokenizer.json string (module docstring)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if type(tok).__name__ != "SimpleTokenizer" or getattr(tok, "reduction_fn", None) is not None or \
            getattr(tok.clean_fn, "__name__", "") != "_clean_lower":
        raise ClipDebiasError(f"the model's tokenizer ({type(tok).__name__}) is not open_clip's SimpleTokenizer with "
                              "its default cleaning; export with --no-text")
    merges = [tuple(k) for k, _ in sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])]
    sot, eot = "<start_of_text>", "<end_of_text>"
    bpe = models.BPE(vocab=dict(tok.encoder), merges=merges, end_of_word_suffix="</w>", fuse_unk=False)
    t = Tokenizer(bpe)
    t.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                         normalizers.Strip(), normalizers.Lowercase()])
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), "removed",
                             invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.BPEDecoder(suffix="</w>")])
    t.add_special_tokens([AddedToken(sot, normalized=True), AddedToken(eot, normalized=True)])
    t.post_processor = processors.TemplateProcessing(single=f"{sot} $A {eot}",
                                                     special_tokens=[(sot, tok.sot_token_id), (eot, tok.eot_token_id)])
    t.enable_truncation(max_length=int(tok.context_length))
    t.enable_padding(length=int(tok.context_length), pad_id=0, pad_token=tok.decoder[0])
    return t.to_str()


class TextEncoder:
    """``tokens -> model.encode_text(tokens, normalize=True)`` as a module to trace (built lazily: torch)."""

    @staticmethod
    def of(model: Any) -> Any:
        import torch

        class _Text(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.clip = model

            def forward(self, tokens: torch.Tensor) -> torch.Tensor:
                return self.clip.encode_text(tokens, normalize=True)

        return _Text().eval()


def text_templates(spec: Any) -> list[str]:
    """The templates of a built model's head, as ``build`` chose them: its options', else its plan's, else the
    default template (``toolchain.prompts.text.DEFAULT_TEMPLATES``)."""
    from clip_debias.toolchain.prompts.text import DEFAULT_TEMPLATES

    plan = spec.plan or {}
    return list((plan.get("options") or {}).get("templates") or plan.get("templates") or DEFAULT_TEMPLATES)


def resolve_text_clip(identity: dict[str, Any], weights: str | Path | None = None) -> Any | None:
    """The open_clip model whose text tower goes with a built model of ``identity`` (the model directory holds the
    image tower only): its open_clip tag, the package's shipped weights or ``weights`` (a file whose sha256 must be
    the identity's), or a file of that sha256 in the weights cache. None for a random-weight model (no text tower
    matches it); one ``ClipDebiasError`` line when the weights cannot be found."""
    from clip_debias.toolchain.models.checkpoint import cache_dir
    from clip_debias.toolchain.models.loading import load_clip, sha256_file
    from clip_debias.toolchain.models.shipped import shipped_weights

    name, tag, sha = identity.get("name"), identity.get("pretrained"), identity.get("weights_sha256")
    if tag:
        return load_clip(name, pretrained=tag)
    if not sha:
        if weights is not None:
            raise ClipDebiasError(f"--text-weights {weights}: the model has random weights; no text tower goes with it")
        return None
    candidates = [Path(weights)] if weights is not None else [shipped_weights(name), cache_dir() / f"{sha}.safetensors"]
    for path in candidates:
        if path is not None and path.is_file() and sha256_file(path) == sha:
            return load_clip(name, weights=path)
    if weights is not None:
        raise ClipDebiasError(f"--text-weights {weights}: sha256 differs from the model's weights ({sha[:12]}...)")
    raise ClipDebiasError(f"the text tower of {name}: its weights file ({identity.get('weights_file')}, sha256 "
                          f"{sha[:12]}...) was not found; pass it with --text-weights FILE, or --no-text")


def _gate(path: Path, precision: str, tokens: np.ndarray, ref: np.ndarray, scale: float) -> GateResult:
    from clip_debias.runtime.backends.ort import ort_session

    emb = ort_session(path, precision).run([TEXT_OUTPUT], {TEXT_INPUT: tokens})[0]
    res = compare(precision, scale * emb @ ref.T, emb, scale * ref @ ref.T, ref)
    log.info("text parity gate %s against torch: max |embedding diff| %.3g, min cosine %.5f -- %s", precision,
             res.max_embedding_diff, res.min_cosine, "pass" if res.passed else "FAIL")
    if not res.passed:
        raise ClipDebiasError(f"{path.name}: {precision} text parity gate failed against the torch model "
                              f"({res.reason}); artifact not written")
    return res


def export_text(clip: Any, tmp: Path, wanted: Sequence[str], opset: int, templates: Sequence[str],
                gates: list[GateResult], graphs: Any) -> tuple[list[Any], Any]:
    """Write tokenizer.json and the text graphs of ``wanted`` precisions into ``tmp`` (fp32 always traced and gated,
    kept when listed), each gated against torch; returns (their manifest ``files`` entries, the manifest's
    ``TextTower``). Gate results are appended to ``gates``. ``graphs``: the module with the image graph's tools
    (``exporters.onnx_export``: ``export_module_onnx``, ``convert_fp16``, ``quantize_int8``), passed in by it."""
    import torch

    from clip_debias.exporters.artifact import model_file
    from clip_debias.runtime.manifest import TextTower

    export_module_onnx, convert_fp16, quantize_int8 = graphs.export_module_onnx, graphs.convert_fp16, \
        graphs.quantize_int8

    tok = clip.tokenizer
    (tmp / TOKENIZER_NAME).write_text(tokenizer_json(tok))
    module = TextEncoder.of(clip.model.float().cpu())
    tokens = tok(list(GATE_TEXTS))
    with torch.no_grad():
        ref = module(tokens).numpy()
    scale = float(clip.model.logit_scale.detach().exp())
    fp32 = export_module_onnx(module, tokens[:2], tmp / TEXT_FILES["fp32"], opset, output_names=(TEXT_OUTPUT,),
                              input_name=TEXT_INPUT)
    x = tokens.numpy()
    gates.append(_gate(fp32, "fp32", x, ref, scale))
    files = [model_file(tmp, TOKENIZER_NAME, "tokenizer", "fp32")]
    if "fp32" in wanted:
        files.append(model_file(tmp, TEXT_FILES["fp32"], "text-onnx", "fp32"))
    if "fp16" in wanted:
        gates.append(_gate(convert_fp16(fp32, tmp / TEXT_FILES["fp16"]), "fp16", x, ref, scale))
        files.append(model_file(tmp, TEXT_FILES["fp16"], "text-onnx", "fp16"))
    if "int8" in wanted:
        gates.append(_gate(quantize_int8(fp32, tmp / TEXT_FILES["int8"], TEXT_INT8_PATTERN), "int8", x, ref, scale))
        files.append(model_file(tmp, TEXT_FILES["int8"], "text-onnx", "int8"))
    if "fp32" not in wanted:
        fp32.unlink()
    record = TextTower(context_length=int(tok.context_length), embed_dim=int(ref.shape[1]), logit_scale=scale,
                       templates=list(templates), sot_id=int(tok.sot_token_id), eot_id=int(tok.eot_token_id))
    return files, record


def text_clip_for(model_dir: str | Path, weights: str | Path | None = None) -> Any | None:
    """``export onnx --text``: the open_clip model of the text tower of the built model in ``model_dir``
    (``resolve_text_clip`` on its config.json identity); None, with a warning, for a random-weight model."""
    from clip_debias.runtime.schema import read_json
    from clip_debias.toolchain.correct.classifier import CONFIG_NAME, CONFIG_WHAT

    identity = read_json(Path(model_dir) / CONFIG_NAME, CONFIG_WHAT, ClipDebiasError).get("identity") or {}
    clip = resolve_text_clip(identity, weights)
    if clip is None:
        log.warning("%s: random-weight model, no text tower exported (its image tower has no matching text tower)",
                    model_dir)
    return clip
