"""Disk bytes per image and peak memory of ``decompose`` (every layer) and ``locate`` on it, for two split sizes.

    python benchmarks/cache_memory.py --model ViT-B-16 --sizes 32,128

Each step runs in a fresh process (the ``clip-debias`` CLI, random weights, CPU) that reports its own peak resident
set size (``ru_maxrss``); a process that only loads the model gives the baseline. The cache is streamed to disk and
read in pieces, so neither step's peak should grow with the number of images beyond the [N, L, H] margins and [N, D]
embeddings; the file grows by L*H*D*4 bytes per image. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PEAK = ("import resource, runpy, sys; sys.argv = {argv!r}; "
        "code = 0\n"
        "try:\n    runpy.run_module('clip_debias.toolchain.cli.app', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code or 0\n"
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")
BASELINE = ("import resource, sys; from clip_debias.toolchain.models.loading import load_clip; "
            "load_clip({model!r}, random_weights=True); "
            "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")


def peak_mib(code: str) -> float:
    """Run ``code`` in a fresh interpreter; its peak RSS in MiB (raises when it fails)."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    kb = [int(line.split()[1]) for line in res.stderr.splitlines() if line.startswith("PEAK_KB")]
    return kb[-1] / 1024


def make_csv(root: Path, n: int, size: int) -> Path:
    """n random RGB images with labels y = g // 2 and groups g = i % 4, all in split 'train'."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["path,label,group,split"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"im{i}.png")
        rows.append(f"im{i}.png,{(i % 4) // 2},{i % 4},train")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "data.csv"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--sizes", default="32,128")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    out: dict = {"model": args.model, "baseline_load_model_mib": round(peak_mib(BASELINE.format(model=args.model)), 1),
                 "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            data = make_csv(Path(tmp) / f"data{n}", n, 224)
            cache = Path(tmp) / f"c{n}.safetensors"
            dec = ["clip-debias", "decompose", "--model", args.model, "--random-weights", "--dataset", "csv",
                   "--data", str(data),
                   "--split", "train", "--out", str(cache), "--batch-size", str(args.batch_size), "--classes", "a,b"]
            loc = ["clip-debias", "locate", str(cache), "--model", args.model, "--random-weights",
                   "--out", str(Path(tmp) / f"p{n}.json"),
                   "--minority-groups", "1,2", "--classes", "a,b"]
            run = {"images": n, "decompose_peak_mib": round(peak_mib(PEAK.format(argv=dec)), 1)}
            run["locate_peak_mib"] = round(peak_mib(PEAK.format(argv=loc)), 1)
            from clip_debias.toolchain.decompose.cache import load_cache

            c = load_cache(cache)
            run.update(file_bytes=cache.stat().st_size, head_terms_bytes_per_image=c.heads.row_bytes(),
                       shape=list(c.heads.shape))
            out["runs"].append(run)
    a, b = out["runs"][0], out["runs"][-1]
    if b["images"] > a["images"]:
        out["file_bytes_per_image"] = round((b["file_bytes"] - a["file_bytes"]) / (b["images"] - a["images"]), 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
