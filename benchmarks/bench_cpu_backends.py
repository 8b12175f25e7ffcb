"""Every CPU precision side by side, in one interleaved run: open_clip eager fp32, ONNX Runtime fp32 and int8,
OpenVINO fp32 and bf16 (ViT-B-16, random weights, plain zero-shot artifact exported with --precision fp32,int8).

    python benchmarks/bench_cpu_backends.py --runs 2          # the README's CPU table, twice
    python -m pytest benchmarks/bench_cpu_backends.py --benchmark-only -s

The rows take turns call by call (``exporters.bench``: the same code as ``clip-debias bench``), so load from other
processes hits them alike; speedup = median over rounds of time(open_clip eager) / time(row). Also printed: each
runtime row's max |logit diff| against ONNX Runtime fp32 on 8 seeded N(0, 1) images, the CPU's flags that the
precisions use (``runtime.cpu_features``), the load average, and the rows this machine cannot run (OpenVINO bf16 on a
CPU without bf16 arithmetic is refused, not emulated).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

MODEL = "ViT-B-16"
ROWS = ("open_clip eager", "ort fp32", "ort int8", "openvino fp32", "openvino bf16")


def export_artifact(out: Path) -> Path:
    import torch

    from clip_debias.exporters.onnx_export import export_onnx
    from clip_debias.toolchain.correct.classifier import plain_classifier
    from clip_debias.toolchain.models.loading import load_clip

    torch.manual_seed(0)
    clip = load_clip(MODEL, random_weights=True)
    return export_onnx(plain_classifier(clip, ["a", "b", "c"]), out, precision="fp32,int8", ort_optimize=False)


def logit_diffs(artifact: Path) -> dict[str, float]:
    """Max |logit diff| of each runtime configuration against ONNX Runtime fp32 (8 seeded images)."""
    from clip_debias import runtime
    from clip_debias.runtime.errors import ClipDebiasError

    x = np.random.default_rng(1).standard_normal((8, 3, 224, 224)).astype(np.float32)
    ref = runtime.load(artifact, backend="onnxruntime", device="cpu", use_ort_optimized=False).predict_logits(x)
    out = {}
    for label, kw in (("ort int8", {"backend": "onnxruntime", "precision": "int8"}),
                      ("openvino fp32", {"backend": "openvino"}), ("openvino bf16", {"backend": "openvino",
                                                                                    "precision": "bf16"})):
        try:
            out[label] = float(np.abs(runtime.load(artifact, device="cpu", **kw).predict_logits(x) - ref).max())
        except ClipDebiasError:
            pass
    return out


def table(artifact: Path, iters: int, warmup: int) -> str:
    from clip_debias.exporters.bench import bench
    from clip_debias.runtime import cpu_features

    left_out: list[str] = []
    t0 = time.strftime("%Y-%m-%d %H:%M")
    load0 = os.getloadavg()[0]
    rows = [r for r in bench(artifact, (1, 8), iters=iters, warmup=warmup, left_out=left_out) if r.backend in ROWS]
    diffs = logit_diffs(artifact)
    by = {(r.backend, r.batch): r for r in rows}
    lines = [f"{MODEL} random weights, {os.cpu_count()} cpus, started {t0}, load avg {load0:.1f} -> "
             f"{os.getloadavg()[0]:.1f}; {iters} rounds after {warmup} warm-up",
             cpu_features.describe(),
             "| backend | ms @ batch 1 | speedup | ms @ batch 8 | speedup | max abs logit diff vs ORT fp32 |",
             "|---|---|---|---|---|---|"]
    for label in ROWS:
        if (label, 1) not in by:
            continue
        b1, b8 = by[(label, 1)], by[(label, 8)]
        diff = "–" if label in ("open_clip eager", "ort fp32") else f"{diffs.get(label, float('nan')):.2g}"
        lines.append(f"| {label} | {b1.p50_ms:,.0f} | {b1.speedup:.2f}x | {b8.p50_ms:,.0f} | {b8.speedup:.2f}x | "
                     f"{diff} |")
    lines += [f"left out: {why}" for why in left_out]
    return "\n".join(lines)


def test_cpu_backends(benchmark: Any, tmp_path: Path) -> None:
    """Prints the table (uses ``benchmark`` so --benchmark-only keeps it)."""
    pytest.importorskip("pytest_benchmark")
    benchmark.pedantic(lambda: None, rounds=1)
    print("\n" + table(export_artifact(tmp_path / "art"), iters=10, warmup=3))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--artifact", type=Path, help="an existing artifact (default: export one to a temp folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        artifact = args.artifact or export_artifact(Path(tmp) / "art")
        for i in range(args.runs):
            print(f"\nrun {i + 1} of {args.runs}\n{table(artifact, args.iters, args.warmup)}", flush=True)


if __name__ == "__main__":
    main()
