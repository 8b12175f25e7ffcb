"""A bounded HTTP load generator for a local server (stdlib only): the serve tests and ``benchmarks/bench_serving.py``.

``run_load(url, requests, threads)`` sends every request exactly once from ``threads`` client threads and returns
each one's status, JSON answer and latency (send to full answer, ms); ``keep_alive=True`` keeps one connection per
client thread (``http.client``) instead of one per request (``urllib``). ``run_calls(fn, items, threads)`` does the
same for any call (the runtime in-process, a Triton client), so every candidate is timed by one loop.
``run_load_async(url, requests, clients)`` is the lean generator for throughput: one thread, one asyncio event loop,
``clients`` keep-alive connections, each request's bytes encoded once before the clock starts, answers parsed from
the raw stream; it costs the shared cores a fraction of what 32 ``http.client`` threads cost (their GIL hand-offs),
so the server, not the client, is what a throughput number measures. Bounded: a
fixed list of requests, a per-request timeout, and a deadline after which the remaining requests are not sent
(they are reported as not sent). Only loopback addresses are accepted as targets.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Request:
    body: bytes
    content_type: str


@dataclass
class Answer:
    status: int  # HTTP status; 0: not sent (deadline) or no answer (connection error / timeout)
    doc: dict | None
    latency_ms: float
    error: str = ""


@dataclass
class LoadResult:
    answers: list[Answer]  # in request order
    wall_s: float
    threads: int

    def latencies(self) -> np.ndarray:
        return np.array([a.latency_ms for a in self.answers if a.status == 200])

    def summary(self) -> dict[str, float]:
        """p50 / p95 latency (ms) of the answered requests and requests per second over the whole run."""
        lat = self.latencies()
        ok = int((np.array([a.status for a in self.answers]) == 200).sum())
        p50, p95 = (float(v) for v in np.percentile(lat, [50, 95])) if len(lat) else (float("nan"),) * 2
        return {"requests": len(self.answers), "ok": ok, "p50_ms": p50, "p95_ms": p95,
                "requests_per_s": ok / self.wall_s if self.wall_s > 0 else 0.0, "threads": self.threads}


def read_until_closed(sock: socket.socket) -> bytes:
    """Every byte the peer sends until it closes or resets the connection (bounded by the socket's timeout)."""
    data = b""
    try:
        while part := sock.recv(65536):
            data += part
    except OSError:
        pass
    return data


def check_loopback(url: str) -> None:
    host = urllib.parse.urlparse(url).hostname or ""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"{url}: the load generator sends to loopback addresses only")


def send(url: str, req: Request, timeout_s: float) -> Answer:
    """POST one request; never raises for HTTP or connection errors (they are in the ``Answer``)."""
    check_loopback(url)
    t0 = time.perf_counter()
    http = urllib.request.Request(url, data=req.body, method="POST", headers={"Content-Type": req.content_type})
    try:
        with urllib.request.urlopen(http, timeout=timeout_s) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        return Answer(0, None, (time.perf_counter() - t0) * 1000.0, f"{type(e).__name__}: {e}")
    latency = (time.perf_counter() - t0) * 1000.0
    try:
        doc = json.loads(raw)
    except ValueError:
        return Answer(status, None, latency, "answer is not JSON")
    return Answer(status, doc, latency)


def run_calls(fn: Callable[[object], Answer], items: Sequence[object], threads: int,
              deadline_s: float = 300.0) -> LoadResult:
    """``fn(item)`` once per item from ``threads`` threads (see the module docstring); ``fn`` returns an ``Answer``
    whose ``latency_ms`` is filled in here."""
    t_start = time.perf_counter()

    def one(item: object) -> Answer:
        if time.perf_counter() - t_start > deadline_s:
            return Answer(0, None, 0.0, "not sent: deadline")
        t0 = time.perf_counter()
        answer = fn(item)
        answer.latency_ms = (time.perf_counter() - t0) * 1000.0
        return answer

    with ThreadPoolExecutor(max_workers=threads) as pool:
        answers = list(pool.map(one, items))
    return LoadResult(answers, time.perf_counter() - t_start, threads)


class KeepAliveSender:
    """POST over one HTTP/1.1 connection per thread (reopened after an error)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        check_loopback(url)
        parts = urllib.parse.urlparse(url)
        self.host, self.port, self.path, self.timeout_s = parts.hostname, parts.port or 80, parts.path, timeout_s
        self.local = threading.local()

    def __call__(self, req: Request) -> Answer:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            conn.request("POST", self.path, body=req.body, headers={"Content-Type": req.content_type})
            r = conn.getresponse()
            status, raw = r.status, r.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            self.local.conn = None
            return Answer(0, None, 0.0, f"{type(e).__name__}: {e}")
        try:
            return Answer(status, json.loads(raw), 0.0)
        except ValueError:
            return Answer(status, None, 0.0, "answer is not JSON")


def _encoded(host: str, port: int, path: str, req: Request) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {req.content_type}\r\n"
            f"Content-Length: {len(req.body)}\r\n\r\n")
    return head.encode("latin-1") + req.body


async def _read_answer(reader: Any) -> tuple[int, bytes, bool]:
    """(status, body, server keeps the connection) of one HTTP/1.1 answer with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = dict((k.strip().lower(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:] if ln))
    body = await reader.readexactly(int(fields.get("content-length", "0")))
    return status, body, fields.get("connection", "").lower() != "close"


def run_load_async(url: str, requests: list[Request], clients: int, timeout_s: float = 60.0,
                   deadline_s: float = 300.0) -> LoadResult:
    """Send ``requests`` over ``clients`` keep-alive connections from one asyncio loop (see the module docstring);
    answers and latencies as ``run_load``'s."""
    import asyncio

    check_loopback(url)
    parts = urllib.parse.urlparse(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
    wire = [_encoded(host, port, path, r) for r in requests]
    answers: list[Answer | None] = [None] * len(wire)

    async def client(todo: Any, t_start: float) -> None:
        reader = writer = None
        while True:
            try:
                i = todo.get_nowait()
            except asyncio.QueueEmpty:
                break
            if time.perf_counter() - t_start > deadline_s:
                answers[i] = Answer(0, None, 0.0, "not sent: deadline")
                continue
            t0 = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
                writer.write(wire[i])
                status, raw, keep = await asyncio.wait_for(_read_answer(reader), timeout_s)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                if writer is not None:
                    writer.close()
                reader = writer = None
                answers[i] = Answer(0, None, (time.perf_counter() - t0) * 1000.0, f"{type(e).__name__}: {e}")
                continue
            latency = (time.perf_counter() - t0) * 1000.0
            try:
                answers[i] = Answer(status, json.loads(raw), latency)
            except ValueError:
                answers[i] = Answer(status, None, latency, "answer is not JSON")
            if not keep:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def main() -> float:
        todo: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(wire)):
            todo.put_nowait(i)
        t_start = time.perf_counter()
        await asyncio.gather(*(client(todo, t_start) for _ in range(clients)))
        return time.perf_counter() - t_start

    try:
        import uvloop  # the server's own event loop, when installed (the serve extra)
    except ImportError:
        uvloop = None
    wall = uvloop.run(main()) if uvloop is not None else asyncio.run(main())
    return LoadResult([a if a is not None else Answer(0, None, 0.0, "not sent") for a in answers], wall, clients)


def run_load(url: str, requests: list[Request], threads: int, timeout_s: float = 60.0,
             deadline_s: float = 300.0, keep_alive: bool = False) -> LoadResult:
    """Send ``requests`` from ``threads`` threads (see the module docstring)."""
    check_loopback(url)
    sender: Callable[[object], Answer] = (KeepAliveSender(url, timeout_s) if keep_alive else  # type: ignore[assignment]
                                          (lambda req: send(url, req, timeout_s)))
    return run_calls(sender, requests, threads, deadline_s)
