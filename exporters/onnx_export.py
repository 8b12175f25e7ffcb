"""Export a ``DebiasedClassifier`` to an ONNX artifact, behind parity gates.

Graph: ``image`` float32 [batch, 3, H, W] -> ``logits`` float32 [batch, C], ``embedding`` float32 [batch, D]
(the corrected unit-norm e'); ``batch`` is a dynamic axis. Exported with the TorchScript exporter
(``torch.onnx.export(..., dynamo=False)`` where that parameter exists: torch >= 2.9 defaults to dynamo).

Parity gates (seeded N(0, 1) images, batch 4 — a different batch size than the traced example, so the gate also
exercises the dynamic axis); ``m = max(1, max |logits_torch|)``:

- fp32: max |logits - logits_torch| <= 1e-4 * m and max |e - e_torch| <= 1e-5. logits = s * cos(e', t) with |cos| <= 1,
  so an export that reproduces e' to fp32 rounding (measured ~2e-7 per component) moves a logit by at most
  ~s * ||delta e||; the bound is relative to the logit magnitude (~1e-4 relative is still ~1000 fp32 ulps, so a
  wrong graph cannot hide in it) and absolute 1e-4 for small logits (random-weight models, s ~ 14).
- fp16 (fp16 weights/compute, fp32 I/O; ``fp16_fp32_ops`` op types stay fp32, none by default): max |logits diff|
  <= 2e-2 * m — about 40 fp16 unit roundoffs
  (u = 2^-11) relative to the logits, the accumulated rounding of ~L sequential fp16 blocks — plus min cos(e16, e) >=
  0.999. LayerNormalization runs in fp16 too: the ONNX op computes its mean and variance in ``stash_type``
  (default 1 = float32), so the outlier channels of CLIP residual streams, whose squares overflow fp16, are safe
  (onnxruntime's CPU kernel checked with channels at 1500: max error 1.4e-3 after normalization), and the graph keeps
  no Cast pair around each of its 2L + 2 LayerNorms (ViT-B-16: 3 Casts instead of 107; on CUDA each pair is two passes
  over a [B, N, W] activation, and it blocks onnxruntime's Add + LayerNorm fusion). ``--fp16-fp32-ops
  LayerNormalization`` restores the old graph.
- int8 (``model.int8.onnx``, for the CPU provider: ONNX Runtime dynamic quantization of the transformer blocks'
  weight MatMuls only -- qkv, out, mlp -- with per-output-channel 7-bit weights (``reduce_range``: CPUs without
  VNNI saturate the u8 x s8 pair sums of full 8-bit weights; measured min cosine 0.993 without it, 0.9998 with it
  on ViT-B-16) and per-tensor uint8 activations quantized at run time; patch embedding, attention products, the
  projection, the baked edits and the head stay fp32): max |logits diff| <= 0.1 * m plus min cos(e8, e) >= 0.995.
  Each of the 4L quantized GEMMs adds an independent ~0.5 % relative error (7-bit weights: 2^-8 half step relative
  to the channel max; 8-bit activations likewise), which adds up to the ~1-2 % embedding error measured
  (cos 0.9998 -> ||e8 - e|| ~ 0.02); since logits are s * <e, t> with unit t (and PerceptionCLIP's log-sum-exp is
  1-Lipschitz), ||e8 - e|| <= sqrt(2 (1 - 0.995)) = 0.1 moves a logit by at most 0.1 s. Quantization is a
  trade: run ``clip-debias verify --precision int8`` with your thresholds on real data before shipping it.
- all: identical argmax on every gate row whose torch top-2 margin exceeds the logit tolerance (a near-tie inside
  the error bound has no defined order at that precision).

A failed gate raises ``ClipDebiasError`` with the measured numbers and nothing is written. The tolerances and the
comparison live in ``runtime.precision_gate`` (``verify``'s bf16 gate uses them too); each graph runs through the
runtime's own ONNX Runtime backend (``runtime.backends.OrtBackend`` over a ``ModelSource`` with the export's IO
specs, before there is a manifest), so the gate checks what ``runtime.load`` will run.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clip_debias.exporters.artifact import ONNX_FP16, ONNX_FP32, ONNX_INT8, ONNX_ORT, model_file, staged_artifact
from clip_debias.exporters.timing import interleaved
from clip_debias.runtime.backends import ModelSource, OrtBackend, save_optimized
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.integrity import verify_artifact
from clip_debias.runtime.manifest import PRECISIONS, Manifest, Preprocessing, TensorSpec
from clip_debias.runtime.ownership import MARKER_NAME
from clip_debias.runtime.precision_gate import GATE_BATCH, GateResult, compare, gate_images  # noqa: F401 (re-exported)

log = logging.getLogger("clip_debias.export")

DEFAULT_OPSET = 18
# --precision takes one of the artifact file precisions (manifest.PRECISIONS), a comma list, or "both" (= fp32,fp16)
# the weight MatMuls of the transformer blocks, as the TorchScript exporter names them after ExplicitViT's module
# paths (ExplicitAttention.qkv / .out, Mlp.fc_in / .fc_out): /tower/blocks.3/qkv/MatMul (plain classifier) or
# /blocks.3/mlp/fc_in/MatMul (DebiasedClassifier runs the blocks itself); tests/test_export.py checks that exactly
# these match on both (the last block's CLS-only query projection is a plain MatMul: cls_head_outputs). A timm tower
# (TimmTower) keeps timm's names: /visual/trunk/blocks.0/attn/qkv (or q_proj, k_proj, v_proj), attn/proj, mlp/fc1 (or
# EVA's SwiGLU fc1_g, fc1_x), mlp/fc2; its attention pool stays fp32 like the projection
INT8_NODE_PATTERN = re.compile(r"(?:^|/)blocks\.\d+/(?:qkv|out|mlp/fc_in|mlp/fc_out|attn/(?:qkv|[qkv]_proj|proj)"
                               r"|mlp/(?:fc1|fc1_g|fc1_x|fc2))/MatMul$")
MIN_OPSET = 14  # scaled_dot_product_attention and LayerNormalization export from 14 on
EXAMPLE_BATCH = 2
FP16_KEEP_FP32_OPS: tuple[str, ...] = ()  # op types the fp16 graph keeps in fp32 by default (see the docstring)
ORT_KEEP_MIN_SPEEDUP = 1.03  # keep model.ort.onnx only when p50 latency improves by >= 3 %


@dataclass
class ExportReport:
    """What an export measured (also logged): gate results and the ORT-optimization latency comparison."""

    artifact: Path
    gates: list[GateResult] = field(default_factory=list)
    # {"model.onnx": p50 ms, "model.ort.onnx": p50 ms, "paired_speedup": x} at batch 1
    ort_latency_ms: dict[str, float] = field(default_factory=dict)
    ort_kept: bool = False
    digest: str = ""  # the artifact digest (runtime.integrity): pin it with verify --expect-digest
    files: list[str] = field(default_factory=list)  # the model files written (manifest order)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["artifact"] = str(self.artifact)
        return d


# ---- low level: torch module -> .onnx -----------------------------------------------------------------------------
def _exporter_kwargs() -> dict[str, Any]:
    """``dynamo=False`` only where ``torch.onnx.export`` has that parameter (torch 2.5 .. 2.15)."""
    import torch

    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def check_opset(opset: int) -> None:
    """Refuse, in one line, an opset the installed torch's TorchScript exporter cannot write (before it fails with
    a long graph dump): MIN_OPSET .. its maximum (20 on torch 2.14)."""
    from torch.onnx import _constants

    top = int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))
    if not MIN_OPSET <= opset <= top:
        raise ClipDebiasError(f"--opset {opset}: expected {MIN_OPSET}..{top} (what this torch's TorchScript ONNX "
                              "exporter writes)")


def export_module_onnx(module: Any, example: Any, path: str | Path, opset: int = DEFAULT_OPSET,
                       output_names: Sequence[str] = ("logits", "embedding"), input_name: str = "image",
                       fused_attention: bool = False) -> Path:
    """Trace ``module(example)`` to ONNX at ``path`` with a dynamic batch axis on the input and every output, then run
    ``onnx.checker``. Serves the classifier (image -> logits, embedding) and the plain encoder (image -> embedding).

    ``fused_attention``: an ONNX Runtime-only graph (not TensorRT): every full-query ``ExplicitAttention`` is written as
    ``com.microsoft::Attention`` (QKV projection + bias + fused attention kernel; the CLS-only last layer has no
    key/value projection to fuse, see ``ExplicitAttention.cls_head_outputs``), each residual Add + LayerNormalization
    (with the bias Add before it) as ``SkipLayerNormalization`` (``exporters.ort_fusions``), and the patch embedding
    as patchify + MatMul."""
    import onnx
    import torch

    from clip_debias.toolchain.models.tower import ExplicitAttention, ExplicitViT

    path = Path(path)
    module = module.eval()
    axes = {input_name: {0: "batch"}, **{n: {0: "batch"} for n in output_names}}
    check_opset(opset)
    fusable = [m for m in module.modules() if isinstance(m, (ExplicitAttention, ExplicitViT))]
    extra = {"custom_opsets": {"com.microsoft": 1}} if fused_attention else {}
    try:
        for m in fusable:
            m.onnx_fused = fused_attention
        with torch.no_grad(), _quiet_tracer_warnings():
            torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=list(output_names),
                              opset_version=opset, dynamic_axes=axes, do_constant_folding=True, **_exporter_kwargs(),
                              **extra)
    except Exception as e:
        raise ClipDebiasError(f"{path}: torch.onnx.export failed at opset {opset} "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e
    finally:
        for m in fusable:
            m.onnx_fused = False
    if fused_attention:  # an ONNX Runtime-only graph anyway: also fuse residual Add + LayerNorm (+ bias)
        from clip_debias.exporters.ort_fusions import fuse_skip_layer_norm

        graph = onnx.load(str(path))
        fused = fuse_skip_layer_norm(graph)
        log.debug("%s: %s", path, fused)
        onnx.save(graph, str(path))
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise ClipDebiasError(f"{path}: onnx.checker rejected the exported graph "
                              f"({str(e).splitlines()[0][:200]})") from e
    return path


class _quiet_tracer_warnings:
    """Silence TracerWarning / export deprecation chatter inside the export call only."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def _topo_sort(graph: Any) -> None:
    """Reorder ``graph.node`` topologically (the fp16 converter appends its input Casts at the end)."""
    avail = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in avail for i in node.input):
                ordered.append(node)
                avail.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ClipDebiasError(f"fp16 graph: node {rest[0].name!r} has an input no node produces")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _drop_repeated_casts(graph: Any) -> None:
    """Keep one of identical Cast nodes (same input, same output name, same target type). The fp16 converter inserts
    one Cast per fp32-kept consumer, named after the value it converts, so a value read by two such ops (in a fused
    graph, e.g. the residual stream read by Add and LayerNormalization when both are kept) would be produced twice."""
    seen: dict[str, Any] = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Cast" and node.output[0] in seen:
            first = seen[node.output[0]]
            if list(first.input) == list(node.input) and first.attribute == node.attribute:
                continue
        seen.setdefault(node.output[0], node)
        kept.append(node)
    if len(kept) < len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def check_op_types(ops: Sequence[str], option: str = "--fp16-fp32-ops") -> list[str]:
    """``ops`` as a list, each checked to be an ONNX (or onnxruntime contrib) operator type; one line otherwise."""
    import onnx

    ops = [o.strip() for o in ops if o.strip()]
    for op in ops:
        if not (onnx.defs.has(op) or onnx.defs.has(op, "com.microsoft")):
            raise ClipDebiasError(f"{option}: '{op}' is not an ONNX operator type (e.g. LayerNormalization, Softmax)")
    return ops


def convert_fp16(src: str | Path, dst: str | Path, keep_fp32_ops: Sequence[str] = FP16_KEEP_FP32_OPS) -> Path:
    """fp32 ONNX -> fp16 weights/compute with fp32 I/O (``keep_io_types``); ``keep_fp32_ops`` stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    m16 = convert_float_to_float16(model, keep_io_types=True,
                                   op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(keep_fp32_ops))
    _drop_repeated_casts(m16.graph)
    _topo_sort(m16.graph)
    onnx.save(m16, str(dst))
    try:
        onnx.checker.check_model(str(dst))
    except onnx.checker.ValidationError as e:
        raise ClipDebiasError(f"{dst}: onnx.checker rejected the fp16 graph ({str(e).splitlines()[0][:200]})") from e
    return Path(dst)


def quantize_int8(src: str | Path, dst: str | Path, pattern: str | re.Pattern[str] = INT8_NODE_PATTERN) -> Path:
    """fp32 ONNX -> ``dst`` with the transformer blocks' weight MatMuls (node names matching ``pattern``: the image
    graph's ``INT8_NODE_PATTERN``, the text graph's ``text_export.TEXT_INT8_PATTERN``) dynamically quantized:
    int8 per-output-channel 7-bit weights, uint8 per-tensor activations computed at run time (no calibration set)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(src), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    nodes = [n.name for n in graph.node
             if n.op_type == "MatMul" and re.search(pattern, n.name) and n.input[1] in weights]
    if not nodes:
        raise ClipDebiasError(f"{src}: no transformer-block weight MatMul to quantize (expected nodes named like "
                              "/tower/blocks.0/qkv/MatMul)")
    quant_log = logging.getLogger("root")  # onnxruntime.quantization logs its pre-processing advice on the root logger
    level = quant_log.level
    quant_log.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                         per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # for contrib ops' outputs
    finally:
        quant_log.setLevel(level)
    try:
        onnx.checker.check_model(str(dst))
    except onnx.checker.ValidationError as e:
        raise ClipDebiasError(f"{dst}: onnx.checker rejected the int8 graph ({str(e).splitlines()[0][:200]})") from e
    log.info("int8: quantized %d weight MatMuls of the transformer blocks", len(nodes))
    return Path(dst)


def parse_precisions(precision: str) -> list[str]:
    """``fp32`` | ``fp16`` | ``int8`` | ``both`` (= fp32,fp16) | a comma list such as ``fp32,int8`` -> ordered list."""
    words = ["fp32", "fp16"] if precision.strip() == "both" else [w.strip() for w in precision.split(",") if w.strip()]
    bad = [w for w in words if w not in PRECISIONS]
    if bad or not words:
        raise ClipDebiasError(f"--precision {precision}: expected fp32, fp16, int8, both, or a comma list such as "
                              "fp32,int8")
    return list(dict.fromkeys(words))


# ---- gates ----------------------------------------------------------------------------------------------------------
def io_specs(model: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph contract of a ``DebiasedClassifier`` export: ``image`` float32 [batch, 3, H, W] in; ``logits``
    [batch, C] and ``embedding`` [batch, D] out (the manifest's ``inputs`` / ``outputs``, and what the gates check
    each graph against before there is a manifest)."""
    cfg = model.tower.cfg
    h, w = cfg.image_size
    return ([TensorSpec("image", "float32", ["batch", 3, h, w])],
            [TensorSpec("logits", "float32", ["batch", len(model.spec.class_names)]),
             TensorSpec("embedding", "float32", ["batch", cfg.embed_dim])])


def run_gate(source: ModelSource, x: np.ndarray, ref_logits: np.ndarray, ref_emb: np.ndarray) -> GateResult:
    """Run ``source`` on the gate batch through the runtime's ONNX Runtime backend on the CPU (its IO checked, int8
    image by image: what ``runtime.load`` runs) and raise ``ClipDebiasError`` when the gate fails."""
    precision = source.precision
    logits, emb = OrtBackend(source, "cpu").run(x)
    res = compare(precision, logits, emb, ref_logits, ref_emb)
    log.info("parity gate %s against torch: max |logit diff| %.3g (tol %.3g), max |embedding diff| %.3g, min cosine "
             "%.5f, argmax agree %.0f%% -- %s", precision, res.max_logit_diff, res.logit_tolerance,
             res.max_embedding_diff, res.min_cosine, 100 * res.argmax_agree, "pass" if res.passed else "FAIL")
    if not res.passed:
        hint = (" (if the model's activations need it: --fp16-fp32-ops LayerNormalization,Softmax)"
                if precision == "fp16" else "")
        raise ClipDebiasError(f"{source.path.name}: {precision} parity gate failed against the torch model "
                              f"({res.reason}); artifact not written{hint}")
    return res


# ---- manifest -------------------------------------------------------------------------------------------------------
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def library_versions() -> dict[str, str]:
    """torch, open_clip, onnx, onnxruntime, clip-debias versions at export time."""
    return {"torch": _version("torch"), "open_clip": _version("open_clip_torch"), "onnx": _version("onnx"),
            "onnxruntime": _version("onnxruntime"), "clip-debias": _version("clip-debias")}


def preprocessing_of(cfg: dict[str, Any], image_size: tuple[int, int]) -> Preprocessing:
    """``Preprocessing`` from a ``ClassifierSpec.preprocess`` dict (open_clip's preprocess_cfg)."""
    size = cfg.get("size", list(image_size))
    size = [int(size), int(size)] if isinstance(size, (int, float)) else [int(s) for s in size]
    try:
        return Preprocessing(size=size, mean=[float(m) for m in cfg["mean"]], std=[float(s) for s in cfg["std"]],
                             interpolation=str(cfg.get("interpolation", "bicubic")),
                             resize_mode=str(cfg.get("resize_mode", "shortest")),
                             fill_color=int(cfg.get("fill_color", 0)))
    except KeyError as e:
        raise ClipDebiasError(f"config.json: field 'preprocess.{e.args[0]}' missing "
                              "(expected open_clip's preprocess_cfg)") from e


def build_manifest(model: Any, files: list[Any], opset: int, fused_attention: bool = False,
                   fp16_fp32_ops: Sequence[str] = FP16_KEEP_FP32_OPS, text: Any = None) -> Manifest:
    """The manifest of a ``DebiasedClassifier`` export (``files`` already hashed; ``text``: its ``TextTower``)."""
    spec, cfg = model.spec, model.tower.cfg
    h, w = cfg.image_size
    inputs, outputs = io_specs(model)
    head = model.head.config() if hasattr(model.head, "config") else dict(spec.head)
    plan = {"ablated": [list(p) for p in spec.ablated], "salient": [list(p) for p in spec.salient],
            "basis_rank": spec.basis_rank, "renorm": spec.renorm, "convention": spec.convention, "head": head,
            "plan": spec.plan}
    return Manifest(
        model=dict(spec.identity), plan=plan, class_names=list(spec.class_names), group_names=list(spec.group_names),
        preprocessing=preprocessing_of(spec.preprocess, (h, w)),
        inputs=inputs, outputs=outputs,
        opset=opset, files=files, versions=library_versions(), export={"fused_attention": fused_attention,
                                                                  "fp16_fp32_ops": list(fp16_fp32_ops)}, text=text)


# ---- high level: model dir -> artifact -----------------------------------------------------------------------------
def _as_classifier(model_dir_or_model: Any) -> Any:
    import torch

    from clip_debias.toolchain.correct.classifier import DebiasedClassifier

    if isinstance(model_dir_or_model, (str, Path)):
        model = DebiasedClassifier.load(model_dir_or_model)
    elif isinstance(model_dir_or_model, DebiasedClassifier):
        model = model_dir_or_model
    else:
        raise ClipDebiasError(f"export_onnx: expected a model directory or a DebiasedClassifier, got "
                              f"{type(model_dir_or_model).__name__}")
    if model.tower.conv1.weight.dtype != torch.float32 or model.tower.conv1.weight.device.type != "cpu":
        import copy

        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)  # export in fp32 on CPU; leave the caller's
    return model.eval()


def _check_outputs(tmp: Path, expected: set[str]) -> None:
    extra = sorted(p.name for p in tmp.iterdir() if p.name not in expected | {MARKER_NAME})
    if extra:
        raise ClipDebiasError(f"{tmp}: export wrote unexpected files {extra[:3]} (models over 2 GiB need ONNX external "
                              "data, which clip-debias artifacts do not support)")


def export_onnx_report(model_dir_or_model: Any, out: str | Path, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                       ort_optimize: bool = True, gate_batch: int = GATE_BATCH, seed: int = 0,
                       latency_iters: int = 10, fused_attention: bool = False,
                       fp16_fp32_ops: Sequence[str] = FP16_KEEP_FP32_OPS, text_clip: Any = None) -> ExportReport:
    """``export_onnx`` returning the measured gate and latency numbers too. ``text_clip``: the open_clip model
    (``LoadedClip``) whose text tower and tokenizer go into the artifact too (``exporters.text_export``; its
    identity must be the model's), None for an image-only artifact."""
    import functools

    import torch

    wanted = parse_precisions(precision)
    fp16_fp32_ops = check_op_types(fp16_fp32_ops)
    if fp16_fp32_ops and "fp16" not in wanted:
        raise ClipDebiasError(f"--fp16-fp32-ops {','.join(fp16_fp32_ops)}: applies to model.fp16.onnx, but --precision "
                              f"{precision} writes no fp16 graph (add fp16, e.g. --precision both)")
    if fused_attention and {"LayerNormalization", "SkipLayerNormalization"} & set(fp16_fp32_ops):
        raise ClipDebiasError("--fp16-fp32-ops LayerNormalization does not combine with --fused-attention: the fused "
                              "graph normalizes with SkipLayerNormalization, which keeps its statistics in fp32 anyway")
    model = _as_classifier(model_dir_or_model)
    h, w = model.tower.cfg.image_size
    x = gate_images(h, w, gate_batch, seed)
    with torch.no_grad():
        ref_logits, ref_emb = (t.numpy() for t in model(torch.from_numpy(x)))
    example = torch.from_numpy(gate_images(h, w, EXAMPLE_BATCH, seed + 1))
    out = Path(out)
    report = ExportReport(artifact=out.absolute())
    inputs, outputs = io_specs(model)
    source = model_dir_or_model if isinstance(model_dir_or_model, (str, Path)) else "the model"
    with staged_artifact(out) as tmp:
        log.info("exporting %s to %s (%s; opset %d%s), each graph gated against torch", source, out,
                 ", ".join(wanted), opset, ", fused attention" if fused_attention else "")
        fp32 = export_module_onnx(model, example, tmp / ONNX_FP32, opset, fused_attention=fused_attention)
        _check_outputs(tmp, {ONNX_FP32})
        report.gates.append(run_gate(ModelSource(fp32, "fp32", inputs, outputs), x, ref_logits, ref_emb))
        files = []
        if "fp32" in wanted:
            files.append(model_file(tmp, ONNX_FP32, "onnx", "fp32"))
        to_fp16 = functools.partial(convert_fp16, keep_fp32_ops=fp16_fp32_ops)
        for name, derived, convert in (("fp16", ONNX_FP16, to_fp16), ("int8", ONNX_INT8, quantize_int8)):
            if name in wanted:
                source = ModelSource(convert(fp32, tmp / derived), name, inputs, outputs)
                report.gates.append(run_gate(source, x, ref_logits, ref_emb))
                files.append(model_file(tmp, derived, "onnx", name))
        if "fp32" in wanted and ort_optimize:
            fp32_source = ModelSource(fp32, "fp32", inputs, outputs)
            report.ort_kept = _maybe_keep_ort(fp32_source, x, ref_logits, ref_emb, report, latency_iters)
            if report.ort_kept:
                files.append(model_file(tmp, ONNX_ORT, "onnx-ort", "fp32"))
        if "fp32" not in wanted:
            fp32.unlink()
        text = None
        if text_clip is not None:
            from clip_debias.exporters.text_export import export_text, text_templates

            from clip_debias.toolchain.models.loading import ModelIdentity

            own = ModelIdentity.from_dict(model.spec.identity)
            if not text_clip.identity.same_backbone(own):
                raise ClipDebiasError(f"text tower of {text_clip.identity.describe()} does not match the model's "
                                      f"{own.describe()}")
            text_files, text = export_text(text_clip, tmp, wanted, opset, text_templates(model.spec), report.gates,
                                           sys.modules[__name__])
            files += text_files
        build_manifest(model, files, opset, fused_attention, fp16_fp32_ops, text).save(tmp)
    report.digest = verify_artifact(out)[1]
    report.files = [f.path for f in files]
    return report


def _maybe_keep_ort(fp32: ModelSource, x: np.ndarray, ref_logits: np.ndarray, ref_emb: np.ndarray,
                    report: ExportReport, iters: int) -> bool:
    """Save the ORT_ENABLE_EXTENDED-optimized fp32 graph beside ``fp32`` (portable across CPUs, unlike a graph saved at
    ALL); keep it only when it passes the fp32 gate and beats model.onnx (both run by the runtime's ONNX Runtime
    backend at the default level, ALL) by >= 3 % at batch 1: median of per-pair latency ratios over interleaved
    runs."""
    ort_path = save_optimized(fp32.path, fp32.path.with_name(ONNX_ORT))
    try:
        opt = OrtBackend(dataclasses.replace(fp32, path=ort_path), "cpu")
        gate = compare("fp32", *opt.run(x), ref_logits, ref_emb)
        reason = gate.reason
    except ClipDebiasError as e:  # e.g. the optimizer changed the graph's inputs or outputs
        gate, reason = None, str(e)
    if gate is None or not gate.passed:  # an optimizer bug must not ship; the plain graph still does
        log.warning("model.ort.onnx dropped: parity %s", reason)
        ort_path.unlink()
        return False
    one, base = x[:1], OrtBackend(fp32, "cpu")
    r = interleaved(lambda: base.run(one), lambda: opt.run(one), max(3, iters))
    speedup = r["median_speedup"]
    report.ort_latency_ms = {ONNX_FP32: r["base_median_ms"], ONNX_ORT: r["other_median_ms"], "paired_speedup": speedup}
    keep = speedup >= ORT_KEEP_MIN_SPEEDUP
    log.info("ORT-optimized graph: p50 batch 1 %.2f ms vs model.onnx %.2f ms (paired speedup %.3fx) -> %s",
             report.ort_latency_ms[ONNX_ORT], report.ort_latency_ms[ONNX_FP32], speedup,
             "kept" if keep else "dropped (no measurable gain)")
    if not keep:
        ort_path.unlink()
    return keep


def export_onnx(model_dir_or_model: Any, out: str | Path, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                ort_optimize: bool = True, gate_batch: int = GATE_BATCH, seed: int = 0,
                fused_attention: bool = False, fp16_fp32_ops: Sequence[str] = FP16_KEEP_FP32_OPS,
                text_clip: Any = None) -> Path:
    """Export a model directory (or a ``DebiasedClassifier``) to the artifact directory ``out`` and return it.

    precision: fp32 (model.onnx) | fp16 (model.fp16.onnx) | int8 (model.int8.onnx) | both (fp32,fp16) | a comma
    list (``fp32,int8``); the fp32 graph is always exported and gated, and kept when listed. Every graph passes its
    parity gate first; a failure raises ``ClipDebiasError`` and leaves ``out`` untouched. ``fused_attention``: see
    ``export_module_onnx``; ``fp16_fp32_ops``: op types model.fp16.onnx keeps in fp32 (both recorded in the
    manifest's ``export`` field); ``text_clip``: see ``export_onnx_report``."""
    return export_onnx_report(model_dir_or_model, out, precision, opset, ort_optimize, gate_batch, seed,
                              fused_attention=fused_attention, fp16_fp32_ops=fp16_fp32_ops,
                              text_clip=text_clip).artifact
