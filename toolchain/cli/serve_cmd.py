"""``clip-debias serve``: an artifact behind Ray Serve (``clip_debias.serving.ray_app``). Parses and prints only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from clip_debias.runtime.choices import FilePrecision, ServeDevice
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.toolchain.cli.options import choice_option


def serve_cmd(
    artifact: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="Artifact directory (manifest.json + model "
                                                                      "files), written by 'clip-debias export "
                                                                      "onnx'.")],
    host: Annotated[str, typer.Option(
        "--host", metavar="ADDRESS", help="IP address the HTTP server binds (default 127.0.0.1: this machine only; "
                                          "any other address makes it reachable from that network).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="HTTP port.")] = 8000,
    max_batch_size: Annotated[int, typer.Option(
        "--max-batch-size", metavar="N", min=1, help="Images per model call at most (Ray Serve's "
                                                     "@serve.batch).")] = 16,
    batch_wait_ms: Annotated[float, typer.Option(
        "--batch-wait-ms", metavar="MS", min=0, max=10_000, help="How long a model call waits for more images to "
                                                                 "join its batch.")] = 5.0,
    replicas: Annotated[int, typer.Option(
        "--replicas", metavar="N", min=1, help="Copies of the model (each gets cores // replicas ONNX Runtime "
                                               "threads).")] = 1,
    device: Annotated[ServeDevice, choice_option(ServeDevice, "--device", "Runtime device of every replica.")]
    = ServeDevice.CPU,
    precision: Annotated[FilePrecision, choice_option(
        FilePrecision, "--precision", "The artifact's model file to serve (int8: CPU only).")] = FilePrecision.FP32,
    metrics_port: Annotated[int, typer.Option(
        "--metrics-port", metavar="PORT", min=1, max=65535, help="Port of Ray's Prometheus endpoint (/metrics) on "
                                                                 "this machine.")] = 8080,
    num_cpus: Annotated[Optional[int], typer.Option(
        "--num-cpus", metavar="N", min=1, help="CPUs the local Ray may use (default: all).")] = None,
) -> None:
    """Serve ARTIFACT over HTTP with dynamic batching: POST /classify (an image file, or JSON {"images": a list of
    base64 image files}) -> labels, probabilities, artifact digest; GET /healthz; Prometheus metrics. Ctrl-C stops.
    Needs the 'serve' extra."""
    try:
        from clip_debias.serving import ray_app
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "ray":
            raise
        raise ClipDebiasError("clip-debias serve needs Ray Serve: pip install 'clip-debias[serve]'") from None

    options = ray_app.ServeOptions(str(artifact), host=host, port=port, max_batch_size=max_batch_size,
                                   batch_wait_ms=batch_wait_ms, replicas=replicas, device=device,
                                   precision=precision, metrics_port=metrics_port)
    options.check()

    def ready(base: str, health: dict[str, Any]) -> None:
        if not options.loopback:
            typer.echo(f"warning: --host {host}: the server is reachable from that network", err=True)
        typer.echo(f"serving {artifact} ({health.get('artifact_digest')}) at {base}: POST {base}/classify, "
                   f"GET {base}/healthz; metrics http://127.0.0.1:{metrics_port}/metrics; Ctrl-C stops", err=True)

    ray_app.serve_until_stopped(options, ready, num_cpus=num_cpus)
    typer.echo("stopped", err=True)


def register(app: typer.Typer) -> None:
    app.command("serve", short_help="Serve an artifact over HTTP (Ray Serve, dynamic batching, Prometheus "
                                    "metrics).")(serve_cmd)
