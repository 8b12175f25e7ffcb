"""``clip-debias export onnx|tensorrt|triton`` and ``clip-debias bench``. torch/onnx are imported inside commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.choices import FilePrecision
from clip_debias.toolchain.choices import TritonBackend, TritonKind
from clip_debias.toolchain.cli.help import App
from clip_debias.toolchain.cli.options import ForceOpt, JsonOpt, check_json_target, choice_option

export_app = App(help="Export a built model: ONNX artifact, TensorRT engine, Triton model repository.",
                 no_args_is_help=True)


@export_app.command("onnx")
def onnx_cmd(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="Model directory written by 'clip-debias "
                                                                        "build'.")],
    out: Annotated[Path, typer.Option(
        "--out", metavar="DIR", help="Artifact directory to write: new, empty, or an artifact of ours (replaced "
                                     "atomically).")],
    precision: Annotated[str, typer.Option(
        "--precision", metavar="LIST", help="Graphs to write: fp32 | fp16 | int8 | both (= fp32,fp16) | a comma list "
                                            "such as fp32,int8. int8 = dynamically quantized linear layers, for the "
                                            "CPU.")] = "fp32",
    opset: Annotated[int, typer.Option("--opset", metavar="N", help="ONNX opset (14 up to what the installed torch's "
                                                                    "TorchScript exporter writes: 20 on torch "
                                                                    "2.14).")] = 18,
    ort_optimize: Annotated[bool, typer.Option("--ort-optimize/--no-ort-optimize",
                                               help="Also save model.ort.onnx when it is measurably faster.")] = True,
    fused_attention: Annotated[bool, typer.Option(
        "--fused-attention/--no-fused-attention",
        help="Write an ONNX Runtime-only graph with its fused ops (Attention, SkipLayerNormalization; patch "
             "embedding as a GEMM): the fast one on CUDA (H100, ViT-B/16 fp16: 1.8x the plain graph); not for "
             "TensorRT, and no faster on the CPU (ViT-B/16 on 2 cores: about 1.03x the plain graph's time).")] = False,
    fp16_fp32_ops: Annotated[str, typer.Option(
        "--fp16-fp32-ops", metavar="OPS",
        help="Comma list of ONNX op types model.fp16.onnx keeps in fp32, e.g. LayerNormalization (default: none; "
             "LayerNormalization already computes its statistics in fp32).")] = "",
    text: Annotated[bool, typer.Option(
        "--text/--no-text", help="Also export the text tower (text.onnx in the listed precisions, gated like the "
                                 "image graph) and its tokenizer (tokenizer.json): labels at request time, text "
                                 "embeddings, search. A random-weight model has none to export.")] = True,
    text_weights: Annotated[Optional[Path], typer.Option(
        "--text-weights", metavar="FILE", help="The model's weights file, for its text tower (default: found by "
                                               "the model's identity: open_clip tag, shipped weights, weights "
                                               "cache).")] = None,
) -> None:
    """Export MODEL_DIR to an ONNX artifact (parity-gated against torch; nothing is written on failure). The steps
    and each gate's numbers go to stderr as they pass; stdout gets what was written and its digest."""
    from clip_debias.exporters.onnx_export import export_onnx_report
    from clip_debias.exporters.text_export import text_clip_for

    text_clip = text_clip_for(model_dir, text_weights) if text else None
    report = export_onnx_report(model_dir, out, precision=precision, opset=opset, ort_optimize=ort_optimize,
                                fused_attention=fused_attention, fp16_fp32_ops=fp16_fp32_ops.split(","),
                                text_clip=text_clip)
    typer.echo(f"wrote {report.artifact} ({', '.join(report.files)}; every graph passed its parity gate)")
    typer.echo(f"artifact digest {report.digest} (pin it: clip-debias verify ... --expect-digest {report.digest})")
    warn_if_transductive(report.artifact)


@export_app.command("tensorrt")
def tensorrt_cmd(
    artifact: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="Artifact directory written by 'clip-debias "
                                                                      "export onnx'.")],
    fp16: Annotated[bool, typer.Option("--fp16", help="Build an fp16 engine.")] = False,
    min_batch: Annotated[int, typer.Option("--min-batch", metavar="N", min=1, help="Smallest batch of the engine's "
                                                                                   "optimization profile.")] = 1,
    opt_batch: Annotated[int, typer.Option("--opt-batch", metavar="N", min=1, help="Batch the engine is tuned "
                                                                                   "for.")] = 8,
    max_batch: Annotated[int, typer.Option("--max-batch", metavar="N", min=1, help="Largest batch of the "
                                                                                   "engine.")] = 32,
    workspace_gb: Annotated[float, typer.Option("--workspace-gb", metavar="GIB",
                                                help="Builder workspace limit in GiB.")] = 4.0,
) -> None:
    """Build a TensorRT engine from ARTIFACT's ONNX and add it to the artifact (needs TensorRT and an NVIDIA GPU)."""
    from clip_debias.exporters.tensorrt_export import TENSORRT_CONTEXT, EngineOptions, export_tensorrt
    from clip_debias.runtime.backends import import_tensorrt

    import_tensorrt(TENSORRT_CONTEXT)  # the one-line install hint before anything else
    export_tensorrt(artifact, EngineOptions(fp16, min_batch, opt_batch, max_batch, workspace_gb))
    from clip_debias.runtime.integrity import verify_artifact

    typer.echo(f"wrote {artifact / 'model.plan'}")
    typer.echo(f"artifact digest {verify_artifact(artifact)[1]} (the engine changed it)")


@export_app.command("triton")
def triton_cmd(
    artifact: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="Artifact directory written by 'clip-debias "
                                                                      "export onnx'.")],
    repo: Annotated[Path, typer.Option("--repo", metavar="DIR", help="Triton model repository directory.")],
    max_batch: Annotated[Optional[int], typer.Option(
        "--max-batch", metavar="N", min=1, help="Triton max_batch_size (default 32; int8: 1, and a larger value is "
                                                "refused).")] = None,
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="Model name in the repository.")] = "clip_debias",
    instances: Annotated[int, typer.Option("--instances", metavar="N", min=1,
                                           help="Model instances (instance_group count).")] = 1,
    kind: Annotated[Optional[TritonKind], choice_option(
        TritonKind, "--kind", "Instance kind (default: gpu with a TensorRT engine, else cpu).")] = None,
    backend: Annotated[TritonBackend, choice_option(
        TritonBackend, "--backend", "onnxruntime: Triton's onnxruntime / TensorRT backends (NVIDIA's Triton images) "
                                    "| python: Triton's python backend serving the artifact through "
                                    "clip_debias.runtime (CPU-only Triton images; clip-debias installed where the "
                                    "backend's stub runs).")] = TritonBackend.ONNXRUNTIME,
    precision: Annotated[Optional[FilePrecision], choice_option(
        FilePrecision, "--precision", "The artifact's model file to serve (default: the TensorRT engine on gpu, else "
                                      "fp32, else fp16, else int8). int8 is never batched across requests.")] = None,
    max_queue_delay_us: Annotated[int, typer.Option(
        "--max-queue-delay-us", metavar="US", min=0,
        help="Dynamic batcher: microseconds a request may wait for others to join its batch.")] = 100,
    server_cores: Annotated[Optional[int], typer.Option(
        "--server-cores", metavar="N", min=1, help="CPU cores of the machine Triton runs on: CPU instances get "
                                                   "intra_op_thread_count = cores // instances (default: this "
                                                   "machine's).")] = None,
) -> None:
    """Write REPO/NAME (config.pbtxt, labels.txt, manifest.json, 1/model.onnx | 1/model.plan | 1/model.py +
    1/artifact/) for Triton Inference Server."""
    from clip_debias.exporters.triton import export_triton

    target = export_triton(artifact, repo, name=name, max_batch=max_batch, instances=instances, kind=kind,
                           backend=backend, precision=precision, max_queue_delay_us=max_queue_delay_us,
                           server_cores=server_cores)
    typer.echo(f"wrote {target}")


def bench_cmd(
    artifact: Annotated[Path, typer.Argument(metavar="ARTIFACT", help="Artifact directory.")],
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", metavar="N,N,...",
                                             help="Comma-separated batch sizes.")] = "1,8,32",
    iters: Annotated[int, typer.Option(
        "--iters", metavar="N", min=1, help="Timed rounds per batch size (each round calls every backend once, in "
                                            "turn).")] = 10,
    model_dir: Annotated[Optional[Path], typer.Option("--model-dir", metavar="DIR", help="Model directory: adds the "
                                                      "torch plain-encoder and debiased rows.")] = None,
    json_path: JsonOpt = None,
    force: ForceOpt = False,
) -> None:
    """p50 latency and throughput of every backend of ARTIFACT side by side (open_clip eager, torch, ONNX Runtime,
    OpenVINO, TensorRT), the backends taking turns call by call so that machine load hits them alike. The table's
    caption names the CPU flags the CPU precisions use (avx512f, avx512_vnni, avx512_bf16, amx)."""
    from clip_debias.exporters.bench import bench, bench_json, bench_table
    from clip_debias.runtime.atomic_output import write_atomic
    from clip_debias.runtime.tables import output_console

    try:
        sizes = [int(s) for s in batch_sizes.split(",") if s.strip()]
    except ValueError:
        raise ClipDebiasError(f"--batch-sizes {batch_sizes!r}: expected comma-separated integers, "
                              "e.g. 1,8,32") from None
    check_json_target(json_path, "bench-report", force)  # before the minutes of timing
    left_out: list[str] = []
    rows = bench(artifact, sizes, iters=iters, model_dir=model_dir, left_out=left_out)
    output_console().print(bench_table(rows, title=f"clip-debias bench {artifact}"))
    if json_path is not None:
        write_atomic(json_path, json.dumps(bench_json(rows, left_out), indent=2) + "\n", "bench-report", force)
        typer.echo(f"wrote {json_path}")


def register(app: typer.Typer) -> None:
    """Add the ``export`` sub-app and the top-level ``bench`` command."""
    app.add_typer(export_app, name="export", short_help="ONNX artifact, TensorRT engine, Triton model repository.")
    app.command("bench", short_help="Latency of every backend of an artifact, side by side.")(bench_cmd)


def warn_if_transductive(artifact: Path) -> None:
    """One warning line on stderr for an artifact built under the reference (transductive) protocol (its manifest
    records it: ``plan.plan.transductive``)."""
    from clip_debias.runtime.manifest import TRANSDUCTIVE_WARNING, Manifest

    if Manifest.load(artifact).transductive:
        typer.echo(f"warning: {TRANSDUCTIVE_WARNING}", err=True)
