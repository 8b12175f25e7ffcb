"""``clip-debias serve --engine ray``: an artifact served by Ray Serve with dynamic batching, for clusters
(``[ray-serve]`` extra; no torch). The default engine is ``serving.server``.

One deployment, ``ArtifactServer``, ``replicas`` copies, each holding one ``runtime.load`` of the artifact:

- ``POST /classify``: the request's images (``serving.http_api``) are decoded and preprocessed in a worker thread,
  then each image is one call of ``classify_batch``, a ``@serve.batch`` method: Ray Serve gathers up to
  ``max_batch_size`` images (from any requests) or waits ``batch_wait_ms`` for them, and the batch runs as ONE
  ``Classifier.predict_logits`` call (int8: the runtime then runs it image by image, so a neighbour never changes an
  answer). The answer holds labels, probabilities and the artifact digest.
- ``GET /healthz``: 200 ``{"status": "ok", "artifact_digest": ...}`` once the replica has loaded the artifact.
- Metrics (Ray's Prometheus endpoint, ``http://127.0.0.1:METRICS_PORT/metrics``, names prefixed ``ray_``):
  ``clip_debias_requests`` (by route and HTTP status), ``clip_debias_images`` (images classified),
  ``clip_debias_batch_size`` (images per model call, histogram), ``clip_debias_request_latency_ms`` (request arrival
  to answer, histogram) and ``clip_debias_model_latency_ms`` (one model call, histogram). Ray exports a histogram's
  counts and buckets exactly and its ``_sum`` from bucket midpoints (an approximation): mean batch size =
  ``clip_debias_images`` / ``clip_debias_batch_size_count``.

The HTTP proxy binds ``host`` (default 127.0.0.1); any other address must be asked for (``ServeOptions.host``) and
must be an IP address. Ray's own processes (GCS, raylet, workers) listen on ports Ray chooses, on all interfaces:
``docs/serving.md`` lists them and the ``ray start`` options that fix each; run a service inside a private network
or network namespace, as Ray's security documentation advises.

Pinning: ``start`` loads the artifact in the driver first (``expect_digest`` checked) and deploys the replicas with
``expect_digest`` = the digest it announced, so a replica (re)started on a changed artifact fails with the reason
and never answers; ``wait_running`` turns a failed deployment into one ``ClipDebiasError`` line.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from ray import serve

from clip_debias.runtime.choices import ServeDevice
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.serving import http_api
from clip_debias.serving.listen import check_free

LOOPBACK = http_api.LOOPBACK
APP_NAME = "clip_debias"
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]


@dataclass(frozen=True)
class ServeOptions:
    """What ``clip-debias serve`` was asked for (checked by ``check``)."""

    artifact: str
    host: str = LOOPBACK
    port: int = 8000
    max_batch_size: int = 16
    batch_wait_ms: float = 5.0
    replicas: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    metrics_port: int = 8080
    cpus_per_replica: float = 1.0
    expect_digest: str | None = None  # --expect-digest; start() sets it to the digest it announced
    address: str | None = None  # a Ray cluster to join (ray.init(address=...)); None: a local Ray

    def check(self) -> None:
        """One ``ClipDebiasError`` line per bad option."""
        http_api.check_host(self.host)
        for name, port in (("--port", self.port), ("--metrics-port", self.metrics_port)):
            if not 1 <= port <= 65535:
                raise ClipDebiasError(f"{name} {port}: expected 1..65535")
        if self.port == self.metrics_port:
            raise ClipDebiasError(f"--metrics-port {self.metrics_port}: the same as --port")
        if self.max_batch_size < 1:
            raise ClipDebiasError(f"--max-batch-size {self.max_batch_size}: expected >= 1")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise ClipDebiasError(f"--batch-wait-ms {self.batch_wait_ms}: expected 0..10000")
        if self.replicas < 1:
            raise ClipDebiasError(f"--replicas {self.replicas}: expected >= 1")
        ServeDevice.parse(self.device, "--device")

    @property
    def loopback(self) -> bool:
        return http_api.check_host(self.host)

    @property
    def intra_op_threads(self) -> int:
        """CPU threads per replica: this machine's cores // replicas (replicas do not oversubscribe the cores)."""
        return max(1, (os.cpu_count() or 1) // self.replicas)


def _metrics() -> dict[str, Any]:
    from ray.serve.metrics import Counter, Histogram

    return {
        "requests": Counter("clip_debias_requests", description="Requests by route and HTTP status.",
                            tag_keys=("route", "status")),
        "images": Counter("clip_debias_images", description="Images classified (summed over model calls)."),
        "batch": Histogram("clip_debias_batch_size", description="Images per model call.",
                           boundaries=BATCH_BUCKETS),
        "latency": Histogram("clip_debias_request_latency_ms", description="Request arrival to answer, ms.",
                             boundaries=LATENCY_BUCKETS_MS, tag_keys=("route",)),
        "model": Histogram("clip_debias_model_latency_ms", description="One model call (a batch), ms.",
                           boundaries=LATENCY_BUCKETS_MS),
    }


class ArtifactServer:
    """The deployment's class (made a deployment by ``build_app``)."""

    def __init__(self, options: dict[str, Any]) -> None:
        from clip_debias.runtime.classifier import load

        opts = ServeOptions(**options)
        threads = opts.intra_op_threads if opts.device == "cpu" else None
        # pinned: a replica (re)started after the artifact changed on disk fails here, with the reason, and never
        # becomes ready (Ray Serve shows the message in `serve status` and the CLI prints its first line)
        self.clf = load(opts.artifact, device=opts.device, precision=opts.precision, intra_op_threads=threads,
                        expected_digest=opts.expect_digest)
        self.digest = self.clf.digest  # runtime.integrity: the digest of the files load() checked
        self.metrics = _metrics()
        self.classify_batch.set_max_batch_size(opts.max_batch_size)
        self.classify_batch.set_batch_wait_timeout_s(opts.batch_wait_ms / 1000.0)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)  # set per deployment in __init__
    async def classify_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Preprocessed images [3, H, W] (one per call, gathered by ``@serve.batch``) -> their logits rows."""
        batch = np.stack(images)
        t0 = time.perf_counter()
        logits = await asyncio.to_thread(self.clf.predict_logits, batch)
        self.metrics["model"].observe((time.perf_counter() - t0) * 1000.0)
        self.metrics["batch"].observe(len(images))
        self.metrics["images"].inc(len(images))
        return list(logits)

    async def classify(self, body: bytes, content_type: str | None) -> dict[str, Any]:
        files = http_api.request_images(body, content_type)
        arrays = await asyncio.to_thread(http_api.preprocess_images, self.clf, files)
        rows = await asyncio.gather(*(self.classify_batch(a) for a in arrays))
        return http_api.classify_response(np.stack(rows), self.clf.class_names, self.digest)

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        t0 = time.perf_counter()
        route, method = request.url.path.rstrip("/") or "/", request.method
        if route == "/classify" and method == "POST":
            try:
                status, doc = 200, await self.classify(await request.body(), request.headers.get("content-type"))
            except http_api.RequestError as e:
                status, doc = 400, http_api.error_response(e)
        elif route == "/healthz" and method == "GET":
            status, doc = 200, {"status": "ok", "artifact_digest": self.digest}
        elif route in ("/classify", "/healthz"):
            status, doc = 405, {"error": f"{method} {route}: method not allowed"}
        else:
            status, doc = 404, {"error": f"{route}: not found (POST /classify, GET /healthz)"}
        self.metrics["requests"].inc(tags={"route": route if status != 404 else "other", "status": str(status)})
        self.metrics["latency"].observe((time.perf_counter() - t0) * 1000.0,
                                        tags={"route": route if status != 404 else "other"})
        return JSONResponse(doc, status_code=status)


def build_app(options: ServeOptions) -> Any:
    """The Ray Serve application for ``options`` (``serve.run`` it)."""
    options.check()
    actor = {"num_cpus": options.cpus_per_replica, **({"num_gpus": 1} if options.device == "cuda" else {})}
    deployment = serve.deployment(name="ArtifactServer", num_replicas=options.replicas, ray_actor_options=actor,
                                  max_ongoing_requests=max(100, 4 * options.max_batch_size))(ArtifactServer)
    return deployment.bind(asdict(options))


def start(options: ServeOptions, *, num_cpus: int | None = None, ready_timeout_s: float = 300.0) -> tuple[str, str]:
    """Start (or join, ``options.address``) Ray and Serve, deploy the app pinned to the artifact's digest and wait
    until it runs; returns ``(http://host:port, digest)``. A replica that fails to start (e.g. its artifact's digest
    differs) is a one-line ``ClipDebiasError`` with Ray's reason. ``stop`` ends it."""
    import logging

    import ray

    from clip_debias.runtime.classifier import load

    options.check()
    # its one-line errors before Ray starts; the digest announced is the one every replica must load
    digest = load(options.artifact, device=options.device, precision=options.precision,
                  expected_digest=options.expect_digest).digest
    options = replace(options, expect_digest=digest)
    check_free(options.host, options.port)
    if not ray.is_initialized():
        if options.address:
            ray.init(address=options.address, log_to_driver=False, logging_level=logging.ERROR)
        else:
            local = {"num_cpus": num_cpus, "include_dashboard": False, "_metrics_export_port": options.metrics_port,
                     **({"_node_ip_address": LOOPBACK} if options.loopback else {})}
            ray.init(**local, log_to_driver=False, configure_logging=True, logging_level=logging.ERROR)
    # Serve's INFO lines ("Started Serve", "will not be applied": serve.run after serve.start, as custom
    # http_options require) are no news to the operator
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": options.host, "port": options.port})
    serve.run(build_app(options), name=APP_NAME, route_prefix="/", blocking=False)
    wait_running(ready_timeout_s)
    return f"http://{options.host}:{options.port}", digest


def wait_running(timeout_s: float) -> None:
    """Until the application is RUNNING; ``ClipDebiasError`` with the first line of Ray's reason when it failed to
    deploy, or after ``timeout_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        state, reason = app_state()
        if state == "RUNNING":
            return
        if state in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise ClipDebiasError(f"Ray Serve could not start the replicas: {reason}")
        time.sleep(0.5)
    raise ClipDebiasError(f"Ray Serve did not report the application running within {timeout_s:g} s")


def _last_error_line(message: str) -> str:
    """Our one-line error inside Ray's message (a traceback flattened to one line), else the message, shortened."""
    for kind in ("ArtifactError: ", "BackendError: ", "ClipDebiasError: "):
        if kind in message:
            return message.rsplit(kind, 1)[1][:400]
    return message[:400]


def stop() -> None:
    """Shut Serve and this process's Ray down."""
    import ray

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def healthz(base_url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """``GET /healthz`` of a running server (its JSON)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/healthz", timeout=timeout_s) as r:
        return json.loads(r.read())


def app_state() -> tuple[str, str]:
    """(the application's status, the first line of Ray's reason) from ``serve.status()``."""
    app = serve.status().applications.get(APP_NAME)
    state = str(getattr(app, "status", "")).rsplit(".", 1)[-1]
    reason = " ".join((getattr(app, "message", "") or "").split())
    for d in (getattr(app, "deployments", None) or {}).values():
        reason = " ".join((getattr(d, "message", "") or "").split()) or reason
    return state, _last_error_line(reason)


def serve_until_stopped(options: ServeOptions, on_ready: Any, num_cpus: int | None = None,
                        on_state: Any = None, poll_s: float = 5.0) -> None:
    """Start (``start``), call ``on_ready(base_url, digest)``, serve until SIGINT or SIGTERM, then ``stop``; every
    ``poll_s`` the application's status is read and ``on_state(state, reason)`` called when either changes (a replica
    that cannot load its pinned artifact turns it UNHEALTHY / DEPLOY_FAILED with the reason). Our
    handlers are installed again once Ray runs: Ray's core worker installs a native SIGTERM handler that dumps a stack
    trace and ends the process with 134 instead of letting it shut down."""
    import signal
    import threading

    stopped = threading.Event()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def install() -> None:
        for s in previous:
            signal.signal(s, lambda *_: stopped.set())

    install()
    try:
        base, digest = start(options, num_cpus=num_cpus)
        install()
        if not stopped.is_set():
            on_ready(base, digest)
        last = ("RUNNING", "")
        while not stopped.wait(poll_s):
            now = app_state()
            if on_state is not None and now != last:
                on_state(*now)
            last = now
    finally:
        stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
