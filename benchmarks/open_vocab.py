"""Open-vocabulary speed (issue 29), one run on one machine:

    python benchmarks/open_vocab.py --out /tmp/open-vocab [--rows 10000,1000000]

1. Text encoding, texts/s: random-weight ViT-B-32's text tower exported to text.onnx (fp32) and run by the runtime
   (``runtime.text.TextModel``: tokenizer.json + ONNX Runtime) vs open_clip eager (its tokenizer + ``encode_text
   (normalize=True)``, torch), 64 prompts per call, the two taking turns call by call (``exporters.timing``).
2. The text graph beside the image graph: file size and batch-1 latency of text.onnx and model.onnx (ViT-B-32,
   fp32, ONNX Runtime CPU), interleaved.
3. Index build, images/s: ``runtime.search.build_index`` of 256 PNG files (224x224) with the ViT-B-32 artifact
   (decode + preprocess + image graph + write).
4. Query latency, ms per query: synthetic unit-norm embeddings (D = 512) of each row count, 20 random queries, k = 20,
   exact numpy search (``exact_top_k``: float32 pass + float64 rescoring) and FAISS flat (when installed).
Results: printed and ``OUT/open-vocab.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def _per_call_ms(fn, calls: int) -> float:  # noqa: ANN001
    fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", default="10000,1000000", help="Row counts of the query-latency indexes.")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from clip_debias import runtime
    from clip_debias.exporters.onnx_export import export_onnx
    from clip_debias.exporters.timing import interleaved
    from clip_debias.runtime.backends.ort import ort_session
    from clip_debias.runtime.search import build_index, exact_top_k, faiss_flat, import_faiss
    from clip_debias.toolchain.correct.classifier import plain_classifier
    from clip_debias.toolchain.models.loading import load_clip

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"cpu": _cpu(), "load": os.getloadavg()}
    torch.manual_seed(0)
    clip = load_clip("ViT-B-32", random_weights=True)
    art = out / "artifact"
    if not (art / "manifest.json").is_file():
        export_onnx(plain_classifier(clip, ["landbird", "waterbird"]), art, ort_optimize=False, text_clip=clip)
    clf = runtime.load(art, device="cpu")

    texts = [f"a photo of a {w} number {i}." for i, w in enumerate(["bird", "dog", "boat", "tree"] * 16)]
    with torch.no_grad():
        eager = lambda: clip.model.encode_text(clip.tokenizer(texts), normalize=True)  # noqa: E731
        r = interleaved(eager, lambda: clf.encode_text(texts), args.rounds)
    result["text_encoding"] = {"texts_per_call": len(texts), "open_clip_eager_texts_per_s": len(texts) /
                               (r["base_median_ms"] / 1e3), "ort_fp32_texts_per_s": len(texts) /
                               (r["other_median_ms"] / 1e3), "median_speedup": r["median_speedup"]}

    text_s, image_s = ort_session(art / "text.onnx"), ort_session(art / "model.onnx")
    tokens = clf.tokenize(["a photo of a bird."])
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    r = interleaved(lambda: image_s.run(None, {"image": image}),
                    lambda: text_s.run(None, {"tokens": tokens}), args.rounds * 3)
    result["graphs"] = {"model.onnx": {"MB": (art / "model.onnx").stat().st_size / 1e6,
                                       "batch1_ms": r["base_median_ms"]},
                        "text.onnx": {"MB": (art / "text.onnx").stat().st_size / 1e6,
                                      "batch1_ms": r["other_median_ms"]}}

    folder = out / "images"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(256):
        p = folder / f"{i:03d}.png"
        if not p.is_file():
            Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    t = time.perf_counter()
    build_index(clf, paths, [p.name for p in paths], out / "index", batch_size=32)
    result["index_build_images_per_s"] = len(paths) / (time.perf_counter() - t)

    try:
        import_faiss()
        has_faiss = True
    except Exception:  # noqa: BLE001 (InputError: not installed)
        has_faiss = False
    latency = {}
    for n in (int(x) for x in args.rows.split(",")):
        emb = rng.standard_normal((n, 512), dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        queries = rng.standard_normal((20, 512)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        row = {"numpy_exact_ms": _per_call_ms(lambda: exact_top_k(emb, queries, 20), 3) / len(queries)}
        if has_faiss:
            index = faiss_flat(emb)
            row["faiss_flat_ms"] = _per_call_ms(lambda: index.search(queries, 20), 3) / len(queries)
            del index
        latency[n] = row
        del emb
        print(n, row, flush=True)
    result["query_latency_per_query"] = latency
    (out / "open-vocab.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
