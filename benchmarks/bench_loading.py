"""What one model load costs a command: ``load_clip(name, weights=FILE)`` in a fresh process, per checkpoint format.

Run explicitly (not collected by pytest)::

    .venv/bin/python benchmarks/bench_loading.py [--model ViT-B-32] [--rounds 3] [--baseline SRC]

Writes a random-weight checkpoint of ``--model`` in three formats into ``--workdir`` (once): an open_clip ``.pt`` state
dict (``torch.save``), a ``.safetensors`` file, and an OpenAI-style TorchScript archive (a scripted module holding the
same tensors plus OpenAI's ``input_resolution`` / ``context_length`` / ``vocab_size`` entries). Then, round-robin,
each (code, file) pair runs in a fresh Python process that times the imports and ``load_clip`` separately and reports
its peak resident memory. The weights cache (``CLIP_DEBIAS_CACHE_DIR``) is a fresh empty folder for the "cold" rows
and one shared, already filled folder for the "warm" rows. ``--baseline SRC``: also run an older checkout's code
(a folder holding its ``runtime/``, ``exporters/``, ``toolchain/``) in the same rounds, interleaved with this one.
The files stay in the OS page cache between rounds (23 GB RAM here): a first read from a cold disk costs more.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SNIPPET = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch, open_clip
from clip_debias.toolchain.models.loading import load_clip
t1 = time.perf_counter()
clip = load_clip(sys.argv[1], weights=sys.argv[2])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_checkpoints(model: str, workdir: Path) -> dict[str, Path]:
    """The three files of one random-weight ``model`` (made once; reused when present)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from clip_debias.toolchain.models.checkpoint import save_torchscript_state_dict

    files = {"open_clip .pt": workdir / f"{model}.pt", "safetensors": workdir / f"{model}.safetensors",
             "OpenAI TorchScript .pt": workdir / f"{model}-openai-jit.pt"}
    if all(p.is_file() for p in files.values()):
        return files
    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in open_clip.create_model(model).state_dict().items()}
    torch.save(sd, files["open_clip .pt"])
    save_file(sd, str(files["safetensors"]))
    extra = {"input_resolution": torch.tensor(224), "context_length": torch.tensor(77),
             "vocab_size": torch.tensor(49408)}
    save_torchscript_state_dict({**sd, **extra}, files["OpenAI TorchScript .pt"])
    return files


def run_once(python: list[str], env: dict[str, str], model: str, path: Path) -> dict[str, float]:
    out = subprocess.run([*python, "-c", SNIPPET, model, str(path)], env=env, capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"load failed for {path}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def baseline_python(src: Path, shim: Path) -> tuple[list[str], dict[str, str]]:
    """The base interpreter (``sys._base_executable``: torch and open_clip, no clip_debias) with ``src``'s folders
    importable as ``clip_debias.*`` through symlinks in ``shim`` (no install)."""
    pkg = shim / "clip_debias"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in ("runtime", "exporters", "toolchain"):
        link = pkg / name
        if not link.exists():
            link.symlink_to(src.resolve() / name)
    return [sys._base_executable], {**os.environ, "PYTHONPATH": str(shim)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "clip-debias-bench-loading")
    ap.add_argument("--baseline", type=Path, help="an older checkout (runtime/, exporters/, toolchain/) to compare")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    files = make_checkpoints(args.model, args.workdir)
    for label, p in files.items():
        print(f"{label}: {p} ({p.stat().st_size / 1e6:.0f} MB)")

    warm_cache = args.workdir / "cache-warm"
    codes: dict[str, tuple[list[str], dict[str, str]]] = {"this checkout": ([sys.executable], dict(os.environ))}
    if args.baseline:
        codes["baseline"] = baseline_python(args.baseline, args.workdir / "baseline-shim")
    rows: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for r in range(args.rounds + 1):  # round 0 fills the warm cache and is not counted
        for code, (py, env) in codes.items():
            for label, path in files.items():
                for cache in (("cold", "warm") if code == "this checkout" else ("-",)):
                    with tempfile.TemporaryDirectory(dir=args.workdir) as cold:
                        run_env = {**env, "CLIP_DEBIAS_CACHE_DIR": cold if cache == "cold" else str(warm_cache)}
                        res = run_once(py, run_env, args.model, path)
                    if r:
                        rows.setdefault((code, label, cache), []).append(res)
    print(f"\n{args.model}, {args.rounds} rounds, median (min-max), each a fresh process:")
    print(f"{'code':<14} {'file':<24} {'cache':<5} {'load_clip s':>18} {'imports s':>10} {'peak RSS MB':>12}")
    for (code, label, cache), rs in rows.items():
        load = [x["load_s"] for x in rs]
        print(f"{code:<14} {label:<24} {cache:<5} {statistics.median(load):>7.2f} "
              f"({min(load):.2f}-{max(load):.2f}) {statistics.median(x['import_s'] for x in rs):>10.2f} "
              f"{statistics.median(x['peak_rss_mb'] for x in rs):>12.0f}")


if __name__ == "__main__":
    main()
