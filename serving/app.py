"""The ASGI application of ``clip-debias serve`` (the default engine): routes, bounded body reading, the time budget,
metrics. No web framework: ``scope`` / ``receive`` / ``send`` as the ASGI spec defines them.

Routes (anything else: 404; a known route with another method: 405 with ``Allow``):

- ``POST /classify``, ``POST /embed``, ``POST /embed-text``: see ``serving.http_api``.
- ``GET|HEAD /healthz``: 200 while the process runs (alive).
- ``GET|HEAD /readyz``: 200 ``{"status": "ready", "artifact_digest"}`` once the artifact is loaded, its digest
  checked (``--expect-digest`` when given) and the model warmed up; 503 while starting or draining.
- ``GET /metrics``: Prometheus text (``serving.metrics``).

A request is bounded before it costs anything: a ``Content-Length`` over ``max_body_bytes`` is refused (413) before
a byte of the body is read, a chunked body is cut (413) once it passes the limit, the whole body must arrive within
``body_timeout_s`` (else 408; the client never holds a batch place, images are queued only once read), the bodies
being read and answered hold at most ``max_buffered_bytes`` over all connections (else 503 + ``Retry-After``; a
chunked body is spooled to a temporary file past 1 MiB), the images'
pixels (from their headers) must fit ``max_request_pixels`` (413), at most ``max_queue_images`` images wait for the
model (else 503 + ``Retry-After``), and the answer must be ready ``request_timeout_s`` after the request's head
arrived (else 503 + ``Retry-After``). Refusals that leave a body unread close the connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from clip_debias.runtime.errors import ClipDebiasError, InputError
from clip_debias.serving import http_api
from clip_debias.serving.batcher import Batcher, DeadlinePassed, QueueFull
from clip_debias.serving.metrics import CONTENT_TYPE_LATEST, ServerMetrics

NO_TEXT_TOWER = "this artifact has no text tower"
POST_ROUTES = ("/classify", "/embed", "/embed-text")
GET_ROUTES = ("/healthz", "/readyz", "/metrics")
CHUNKED_IN_MEMORY = 1 << 20  # a chunked body past this many bytes is spooled to a temporary file while it arrives
INLINE_DECODE_PIXELS = 512 * 512  # a lone request's images decode on the event loop up to this many pixels
log = logging.getLogger("clip_debias.serve")


@dataclass(frozen=True)
class AppLimits:
    """Bounds of one request (``serve`` options; see the module docstring)."""

    request: http_api.RequestLimits = http_api.DEFAULT_LIMITS
    body_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    max_queue_images: int = 256
    max_buffered_bytes: int = 256 << 20  # request bodies held at once, all connections together
    retry_after_s: int = 1


class Refused(Exception):
    """An answer other than 200 decided before the model: HTTP ``status`` and one line."""

    def __init__(self, status: int, message: str, reason: str, *, close: bool = False,
                 retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.close, self.retry_after = status, reason, close, retry_after


class ClientGone(Exception):
    """The client disconnected before its request was read."""


def _header(scope: dict, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


class BodyBudget:
    """Bytes of request bodies the server holds at once, over every connection (in memory, or spooled to a temporary
    file for a chunked body), at most ``limit``: a body that would pass it is refused (503 + Retry-After) instead of
    read. One event loop: a plain counter."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0

    def take(self, n: int) -> bool:
        if self.held + n > self.limit:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n


def _busy(budget: BodyBudget, limits: AppLimits) -> Refused:
    return Refused(503, f"server busy: request bodies being read hold {budget.held} of {budget.limit} bytes",
                   "queue_full", close=True, retry_after=limits.retry_after_s)


async def read_body(scope: dict, receive: Any, limits: AppLimits, budget: BodyBudget) -> tuple[bytes, int]:
    """(the request body within ``limits``, the bytes it holds of ``budget``; the caller gives them back once the
    answer is sent). ``Refused`` 413 / 408 / 400 / 503 otherwise, with nothing held. A ``Content-Length`` body takes
    its length from the budget before a byte is read; a chunked one takes each chunk as it comes and is spooled to
    an anonymous temporary file past ``CHUNKED_IN_MEMORY`` bytes, so a chunked body refused at the limit has not
    grown the process by the limit."""
    limit = limits.request.max_body_bytes
    length = _header(scope, b"content-length")
    held = 0
    if length is not None:
        if not length.strip().isdigit():
            raise Refused(400, f"Content-Length {length!r}: expected a number of bytes", "bad_request", close=True)
        declared = int(length)
        if declared > limit:
            raise Refused(413, f"request body of {declared} bytes is over the limit of {limit}", "too_large",
                          close=True)
        if not budget.take(declared):
            raise _busy(budget, limits)
        held = declared
    chunks: list[bytes] = []
    spool = tempfile.SpooledTemporaryFile(max_size=CHUNKED_IN_MEMORY) if length is None else None
    n = 0
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone()
                body = message.get("body", b"")
                n += len(body)
                if n > limit:
                    raise Refused(413, f"request body over the limit of {limit} bytes", "too_large", close=True)
                if spool is None:
                    chunks.append(body)
                else:
                    if not budget.take(len(body)):
                        raise _busy(budget, limits)
                    held += len(body)
                    spool.write(body)
                if not message.get("more_body", False):
                    break
        if spool is None:
            return b"".join(chunks), held
        spool.seek(0)
        return spool.read(), held
    except TimeoutError:
        budget.give(held)
        raise Refused(408, f"request body not received within {limits.body_timeout_s:g} s", "timeout",
                      close=True) from None
    except BaseException:
        budget.give(held)
        raise
    finally:
        if spool is not None:
            spool.close()


class ServerApp:
    """One loaded ``Classifier`` behind the routes of the module docstring."""

    def __init__(self, clf: Any, *, max_batch: int, batch_wait_s: float, limits: AppLimits = AppLimits(),
                 decode_threads: int = 2, model_threads: int = 1, metrics: ServerMetrics | None = None) -> None:
        self.clf, self.limits = clf, limits
        self.digest = clf.digest
        self.metrics = metrics or ServerMetrics()
        self.max_batch, self.batch_wait_s, self.model_threads = max_batch, batch_wait_s, model_threads
        self.decode_pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="decode")
        self.batcher: Batcher | None = None
        self.ready = False
        self.admitted_images = 0  # images of requests between admission and answer
        self.bodies = BodyBudget(limits.max_buffered_bytes)

    # -- life cycle ------------------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """One model call at batch 1 and at ``max_batch`` (zero images), before the server says it is ready."""
        shape = tuple(self.clf.input_shape)
        for n in sorted({1, self.max_batch}):
            self.clf.run(np.zeros((n, *shape), dtype=np.float32))

    async def startup(self) -> None:
        def observe(n: int, seconds: float) -> None:
            self.metrics.batch_size.observe(n)
            self.metrics.images.inc(n)
            self.metrics.model_latency.observe(seconds)

        self.batcher = Batcher(self.clf.run, max_batch=self.max_batch, max_wait_s=self.batch_wait_s,
                               max_queue=self.limits.max_queue_images, observe=observe,
                               model_threads=self.model_threads)
        self.batcher.start()
        self.set_ready(True)

    async def shutdown(self) -> None:
        self.set_ready(False)
        if self.batcher is not None:
            await self.batcher.stop()
        self.decode_pool.shutdown(wait=True)

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        self.metrics.ready.set(1 if ready else 0)

    # -- ASGI ------------------------------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        t0 = time.perf_counter()
        route, method = scope["path"].rstrip("/") or "/", scope["method"]
        known = route in POST_ROUTES or route in GET_ROUTES
        try:
            status, body, ctype, extra = await self._dispatch(route, method, scope, receive)
        except ClientGone:
            return
        except Refused as e:
            self.metrics.rejected.labels(reason=e.reason).inc()
            status, body, ctype = e.status, self._json(http_api.error_response(e)), "application/json"
            extra = [(b"connection", b"close")] if e.close else []
            if e.retry_after is not None:
                extra.append((b"retry-after", str(e.retry_after).encode()))
        except Exception as e:  # noqa: BLE001 -- never a traceback to the client; one line in the log
            log.error("%s %s: %s: %s", method, route, type(e).__name__, " ".join(str(e).split()))
            status, ctype, extra = 500, "application/json", [(b"connection", b"close")]
            body = self._json({"error": f"internal error ({type(e).__name__})"})
        headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
        label = route if known else "other"
        self.metrics.requests.labels(route=label, status=str(status)).inc()
        self.metrics.request_latency.labels(route=label).observe(time.perf_counter() - t0)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    def _json(doc: dict) -> bytes:
        return json.dumps(doc, separators=(",", ":")).encode()

    async def _dispatch(self, route: str, method: str, scope: dict,
                        receive: Any) -> tuple[int, bytes, str, list[tuple[bytes, bytes]]]:
        allowed = "POST" if route in POST_ROUTES else "GET, HEAD" if route in GET_ROUTES else None
        if allowed is None:
            raise Refused(404, f"{route}: not found (POST /classify, /embed, /embed-text; GET /healthz, /readyz, "
                               "/metrics)", "bad_request")
        if method not in allowed.split(", ") or (route == "/metrics" and method == "HEAD"):
            return 405, self._json({"error": f"{method} {route}: method not allowed"}), "application/json", \
                [(b"allow", allowed.encode())]
        if route == "/healthz":
            return 200, self._json({"status": "ok"}), "application/json", []
        if route == "/readyz":
            if self.ready:
                return 200, self._json({"status": "ready", "artifact_digest": self.digest}), "application/json", []
            return 503, self._json({"status": "not ready"}), "application/json", []
        if route == "/metrics":
            return 200, self.metrics.text(), CONTENT_TYPE_LATEST, []
        deadline = time.monotonic() + self.limits.request_timeout_s
        body, held = await read_body(scope, receive, self.limits, self.bodies)
        ctype = _header(scope, b"content-type")
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                doc = await self._answer(route, body, ctype, deadline)
        except TimeoutError:
            raise Refused(503, f"time budget of {self.limits.request_timeout_s:g} s spent", "timeout",
                          retry_after=self.limits.retry_after_s) from None
        except http_api.RequestError as e:
            raise Refused(e.status, str(e), "too_large" if e.status == 413 else "bad_request") from None
        except InputError as e:  # the runtime refused an input (e.g. outputs NaN/Inf for an image)
            raise Refused(400, str(e), "bad_request") from None
        finally:
            self.bodies.give(held)  # the body is read and decoded (or refused): its bytes go back to the budget
        return 200, self._json(doc), "application/json", []

    # -- the work --------------------------------------------------------------------------------------------------
    async def _answer(self, route: str, body: bytes, ctype: str | None, deadline: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if route == "/embed-text":
            texts, ensemble = http_api.request_texts(body, ctype, self.limits.request)
            self._need_text_tower()
            emb = await self._model_call(lambda: self.clf.encode_text(texts, ensemble=ensemble))
            return http_api.embed_response(emb, self.digest)
        request = http_api.parse_image_request(body, ctype, self.limits.request, allow_labels=route == "/classify")
        if request.labels is not None:
            self._need_text_tower()
        n = len(request.images)
        if self.admitted_images + n > self.limits.max_queue_images:
            raise Refused(503, f"server busy: {self.admitted_images} images in progress, at most "
                               f"{self.limits.max_queue_images}", "queue_full", retry_after=self.limits.retry_after_s)
        self.admitted_images += n
        self.metrics.queue_images.set(self.admitted_images)
        try:
            assert self.batcher is not None
            with self.batcher.incoming():
                alone = self.admitted_images == n and self.batcher.incoming_requests == 1
                if alone and http_api.request_pixels(request.images, self.limits.request) <= INLINE_DECODE_PIXELS:
                    # alone and small: decoded here, no thread hop (~0.2 ms a hop on these VMs)
                    arrays = http_api.preprocess_images(self.clf, request.images)
                else:
                    arrays = await loop.run_in_executor(self.decode_pool, self._decode, request.images)
            if request.labels is not None:
                labels = request.labels
                preds = await self._model_call(lambda: self.clf.classify(np.stack(arrays), labels=labels))
                return http_api.predictions_response(preds, labels, self.digest)
            try:
                rows = await self.batcher.submit(arrays, deadline)
            except QueueFull as e:
                raise Refused(503, f"server busy: {e}", "queue_full", retry_after=self.limits.retry_after_s) from None
            except DeadlinePassed:
                raise Refused(503, f"time budget of {self.limits.request_timeout_s:g} s spent", "timeout",
                              retry_after=self.limits.retry_after_s) from None
        finally:
            self.admitted_images -= n
            self.metrics.queue_images.set(self.admitted_images)
        if route == "/embed":
            return http_api.embed_response(http_api.unit_rows(np.stack([e for _, e in rows])), self.digest)
        return http_api.classify_response(np.stack([lg for lg, _ in rows]), self.clf.class_names, self.digest)

    def _decode(self, images: list[http_api.RequestImage]) -> list[np.ndarray]:
        http_api.request_pixels(images, self.limits.request)
        return http_api.preprocess_images(self.clf, images)

    def _need_text_tower(self) -> None:
        if not getattr(self.clf, "has_text_tower", False):
            raise http_api.RequestError(NO_TEXT_TOWER)

    async def _model_call(self, fn: Any) -> Any:
        """A call outside the batcher (text tower, open-vocabulary classify), on the same model thread."""
        assert self.batcher is not None
        try:
            return await asyncio.get_running_loop().run_in_executor(self.batcher.model_pool, fn)
        except ClipDebiasError as e:
            raise http_api.RequestError(str(e)) from None
