"""What checking every file of an artifact costs at ``runtime.load`` (``runtime.integrity``), measured side by side.

    python benchmarks/integrity_cost.py [--rounds 5] [--keep DIR]

1. A ViT-B-16 artifact (random weights, ``--precision fp32,fp16,int8``, with model.ort.onnx when export keeps it)
   is exported once; then ``runtime.load(check_sha256=True)`` and ``runtime.load(check_sha256=False)`` take turns
   (interleaved rounds; the page cache is warm for both, as on a serving host after the first load).
2. Files of the sizes a ViT-L/14 artifact holds (fp32 and fp16 graphs of its 303.97 M vision parameters + the text
   head, plus the ORT-optimized copy and int8) are written with random bytes and hashed by ``verify_artifact``'s own
   routine (``ownership.sha256_file`` on up to 4 threads), warm cache.

Prints one JSON object: per-size bytes, seconds of hashing and load seconds with / without the check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def export_vit_b16(out: Path) -> Path:
    import torch

    from clip_debias.exporters.onnx_export import export_onnx
    from clip_debias.toolchain.correct.classifier import plain_classifier
    from clip_debias.toolchain.models.loading import load_clip

    torch.manual_seed(0)
    clip = load_clip("ViT-B-16", random_weights=True)
    return export_onnx(plain_classifier(clip, ["landbird", "waterbird"]), out, precision="fp32,fp16,int8")


def hash_files(paths: list[Path]) -> float:
    from clip_debias.runtime.ownership import sha256_file

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1, len(paths)))) as pool:
        list(pool.map(sha256_file, paths))
    return time.perf_counter() - t0


def load_rounds(art: Path, rounds: int) -> dict[str, list[float]]:
    from clip_debias import runtime

    times: dict[str, list[float]] = {"checked": [], "unchecked": []}
    runtime.load(art, device="cpu")  # warm the page cache and onnxruntime
    for _ in range(rounds):
        for name, check in (("checked", True), ("unchecked", False)):
            t0 = time.perf_counter()
            runtime.load(art, device="cpu", check_sha256=check)
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keep", type=Path, default=None, help="Export the ViT-B-16 artifact here (kept).")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="integrity-"))
    art = args.keep or tmp / "vit-b-16"
    if not (art / "manifest.json").is_file():
        export_vit_b16(art)
    files = sorted(p for p in art.iterdir() if p.is_file())
    b16 = {"bytes": sum(p.stat().st_size for p in files), "files": {p.name: p.stat().st_size for p in files}}
    hash_files(files)  # warm
    b16["hash_s"] = statistics.median(hash_files(files) for _ in range(args.rounds))
    t = load_rounds(art, args.rounds)
    b16["load_checked_s"] = statistics.median(t["checked"])
    b16["load_unchecked_s"] = statistics.median(t["unchecked"])
    b16["paired_extra_s"] = statistics.median(c - u for c, u in zip(t["checked"], t["unchecked"]))

    params = 303_966_976 + 768 * 1024  # ViT-L/14 vision tower + a 2-class head's worth of text rows (upper bound)
    sizes = {"model.onnx": 4 * params, "model.ort.onnx": 4 * params, "model.fp16.onnx": 2 * params,
             "model.int8.onnx": params + params // 8}
    large = tmp / "vit-l-14-sized"
    large.mkdir()
    for name, n in sizes.items():
        with open(large / name, "wb") as f:
            for _ in range(n // (64 << 20)):
                f.write(os.urandom(64 << 20))
            f.write(os.urandom(n % (64 << 20)))
    lfiles = sorted(large.iterdir())
    hash_files(lfiles)  # warm
    l14 = {"bytes": sum(sizes.values()), "files": sizes,
           "hash_s": statistics.median(hash_files(lfiles) for _ in range(args.rounds)),
           "hash_fp32_only_s": statistics.median(hash_files([large / "model.onnx"]) for _ in range(args.rounds))}
    for p in lfiles:
        p.unlink()
    print(json.dumps({"python": sys.version.split()[0], "cpus": os.cpu_count(), "rounds": args.rounds,
                      "vit_b_16": b16, "vit_l_14_sized": l14}, indent=2))


if __name__ == "__main__":
    main()
