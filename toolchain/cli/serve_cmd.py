"""``clip-debias serve``: an artifact over HTTP -- one process by default (``clip_debias.serving.server``), Ray Serve
with ``--engine ray`` (``clip_debias.serving.ray_app``). Parses and prints only."""

from __future__ import annotations

from pathlib import Path
import inspect
from collections.abc import Callable
from typing import Annotated, Optional

import typer

from clip_debias.runtime.choices import FilePrecision, ServeDevice, ServeEngine
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.toolchain.cli.options import choice_option

RAY_ONLY = ("--address", "--replicas", "--metrics-port", "--num-cpus")


def _import(module: str, extra: str, package: str) -> object:
    """``clip_debias.serving.<module>``, or one line naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(f"clip_debias.serving.{module}")
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != package:
            raise
        raise ClipDebiasError(f"clip-debias serve{' --engine ray' if extra == 'ray-serve' else ''} needs {package}: "
                              f"pip install 'clip-debias[{extra}]'") from None


def serve_cmd(
    artifact: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="Artifact directory (manifest.json + model "
                                                                      "files), written by 'clip-debias export "
                                                                      "onnx'.")],
    engine: Annotated[ServeEngine, choice_option(
        ServeEngine, "--engine", "default: one process (uvicorn + dynamic batcher); ray: Ray Serve (a local Ray, or "
                                 "the cluster at --address).")] = ServeEngine.DEFAULT,
    host: Annotated[str, typer.Option(
        "--host", metavar="ADDRESS", help="IP address the HTTP server binds (default 127.0.0.1: this machine only; "
                                          "any other address makes it reachable from that network).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="HTTP port.")] = 8000,
    expect_digest: Annotated[Optional[str], typer.Option(
        "--expect-digest", metavar="DIGEST", help="Serve only the artifact with this digest (sha256:..., as export "
                                                  "and verify print it); checked at every load.")] = None,
    max_batch_size: Annotated[int, typer.Option(
        "--max-batch-size", metavar="N", min=1, help="Images per model call at most.")] = 16,
    batch_wait_ms: Annotated[float, typer.Option(
        "--batch-wait-ms", metavar="MS", min=0, max=10_000, help="How long a model call waits for more images to "
                                                                 "join its batch.")] = 5.0,
    device: Annotated[ServeDevice, choice_option(ServeDevice, "--device", "Runtime device.")] = ServeDevice.CPU,
    precision: Annotated[FilePrecision, choice_option(
        FilePrecision, "--precision", "The artifact's model file to serve (int8: CPU only).")] = FilePrecision.FP32,
    intra_op_threads: Annotated[Optional[int], typer.Option(
        "--intra-op-threads", metavar="N", min=1, help="ONNX Runtime threads of one model call (default: half the "
                                                      "cores; the other half decodes).")] = None,
    model_threads: Annotated[Optional[int], typer.Option(
        "--model-threads", metavar="N", min=1, help="Model calls (batches) that run at once, each with "
                                                    "--intra-op-threads (default: cores / intra-op threads).")]
    = None,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", metavar="N", min=1, help="Images in progress at most; above it: 503 + Retry-After.")] = 256,
    max_body_mb: Annotated[float, typer.Option(
        "--max-body-mb", metavar="MB", min=0.001, help="Request body limit in MiB (413 above it, before "
                                                       "reading).")] = 32.0,
    max_buffered_mb: Annotated[float, typer.Option(
        "--max-buffered-mb", metavar="MB", min=0.001, help="Request bodies held at once over all connections, in "
                                                           "MiB (503 + Retry-After above it).")] = 256.0,
    max_images: Annotated[int, typer.Option(
        "--max-images", metavar="N", min=1, help="Images in one JSON request at most.")] = 64,
    max_request_pixels: Annotated[int, typer.Option(
        "--max-request-pixels", metavar="N", min=1, help="Pixels (width x height, from the image headers) summed "
                                                         "over one request's images at most.")] = 100_000_000,
    header_timeout: Annotated[float, typer.Option(
        "--header-timeout", metavar="S", min=0.001, help="Seconds a client has to send a request's head.")] = 5.0,
    body_timeout: Annotated[float, typer.Option(
        "--body-timeout", metavar="S", min=0.001, help="Seconds a client has to send the whole body (408 "
                                                       "after).")] = 10.0,
    request_timeout: Annotated[float, typer.Option(
        "--request-timeout", metavar="S", min=0.001, help="Seconds from a request's head to its answer (503 "
                                                          "after).")] = 30.0,
    drain_timeout: Annotated[float, typer.Option(
        "--drain-timeout", metavar="S", min=0.001, help="On SIGTERM/SIGINT: seconds in-flight requests get to "
                                                        "finish.")] = 10.0,
    address: Annotated[Optional[str], typer.Option(
        "--address", metavar="ADDRESS", help="Ray engine: the Ray cluster to join (ray://... or HOST:PORT); "
                                             "default a local Ray.")] = None,
    replicas: Annotated[Optional[int], typer.Option(
        "--replicas", metavar="N", min=1, help="Ray engine: copies of the model (default 1).")] = None,
    metrics_port: Annotated[Optional[int], typer.Option(
        "--metrics-port", metavar="PORT", min=1, max=65535, help="Ray engine: port of Ray's Prometheus endpoint "
                                                                 "(default 8080).")] = None,
    num_cpus: Annotated[Optional[int], typer.Option(
        "--num-cpus", metavar="N", min=1, help="Ray engine: CPUs the local Ray may use (default: all).")] = None,
) -> None:
    """Serve ARTIFACT over HTTP: POST /classify, /embed, /embed-text; GET /healthz, /readyz, /metrics. SIGTERM or
    Ctrl-C drains and stops. Needs the 'serve' extra (--engine ray: 'ray-serve')."""
    if engine == ServeEngine.RAY:
        defaults = {n: p.default for n, p in inspect.signature(serve_cmd).parameters.items()}
        given = [f"--{n.replace('_', '-')}" for n, v in (
            ("max_queue", max_queue), ("max_body_mb", max_body_mb), ("max_buffered_mb", max_buffered_mb),
            ("max_images", max_images), ("max_request_pixels", max_request_pixels), ("header_timeout", header_timeout),
            ("body_timeout", body_timeout), ("request_timeout", request_timeout), ("drain_timeout", drain_timeout),
            ("intra_op_threads", intra_op_threads), ("model_threads", model_threads))
            if v != defaults[n]]
        if given:
            raise ClipDebiasError(f"{', '.join(given)}: options of the default engine (Ray Serve has its own limits)")
        _serve_ray(artifact, host, port, expect_digest, max_batch_size, batch_wait_ms, device, precision, address,
                   replicas or 1, metrics_port or 8080, num_cpus)
        return
    given = [n for n, v in zip(RAY_ONLY, (address, replicas, metrics_port, num_cpus)) if v is not None]
    if given:
        raise ClipDebiasError(f"{', '.join(given)}: options of --engine ray")
    server = _import("server", "serve", "uvicorn")
    app_mod = _import("app", "serve", "prometheus_client")
    from clip_debias.serving.http_api import RequestLimits

    limits = app_mod.AppLimits(  # type: ignore[attr-defined]
        RequestLimits(max_body_bytes=int(max_body_mb * (1 << 20)), max_images=max_images,
                      max_request_pixels=max_request_pixels),
        body_timeout_s=body_timeout, request_timeout_s=request_timeout, max_queue_images=max_queue,
        max_buffered_bytes=int(max_buffered_mb * (1 << 20)))
    options = server.ServerOptions(  # type: ignore[attr-defined]
        str(artifact), host=host, port=port, device=device, precision=precision, expect_digest=expect_digest,
        max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, header_timeout_s=header_timeout,
        drain_timeout_s=drain_timeout, limits=limits,
        model_threads=model_threads, **({} if intra_op_threads is None else {"intra_op_threads": intra_op_threads}))
    options.check()

    server.serve(options, _announcer(artifact, host, options.loopback,  # type: ignore[attr-defined]
                                     "POST {base}/classify, /embed, /embed-text; GET {base}/healthz, /readyz, "
                                     "/metrics"))
    typer.echo("stopped", err=True)


def _announcer(artifact: Path, host: str, loopback: bool, routes: str) -> Callable[[str, str], None]:
    """The ``on_ready(base, digest)`` of both engines: the start line (and a warning off loopback), on stderr."""

    def ready(base: str, digest: str) -> None:
        if not loopback:
            typer.echo(f"warning: --host {host}: the server is reachable from that network", err=True)
        typer.echo(f"serving {artifact} ({digest}) at {base}: {routes.format(base=base)}; SIGTERM or Ctrl-C stops",
                   err=True)

    return ready


def _serve_ray(artifact: Path, host: str, port: int, expect_digest: str | None, max_batch_size: int,
               batch_wait_ms: float, device: str, precision: str, address: str | None, replicas: int,
               metrics_port: int, num_cpus: int | None) -> None:
    ray_app = _import("ray_app", "ray-serve", "ray")
    options = ray_app.ServeOptions(  # type: ignore[attr-defined]
        str(artifact), host=host, port=port, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
        replicas=replicas, device=device, precision=precision, metrics_port=metrics_port,
        expect_digest=expect_digest, address=address)
    options.check()
    ready = _announcer(artifact, host, options.loopback, "Ray Serve: POST {base}/classify, GET {base}/healthz; "
                       f"metrics http://127.0.0.1:{metrics_port}/metrics")
    def state(status: str, reason: str) -> None:
        typer.echo(f"warning: Ray Serve application {status}" + (f": {reason}" if reason else ""), err=True)

    ray_app.serve_until_stopped(options, ready, num_cpus=num_cpus, on_state=state)  # type: ignore[attr-defined]
    typer.echo("stopped", err=True)


def register(app: typer.Typer) -> None:
    app.command("serve", short_help="Serve an artifact over HTTP (one process with dynamic batching and Prometheus "
                                    "metrics; Ray Serve for clusters).")(serve_cmd)
