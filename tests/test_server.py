"""``clip-debias serve`` (default engine: one process, uvicorn + the asyncio batcher), the real command in a
subprocess on 127.0.0.1 with a free port, small and bounded: answers equal the runtime, the endpoints, the limits
(slow clients, oversize and chunked bodies, the queue, JSON depth and numbers, the pixel budget), /metrics names equal
the docs, only the requested socket listens, start-up errors are one line with exit 2, SIGTERM drains and exits 0.
Timings are never asserted (benchmarks/bench_serving.py measures them). Needs the ``[serve]`` extra.
"""

from __future__ import annotations

import asyncio
import importlib.util
import base64
import http.client
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from proc_info import listening
from runtime_fixtures import build_artifact
from triton_server import free_port

pytest.importorskip("uvicorn", reason="the [serve] extra is not installed (pip install '.[serve]')")
pytest.importorskip("prometheus_client", reason="the [serve] extra is not installed (pip install '.[serve]')")

from clip_debias import runtime  # noqa: E402
from clip_debias.serving import http_api  # noqa: E402
from clip_debias.serving.batcher import Batcher, DeadlinePassed, QueueFull  # noqa: E402
from clip_debias.serving.loadtest import read_until_closed  # noqa: E402
from clip_debias.serving.metrics import METRICS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from clip_debias.toolchain.cli.app import main; main()", "serve"]
MAX_QUEUE, MAX_PIXELS, MAX_BODY_MB = 16, 5000, 1
START_TIMEOUT_S = 120


def _png(seed: int, size: tuple[int, int] = (20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class Server:
    """``clip-debias serve`` in a subprocess (its own session), its log in a file."""

    def __init__(self, art: Path, log: Path, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([*CLI, str(art), "--port", str(self.port), *extra], stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < START_TIMEOUT_S and self.proc.poll() is None:
            if "serving " in self.text():
                return
            time.sleep(0.1)
        pytest.fail(f"clip-debias serve did not start:\n{self.text()[-3000:]}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 30) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return build_artifact(tmp_path_factory.mktemp("server") / "art", fp16=False).path


@pytest.fixture(scope="module")
def server(art, tmp_path_factory):
    s = Server(art, tmp_path_factory.mktemp("server_log") / "serve.log", "--max-batch-size", "4", "--batch-wait-ms",
               "20", "--max-queue", str(MAX_QUEUE), "--max-body-mb", str(MAX_BODY_MB), "--max-request-pixels",
               str(MAX_PIXELS), "--header-timeout", "1", "--body-timeout", "1", "--max-buffered-mb",
               str(2 * MAX_BODY_MB))
    s.wait_ready()
    yield s
    assert s.stop() == 0, s.text()[-3000:]


def test_answers_equal_the_runtime_and_batches_form(server, art, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    clf = runtime.load(art, device="cpu")
    files = [_png(i) for i in range(24)]
    paths = []
    for i, data in enumerate(files):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(data)

    def classify(i: int) -> tuple[int, dict]:
        if i % 4 == 0:  # a JSON batch of 3
            body = json.dumps({"images": [base64.b64encode(files[(i + k) % 24]).decode() for k in range(3)]})
            status, _, raw = server.request("POST", "/classify", body.encode(), {"Content-Type": "application/json"})
        else:
            status, _, raw = server.request("POST", "/classify", files[i], {"Content-Type": "image/png"})
        return status, json.loads(raw)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(classify, range(24)))
    for i, (status, doc) in enumerate(answers):
        expect = [paths[(i + k) % 24] for k in range(3)] if i % 4 == 0 else [paths[i]]
        assert status == 200 and doc["artifact_digest"] == clf.digest and doc["class_names"] == clf.class_names
        assert doc["predictions"] == [{"label": p.label, "index": p.index,
                                       "probabilities": [float(v) for v in p.probabilities]}
                                      for p in clf.classify(expect)]
    status, _, raw = server.request("POST", "/embed", files[0], {"Content-Type": "image/png"})
    emb = np.array(json.loads(raw)["embeddings"], dtype=np.float32)
    assert status == 200 and np.array_equal(emb, http_api.unit_rows(clf.embed([paths[0]])))
    assert abs(float(np.linalg.norm(emb[0])) - 1.0) < 1e-6
    metrics = server.request("GET", "/metrics")[2].decode()
    images = float(re.search(r"^clip_debias_images_total (\S+)$", metrics, re.M).group(1))
    calls = float(re.search(r"^clip_debias_batch_size_count (\S+)$", metrics, re.M).group(1))
    assert images >= 18 * 1 + 6 * 3 + 1 + 0  # every image went through a model call
    print(f"\n{images:.0f} images in {calls:.0f} model calls")


def test_async_load_generator_gets_the_same_answers(server):
    """The benchmark's one-loop generator (``run_load_async``) and the threaded one answer request for request alike,
    over fewer connections than requests (keep-alive reuse) and with a refused request among them."""
    from clip_debias.serving.loadtest import Request, run_load, run_load_async

    reqs = [Request(_png(i), "image/png") for i in range(10)] + [Request(b"not an image", "image/png")]
    url = f"http://127.0.0.1:{server.port}/classify"
    lean, threaded = run_load_async(url, reqs, 3, timeout_s=30), run_load(url, reqs, 3, timeout_s=30, keep_alive=True)
    assert [a.status for a in lean.answers] == [a.status for a in threaded.answers] == [200] * 10 + [400]
    assert [a.doc for a in lean.answers] == [a.doc for a in threaded.answers]


def test_health_ready_head_and_text_endpoints(server, art):
    digest = runtime.load(art, device="cpu").digest
    for method in ("GET", "HEAD"):
        status, _, raw = server.request(method, "/healthz")
        assert status == 200 and (raw == b"" if method == "HEAD" else json.loads(raw) == {"status": "ok"})
        status, _, raw = server.request(method, "/readyz")
        assert status == 200 and (raw == b"" if method == "HEAD" else
                                  json.loads(raw) == {"status": "ready", "artifact_digest": digest})
    assert server.request("GET", "/classify")[0] == 405 and server.request("GET", "/nope")[0] == 404
    for path, body in (("/embed-text", {"texts": ["a photo of a bird"]}),
                       ("/classify", {"images": [base64.b64encode(_png(0)).decode()], "labels": ["a", "b"]})):
        status, _, raw = server.request("POST", path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        assert status == 400 and json.loads(raw) == {"error": "this artifact has no text tower"}


def test_metric_names_in_the_docs_equal_the_exported_ones(server):
    text = server.request("GET", "/metrics")[2].decode()
    exported = set(re.findall(r"^# TYPE (clip_debias_\w+) \w+$", text, re.M))
    documented = set(re.findall(r"^\| `(clip_debias_\w+)` \|", (ROOT / "docs" / "serving.md").read_text(), re.M))
    assert exported == documented == {m.name for m in METRICS}


@pytest.mark.parametrize("body, message", [
    (b"[" * 100_000 + b"]" * 100_000, "JSON body nested deeper than 8 levels"),
    (b'{"images": [1' + b"0" * 5000 + b"]}", "JSON body: a number of 5001 characters, at most 32"),
    (b'{"images": [NaN]}', "JSON body: NaN is not a JSON number"),
    (b"{nope", "request body is not valid JSON"),
])
def test_json_limits_are_one_line_400(server, body, message):
    status, _, raw = server.request("POST", "/classify", body, {"Content-Type": "application/json"})
    assert status == 400 and json.loads(raw)["error"].startswith(message)


def test_pixel_budget_and_queue_bound(server):
    small = base64.b64encode(_png(1)).decode()  # 600 pixels
    body = json.dumps({"images": [small] * 9}).encode()  # 5400 > MAX_PIXELS, read from the headers
    status, _, raw = server.request("POST", "/classify", body, {"Content-Type": "application/json"})
    assert status == 413 and "more than 5,000 pixels together" in json.loads(raw)["error"]
    tiny = base64.b64encode(_png(2, (4, 4))).decode()
    body = json.dumps({"images": [tiny] * (MAX_QUEUE + 1)}).encode()  # more than the queue ever holds
    status, headers, raw = server.request("POST", "/classify", body, {"Content-Type": "application/json"})
    assert status == 503 and headers.get("retry-after") == "1" and "server busy" in json.loads(raw)["error"]


def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_until_closed(s)


def test_oversize_refused_before_reading_and_chunked_cut(server):
    # Content-Length over the limit: the answer comes with no body byte sent
    head = (f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {200 << 20}\r\n\r\n")
    answer = _raw(server.port, head.encode())
    assert answer.startswith(b"HTTP/1.1 413 ") and b"over the limit" in answer
    # chunked: cut once past the limit (a reader thread takes the answer while chunks are still being sent: the
    # server closes a connection whose body it refused, and the rest of the sent bytes then reset it)
    from concurrent.futures import ThreadPoolExecutor

    chunk = b"x" * (256 << 10)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s, ThreadPoolExecutor(1) as pool:
        s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        reader = pool.submit(read_until_closed, s)
        try:
            for _ in range(8):  # 2 MiB at most, the limit is 1 MiB
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:  # the server closed after answering
            pass
        answer = reader.result(timeout=15)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"over the limit of" in answer


def test_bodies_held_at_once_are_bounded(server):
    """Two bodies of the limit's size being read hold the whole --max-buffered-mb: a third is refused at once (503,
    Retry-After) before a byte of it is read; once the slow two time out, bodies are taken again."""
    size = MAX_BODY_MB << 20
    head = (f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {size}\r\n\r\n")
    slow = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
    try:
        for c in slow:
            c.sendall(head.encode() + b"ab")
        time.sleep(0.2)
        answer = _raw(server.port, head.encode())
        assert answer.startswith(b"HTTP/1.1 503 ") and b"request bodies being read" in answer
        assert b"retry-after: 1" in answer.lower()
    finally:
        for c in slow:
            c.close()
    time.sleep(1.5)  # --body-timeout 1: the two are dropped and give their bytes back
    status, _, _ = server.request("POST", "/classify", _png(7), {"Content-Type": "image/png"})
    assert status == 200


def test_chunked_body_is_spooled_and_read_back_exactly():
    """``read_body`` on a chunked body of 3 MiB (past the 1 MiB kept in memory): the same bytes come back, all of
    them held in the budget until given back; a budget too small refuses it with 503 and holds nothing."""
    from clip_debias.serving.app import AppLimits, BodyBudget, Refused, read_body

    parts = [bytes([i]) * (256 << 10) for i in range(12)]

    def receiver():
        messages = [{"type": "http.request", "body": b, "more_body": i < len(parts) - 1} for i, b in enumerate(parts)]

        async def receive():
            return messages.pop(0)
        return receive

    limits = AppLimits(request=http_api.RequestLimits(max_body_bytes=4 << 20))
    budget = BodyBudget(8 << 20)
    body, held = asyncio.run(read_body({"headers": []}, receiver(), limits, budget))
    assert body == b"".join(parts) and held == budget.held == 3 << 20
    small = BodyBudget(2 << 20)
    with pytest.raises(Refused) as e:
        asyncio.run(read_body({"headers": []}, receiver(), limits, small))
    assert e.value.status == 503 and small.held == 0


def test_slow_clients_are_dropped_and_never_block(server):
    """40 sockets stuck in their body (Content-Length 1000, 2 bytes sent) and 40 stuck in their headers: /healthz
    and /classify answer meanwhile; the server answers 408 or closes every slow socket (--body-timeout 1,
    --header-timeout 1)."""
    slow = []
    for i in range(80):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=15)
        if i % 2:
            s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      b"Content-Length: 1000\r\n\r\nab")
        else:
            s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Le")
        slow.append(s)
    try:
        assert server.request("GET", "/healthz", timeout=15)[0] == 200
        assert server.request("POST", "/classify", _png(3), {"Content-Type": "image/png"}, timeout=15)[0] == 200
        ends = [read_until_closed(s).split(b"\r\n", 1)[0] for s in slow]
        assert ends.count(b"HTTP/1.1 408 Request Timeout") == 40 and ends.count(b"") == 40, set(ends)
    finally:
        for s in slow:
            s.close()


def test_only_the_requested_socket_listens(server):
    assert listening(server.proc.pid) == {("127.0.0.1", server.port)}


def test_start_up_errors_are_one_line_exit_2(art, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cases = [
            ([str(tmp_path / "missing")], "artifact directory not found"),
            ([str(art), "--expect-digest", "sha256:" + "0" * 64], "digest"),
            ([str(art), "--port", str(port)], f"cannot listen on 127.0.0.1:{port}: the port is in use"),
            ([str(art), "--engine", "default", "--replicas", "2"], "--replicas: options of --engine ray"),
            ([str(art), "--engine", "ray", "--max-queue", "5", "--intra-op-threads", "1"],
             "--max-queue, --intra-op-threads: options of the default engine"),
        ]
        if importlib.util.find_spec("ray") is not None:  # Ray's engine checks the pin in the driver, before Ray starts
            cases += [([str(art), "--engine", "ray", "--expect-digest", "sha256:" + "0" * 64], "digest"),
                      ([str(art), "--engine", "ray", "--port", str(port)], "the port is in use")]
        runs = [subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for args, _ in cases]  # side by side: each is an interpreter start and an import
        for (args, needle), run in zip(cases, runs):
            _, err = run.communicate(timeout=180)
            lines = [ln for ln in err.splitlines() if ln.strip()]
            assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, err)
            assert needle in lines[0], lines[0]


def test_sigterm_drains_in_flight_and_exits_0(art, tmp_path):
    s = Server(art, tmp_path / "serve.log", "--drain-timeout", "5", "--body-timeout", "10")
    s.wait_ready()
    body = _png(4)
    conn = socket.create_connection(("127.0.0.1", s.port), timeout=20)
    conn.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n"
                 % len(body) + body[:10])
    time.sleep(0.3)  # the request is in flight (its body half sent)
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(("127.0.0.1", s.port), timeout=2).close()
    conn.sendall(body[10:])
    answer = read_until_closed(conn)
    conn.close()
    code = s.proc.wait(timeout=5 + 2 + 10)
    print(f"\nSIGTERM -> exit {code} in {time.monotonic() - t0:.2f} s (drain-timeout 5 s)")
    assert answer.startswith(b"HTTP/1.1 200 ") and code == 0, s.text()
    assert listening(s.proc.pid) == set()
    assert listening(port=s.port) == set()  # nothing listens on the port any more
    with socket.socket() as again:  # and a new server can take it (SO_REUSEADDR, as ours: connections in TIME_WAIT)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", s.port))
        again.listen(1)


def test_batcher_batches_bounds_and_deadlines():
    calls = []

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(batch))
        time.sleep(0.05)
        return batch.reshape(len(batch), -1)[:, :1], batch.reshape(len(batch), -1)

    async def main() -> None:
        b = Batcher(run, max_batch=4, max_wait_s=0.2, max_queue=8)
        b.start()
        far = time.monotonic() + 30
        with b.incoming():  # a request being decoded: the first image waits for the others
            first = asyncio.ensure_future(b.submit([np.full((1, 1, 1), 0.0, np.float32)], far))
            await asyncio.sleep(0)
            rest = [asyncio.ensure_future(b.submit([np.full((1, 1, 1), float(i), np.float32)], far))
                    for i in range(1, 4)]
            await asyncio.sleep(0.05)  # the other requests reach the queue; the batch is still gathering
        out = await asyncio.gather(first, *rest)
        assert [float(r[0][0][0]) for r in out] == [0.0, 1.0, 2.0, 3.0] and calls == [4]
        with pytest.raises(QueueFull):
            await b.submit([np.zeros((1, 1, 1), np.float32)] * 9, far)
        with pytest.raises(DeadlinePassed):
            await b.submit([np.zeros((1, 1, 1), np.float32)], time.monotonic() - 1)
        await b.stop()

    asyncio.run(main())


def test_batcher_runs_model_threads_calls_at_once():
    """With ``model_threads=2`` two full batches run in overlapping calls (never more than two at once), each image's
    row goes back to its own request, and stop() lets the calls in flight answer."""
    import threading

    lock, state = threading.Lock(), {"now": 0, "most": 0, "calls": 0}

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with lock:
            state["now"] += 1
            state["calls"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.1)
        with lock:
            state["now"] -= 1
        return batch.reshape(len(batch), -1)[:, :1], batch.reshape(len(batch), -1)

    async def main() -> None:
        b = Batcher(run, max_batch=2, max_wait_s=0.0, max_queue=16, model_threads=2)
        b.start()
        far = time.monotonic() + 30
        subs = [asyncio.ensure_future(b.submit([np.full((1, 1, 1), float(i), np.float32)], far)) for i in range(6)]
        out = await asyncio.gather(*subs)
        assert [float(r[0][0][0]) for r in out] == [float(i) for i in range(6)]
        assert state["most"] == 2 and state["calls"] >= 3
        late = asyncio.ensure_future(b.submit([np.full((1, 1, 1), 9.0, np.float32)], far))
        await asyncio.sleep(0.02)  # its call is running
        await b.stop()
        assert float((await late)[0][0][0]) == 9.0

    asyncio.run(main())


def test_text_endpoints_equal_the_runtime_on_an_open_vocabulary_artifact(tmp_path):
    """/embed-text and /classify with labels (issue 29 item 5) on an artifact with its text tower (the shipped lab
    model): the answers equal ``Classifier.encode_text`` and ``Classifier.classify(images, labels=...)``."""
    pytest.importorskip("tokenizers")
    from clip_debias.exporters.onnx_export import export_onnx
    from clip_debias.toolchain.correct.classifier import plain_classifier
    from clip_debias.toolchain.models.loading import load_clip

    clip = load_clip("clipdebias-lab")
    art = tmp_path / "art"
    export_onnx(plain_classifier(clip, ["landbird", "waterbird"]), art, precision="fp32", ort_optimize=False,
                text_clip=clip)
    clf = runtime.load(art, device="cpu")
    assert clf.has_text_tower
    s = Server(art, tmp_path / "serve.log")
    try:
        s.wait_ready()
        texts = ["a photo of a bird on water", "a boat"]
        status, _, raw = s.request("POST", "/embed-text", json.dumps({"texts": texts}).encode(),
                                   {"Content-Type": "application/json"})
        assert status == 200, raw
        got = np.array(json.loads(raw)["embeddings"], dtype=np.float32)
        assert np.allclose(got, clf.encode_text(texts), atol=1e-6)
        labels = ["a bird over the sea", "a bird in a forest", "a flower"]
        files = [_png(i, (64, 64)) for i in range(3)]
        paths = []
        for i, data in enumerate(files):
            paths.append(tmp_path / f"{i}.png")
            paths[-1].write_bytes(data)
        body = {"images": [base64.b64encode(f).decode() for f in files], "labels": labels}
        status, _, raw = s.request("POST", "/classify", json.dumps(body).encode(), {"Content-Type": "application/json"})
        assert status == 200, raw
        doc = json.loads(raw)
        want = clf.classify(paths, labels=labels)
        assert doc["class_names"] == labels and [p["label"] for p in doc["predictions"]] == [p.label for p in want]
        assert np.allclose([p["probabilities"] for p in doc["predictions"]], [p.probabilities for p in want], atol=1e-6)
    finally:
        assert s.stop() == 0, s.text()[-3000:]
