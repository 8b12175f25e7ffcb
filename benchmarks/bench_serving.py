"""Serving and scale-out numbers for the README, on the shipped bias-lab model (zero-shot export) and lab data:

1. Triton start-up: the python-backend repository (``export triton --backend python``) in the real tritonserver of
   the pytriton wheel, from launch to ready (``tests/triton_server.py`` starts it; needs .venv-triton).
2. ``clip-debias serve`` under load: ``--requests`` single-image PNG requests from ``--threads`` client threads on
   127.0.0.1 (``serving.loadtest``), p50 / p95 latency and requests/s, against the runtime called directly in this
   process (one request at a time; and the same requests from the same number of threads, unbatched).
3. ``verify`` on the lab test split (``--n-test`` images): local engine vs ``--engine ray`` (a local Ray with
   ``--ray-cpus`` CPUs, 2 actors), wall time of each and Ray's start-up apart.

    python benchmarks/bench_serving.py [--n-test 1200] [--requests 200] [--threads 16] [--out DIR]

Servers bind 127.0.0.1; run it inside ``unshare -n`` (loopback only) where you can. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def lab_artifact_and_data(out: Path, n_test: int) -> tuple[Path, Path]:
    from clip_debias.exporters.onnx_export import export_onnx
    from clip_debias.toolchain.correct.classifier import plain_classifier
    from clip_debias.toolchain.lab import LAB_MODEL, LAB_WEIGHTS
    from clip_debias.toolchain.lab.data import CLASS_NAMES, make_lab_data
    from clip_debias.toolchain.models.loading import load_clip

    data = make_lab_data(out / "data", n_train=8, n_val=4, n_test=n_test, seed=0)
    clip = load_clip(LAB_MODEL, weights=LAB_WEIGHTS)
    art = export_onnx(plain_classifier(clip, list(CLASS_NAMES)), out / "artifact", ort_optimize=False)
    return art, data


def triton_startup(art: Path, out: Path, runs: int) -> dict:
    from triton_server import find_server_env, start_server

    from clip_debias.exporters.triton import export_triton

    env = find_server_env()
    if env is None:
        return {"skipped": "no Triton server environment (.venv-triton)"}
    export_triton(art, out / "repo", backend="python", max_batch=16, server_cores=2)
    times = []
    for k in range(runs):
        server = start_server(env, out / "repo", out / f"triton_run{k}")
        try:
            if not server.wait(300):
                return {"failed": server.output()[-2000:]}
            times.append(server.started_s)
        finally:
            server.stop()
    return {"ready_s": times}


def serve_load(art: Path, data: Path, requests: int, threads: int, out: Path) -> dict:
    from triton_server import free_port

    from clip_debias import runtime
    from clip_debias.serving.loadtest import Request, run_load

    paths = sorted(data.rglob("test_*.png"))[:requests]
    bodies = [Request(p.read_bytes(), "image/png") for p in paths]
    port, metrics_port = free_port(), free_port()
    log = out / "serve.log"
    argv = [sys.executable, "-c", "from clip_debias.toolchain.cli.app import main; main()", "serve", str(art),
            "--port", str(port), "--metrics-port", str(metrics_port), "--max-batch-size", "16",
            "--batch-wait-ms", "5", "--num-cpus", "2"]
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while "serving " not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.perf_counter() - t0 > 300:
                return {"failed": log.read_text(errors="replace")[-2000:]}
            time.sleep(0.5)
        ready_s = time.perf_counter() - t0
        run_load(f"http://127.0.0.1:{port}/classify", bodies[:threads], threads)  # warm-up
        result = run_load(f"http://127.0.0.1:{port}/classify", bodies, threads).summary()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()

    clf = runtime.load(art, device="cpu")
    clf.classify(paths[:threads])  # warm-up
    lat, t0 = [], time.perf_counter()
    for p in paths:
        t = time.perf_counter()
        clf.classify([p])
        lat.append((time.perf_counter() - t) * 1000.0)
    seq_wall = time.perf_counter() - t0

    def timed(p: Path) -> float:
        t = time.perf_counter()
        clf.classify([p])
        return (time.perf_counter() - t) * 1000.0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        thr = list(pool.map(timed, paths))
    thr_wall = time.perf_counter() - t0
    return {"serve": {**result, "ready_s": ready_s},
            "runtime_one_at_a_time": {"p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                                      "requests_per_s": len(paths) / seq_wall},
            f"runtime_{threads}_threads_unbatched": {"p50_ms": float(np.percentile(thr, 50)),
                                                     "p95_ms": float(np.percentile(thr, 95)),
                                                     "requests_per_s": len(paths) / thr_wall}}


def verify_engines(art: Path, data: Path, ray_cpus: int) -> dict:
    import ray

    from clip_debias.runtime.verify import verify
    from clip_debias.serving.ray_verify import RayEngine

    t0 = time.perf_counter()
    local = verify(art, "waterbirds", data, "test", device="cpu", batch_size=32, progress=False)
    local_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ray.init(num_cpus=ray_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    ray_start_s = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        with RayEngine(art, device="cpu", actors=2) as engine:
            remote = verify(art, "waterbirds", data, "test", batch_size=32, engine=engine)
        ray_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    same = all(getattr(local, k) == getattr(remote, k) for k in ("accuracy", "worst_group_accuracy", "groups", "n"))
    return {"images": local.n, "local_s": local_s, "local_model_p50_ms": local.latency_ms["p50"],
            "ray_start_s": ray_start_s, "ray_verify_s": ray_s, "ray_model_p50_ms": remote.latency_ms["p50"],
            "ray_per_actor": remote.backend["ray"]["per_actor"], "same_numbers": same,
            "accuracy": local.accuracy, "worst_group_accuracy": local.worst_group_accuracy}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-test", type=int, default=1200)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--triton-runs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_serving_"))
    art, data = lab_artifact_and_data(out, args.n_test)
    doc = {"triton": triton_startup(art, out, args.triton_runs),
           "serve": serve_load(art, data, args.requests, args.threads, out),
           "verify": verify_engines(art, data, args.ray_cpus)}
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
