"""``clip-debias serve`` (default engine): one process, no Ray -- uvicorn (httptools parser, uvloop where installed)
running ``serving.app.ServerApp`` in front of one ``runtime.load`` of the artifact.

Start: load the artifact (every file hashed; ``expect_digest`` refuses any other artifact), warm the model up, bind
exactly ``host:port`` (one listening socket, nothing else opened), then serve. Any start-up problem (missing or
changed artifact, port in use, bad address) is a ``ClipDebiasError`` (the CLI prints one line, exit 2) raised before
the server accepts a connection.

Connections: a request head (request line and headers) must arrive within ``header_timeout_s`` of the connection
opening or of the request's first byte (``HeaderTimeoutProtocol``; otherwise the connection is closed), an idle
keep-alive connection is closed after ``keep_alive_s``, at most ``max_connections`` connections and requests are
served at once (uvicorn answers 503 above it). Bodies, budgets and the queue: ``serving.app``.

Stop: SIGTERM or SIGINT stops accepting (the listening socket is closed at once, ``/readyz`` turns 503), lets the
requests in flight finish for up to ``drain_timeout_s`` (then cancels them), stops the batcher and returns: exit 0.
A second SIGINT stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.serving import http_api
from clip_debias.serving.app import AppLimits, ServerApp
from clip_debias.serving.listen import bind

LOOPBACK = http_api.LOOPBACK


def default_intra_op_threads() -> int:
    """ONNX Runtime intra-op threads of one model call: half this machine's cores (at least 1). On 2 cores
    (benchmarks/bench_serving.py) the server spent 4.1 ms of CPU per request with 1 intra-op thread against 7.4 ms
    with 2 (idle intra-op threads spin on the core the decoding needs)."""
    return max(1, (os.cpu_count() or 2) // 2)


def default_model_threads(intra_op_threads: int | None) -> int:
    """Model calls at once: the cores over each call's intra-op threads (at least 1), so the calls together can use
    every core while one call's images decode. On 2 cores with a lean client (one asyncio loop), 2 calls of 1
    thread each served 1.03-1.07x the in-process best at 32 clients against 0.87-0.91x for 1 call
    (benchmarks/bench_serving.py, interleaved rounds; docs/serving.md)."""
    cores = os.cpu_count() or 2
    return max(1, cores // (intra_op_threads or cores))


@dataclass(frozen=True)
class ServerOptions:
    """What ``clip-debias serve`` (default engine) was asked for."""

    artifact: str
    host: str = LOOPBACK
    port: int = 8000
    device: str = "cpu"
    precision: str = "fp32"
    expect_digest: str | None = None
    max_batch_size: int = 16
    batch_wait_ms: float = 5.0
    intra_op_threads: int | None = field(default_factory=default_intra_op_threads)  # None: one per core
    model_threads: int | None = None  # model calls at once (batcher); None: default_model_threads(intra_op_threads)
    decode_threads: int = max(1, min(8, os.cpu_count() or 1))
    header_timeout_s: float = 5.0
    keep_alive_s: float = 5.0
    drain_timeout_s: float = 10.0
    max_connections: int = 2048
    limits: AppLimits = field(default_factory=AppLimits)

    def check(self) -> None:
        """One ``ClipDebiasError`` line per bad option."""
        http_api.check_host(self.host)
        if not 0 <= self.port <= 65535:
            raise ClipDebiasError(f"--port {self.port}: expected 1..65535")
        for name, value in (("--header-timeout", self.header_timeout_s), ("--body-timeout",
                            self.limits.body_timeout_s), ("--request-timeout", self.limits.request_timeout_s),
                            ("--drain-timeout", self.drain_timeout_s)):
            if not value > 0:
                raise ClipDebiasError(f"{name} {value}: expected > 0 seconds")
        if self.limits.max_queue_images < self.max_batch_size:
            raise ClipDebiasError(f"--max-queue {self.limits.max_queue_images}: expected >= --max-batch-size "
                                  f"{self.max_batch_size}")

    @property
    def loopback(self) -> bool:
        return http_api.check_host(self.host)


def header_timeout_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline on each request head (uvicorn has none of its own: a client
    sending one header byte now and then would hold its connection forever)."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(timeout_s, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


class _Server(uvicorn.Server):
    """uvicorn's server with our signal handling: the first SIGTERM/SIGINT drains, a second SIGINT stops at once;
    the signal is not raised again afterwards (uvicorn re-raises it, which would end the process with its code
    instead of exit 0)."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_stop = on_stop

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def handle(sig: int, frame: Any) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True
            self.on_stop()

        previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def load_classifier(options: ServerOptions) -> Any:
    """``runtime.load`` with the pin (one-line ``ClipDebiasError`` for a missing, changed or foreign artifact)."""
    from clip_debias.runtime.classifier import load

    return load(options.artifact, device=options.device, precision=options.precision,
                intra_op_threads=options.intra_op_threads, expected_digest=options.expect_digest)


def build_app(options: ServerOptions, clf: Any | None = None) -> ServerApp:
    clf = clf if clf is not None else load_classifier(options)
    app = ServerApp(clf, max_batch=options.max_batch_size, batch_wait_s=options.batch_wait_ms / 1000.0,
                    limits=options.limits, decode_threads=options.decode_threads,
                    model_threads=options.model_threads or default_model_threads(options.intra_op_threads))
    app.warm_up()
    return app


def serve(options: ServerOptions, on_ready: Callable[[str, str], None] | None = None,
          app: ServerApp | None = None) -> None:
    """Load, bind, serve until SIGTERM/SIGINT, drain, return (see the module docstring). ``on_ready(base_url,
    digest)`` is called once the socket listens."""
    options.check()
    app = app or build_app(options)
    sock = bind(options.host, options.port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, http=header_timeout_protocol(options.header_timeout_s), lifespan="on", log_level="warning",
        access_log=False, timeout_keep_alive=options.keep_alive_s,  # type: ignore[arg-type] -- a float works
        timeout_graceful_shutdown=options.drain_timeout_s,  # type: ignore[arg-type]
        limit_concurrency=options.max_connections,
        server_header=False, proxy_headers=False, backlog=2048)
    server = _Server(config, on_stop=lambda: app.set_ready(False))
    host = f"[{options.host}]" if ":" in options.host else options.host
    base = f"http://{host}:{port}"

    async def main() -> None:
        async def announce() -> None:
            while not server.started and not server.should_exit:
                await asyncio.sleep(0.01)
            if server.started and on_ready is not None:
                on_ready(base, app.digest)

        watcher = asyncio.ensure_future(announce())
        try:
            await server.serve(sockets=[sock])
        finally:
            watcher.cancel()

    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:  # uvloop where installed
            runner.run(main())
    finally:
        sock.close()


__all__ = ["ServerOptions", "serve", "build_app", "bind", "header_timeout_protocol", "http_api"]
