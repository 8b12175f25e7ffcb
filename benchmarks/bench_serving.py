"""Serving candidates side by side and the default server's hardening, on the shipped bias-lab model (zero-shot export)
and lab PNGs, loopback only, bounded in count and time:

1. Candidates, started once and measured in interleaved rounds (``--rounds``): the runtime in-process (1 thread;
   threaded with 4 / 8 / 16 / 32 threads, each with ONNX Runtime's default intra-op threads and with the served
   model's, the best kept), ``clip-debias serve`` (default engine: uvicorn + asyncio batcher; ``default-allcores``:
   the same with ``--intra-op-threads`` = all cores; ``default-mN``: with ``--model-threads N``), ``serve --engine
   ray`` (Ray Serve on a local Ray, ``--ray-cpus``) and Triton's python-backend repository on the pytriton wheel's ``tritonserver`` (needs .venv-triton; its client sends the preprocessed tensor, decoded in
   the client thread). Each: 1 client (``--single`` sequential requests) and ``--clients`` clients (``--requests``
   requests, one keep-alive connection per client; ``--client async``: one asyncio loop sends for all of them,
   ``threads``: one ``http.client`` thread each), p50 / p95 / requests/s and its ratio to the in-process best of the
   same round, CPU per request over the clients' load
   (the default engine's process and its client, or the in-process run's); start-up (launch to ready) and RSS of
   the process tree after the load.
2. The default server under attack: ``--slow`` connections held open mid-body while /healthz p99 (200 probes, a new
   connection each) and /classify (20 requests) are measured; a 200 MiB body (Content-Length, then chunked) refused
   with its RSS growth; SIGTERM with a request in flight: exit code, seconds to exit, sockets left.
3. ``--verify-engines``: ``verify`` on the lab test split (``--n-test`` images): local engine vs ``--engine ray``
   (a local Ray with ``--ray-cpus`` CPUs, 2 actors), wall time of each and Ray's start-up apart.

    python benchmarks/bench_serving.py [--requests 200] [--clients 32] [--rounds 2] [--slow 1000] [--client async]
        [--candidates inprocess,default,ray,triton] [--out DIR]

Servers bind 127.0.0.1; run it inside ``unshare -n`` (loopback only) where you can. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CLI = [sys.executable, "-c", "from clip_debias.toolchain.cli.app import main; main()", "serve"]


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


def summary(result: Any) -> dict[str, float]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in result.summary().items()}


class CliServer:
    """``clip-debias serve`` in a subprocess; ready when its log says ``serving``."""

    def __init__(self, art: Path, log: Path, *extra: str) -> None:
        from triton_server import free_port

        self.port, self.log = free_port(), log
        self.t0 = time.perf_counter()
        with open(log, "wb") as f:
            self.proc = subprocess.Popen([*CLI, str(art), "--port", str(self.port), *extra], stdout=f,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.started_s = float("nan")

    def wait(self, timeout_s: float = 300) -> bool:
        while time.perf_counter() - self.t0 < timeout_s and self.proc.poll() is None:
            if "serving " in self.log.read_text(errors="replace"):
                self.started_s = time.perf_counter() - self.t0
                return True
            time.sleep(0.05)
        return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/classify"

    def stop(self, timeout_s: float = 120) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode


class TritonCandidate:
    """The python-backend repository on pytriton's tritonserver; the client preprocesses (as the served path
    decodes in the server, the client thread here pays for it)."""

    def __init__(self, art: Path, out: Path, clf: Any) -> None:
        from triton_server import find_server_env, start_server

        from clip_debias.exporters.triton import export_triton

        env = find_server_env()
        if env is None:
            raise RuntimeError("no Triton server environment (.venv-triton)")
        export_triton(art, out / "repo", backend="python", max_batch=16, server_cores=2)
        (out / "triton_run").mkdir(exist_ok=True)
        self.server = start_server(env, out / "repo", out / "triton_run")
        self.clf, self.local = clf, threading.local()

    def wait(self, timeout_s: float = 300) -> bool:
        return self.server.wait(timeout_s)

    @property
    def started_s(self) -> float:
        return self.server.started_s

    @property
    def proc(self) -> subprocess.Popen:
        return self.server.process

    def call(self, path: Path) -> Any:
        import tritonclient.http as httpclient

        from clip_debias.runtime import load_image
        from clip_debias.serving.loadtest import Answer

        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = httpclient.InferenceServerClient(self.server.url)
        x = self.clf.preprocess(load_image(path))[None]
        inp = httpclient.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        client.infer("clip_debias", [inp], outputs=[httpclient.InferRequestedOutput("logits")])
        return Answer(200, None, 0.0)

    def stop(self) -> None:
        self.server.stop()


def candidates_table(art: Path, data: Path, out: Path, names: list[str], requests: int, single: int,
                     clients: int, rounds: int, client: str = "async") -> dict:
    from proc_info import tree_rss_mb

    from clip_debias import runtime
    from clip_debias.serving.loadtest import Answer, Request, run_calls, run_load, run_load_async

    paths = sorted(data.rglob("test_*.png"))
    paths = (paths * (requests // max(1, len(paths)) + 1))[:requests]  # each image again when requests > images
    bodies = [Request(p.read_bytes(), "image/png") for p in paths]
    clf = runtime.load(art, device="cpu")
    servers: dict[str, Any] = {}
    started: dict[str, Any] = {}
    try:
        for name in names:  # started one after the other, each measured alone from launch to ready
            if name.startswith("default"):  # allcores: ORT's default intra-op threads (before 12/2026);
                # default-mN: --model-threads N (default-m1: one model call at a time, the setting before 12/2026)
                threads = ["--intra-op-threads", str(os.cpu_count() or 1)] if name == "default-allcores" else []
                if name.startswith("default-m"):
                    threads += ["--model-threads", name.removeprefix("default-m")]
                servers[name] = CliServer(art, out / f"{name}.log", "--max-batch-size", "16", "--batch-wait-ms", "5",
                                          *threads)
            elif name == "ray":
                servers[name] = CliServer(art, out / "ray.log", "--engine", "ray", "--max-batch-size", "16",
                                          "--batch-wait-ms", "5", "--num-cpus", "2", "--metrics-port",
                                          str(_free_port()))
            elif name == "triton":
                try:
                    servers[name] = TritonCandidate(art, out, clf)
                except RuntimeError as e:
                    started[name] = {"skipped": str(e)}
                    continue
            else:
                continue
            ok = servers[name].wait()
            started[name] = {"start_s": round(servers[name].started_s, 2)} if ok else {"failed": "not ready"}
            if not ok:
                servers.pop(name).stop()

        from clip_debias.serving.server import default_intra_op_threads

        # the in-process best: 4..32 threads, each with ONNX Runtime's default intra-op threads (one per core) and
        # with the served model's (default_intra_op_threads), so the server's thread setting is no edge of its own
        clfs = {"ort-default": clf, f"intra-op {default_intra_op_threads()}":
                runtime.load(art, device="cpu", intra_op_threads=default_intra_op_threads())}

        def inproc(p: Path, c: Any = clf) -> Answer:
            c.classify([p])
            return Answer(200, None, 0.0)

        best_cfg: list[str] = []

        lat: dict[str, dict[str, list]] = {}
        for r in range(rounds):
            for name in names:
                if name == "inprocess":
                    one = run_calls(inproc, paths[:single], 1)
                    runs = {f"{t} threads, {k}": cpu_timed(lambda c=c, t=t: run_calls(lambda p: inproc(p, c), paths,
                                                                                      t), None)
                            for k, c in clfs.items() for t in (4, 8, 16, 32)}
                    cfg, (best, cpu) = max(runs.items(), key=lambda kv: kv[1][0].summary()["requests_per_s"])
                    best_cfg.append(cfg)
                elif name in servers and name != "triton":
                    url = servers[name].url
                    load = (run_load_async if client == "async" else
                            lambda u, b, n: run_load(u, b, n, keep_alive=True))
                    load(url, bodies[:clients], clients)  # warm-up
                    one = load(url, bodies[:single], 1)
                    best, cpu = cpu_timed(lambda: load(url, bodies, clients), servers[name].proc.pid)
                    if not name.startswith("default"):  # Ray's work is in other processes than the CLI's
                        cpu = (float("nan"), float("nan"))
                elif name in servers:
                    call = servers[name].call
                    run_calls(call, paths[:clients], clients)
                    one = run_calls(call, paths[:single], 1)
                    best, cpu = run_calls(call, paths, clients), (float("nan"), float("nan"))
                else:
                    continue
                lat.setdefault(name, {"one": [], "many": [], "cpu": []})
                lat[name]["one"].append(one)
                lat[name]["many"].append(best)
                lat[name]["cpu"].append([v / len(best.answers) * 1000.0 for v in cpu])
        table = {}
        for name, res in lat.items():
            one = np.concatenate([x.latencies() for x in res["one"]])
            many = np.concatenate([x.latencies() for x in res["many"]])
            rps = [x.summary()["requests_per_s"] for x in res["many"]]
            row = {"one_client_p50_ms": round(float(np.percentile(one, 50)), 2),
                   "one_client_p95_ms": round(float(np.percentile(one, 95)), 2),
                   "many_p50_ms": round(float(np.percentile(many, 50)), 2),
                   "many_p95_ms": round(float(np.percentile(many, 95)), 2),
                   "requests_per_s": round(float(np.median(rps)), 1), "requests_per_s_rounds": [round(v, 1)
                                                                                             for v in rps],
                   "cpu_ms_per_request": round(float(np.median([c[0] for c in res["cpu"]])), 2),
                   "client_cpu_ms_per_request": round(float(np.median([c[1] for c in res["cpu"]])), 2),
                   "clients": res["many"][0].threads, "answered": int(sum(x.summary()["ok"] for x in res["many"]))}
            if name == "inprocess":
                row.update(inprocess_footprint(art, paths[0]), best_of_rounds=best_cfg)
            else:
                row.update(**started.get(name, {}), rss_mb=round(tree_rss_mb(servers[name].proc.pid), 1))
            table[name] = row
        if "inprocess" in lat:  # each candidate's 32-client requests/s over the in-process best of the same round
            base = [x.summary()["requests_per_s"] for x in lat["inprocess"]["many"]]
            for name, res in lat.items():
                if name != "inprocess":
                    ratios = [x.summary()["requests_per_s"] / b for x, b in zip(res["many"], base)]
                    table[name].update(ratio_to_inprocess_best_rounds=[round(v, 3) for v in ratios],
                                       ratio_to_inprocess_best=round(float(np.median(ratios)), 3))
        for name, info in started.items():
            table.setdefault(name, info)
        return table
    finally:
        for s in servers.values():
            s.stop()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_timed(run: Any, server_pid: int | None) -> tuple[Any, tuple[float, float]]:
    """``run()`` and the CPU seconds it cost: (the server process's, or this process's when ``server_pid`` is None;
    this process's (the client's), or 0)."""
    own = (lambda: sum(os.times()[:2]))
    s0, c0 = (process_cpu_s(server_pid) if server_pid else 0.0), own()
    result = run()
    s1, c1 = (process_cpu_s(server_pid) if server_pid else 0.0), own()
    return result, ((s1 - s0, c1 - c0) if server_pid else (c1 - c0, 0.0))


def _free_port() -> int:
    from triton_server import free_port

    return free_port()


def inprocess_footprint(art: Path, image: Path) -> dict:
    """Start-up (interpreter launch to the first answer) and RSS of a fresh process that runs the runtime alone
    (this benchmark's own process holds torch for the export)."""
    code = ("import re, sys, time; from clip_debias import runtime; clf = runtime.load(sys.argv[1], device='cpu'); "
            "clf.classify([sys.argv[2]]); "
            "print(int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1)))")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, str(art), str(image)], capture_output=True, text=True,
                         check=True)
    return {"start_s": round(time.perf_counter() - t0, 2), "rss_mb": round(int(res.stdout.split()[-1]) / 1024, 1)}


def slow_connections(art: Path, data: Path, out: Path, n_slow: int) -> dict:
    """``n_slow`` connections held mid-body (timeouts raised to 60 s so none is dropped while measuring)."""
    from clip_debias.serving.loadtest import Request, run_load

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * n_slow + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * n_slow + 256), hard))
    s = CliServer(art, out / "slow.log", "--header-timeout", "60", "--body-timeout", "60", "--request-timeout", "90")
    if not s.wait():
        return {"failed": s.log.read_text(errors="replace")[-2000:]}
    socks = []
    try:
        for i in range(n_slow):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=30)
            c.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                      b"Content-Length: 1000\r\n\r\nab")
            socks.append(c)
        time.sleep(1.0)
        health = []
        for _ in range(200):
            t0 = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
            conn.request("GET", "/healthz")
            status = conn.getresponse().status
            conn.close()
            health.append((time.perf_counter() - t0) * 1000.0 if status == 200 else float("inf"))
        paths = sorted(data.rglob("test_*.png"))[:20]
        res = run_load(s.url, [Request(p.read_bytes(), "image/png") for p in paths], 4, timeout_s=30)
        return {"slow_connections": len(socks), "healthz_p50_ms": round(float(np.percentile(health, 50)), 2),
                "healthz_p99_ms": round(float(np.percentile(health, 99)), 2),
                "classify_answered": res.summary()["ok"], "classify_sent": len(paths),
                "classify_p50_ms": round(res.summary()["p50_ms"], 2)}
    finally:
        for c in socks:
            c.close()
        s.stop()


def big_body(art: Path, out: Path, mib: int = 200) -> dict:
    """A ``mib`` MiB body sent as fast as the server takes it, with Content-Length and chunked: the answer and the
    server's RSS growth (MB)."""
    from proc_info import tree_rss_mb

    from clip_debias.serving.loadtest import read_until_closed

    s = CliServer(art, out / "big.log")
    if not s.wait():
        return {"failed": s.log.read_text(errors="replace")[-2000:]}
    block = b"x" * (1 << 20)
    doc = {}
    try:
        for kind in ("content_length", "chunked"):
            before = tree_rss_mb(s.proc.pid)
            head = ("Content-Length: %d" % (mib << 20)) if kind == "content_length" else "Transfer-Encoding: chunked"
            c = socket.create_connection(("127.0.0.1", s.port), timeout=30)
            c.sendall(f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n{head}\r\n\r\n".encode())
            got: list[bytes] = []
            reader = threading.Thread(target=lambda: got.append(read_until_closed(c)))
            reader.start()
            sent, peak = 0, before
            try:
                for _ in range(mib):
                    c.sendall(block if kind == "content_length" else b"%x\r\n%s\r\n" % (len(block), block))
                    sent += 1
                    peak = max(peak, tree_rss_mb(s.proc.pid))
            except OSError:
                pass
            reader.join(30)
            c.close()
            doc[kind] = {"answer": (got[0].split(b"\r\n", 1)[0].decode() if got else ""), "mib_sent": sent,
                         "rss_growth_mb": round(max(peak, tree_rss_mb(s.proc.pid)) - before, 2)}
    finally:
        s.stop()
    return doc


def sigterm(art: Path, data: Path, out: Path, drain_s: float = 5.0) -> dict:
    """SIGTERM while a request is in flight (half its body sent): its answer, exit code, seconds, sockets left."""
    from proc_info import listening

    from clip_debias.serving.loadtest import read_until_closed

    s = CliServer(art, out / "term.log", "--drain-timeout", str(drain_s))
    if not s.wait():
        return {"failed": s.log.read_text(errors="replace")[-2000:]}
    body = sorted(data.rglob("test_*.png"))[0].read_bytes()
    c = socket.create_connection(("127.0.0.1", s.port), timeout=30)
    c.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n"
              % len(body) + body[:10])
    time.sleep(0.2)
    t0 = time.perf_counter()
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    c.sendall(body[10:])
    answer = read_until_closed(c).split(b"\r\n", 1)[0].decode()
    c.close()
    try:
        code = s.proc.wait(timeout=drain_s + 30)
    except subprocess.TimeoutExpired:
        s.proc.kill()
        code = None
    return {"in_flight_answer": answer, "exit_code": code, "exit_s": round(time.perf_counter() - t0, 2),
            "drain_timeout_s": drain_s, "listening_after": sorted(listening(port=s.port))}


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
    ap.add_argument("--n-test", type=int, default=240)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--single", type=int, default=100)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--client", choices=["async", "threads"], default="async",
                    help="load generator for the servers: one asyncio loop (lean) or one http.client thread each")
    ap.add_argument("--slow", type=int, default=1000)
    ap.add_argument("--candidates", default="inprocess,default,ray,triton")
    ap.add_argument("--skip-hardening", action="store_true")
    ap.add_argument("--verify-engines", action="store_true", help="also time verify: local engine vs --engine ray")
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_serving_"))
    art, data = lab_artifact_and_data(out, args.n_test)
    doc = {"candidates": candidates_table(art, data, out, args.candidates.split(","), args.requests, args.single,
                                          args.clients, args.rounds, args.client)}
    if not args.skip_hardening:
        doc.update(slow=slow_connections(art, data, out, args.slow), big_body=big_body(art, out),
                   sigterm=sigterm(art, data, out))
    if args.verify_engines:
        doc["verify"] = verify_engines(art, data, args.ray_cpus)
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
