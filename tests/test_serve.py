"""``clip-debias serve --engine ray``: the real command in a subprocess (Ray Serve on a local Ray, 2 CPUs), on 127.0.0.1
with free ports, under a bounded load: 200 requests from 16 client threads (184 single images as raw PNG bytes, 16 JSON
batches of 3 base64 images). Every answer must equal the runtime's own ``Classifier.classify`` on the same image file
(labels, indices and probabilities, exactly) and carry the artifact's digest; nothing is dropped; Ray's Prometheus
metrics show model calls of more than one image. The latency / throughput numbers are printed (``-s``), never asserted.
Needs the ``[ray-serve]`` extra (skipped without Ray Serve). The default engine: tests/test_server.py.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_debias import runtime
from clip_debias.serving import http_api
from clip_debias.serving.loadtest import Request, run_load, send

from runtime_fixtures import build_artifact
from triton_server import free_port

pytest.importorskip("ray.serve", reason="Ray Serve not installed (pip install '.[ray-serve]')")

N_REQUESTS, N_THREADS, N_JSON, JSON_IMAGES = 200, 16, 16, 3
READY_TIMEOUT_S = 240  # a local Ray's start on a loaded 2-core machine
MAX_BATCH = 16


def _png(rng: np.random.Generator) -> bytes:
    h, w = (int(v) for v in rng.integers(20, 48, size=2))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    """(artifact, requests, the image files of each request on disk)."""
    tmp = tmp_path_factory.mktemp("serve")
    art = build_artifact(tmp / "art", fp16=False)
    rng = np.random.default_rng(0)
    requests, files = [], []
    for i in range(N_REQUESTS):
        n = JSON_IMAGES if i % (N_REQUESTS // N_JSON) == 0 and i // (N_REQUESTS // N_JSON) < N_JSON else 1
        images = [_png(rng) for _ in range(n)]
        paths = []
        for k, data in enumerate(images):
            paths.append(tmp / f"req{i}_{k}.png")
            paths[-1].write_bytes(data)
        files.append(paths)
        if n == 1:
            requests.append(Request(images[0], "image/png"))
        else:
            body = json.dumps({"images": [base64.b64encode(d).decode() for d in images]}).encode()
            requests.append(Request(body, "application/json"))
    assert sum(len(f) > 1 for f in files) == N_JSON
    return art, requests, files


@pytest.fixture(scope="module")
def server(workload, tmp_path_factory):
    """``clip-debias serve`` in a subprocess; stopped with SIGINT (then SIGKILL) after the module."""
    art = workload[0]
    port, metrics_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    argv = [sys.executable, "-c", "from clip_debias.toolchain.cli.app import main; main()", "serve", str(art.path),
            "--engine", "ray", "--port", str(port), "--metrics-port", str(metrics_port), "--max-batch-size",
            str(MAX_BATCH),
            "--batch-wait-ms", "20", "--num-cpus", "2"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < READY_TIMEOUT_S and proc.poll() is None:
            if "serving " in log.read_text(errors="replace"):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"clip-debias serve did not start:\n{log.read_text(errors='replace')[-4000:]}")
        print(f"\nclip-debias serve ready in {time.perf_counter() - t0:.1f} s (local Ray start included)")
        yield base, metrics_port, proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _batch_metrics(metrics_port: int, images: int, timeout_s: float = 60.0) -> tuple[float, float, float]:
    """(model calls, images in them, calls of exactly one image) from Ray's Prometheus endpoint, once every image
    has been reported (bounded wait: Ray exports metrics every few seconds). Counts and buckets are exact in Ray's
    export; a histogram's _sum is not (bucket midpoints), so the images come from their own counter."""
    t0 = time.perf_counter()
    calls = total = ones = 0.0
    while time.perf_counter() - t0 < timeout_s:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()

        def value(pattern: str) -> float:
            return sum(float(v) for v in re.findall(rf"^{pattern}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M))

        calls, total = value("ray_clip_debias_batch_size_count"), value("ray_clip_debias_images(?:_total)?")
        ones = sum(float(v) for v in re.findall(
            r'^ray_clip_debias_batch_size_bucket\{[^}]*le="1(?:\.0)?"[^}]*\} ([0-9.e+]+)$', text, re.M))
        if total >= images:
            break
        time.sleep(1.0)
    return calls, total, ones


def test_load_every_answer_equals_the_runtime_and_batches_form(workload, server):
    art, requests, files = workload
    base, metrics_port, _, _ = server
    clf = runtime.load(art.path, device="cpu")
    digest = clf.digest

    status, health = _get(f"{base}/healthz")
    assert status == 200 and health == {"status": "ok", "artifact_digest": digest}

    result = run_load(f"{base}/classify", requests, threads=N_THREADS, timeout_s=60, deadline_s=600)
    assert [a.status for a in result.answers] == [200] * N_REQUESTS, [a.error for a in result.answers if a.error]
    for answer, paths in zip(result.answers, files):
        expected = clf.classify(paths)
        assert answer.doc["artifact_digest"] == digest and answer.doc["class_names"] == clf.class_names
        assert answer.doc["predictions"] == [
            {"label": p.label, "index": p.index, "probabilities": [float(v) for v in p.probabilities]}
            for p in expected]

    images = sum(len(f) for f in files)
    calls, total, ones = _batch_metrics(metrics_port, images)
    assert total == images  # every image went through exactly one model call
    assert calls < images and ones < calls  # model calls of more than one image happened

    # the same requests through the runtime directly, one request at a time (what a service without batching does)
    t0, direct = time.perf_counter(), []
    for paths in files:
        t = time.perf_counter()
        clf.classify(paths)
        direct.append((time.perf_counter() - t) * 1000.0)
    direct_wall = time.perf_counter() - t0
    s = result.summary()
    print(f"\nserve: {s['ok']}/{s['requests']} answered, {N_THREADS} client threads, p50 {s['p50_ms']:.1f} ms, "
          f"p95 {s['p95_ms']:.1f} ms, {s['requests_per_s']:.1f} requests/s; {calls:.0f} model calls for {images} "
          f"images (mean batch {images / calls:.2f}); runtime directly, one request at a time: p50 "
          f"{np.percentile(direct, 50):.2f} ms, p95 {np.percentile(direct, 95):.2f} ms, "
          f"{len(files) / direct_wall:.1f} requests/s")


def test_bad_requests_get_one_line_errors(server):
    base = server[0]
    bad = send(f"{base}/classify", Request(b"not an image", "image/png"), 30)
    assert bad.status == 400 and bad.doc["error"].startswith("request image: cannot read image")
    bad_json = send(f"{base}/classify", Request(b"{nope", "application/json"), 30)
    assert bad_json.status == 400 and bad_json.doc["error"].startswith("request body is not valid JSON")
    bad_b64 = send(f"{base}/classify", Request(b'{"images": ["***"]}', "application/json"), 30)
    assert bad_b64.status == 400 and bad_b64.doc == {"error": "JSON body: field 'images[0]': not valid base64"}
    too_many = json.dumps({"images": ["AA=="] * (http_api.MAX_IMAGES + 1)}).encode()
    over = send(f"{base}/classify", Request(too_many, "application/json"), 30)
    assert over.status == 400 and f"at most {http_api.MAX_IMAGES} per request" in over.doc["error"]
    assert _get(f"{base}/classify")[0] == 405
    assert _get(f"{base}/nothing-here")[0] == 404


def test_a_replica_restarted_on_a_swapped_artifact_never_answers_from_it(workload, server, tmp_path):
    """The issue's failure: the artifact swapped on disk for another valid one, then the replica killed. Ray restarts
    it; pinned to the digest the server announced, it fails to load with the reason, the CLI prints a warning with
    that reason, and no answer comes from the other model. The artifact is put back afterwards."""
    from proc_info import process_tree

    base, _, proc, log = server
    art = workload[0].path
    digest = runtime.load(art, device="cpu").digest
    other = build_artifact(tmp_path / "other", fp16=False, seed=1).path
    aside = tmp_path / "aside"
    art.rename(aside)
    shutil.copytree(other, art)
    try:
        replicas = [p for p in process_tree(proc.pid)
                    if b"ServeReplica" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert replicas, "no Ray Serve replica process found"
        for p in replicas:
            os.kill(p, signal.SIGKILL)
        t0, answers = time.monotonic(), []
        while time.monotonic() - t0 < 240 and "differs from the expected" not in log.read_text(errors="replace"):
            answers.append(send(f"{base}/classify", Request(_png(np.random.default_rng(0)), "image/png"), 5))
            time.sleep(1.0)
        warning = [ln for ln in log.read_text(errors="replace").splitlines()
                   if ln.startswith("warning: Ray Serve application") and "differs from the expected" in ln]
        assert warning, log.read_text(errors="replace")[-3000:]
        assert all(a.doc["artifact_digest"] == digest for a in answers if a.status == 200)
        print(f"\n{warning[0]}\n({sum(a.status == 200 for a in answers)} answers from the pinned model, "
              f"{sum(a.status != 200 for a in answers)} refused or timed out while the replica could not start)")
    finally:
        shutil.rmtree(art)
        aside.rename(art)


def test_stops_on_sigint(server):
    """Last in the module: SIGINT ends the command (Serve and Ray shut down) with exit code 0."""
    proc, log = server[2], server[3]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 0, log.read_text(errors="replace")[-3000:]
    assert log.read_text(errors="replace").rstrip().endswith("stopped")


def test_cli_refuses_bad_options_before_starting_anything(workload, tmp_path):
    """One line, exit 2, and no Ray started: a host that is not an IP address, bad numbers, a missing artifact."""
    import ray
    from typer.testing import CliRunner

    from clip_debias.toolchain.cli.app import app

    art = str(workload[0].path)
    cases = {
        ("--host", "localhost"): "--host 'localhost': expected an IP address such as 127.0.0.1",
        ("--host", "example.org"): "--host 'example.org': expected an IP address",
        ("--port", "0"): "'--port': Input should be greater than or equal to 1",
        ("--max-batch-size", "0"): "'--max-batch-size': Input should be greater than or equal to 1",
        ("--replicas", "0"): "'--replicas': Input should be greater than or equal to 1",
        ("--device", "tpu"): "'--device': 'tpu' is not one of 'cpu', 'cuda'",
        ("--precision", "int8"): "no onnx int8 model listed",
    }
    for args, message in cases.items():
        res = CliRunner().invoke(app, ["serve", art, *args])
        assert res.exit_code == 2 and message in res.output, (args, res.output)
    res = CliRunner().invoke(app, ["serve", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "artifact directory not found" in res.output
    assert not ray.is_initialized()
