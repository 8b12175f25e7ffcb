"""Real-size timm towers through build and ONNX export (issue 28): ``ViT-B-16-SigLIP`` (timm ViT, MAP pool, the
Hugging Face tokenizer replaced by a local one) and ``PE-Core-B-16`` (timm Eva: rotary embeddings, MAP pool), random
weights with random non-zero biases and norm weights, two ablated heads and one projected head baked in: the fp32
graph's logits equal torch's within 1e-4 of the largest logit at batch 1 and 2 (the graph traced at another batch).

The same code paths run at lab size in tests/test_timm_build.py (fp16 / int8 gates, verify); these two are the
configs people deploy, at 224 px (about 30 s each on 2 cores)."""

from __future__ import annotations

import pytest

from clip_debias.exporters.onnx_export import export_onnx
from clip_debias.toolchain.models.loading import load_clip
from test_export import assert_parity, edited_classifier
from test_timm_towers import randomize
from test_tokenizer import write_tokenizer

pytest.importorskip("tokenizers")


@pytest.mark.parametrize("name, edits", [
    ("ViT-B-16-SigLIP", ([[11, 3], [6, 0]], [[10, 5]])),
    ("PE-Core-B-16", ([[11, 3], [6, 0]], [[10, 5]])),
])
def test_real_size_timm_tower_onnx_equals_torch(name, edits, tmp_path):
    hub = name.endswith("SigLIP")  # its tokenizer comes from the hub: a local one stands in
    clip = load_clip(name, random_weights=True, tokenizer=write_tokenizer(tmp_path / "tok") if hub else None)
    randomize(clip.model, seed=5)
    model = edited_classifier(clip, *edits)
    art = export_onnx(model, tmp_path / "art", precision="fp32", ort_optimize=False)
    worst = assert_parity(model, art / "model.onnx", batches=(1, 2))
    print(f"\n{name}: fp32 ONNX vs torch, max |logit diff| {worst:.2e}")
