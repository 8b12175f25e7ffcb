"""The repositories ``export triton`` writes, loaded by a REAL Triton server (the ``tritonserver`` binary that NVIDIA's
pytriton wheel bundles; python backend only), on 127.0.0.1 with free ports; the client is tritonclient over HTTP.

- onnxruntime backend: the server validates the config and then stops at the one thing this server lacks, the
  onnxruntime backend library (the same config with an invalid field is refused earlier, at validation).
- python backend: answers with logits equal to ``runtime.load(...).predict_logits`` on each request's images, batches
  requests (executions < requests in Triton's metrics), and answers a NaN image with its own error.

Needs the ``[triton]`` extra here (tritonclient) and a server environment (``[triton-server]`` in a venv of its own:
``.ci/run`` makes ``.venv-triton``; see ``tests/triton_server.py``); skipped when either is absent.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from clip_debias import runtime
from clip_debias.exporters.triton import export_triton

from runtime_fixtures import build_artifact
from triton_server import ROOT, find_server_env, start_server

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient not installed (pip install '.[triton]')")
MODEL = "clip_debias"
READY_TIMEOUT_S = 120  # the python stub's first start on a loaded 2-core machine
N_REQUESTS, N_THREADS = 48, 8


@pytest.fixture(scope="module")
def server_env():
    env = find_server_env()
    if env is None:
        pytest.skip("no Triton server environment: python3 -m venv .venv-triton && .venv-triton/bin/pip install "
                    "-e '.[triton-server]' (as .ci/run does), or set CLIP_DEBIAS_TRITON_VENV")
    if not env.serving.resolve().is_relative_to(ROOT):
        pytest.skip(f"the Triton server environment imports clip_debias from {env.serving}, not this checkout: "
                    f"{env.python} -m pip install --no-deps -e {ROOT}")
    return env


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return build_artifact(tmp_path_factory.mktemp("triton") / "art", fp16=False)


def model_errors(log: str) -> list[str]:
    """The server's reasons for not loading a model (load failures and refused configs)."""
    return re.findall(r"(?:failed to load '[^']+' version \d+|Poll failed for model directory '[^']+'): ([^\"\n]+)",
                      log)


def test_onnxruntime_repository_passes_validation_and_stops_at_the_missing_backend(server_env, artifact, tmp_path):
    export_triton(artifact.path, tmp_path / "repo", server_cores=2)
    server = start_server(server_env, tmp_path / "repo", tmp_path / "run")
    try:
        assert not server.wait(READY_TIMEOUT_S)
        server.process.wait(timeout=60)
    finally:
        server.stop()
    assert server.process.returncode != 0
    assert model_errors(server.output()) == [
        "Invalid argument: unable to find backend library for backend 'onnxruntime', try specifying runtime on the "
        "model configuration."]

    # control: the server does validate before it looks for a backend (an invalid field is refused there)
    config = tmp_path / "repo" / MODEL / "config.pbtxt"
    config.write_text(config.read_text().replace("max_queue_delay_microseconds: 100",
                                                 "max_queue_delay_microseconds: 100\n  preferred_batch_size: [ 64 ]"))
    bad = start_server(server_env, tmp_path / "repo", tmp_path / "run_bad")
    try:
        assert not bad.wait(READY_TIMEOUT_S)
    finally:
        bad.stop()
    assert model_errors(bad.output()) == [f"dynamic batching preferred size must be <= max batch size for {MODEL}"]


def _infer(url: str, batches: list[np.ndarray]) -> list[np.ndarray]:
    """One client per thread (tritonclient's HTTP client is not thread-safe); one request per batch."""
    client = httpclient.InferenceServerClient(url, connection_timeout=60, network_timeout=60)
    out = []
    for x in batches:
        inp = httpclient.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(MODEL, [inp], outputs=[httpclient.InferRequestedOutput("logits")])
        out.append(result.as_numpy("logits"))
    client.close()
    return out


def _metric(text: str, name: str) -> float:
    m = re.search(rf'^{name}\{{[^}}]*model="{MODEL}"[^}}]*\}} ([0-9.e+]+)$', text, re.M)
    assert m, f"{name} not in Triton's metrics"
    return float(m.group(1))


def _settled_metrics(server, timeout_s: float = 10.0) -> str:
    """Triton's metrics once every sent request is counted: the server counts a request after its response has
    gone out, so a scrape right after the last answer can miss the last few (seen: 46 of 48). Bounded poll."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = server.metrics()
        if _metric(text, "nv_inference_request_success") >= N_REQUESTS or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def test_python_repository_serves_the_runtime_and_batches(server_env, artifact, tmp_path):
    export_triton(artifact.path, tmp_path / "repo", backend="python", max_batch=8, max_queue_delay_us=50_000,
                  server_cores=2)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((1 + i % 2, 3, 24, 24)).astype(np.float32) for i in range(N_REQUESTS)]
    clf = runtime.load(artifact.path, device="cpu")
    server = start_server(server_env, tmp_path / "repo", tmp_path / "run")
    try:
        assert server.wait(READY_TIMEOUT_S), server.output()[-4000:]
        per_thread = [batches[k::N_THREADS] for k in range(N_THREADS)]
        with ThreadPoolExecutor(N_THREADS) as pool:
            answers = list(pool.map(lambda b: _infer(server.url, b), per_thread))
        metrics = _settled_metrics(server)

        bad = np.full((1, 3, 24, 24), np.nan, np.float32)
        with pytest.raises(Exception, match=r"input contains 1728 NaN/Inf value\(s\)"):
            _infer(server.url, [bad])
    finally:
        server.stop()

    for k, (sent, got) in enumerate(zip(per_thread, answers)):
        assert len(got) == len(sent)
        for x, logits in zip(sent, got):
            np.testing.assert_array_equal(logits, clf.predict_logits(x))
    requests = _metric(metrics, "nv_inference_request_success")
    executions = _metric(metrics, "nv_inference_exec_count")
    images = _metric(metrics, "nv_inference_count")
    assert requests == N_REQUESTS and images == sum(len(b) for b in batches)
    assert executions < requests  # the dynamic batcher grouped requests into shared model executions
