"""ONNX export: parity with torch (plain and edited classifiers, dynamic batch), fp16, atomic writes, gates,
manifest, the export CLI, TensorRT (skipped without it) and bench."""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import clip_debias.exporters.onnx_export as ox
from clip_debias.exporters.artifact import staged_artifact
from clip_debias.exporters.onnx_export import export_module_onnx, export_onnx, export_onnx_report
from clip_debias.runtime import precision_gate as parity
from clip_debias.runtime.backends import ort_session
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.manifest import MANIFEST_NAME, Manifest
from clip_debias.runtime.ownership import MARKER_NAME
from clip_debias.toolchain.correct.classifier import DebiasedClassifier, plain_classifier
from clip_debias.toolchain.correct.edits import orthonormal_basis

CLASSES = ["a", "b", "c"]


def edited_classifier(clip, ablated, salient, rank=2, seed=0) -> DebiasedClassifier:
    """``plain_classifier`` with mean-ablated + projected heads (random means / basis)."""
    base = plain_classifier(clip, CLASSES, group_names=["g0", "g1"])
    spec = copy.deepcopy(base.spec)
    spec.ablated, spec.salient, spec.basis_rank = [list(p) for p in ablated], [list(p) for p in salient], rank
    spec.plan = {"source": "test"}
    d = base.tower.cfg.embed_dim
    g = torch.Generator().manual_seed(seed)
    means = 0.05 * torch.randn(len(ablated), d, generator=g)
    basis = orthonormal_basis(torch.randn(rank, d, generator=g))
    return DebiasedClassifier(base.tower, base.head, spec, means, basis).eval()


def images(model, batch: int, seed: int = 1) -> np.ndarray:
    h, w = model.tower.cfg.image_size
    return np.random.default_rng(seed).standard_normal((batch, 3, h, w)).astype(np.float32)


def assert_parity(model, onnx_path: Path, batches=(1, 7), tol: float = 1e-4) -> float:
    """ORT vs torch at each batch size (the graph was traced at batch 2: this checks the dynamic axis)."""
    sess = ort_session(onnx_path)
    worst = 0.0
    for b in batches:
        x = images(model, b, seed=b)
        with torch.no_grad():
            ref_logits, ref_emb = (t.numpy() for t in model(torch.from_numpy(x)))
        logits, emb = sess.run(["logits", "embedding"], {"image": x})
        assert logits.shape == ref_logits.shape and emb.shape == ref_emb.shape
        worst = max(worst, float(np.abs(logits - ref_logits).max()))
        assert np.abs(logits - ref_logits).max() <= tol * max(1.0, float(np.abs(ref_logits).max()))
        assert np.abs(emb - ref_emb).max() <= 1e-5
    return worst


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.fixture(scope="module")
def tiny_edited(tiny_clip):
    return edited_classifier(tiny_clip, ablated=[[3, 0], [2, 1]], salient=[[3, 2]], rank=2)


@pytest.fixture(scope="module")
def tiny_both(tiny_edited, tmp_path_factory):
    """Edited tiny classifier exported at fp32 + fp16 (+ model.ort.onnx when it helps)."""
    out = tmp_path_factory.mktemp("art") / "tiny"
    return export_onnx_report(tiny_edited, out, precision="both")


# ---- parity -------------------------------------------------------------------------------------------------------
def test_plain_tiny_parity_dynamic_batch(tiny_clip, tmp_path):
    model = plain_classifier(tiny_clip, CLASSES)
    out = export_onnx(model, tmp_path / "art", ort_optimize=False)
    assert_parity(model, out / "model.onnx")


def test_edited_tiny_parity_dynamic_batch(tiny_edited, tiny_both):
    assert [g.precision for g in tiny_both.gates] == ["fp32", "fp16"]
    assert all(g.passed for g in tiny_both.gates)
    assert_parity(tiny_edited, tiny_both.artifact / "model.onnx")
    if tiny_both.ort_kept:
        assert_parity(tiny_edited, tiny_both.artifact / "model.ort.onnx")


def test_graph_computes_no_shapes(tiny_both, tmp_path, tiny_clip):
    """Static shapes (ExplicitViT writes every reshape with constants and -1 for the batch): no Shape op in the fp32,
    fp16 or fused-attention graphs, so nothing in the graph waits on shape arithmetic (ONNX Runtime would run it on
    the CPU, between GPU kernels)."""
    import onnx

    fused = export_onnx(plain_classifier(tiny_clip, CLASSES), tmp_path / "fused", fused_attention=True,
                        ort_optimize=False)
    for path in (tiny_both.artifact / "model.onnx", tiny_both.artifact / "model.fp16.onnx", fused / "model.onnx"):
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert "Shape" not in ops, path


@pytest.mark.slow
def test_vitb32_edited_parity(vitb32_clip, tmp_path):
    """Real-size tower with edits in the last layers (the unedited forward path is covered on the tiny model)."""
    edited = edited_classifier(vitb32_clip, ablated=[[11, 0], [10, 3]], salient=[[11, 5]], rank=2)
    assert_parity(edited, export_onnx(edited, tmp_path / "edited", ort_optimize=False) / "model.onnx")


def test_plain_encoder_export(tiny_clip, tmp_path):
    """The lower-level export serves the plain ExplicitViT (image -> embedding) for benchmarks."""
    tower = plain_classifier(tiny_clip, CLASSES).tower
    x = images(plain_classifier(tiny_clip, CLASSES), 3)
    path = export_module_onnx(tower, torch.from_numpy(x[:2]), tmp_path / "enc.onnx", output_names=("embedding",))
    (emb,) = ort_session(path).run(None, {"image": x})
    with torch.no_grad():
        ref = tower(torch.from_numpy(x)).numpy()
    assert np.abs(emb - ref).max() <= 1e-5


def test_fp16_argmax_matches_fp32(tiny_edited, tiny_both):
    """fp16 graph (fp32 I/O) vs fp32 graph on a fixed set: same argmax wherever the fp32 top-2 margin exceeds the
    fp16 tolerance, and small logit differences."""
    art = tiny_both.artifact
    x = images(tiny_edited, 64, seed=123)
    l32, _ = ort_session(art / "model.onnx").run(["logits", "embedding"], {"image": x})
    l16, e16 = ort_session(art / "model.fp16.onnx", "fp16").run(["logits", "embedding"], {"image": x})
    assert e16.dtype == np.float32
    tol = parity.LOGIT_RTOL["fp16"] * max(1.0, float(np.abs(l32).max()))
    top2 = np.sort(l32, -1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > tol
    assert decided.sum() >= 32
    assert (l32.argmax(-1) == l16.argmax(-1))[decided].all()
    assert np.abs(l32 - l16).max() <= tol


# ---- manifest -----------------------------------------------------------------------------------------------------
def test_manifest_fields_and_hashes(tiny_edited, tiny_both):
    art = tiny_both.artifact
    m = Manifest.load(art)
    raw = json.loads((art / MANIFEST_NAME).read_text())
    assert set(raw) == {"model", "plan", "class_names", "group_names", "preprocessing", "inputs", "outputs", "opset",
                        "files", "versions", "export", "format_version"}
    assert m.format_version == 1 and m.opset == 18 and m.export == {"fused_attention": False, "fp16_fp32_ops": []}
    assert m.model["name"] == "clipdebias-tiny"
    assert m.class_names == CLASSES and m.group_names == ["g0", "g1"]
    assert m.plan["ablated"] == [[3, 0], [2, 1]] and m.plan["salient"] == [[3, 2]]
    assert m.plan["basis_rank"] == 2 and m.plan["renorm"] == "stepwise" and m.plan["plan"] == {"source": "test"}
    assert m.plan["convention"] == "textspan"
    assert m.plan["head"]["kind"] == "zeroshot" and m.plan["head"]["num_classes"] == 3
    assert m.preprocessing.size == [32, 32] and len(m.preprocessing.mean) == 3
    assert m.preprocessing.interpolation == "bicubic" and m.preprocessing.resize_mode == "shortest"
    assert [(t.name, t.dtype, t.shape) for t in m.inputs] == [("image", "float32", ["batch", 3, 32, 32])]
    assert [(t.name, t.shape) for t in m.outputs] == [("logits", ["batch", 3]), ("embedding", ["batch", 32])]
    assert set(m.versions) == {"torch", "open_clip", "onnx", "onnxruntime", "clip-debias"}
    kinds = {(f.path, f.kind, f.precision) for f in m.files}
    assert {("model.onnx", "onnx", "fp32"), ("model.fp16.onnx", "onnx", "fp16")} <= kinds
    assert (("model.ort.onnx", "onnx-ort", "fp32") in kinds) == tiny_both.ort_kept
    for f in m.files:
        assert hashlib.sha256((art / f.path).read_bytes()).hexdigest() == f.sha256
    assert sorted(p.name for p in art.iterdir()) == sorted([MANIFEST_NAME, MARKER_NAME] + [f.path for f in m.files])


def test_graph_io_matches_manifest(tiny_both):
    import onnx

    g = onnx.load(str(tiny_both.artifact / "model.onnx")).graph
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert [(i.name, dims(i)) for i in g.input] == [("image", ["batch", 3, 32, 32])]
    assert [(o.name, dims(o)) for o in g.output] == [("logits", ["batch", 3]), ("embedding", ["batch", 32])]


# ---- atomicity and gates ------------------------------------------------------------------------------------------
def test_failure_mid_export_leaves_nothing(tiny_edited, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("simulated crash after model.onnx was written")

    monkeypatch.setattr(ox, "run_gate", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        export_onnx(tiny_edited, tmp_path / "art")
    assert not (tmp_path / "art").exists()
    assert leftovers(tmp_path) == []


def test_gate_runs_the_runtime_backend_with_the_export_specs(tmp_path):
    """The export gate opens each graph with the runtime's ONNX Runtime backend over the export's IO specs (no
    manifest yet): a graph that does not meet them fails the gate in one line, as ``runtime.load`` would."""
    from clip_debias.runtime.backends import ModelSource
    from clip_debias.runtime.errors import ArtifactError
    from clip_debias.runtime.manifest import TensorSpec
    from runtime_fixtures import build_artifact

    a = build_artifact(tmp_path / "a")
    x = np.random.default_rng(0).standard_normal((4, 3, 24, 24)).astype(np.float32)
    ref_logits, ref_emb = (r.astype(np.float32) for r in a.reference(x))
    specs = (list(a.manifest.inputs), list(a.manifest.outputs))
    assert ox.run_gate(ModelSource(a.path / "model.onnx", "fp32", *specs), x, ref_logits, ref_emb).passed
    wrong = [TensorSpec("logits", "float32", ["batch", 99]), specs[1][1]]
    with pytest.raises(ArtifactError, match=r"graph output 'logits' has shape \['batch', 2\]") as e:
        ox.run_gate(ModelSource(a.path / "model.onnx", "fp32", specs[0], wrong), x, ref_logits, ref_emb)
    assert "\n" not in str(e.value)


def test_failed_reexport_keeps_previous_artifact(tiny_clip, tmp_path, monkeypatch):
    model = plain_classifier(tiny_clip, CLASSES)
    out = export_onnx(model, tmp_path / "art", ort_optimize=False)
    before = (out / MANIFEST_NAME).read_text()
    monkeypatch.setitem(parity.LOGIT_RTOL, "fp32", -1.0)
    with pytest.raises(ClipDebiasError):
        export_onnx(model, out, ort_optimize=False)
    assert (out / MANIFEST_NAME).read_text() == before
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    export_onnx(model, out, precision="fp16", ort_optimize=False)  # a successful re-export replaces it
    assert [f.path for f in Manifest.load(out).files] == ["model.fp16.onnx"]
    assert not (out / "model.onnx").exists() and leftovers(tmp_path) == []


def test_gate_failure_refuses_to_write(tiny_edited, tmp_path, monkeypatch):
    monkeypatch.setitem(parity.LOGIT_RTOL, "fp32", -1.0)  # any measured difference now exceeds the tolerance
    with pytest.raises(ClipDebiasError, match=r"fp32 parity gate failed .*max \|logit diff\| [0-9.e-]+ >"):
        export_onnx(tiny_edited, tmp_path / "art")
    assert not (tmp_path / "art").exists() and leftovers(tmp_path) == []


def test_staged_artifact_without_manifest_is_not_committed(tmp_path):
    with pytest.raises(ClipDebiasError, match="without writing manifest.json"):
        with staged_artifact(tmp_path / "art") as tmp:
            (tmp / "model.onnx").write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []


def test_gate_compare_argmax_margin():
    """A flipped argmax fails the gate unless the reference top-2 margin is inside the tolerance."""
    ref = np.array([[2.0, 1.0, 0.0], [1.0, 1.0 + 1e-6, 0.0]], dtype=np.float32)
    emb = np.eye(3, dtype=np.float32)[:2]
    flipped = ref[:, [1, 0, 2]]
    assert not ox.compare("fp32", flipped, emb, ref, emb).passed
    tie_flip = ref.copy()
    tie_flip[1] = [1.0 + 1e-6, 1.0, 0.0]
    res = ox.compare("fp16", tie_flip, emb, ref, emb)
    assert res.passed and res.argmax_checked == 1


def test_bad_precision(tiny_edited, tmp_path):
    for bad in ("fp8", "", "fp32,int4"):
        with pytest.raises(ClipDebiasError, match="--precision"):
            export_onnx(tiny_edited, tmp_path / "art", precision=bad)
    assert ox.parse_precisions("both") == ["fp32", "fp16"]
    assert ox.parse_precisions("int8, fp32,int8") == ["int8", "fp32"]


# ---- int8 ---------------------------------------------------------------------------------------------------------
def test_int8_quantizes_block_linears_and_runs_on_cpu(tiny_clip, tiny_edited, tmp_path):
    """int8: exactly the 4 weight MatMuls of each block (3 of the last) become integer MatMuls (plain and debiased
    graphs name them differently); the gate passes and still holds on another batch size; the runtime runs it on the
    CPU provider (also for device auto), image by image, and refuses CUDA with one line; an int8-only artifact has no
    model.onnx."""
    import onnx

    from clip_debias import runtime
    from clip_debias.runtime.backends import BackendError

    for name, model in (("plain", plain_classifier(tiny_clip, CLASSES)), ("edited", tiny_edited)):
        rep = export_onnx_report(model, tmp_path / name, precision="fp32,int8", ort_optimize=False)
        assert [g.precision for g in rep.gates] == ["fp32", "int8"] and all(g.passed for g in rep.gates)
        fp32_nodes = [n.name for n in onnx.load(str(rep.artifact / "model.onnx")).graph.node if n.op_type == "MatMul"]
        layers = model.tower.cfg.layers
        expected = {(i, part) for i in range(layers) for part in ("qkv", "out", "mlp/fc_in", "mlp/fc_out")
                    if (i, part) != (layers - 1, "qkv")}
        picked = [ox.INT8_NODE_PATTERN.search(n) for n in fp32_nodes]
        assert sorted(m.group(0) for m in picked if m) == sorted(f"/blocks.{i}/{p}/MatMul" for i, p in expected)
        ops = [n.op_type for n in onnx.load(str(rep.artifact / "model.int8.onnx")).graph.node]
        # qkv, out, fc1, fc2 per block; the last block projects only the CLS query (folded keys/values), left fp32
        assert ops.count("MatMulInteger") == 4 * model.tower.cfg.layers - 1
        assert Manifest.load(rep.artifact).file("onnx", "int8").path == "model.int8.onnx"
    x = images(tiny_edited, 7, seed=5)
    with torch.no_grad():
        ref_logits, ref_emb = (t.numpy() for t in tiny_edited(torch.from_numpy(x)))
    clf = runtime.load(rep.artifact, precision="int8", device="auto")
    assert (clf.info()["device"], clf.info()["file"]) == ("cpu", "model.int8.onnx")
    logits, emb = clf.run(x)
    assert ox.compare("int8", logits, emb, ref_logits, ref_emb).passed
    # image by image: an image's result does not depend on the rest of its batch (per-tensor dynamic scales)
    np.testing.assert_array_equal(logits, np.concatenate([clf.run(x[i : i + 1])[0] for i in range(len(x))]))
    np.testing.assert_array_equal(logits[2:3], clf.run(np.concatenate([x[2:3], 50 * x[:3]]))[0][:1])
    with pytest.raises(BackendError, match="CPU provider only"):
        runtime.load(rep.artifact, precision="int8", device="cuda")
    only = export_onnx(tiny_edited, tmp_path / "only", precision="int8", ort_optimize=False)
    assert sorted(p.name for p in only.iterdir()) == [MARKER_NAME, "manifest.json", "model.int8.onnx"]
    with pytest.raises(ClipDebiasError, match="no onnx fp32 model listed"):
        runtime.load(only)


# ---- CLI ----------------------------------------------------------------------------------------------------------
def test_cli_export_onnx_from_model_dir(tiny_clip, tmp_path):
    """Each result printed once (issue 16): what is being done and each gate on stderr as they pass, one 'wrote' line
    and the digest on stdout."""
    from typer.testing import CliRunner

    from clip_debias.toolchain.cli.app import app

    plain_classifier(tiny_clip, CLASSES).save(tmp_path / "model")
    res = CliRunner().invoke(app, ["export", "onnx", str(tmp_path / "model"), "--out", str(tmp_path / "art"),
                                   "--no-ort-optimize", "--opset", "17", "--precision", "fp32,int8"])
    assert res.exit_code == 0, res.output
    err, out = res.stderr.splitlines(), res.stdout.splitlines()
    assert err[0].endswith("random-weight model, no text tower exported (its image tower has no matching text tower)")
    err = err[1:]
    assert err[0].startswith(f"exporting {tmp_path / 'model'} to {tmp_path / 'art'} (fp32, int8; opset 17)")
    assert [line.split(":")[0] for line in err if line.startswith("parity gate")] == ["parity gate fp32 against torch",
                                                                                      "parity gate int8 against torch"]
    assert len(out) == 2 and out[0] == f"wrote {tmp_path / 'art'} (model.onnx, model.int8.onnx; every graph passed "\
                                       "its parity gate)" and out[1].startswith("artifact digest sha256:")
    assert res.output.count("wrote") == 1 and res.output.count("parity gate fp32") == 1
    m = Manifest.load(tmp_path / "art")
    assert m.opset == 17 and [f.path for f in m.files] == ["model.onnx", "model.int8.onnx"]


# ---- TensorRT -----------------------------------------------------------------------------------------------------
def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_has_tensorrt(), reason="tensorrt is installed")
def test_tensorrt_missing_is_one_line_nonzero(tmp_path, monkeypatch, capsys):
    """Through the real entry point (``clip-debias`` = ``toolchain.cli.app:main``), in-process to save the imports."""
    from clip_debias.toolchain.cli import app as cli

    monkeypatch.setattr(sys, "argv", ["clip-debias", "export", "tensorrt", str(tmp_path)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "TensorRT is not installed: pip install 'clip-debias[tensorrt]' on a machine with an NVIDIA GPU" in lines[0]


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_engine_added_to_artifact(tiny_clip, tmp_path):
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from clip_debias.exporters.tensorrt_export import EngineOptions, export_tensorrt

    art = export_onnx(plain_classifier(tiny_clip, CLASSES), tmp_path / "art", precision="both", ort_optimize=False)
    export_tensorrt(art, EngineOptions(fp16=True, min_batch=1, opt_batch=4, max_batch=8, workspace_gb=1))
    m = Manifest.load(art)
    plan = m.file("tensorrt", "fp16")
    assert plan is not None and hashlib.sha256((art / plan.path).read_bytes()).hexdigest() == plan.sha256
    side = json.loads((art / "model.plan.json").read_text())
    assert side["onnx_sha256"] in {f.sha256 for f in m.files} and side["profile"]["max"] == 8
    assert {"tensorrt", "gpu", "compute_capability"} <= set(side)
    assert leftovers(tmp_path) == []


# ---- bench --------------------------------------------------------------------------------------------------------
def has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def test_bench_rows(tiny_clip, tmp_path):
    from clip_debias.exporters.bench import bench, bench_json

    model = plain_classifier(tiny_clip, CLASSES)
    model.save(tmp_path / "model")
    art = export_onnx(model, tmp_path / "art", precision="fp32,fp16,int8", ort_optimize=False)
    left_out: list[str] = []
    rows = bench(art, [1, 2], iters=1, model_dir=tmp_path / "model", warmup=0, left_out=left_out)
    labels = [r.backend for r in rows if r.batch == 1]
    runtime_rows = ["ort fp32", "ort fp16", "ort int8"]
    assert labels[:6] == ["open_clip eager", "torch plain", "torch debiased", *runtime_rows]
    assert labels[6:] == ([label for label in ("openvino fp32", "openvino bf16")  # when openvino can run them
                           if not any(why.startswith(label) for why in left_out)] if has_openvino() else [])
    assert all(r.speedup == 1.0 for r in rows if r.backend == "open_clip eager")
    assert all(r.p50_ms > 0 and r.throughput > 0 for r in rows)
    assert len(bench_json(rows)["rows"]) == 2 * len(labels)
    other = plain_classifier(tiny_clip, ["x", "y", "z"])  # same weights, other classes: another model
    other.save(tmp_path / "other")
    with pytest.raises(ClipDebiasError, match=r"--model-dir .*other: not the model .* \(classes differ\)"):
        bench(art, [1], iters=1, model_dir=tmp_path / "other", warmup=0)


def test_opset_out_of_range_refused_in_one_line():
    """Checked before torch.onnx.export, which would print a long graph dump before failing."""
    from clip_debias.exporters.onnx_export import check_opset

    for opset in (13, 99):
        with pytest.raises(ClipDebiasError, match=rf"^--opset {opset}: expected 14\.\.\d+ ") as e:
            check_opset(opset)
        assert "\n" not in str(e.value)
    check_opset(18)


def test_benchmark_sessions_stop_spinning(tiny_clip, tmp_path):
    """Sessions that take turns with torch (bench, benchmarks/) stop their idle threads' spinning when a run returns,
    so the spinning does not slow the torch call that follows; other sessions keep ONNX Runtime's default."""
    art = export_onnx(plain_classifier(tiny_clip, CLASSES), tmp_path / "art", ort_optimize=False)
    key = "session.force_spinning_stop"
    options = ort_session(art / "model.onnx", stop_spinning=True).get_session_options()
    assert options.get_session_config_entry(key) == "1"
    with pytest.raises(RuntimeError, match="does not have configuration with key"):  # i.e. ORT's default
        ort_session(art / "model.onnx").get_session_options().get_session_config_entry(key)


def test_refuses_to_replace_a_non_artifact_directory(tiny_edited, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ClipDebiasError, match="not an artifact"):
        export_onnx(tiny_edited, tmp_path / "notes", ort_optimize=False)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine" and leftovers(tmp_path) == []


def test_fused_attention_export(tmp_path, tiny_clip):
    """--fused-attention writes full-query attention as com.microsoft::Attention (QKV projection inside; the CLS-only
    last layer keeps its few small MatMuls and one Softmax), and every residual Add + LayerNorm after the first
    block's as SkipLayerNormalization with its bias folded in; the parity gates still hold, the runtime runs it
    (dynamic batch), and the manifest records it; int8 quantization applies on top of it."""
    import numpy as np
    import onnx
    import torch

    from clip_debias import runtime
    from clip_debias.exporters.onnx_export import export_onnx
    from clip_debias.toolchain.correct.classifier import plain_classifier

    model = plain_classifier(tiny_clip, ["a", "b", "c"])
    art = export_onnx(model, tmp_path / "art", precision="fp32,fp16,int8", fused_attention=True, ort_optimize=False)
    graph = onnx.load(str(art / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("Attention") == 3 and "MultiHeadAttention" not in ops and ops.count("Softmax") == 1
    skip = [n for n in graph.node if n.op_type == "SkipLayerNormalization"]
    assert len(skip) == 7 and all(len(n.input) == 5 for n in skip)  # ln_2 of 4 blocks, ln_1 of blocks 1-3; + bias
    assert ops.count("LayerNormalization") == 3  # ln_pre, blocks.0 ln_1, ln_post
    ops8 = [n.op_type for n in onnx.load(str(art / "model.int8.onnx")).graph.node]  # both rewrites compose
    assert ops8.count("Attention") == 3 and ops8.count("SkipLayerNormalization") == 7
    assert ops8.count("MatMulInteger") == 12  # out, fc1, fc2 of 4 blocks (qkv is inside Attention or folded away)
    assert runtime.load(art, device="cpu").manifest.export == {"fused_attention": True, "fp16_fp32_ops": []}
    x = np.random.default_rng(0).standard_normal((7, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x))[0].numpy()
    assert np.abs(runtime.load(art, device="cpu").predict_logits(x) - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert not any(m.onnx_fused for m in model.modules() if hasattr(m, "onnx_fused"))  # flags reset after export
    from clip_debias.toolchain.errors import ClipDebiasError
    from clip_debias.exporters.tensorrt_export import export_tensorrt

    with pytest.raises(ClipDebiasError, match="re-export without it for TensorRT"):
        export_tensorrt(art)


def _layernorm_input_types(path: Path) -> set[int]:
    import onnx

    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*m.graph.value_info, *m.graph.input]}
    return {types[n.input[0]] for n in m.graph.node if n.op_type == "LayerNormalization"}


def test_fp16_layernorm_in_fp16_survives_outlier_channels(tiny_clip, tmp_path):
    """model.fp16.onnx runs LayerNormalization in fp16 (statistics in fp32 by the op's stash_type): no Cast pairs
    around it, and a residual channel at 1000 -- whose square (1e6) overflows fp16 -- still passes the fp16 gate.
    ``fp16_fp32_ops`` keeps LayerNorm in fp32 and is recorded in the manifest."""
    import onnx

    model = copy.deepcopy(edited_classifier(tiny_clip, [[3, 1]], [[2, 2]]))
    with torch.no_grad():  # channel 5 at ~1000 in ln_pre's input and, through ln_pre's bias, in every later LN's
        model.tower.positional_embedding[:, 5] += 1000.0
        model.tower.ln_pre.bias[5] += 1000.0
    report = export_onnx_report(model, tmp_path / "a", precision="fp16", ort_optimize=False)
    fp16 = report.artifact / "model.fp16.onnx"
    assert report.gates[-1].precision == "fp16" and report.gates[-1].passed
    assert _layernorm_input_types(fp16) == {onnx.TensorProto.FLOAT16}
    io = {"image", "logits", "embedding"}
    float_casts = [n for n in onnx.load(str(fp16)).graph.node if n.op_type == "Cast" and not io & {*n.input, *n.output}
                   and n.attribute[0].i in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert float_casts == []  # only the fp32 I/O casts convert between float types

    kept = export_onnx(model, tmp_path / "b", precision="fp16", ort_optimize=False,
                       fp16_fp32_ops=["LayerNormalization"])
    assert _layernorm_input_types(kept / "model.fp16.onnx") == {onnx.TensorProto.FLOAT}
    assert Manifest.load(kept).export["fp16_fp32_ops"] == ["LayerNormalization"]
    with pytest.raises(ClipDebiasError, match="'Layernorm' is not an ONNX operator type") as e:
        export_onnx(model, tmp_path / "c", precision="fp16", fp16_fp32_ops=["Layernorm"])
    assert "\n" not in str(e.value) and not (tmp_path / "c").exists()
    with pytest.raises(ClipDebiasError, match="writes no fp16 graph") as e:  # an option that would do nothing
        export_onnx(model, tmp_path / "c", precision="fp32,int8", fp16_fp32_ops=["LayerNormalization"])
    assert "\n" not in str(e.value) and not (tmp_path / "c").exists()


def test_fused_graph_refuses_layernorm_in_fp32(tiny_clip, tmp_path):
    """--fused-attention normalizes with SkipLayerNormalization (fp32 statistics, like LayerNorm's stash_type): asking
    to keep LayerNorm in fp32 as well is refused in one line, and nothing is written."""
    with pytest.raises(ClipDebiasError, match="does not combine with --fused-attention") as e:
        export_onnx(plain_classifier(tiny_clip, ["a", "b"]), tmp_path / "a", precision="fp16", fused_attention=True,
                    fp16_fp32_ops=["LayerNormalization"])
    assert "\n" not in str(e.value) and not (tmp_path / "a").exists()


def test_fp16_repeated_casts_dropped(tiny_clip, tmp_path):
    """Two fp32-kept ops reading one fp16 value (the residual stream feeds Add and LayerNorm) get one Cast, not two
    nodes writing the same name (which onnx.checker rejects)."""
    art = export_onnx(plain_classifier(tiny_clip, ["a", "b"]), tmp_path / "a", precision="fp16", ort_optimize=False,
                      fp16_fp32_ops=["Add", "LayerNormalization"])
    import onnx

    outputs = [o for n in onnx.load(str(art / "model.fp16.onnx")).graph.node for o in n.output if o]
    assert len(outputs) == len(set(outputs))
