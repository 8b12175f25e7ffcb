"""GPU throughput (batch 256) and batch-1 latency of ViT-B-16 per backend, measured in one run on one CUDA machine.

Rows: open_clip torch eager fp16 (plain encoder), the debiased torch model fp16 (2 ablated + 1 projected head in the
last two layers, zero-shot head), and the torch-free runtime on ONNX Runtime CUDA, fp32 and fp16, for the ONNX
Runtime-fused graph (``export_onnx(fused_attention=True)``: Attention, SkipLayerNormalization, patchify + MatMul) and
the plain one (``--variants``; ``plain-ln32``: the plain fp16 graph with LayerNorm kept in fp32, as exported before
2026-11-22) -- numpy in, numpy out (host<->device copies included, as a service sees it), and a device-resident torch
CUDA tensor in (bound in place; outputs copied back), each also with ``cuda_graph=True`` (one captured graph per batch
size, replayed; the row records its max |logit diff| against the uncaptured session). Also recorded: each uncaptured
backend's max |logit diff| against the torch model in fp32 on the CPU (batch 4); where onnxruntime placed the nodes
(``node_placement``: CPU nodes and Memcpy on a CUDA session); GPU time per CUDA kernel at batch 256
(``kernel_profile``, torch's profiler) for open_clip eager and the fused graphs; and the steps of a fused fp16
CUDA-graph call (``graph_breakdown_b256``). Random weights (no pretrained weights here).

    python benchmarks/gpu_bench.py --out gpu_bench.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch


def median_ms(fn: Callable[[], object], iters: int, warmup: int = 5, cuda: bool = True) -> float:
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def node_placement(model: Path, device: str, precision: str, x: np.ndarray) -> dict[str, object]:
    """Where onnxruntime placed each node of ``model`` (one profiled run at the runtime's optimization level): node
    count per provider, the op types left on the CPU provider and the Memcpy nodes it inserted. On a CUDA session a
    CPU node or Memcpy means host round trips inside the graph (and no CUDA graph capture)."""
    import collections
    import os

    import onnxruntime as ort

    from clip_debias.runtime.backends import ort_optimization_level

    so = ort.SessionOptions()
    so.enable_profiling, so.log_severity_level = True, 3
    so.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "placement")
    so.graph_optimization_level = ort_optimization_level(device, precision)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(model), so, providers=providers)
    sess.run(None, {"image": x})
    trace = sess.end_profiling()
    per_provider: collections.Counter[str] = collections.Counter()
    on_cpu: collections.Counter[str] = collections.Counter()
    memcpy = 0
    for e in json.loads(Path(trace).read_text()):
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        provider, op = e["args"].get("provider", "?"), e["args"].get("op_name", "?")
        per_provider[provider] += 1
        memcpy += op.startswith("Memcpy")
        if provider == "CPUExecutionProvider":
            on_cpu[op] += 1
    os.remove(trace)
    return {"nodes_per_provider": dict(per_provider), "cpu_op_types": dict(on_cpu), "memcpy_nodes": memcpy}


def kernel_profile(fn: Callable[[], object], runs: int = 3, top: int = 20) -> dict[str, object]:
    """GPU time per CUDA kernel over ``runs`` calls of ``fn`` (after one warm-up), from torch's profiler: CUPTI
    records every kernel in the process, onnxruntime's too. Returns the GPU time per call and the ``top`` kernels by
    total time (name cut to 90 characters, ms per call, launches per call, share of GPU time)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_time_total > 0]
    total_us = sum(e.device_time_total for e in kernels)
    kernels.sort(key=lambda e: e.device_time_total, reverse=True)
    return {"gpu_ms_per_call": round(total_us / runs / 1e3, 3), "top": [
        {"kernel": e.key[:90], "ms_per_call": round(e.device_time_total / runs / 1e3, 3),
         "launches_per_call": e.count / runs, "share": round(e.device_time_total / total_us, 4)}
        for e in kernels[:top]]}


def graph_breakdown(clf: object, x_dev: torch.Tensor, iters: int) -> dict[str, float]:
    """Median ms of each step of a CUDA-graph call at ``x_dev``'s batch size, from a device tensor: the copy into the
    graph's input buffer, the replay (onnxruntime's run, which waits for the GPU), the outputs to the host, and the
    whole ``predict_logits`` call (checks and bookkeeping included)."""
    import onnxruntime as ort

    graphs = clf.backend.graphs  # type: ignore[attr-defined]
    clf.predict_logits(x_dev)  # type: ignore[attr-defined]  # captures this size
    slot = graphs._slots[int(x_dev.shape[0])]
    src = ort.OrtValue.from_dlpack(x_dev)
    return {
        "copy_in_ms": round(median_ms(lambda: slot.image.update_inplace(src), iters), 3),
        "replay_ms": round(median_ms(lambda: graphs.session.run_with_iobinding(slot.binding, slot.options), iters), 3),
        "outputs_to_host_ms": round(median_ms(lambda: [np.array(v.numpy(), copy=True) for v in slot.outputs], iters,
                                              cuda=False), 3),
        "call_ms": round(median_ms(lambda: clf.predict_logits(x_dev), iters, cuda=False), 3),  # type: ignore
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("gpu_bench.json"))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--device", default="cuda", help="cuda (the point) or cpu (a dry run of this script)")
    ap.add_argument("--no-cuda-graph", action="store_true", help="leave out the CUDA-graph rows")
    ap.add_argument("--variants", default="fused,plain",
                    help="exported graphs to run: fused (--fused-attention), plain, plain-ln32 (plain, LayerNorm fp32)")
    args = ap.parse_args()

    from clip_debias.toolchain.correct.classifier import DebiasedClassifier, plain_classifier
    from clip_debias.toolchain.correct.edits import orthonormal_basis
    from clip_debias.toolchain.models.loading import load_clip

    torch.manual_seed(0)
    clip = load_clip(args.model, random_weights=True)
    last, heads, dim = clip.tower.layers - 1, clip.tower.heads, clip.tower.embed_dim
    plain = plain_classifier(clip, ["a", "b"])
    spec = plain.spec
    spec.ablated, spec.salient, spec.basis_rank = [[last - 1, 0], [last, 1]], [[last, heads - 1]], 2
    debiased = DebiasedClassifier(plain.tower, plain.head, spec, torch.randn(2, dim) * 0.02,
                                  orthonormal_basis(torch.randn(2, dim))).eval()
    rows: list[dict[str, object]] = []
    placement: dict[str, object] = {}
    profiles: dict[str, object] = {}
    info: dict[str, object] = {"gpu": torch.cuda.get_device_name() if args.device == "cuda" else "none",
                               "torch": torch.__version__, "rows": rows, "node_placement": placement,
                               "kernel_profile": profiles}
    dev = torch.device(args.device)
    on_gpu = dev.type == "cuda"
    half = torch.float16 if on_gpu else torch.float32
    b = args.batch
    size = tuple(plain.tower.cfg.image_size)
    xb = torch.randn(b, 3, *size, device=dev, dtype=half)
    x1 = xb[:1].clone()

    def add(name: str, run_b: Callable[[], object], run_1: Callable[[], object], cuda: bool = on_gpu) -> None:
        try:
            ms_b = median_ms(run_b, args.iters, cuda=cuda)
            ms_1 = median_ms(run_1, args.iters * 5, cuda=cuda)
        except Exception as e:  # report, don't hide, keep measuring the other rows
            rows.append({"backend": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            print(rows[-1], flush=True)
            return
        rows.append({"backend": name, f"img_per_s_b{b}": round(b / ms_b * 1e3, 1), "ms_b1": round(ms_1, 3)})
        print(rows[-1], flush=True)
        args.out.write_text(json.dumps(info, indent=2))  # so far: a crash later keeps these rows

    def profile(key: str, fn: Callable[[], object]) -> None:
        """Where a batch's GPU time goes (``kernel_profile``), recorded under ``key``."""
        try:
            profiles[key] = kernel_profile(fn)
        except Exception as e:  # report, don't hide
            profiles[key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print({"kernel_profile": key, **profiles[key]}, flush=True)

    with torch.inference_mode():
        enc = clip.model.visual.to(dev, half).eval()
        add(f"open_clip torch eager {half} (plain encoder)", lambda: enc(xb), lambda: enc(x1))
        if on_gpu:
            profile("open_clip torch eager fp16", lambda: enc(xb))
        enc.to("cpu", torch.float32)
        deb = DebiasedClassifier.load(_save(debiased)).to(dev, half)  # fresh copy: constants in fp16
        add(f"debiased torch eager {half}", lambda: deb(xb), lambda: deb(x1))
        deb.to("cpu")

    from clip_debias import runtime
    from clip_debias.exporters.onnx_export import export_onnx

    xb_np, x1_np = xb.float().cpu().numpy(), x1.float().cpu().numpy()
    xb_dev, x1_dev = xb.float().contiguous(), x1.float().contiguous()  # fp32 on the device: the graph's input type
    with torch.no_grad():
        ref4 = debiased(torch.from_numpy(xb_np[:4]))[0].numpy()
    breakdown: dict[str, object] = {}
    info["graph_breakdown_b256"] = breakdown
    variants = {"plain": ("", False, (), ("fp32", "fp16")), "fused": (" fused attention", True, (), ("fp32", "fp16")),
                "plain-ln32": (", LayerNorm fp32", False, ("LayerNormalization",), ("fp16",))}
    graphs = (False, True) if on_gpu and not args.no_cuda_graph else (False,)
    for suffix, fused, fp32_ops, precisions in (variants[v] for v in args.variants.split(",")):
        art = export_onnx(debiased, Path(tempfile.mkdtemp()) / "artifact", precision="both", fused_attention=fused,
                          fp16_fp32_ops=fp32_ops)
        for precision in precisions:
            key = f"{precision}{suffix}"
            model = art / ("model.onnx" if precision == "fp32" else "model.fp16.onnx")
            try:
                placement[key] = node_placement(model, args.device, precision, x1_np)
            except Exception as e:  # report, don't hide
                placement[key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print({"placement": key, **placement[key]}, flush=True)
            uncaptured = None
            for graph in graphs:
                name = f"runtime onnxruntime {args.device} {key}{', CUDA graph' if graph else ''} (numpy I/O)"
                try:
                    clf = runtime.load(art, backend="onnxruntime", device=args.device, precision=precision,
                                       cuda_graph=graph)
                except Exception as e:  # report, don't hide
                    rows.append({"backend": name, "error": str(e)[:300]})
                    print(rows[-1], flush=True)
                    continue
                add(name, lambda: clf.predict_logits(xb_np), lambda: clf.predict_logits(x1_np), cuda=False)
                if not graph:
                    uncaptured = clf
                if on_gpu and not graph and key in ("fp16 fused attention", "fp32 fused attention"):
                    profile(key, lambda: clf.predict_logits(xb_dev))  # device-resident input: the graph's kernels alone
                if on_gpu:
                    add(name.replace("(numpy I/O)", "(torch CUDA tensor in)"), lambda: clf.predict_logits(xb_dev),
                        lambda: clf.predict_logits(x1_dev), cuda=False)
                    if graph and uncaptured is not None:  # the captured graph must compute what the uncaptured one does
                        diff = float(np.abs(clf.predict_logits(x1_np) - uncaptured.predict_logits(x1_np)).max())
                        rows[-1]["max_abs_logit_diff_vs_uncaptured_b1"] = diff
                        print({"backend": rows[-1]["backend"], "max_abs_logit_diff_vs_uncaptured_b1": diff}, flush=True)
                if not graph:  # what this backend computes vs the torch model in fp32 on the CPU
                    rows[-1]["max_abs_logit_diff_vs_torch_fp32_b4"] = float(
                        np.abs(clf.predict_logits(xb_np[:4]) - ref4).max())
                if on_gpu and graph and precision == "fp16" and fused:
                    try:
                        breakdown[key] = graph_breakdown(clf, xb_dev, args.iters)
                    except Exception as e:  # report, don't hide
                        breakdown[key] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
                    print({"graph_breakdown_b256": key, **breakdown[key]}, flush=True)
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    args.out.write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


def _save(model: object) -> Path:
    d = Path(tempfile.mkdtemp()) / "m"
    model.save(d)  # type: ignore[attr-defined]
    return d


if __name__ == "__main__":
    main()
