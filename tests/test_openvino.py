"""The OpenVINO backend (``runtime.backends.ov``): parity with ONNX Runtime, bf16 (gated, or refused on a CPU without
bf16 arithmetic), thread safety, integrity, selection, and ``verify`` / ``bench`` through it. Skipped without
``openvino`` (CI installs the [openvino] extra)."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clip_debias import runtime
from clip_debias.runtime import cpu_features
from clip_debias.runtime import precision_gate as parity
from clip_debias.runtime.backends import BackendError
from clip_debias.runtime.backends.ov import CPU_BACKEND_ENV, bf16_support
from clip_debias.runtime.errors import ArtifactError
from runtime_fixtures import build_artifact, build_waterbirds

ov = pytest.importorskip("openvino")
CLASSES = ["a photo of a cat", "a photo of a dog", "a photo of a bird"]


def _cpu_has_bf16() -> bool:
    caps = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return bf16_support(caps, cpu_features.cpu_flags())[0]


HAS_BF16 = _cpu_has_bf16()


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return build_artifact(tmp_path_factory.mktemp("ov") / "a")


@pytest.fixture(scope="module")
def clip_art(tiny_clip, tmp_path_factory):
    """A real (tiny) CLIP export: attention, LayerNorm, GELU -- what OpenVINO has to get right."""
    from clip_debias.exporters.onnx_export import export_onnx
    from clip_debias.toolchain.correct.classifier import plain_classifier

    return export_onnx(plain_classifier(tiny_clip, CLASSES), tmp_path_factory.mktemp("ov") / "clip",
                       ort_optimize=False)


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def test_fp32_equals_onnxruntime_fp32(clip_art):
    """OpenVINO fp32 (inference precision f32, set explicitly) on model.onnx == ONNX Runtime fp32 to <= 1e-4 on the
    logits, at several batch sizes (the batch axis stays dynamic)."""
    ovc = runtime.load(clip_art, backend="openvino", device="cpu")
    ortc = runtime.load(clip_art, backend="onnxruntime", device="cpu", use_ort_optimized=False)
    info = ovc.info()
    assert (info["backend"], info["precision"], info["inference_precision"], info["file"]) == \
        ("openvino", "fp32", "f32", "model.onnx")
    for n in (1, 3, 8):
        x = _images(n, 32, seed=n)
        (l_ov, e_ov), (l_ort, e_ort) = ovc.run(x), ortc.run(x)
        assert l_ov.dtype == np.float32 and l_ov.shape == (n, len(CLASSES)) and e_ov.shape == e_ort.shape
        assert float(np.abs(l_ov - l_ort).max()) <= 1e-4
        assert float(np.abs(e_ov - e_ort).max()) <= 1e-5


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 arithmetic (see test_bf16_refused_without_hardware)")
def test_bf16_agrees_with_fp32(clip_art):
    """bf16 vs fp32 on a fixed set of 32 seeded images, with the bf16 gate's tolerance (``runtime.precision_gate``):
    max |logit diff| <= 40 u m with u = 2^-8 (bf16 keeps 8 significant bits: its unit roundoff is 8x fp16's, whose
    gate is 40 u16 m -- the accumulated rounding of ~L sequential blocks, each GEMM's inputs rounded once and its
    products accumulated in fp32 by avx512_bf16 / AMX), embedding cosine >= 1 - (40 u)^2 / 2, and the same argmax on
    every image whose fp32 top-2 margin exceeds that tolerance (a tie inside the error bound has no order)."""
    bf16 = runtime.load(clip_art, backend="openvino", device="cpu", precision="bf16")
    fp32 = runtime.load(clip_art, backend="openvino", device="cpu", precision="fp32")
    assert bf16.info()["inference_precision"] == "bf16"
    x = _images(32, 32, seed=11)
    gate = parity.compare("bf16", *bf16.run(x), *fp32.run(x))
    assert gate.passed, gate.reason
    assert gate.argmax_checked > 0
    assert parity.precision_gate(bf16, runtime.load(clip_art, device="cpu")).passed


@pytest.mark.skipif(HAS_BF16, reason="this CPU has bf16 arithmetic")
def test_bf16_refused_without_hardware(art):
    """No silent emulation: one line saying how the missing bf16 support was detected."""
    with pytest.raises(BackendError, match=r"precision 'bf16' refused: .*OPTIMIZATION_CAPABILITIES") as e:
        runtime.load(art.path, backend="openvino", precision="bf16")
    assert "\n" not in str(e.value) and ("/proc/cpuinfo" in str(e.value) or cpu_features.cpu_flags() is None)
    with pytest.raises(BackendError, match="precision .bf16. refused"):  # auto picks OpenVINO for bf16, which refuses
        runtime.load(art.path, precision="bf16")


def test_bf16_silent_fallback_refused(art, monkeypatch):
    """Even where the CPU check passes, a model OpenVINO compiled at another precision than asked is refused (on a
    CPU without BF16, OpenVINO 2026.4 compiles at f32 without a word)."""
    if HAS_BF16:
        pytest.skip("this CPU runs bf16: no fallback to provoke")
    monkeypatch.setattr("clip_debias.runtime.backends.ov.bf16_support", lambda caps, flags: (True, "forced"))
    with pytest.raises(BackendError, match=r"precision 'bf16' refused: OpenVINO compiled the model at f32"):
        runtime.load(art.path, backend="openvino", precision="bf16")


def test_bf16_support_decision():
    """OpenVINO's capability list and the CPU's flags must both say bf16; without /proc/cpuinfo OpenVINO decides."""
    assert bf16_support(["FP32", "BF16"], {"avx512f", "avx512_bf16"})[0]
    assert bf16_support(["FP32", "BF16"], {"amx_bf16"})[0]
    assert bf16_support(["FP32", "BF16"], None)[0]
    ok, how = bf16_support(["FP32", "BF16"], {"avx512f", "avx512_core"})  # would be emulated with avx512 conversions
    assert not ok and "none of avx512_bf16" in how
    ok, how = bf16_support(["FP32", "INT8"], {"avx512_bf16"})
    assert not ok and "lack BF16" in how


def test_threads_equal_serial(clip_art):
    """24 calls from 8 threads over three batch sizes (one infer request per thread) == the serial results,
    bit-exact."""
    clf = runtime.load(clip_art, backend="openvino", device="cpu")
    batches = [_images(1 + i % 3, 32, seed=i) for i in range(24)]
    serial = [clf.run(x) for x in batches]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(clf.run, batches))
    for (ls, es), (lt, et) in zip(serial, threaded):
        np.testing.assert_array_equal(ls, lt)
        np.testing.assert_array_equal(es, et)


def test_outputs_are_not_overwritten_by_the_next_call(clip_art):
    clf = runtime.load(clip_art, backend="openvino", device="cpu")
    x1, x2 = _images(2, 32, seed=1), _images(2, 32, seed=2)
    first = clf.run(x1)[0]
    kept = first.copy()
    clf.run(x2)
    np.testing.assert_array_equal(first, kept)


def test_tampered_model_refused(art, tmp_path):
    path = tmp_path / "t"
    shutil.copytree(art.path, path)
    data = bytearray((path / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.onnx: sha256 .* does not match manifest\.json"):
        runtime.load(path, backend="openvino")
    (path / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ArtifactError, match="OpenVINO cannot read the model") as e:
        runtime.load(path, backend="openvino", check_sha256=False)
    assert "\n" not in str(e.value)


def test_graph_io_checked_against_manifest(art, tmp_path):
    import json

    path = tmp_path / "io"
    shutil.copytree(art.path, path)
    m = json.loads((path / "manifest.json").read_text())
    m["outputs"][1]["shape"] = ["batch", 999]
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"graph output 'embedding' has shape"):
        runtime.load(path, backend="openvino")


def test_input_validation_is_the_classifiers(art):
    clf = runtime.load(art.path, backend="openvino")
    with pytest.raises(runtime.InputError, match="NaN/Inf"):
        clf.predict_logits(np.full((1, 3, 24, 24), np.nan, np.float32))
    x = _images(3, 24)
    np.testing.assert_allclose(clf.predict_logits(x), art.reference(x)[0], atol=1e-5)
    assert [p.label for p in clf.classify(x)] == [art.manifest.class_names[i] for i in art.reference(x)[0].argmax(1)]


def test_auto_picks_openvino_only_when_configured(art, monkeypatch):
    monkeypatch.delenv(CPU_BACKEND_ENV, raising=False)
    assert runtime.load(art.path, device="cpu").backend.name == "onnxruntime"
    monkeypatch.setenv(CPU_BACKEND_ENV, "openvino")
    assert runtime.load(art.path, device="cpu").backend.name == "openvino"
    assert runtime.load(art.path, device="cpu", precision="fp16").backend.name == "onnxruntime"  # OpenVINO: fp32/bf16
    monkeypatch.setenv(CPU_BACKEND_ENV, "openvno")
    with pytest.raises(BackendError, match=rf"environment variable {CPU_BACKEND_ENV}='openvno': expected"):
        runtime.load(art.path, device="cpu")


def test_openvino_options_refused_in_one_line(art):
    for kwargs, match in (({"device": "cuda"}, "needs device 'cpu'"),
                          ({"precision": "int8"}, "runs precision fp32, bf16, not 'int8'"),
                          ({"performance_hint": "fast"}, "performance_hint 'fast'")):
        with pytest.raises(BackendError, match=match) as e:
            runtime.load(art.path, backend="openvino", **kwargs)
        assert "\n" not in str(e.value)
    clf = runtime.load(art.path, backend="openvino", performance_hint="throughput", intra_op_threads=1)
    assert (clf.info()["performance_hint"], clf.info()["threads"]) == ("THROUGHPUT", 1)


def test_verify_cli_with_openvino(art, tmp_path):
    from clip_debias.toolchain.cli.app import app

    build_waterbirds(tmp_path / "wb")
    common = ["verify", str(art.path), "--dataset", "waterbirds", "--data", str(tmp_path / "wb"), "--split", "test",
              "--no-progress",
              "--backend", "openvino"]
    res = CliRunner().invoke(app, common + ["--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["backend"]["backend"] == "openvino" and report["precision_gate"] is None
    if not HAS_BF16:
        res = CliRunner().invoke(app, common + ["--precision", "bf16"])
        assert res.exit_code == 2 and "precision 'bf16' refused" in res.output, res.output


def test_verify_precision_gate_reported(art, tmp_path, monkeypatch):
    """The gate ``verify`` runs for bf16, exercised here at fp32 on OpenVINO (bf16 needs the hardware): its numbers
    are in the report, and a failed gate fails the run."""
    from clip_debias.runtime import verify as verify_mod
    from clip_debias.runtime.verify import engine as verify_engine

    build_waterbirds(tmp_path / "wb")
    monkeypatch.setattr(verify_engine, "GATED_AT_VERIFY", ("fp32",))
    rep = verify_mod.verify(art.path, "waterbirds", tmp_path / "wb", backend="openvino", progress=False)
    assert rep.precision_gate is not None and rep.precision_gate["passed"] and rep.passed
    assert rep.precision_gate["max_logit_diff"] <= 1e-5
    monkeypatch.setitem(parity.LOGIT_RTOL, "fp32", -1.0)
    rep = verify_mod.verify(art.path, "waterbirds", tmp_path / "wb", backend="openvino", progress=False)
    assert not rep.precision_gate["passed"] and not rep.passed


def test_bench_has_openvino_rows(clip_art):
    from clip_debias.exporters.bench import bench, bench_json

    left_out: list[str] = []
    rows = bench(clip_art, [1], iters=1, warmup=0, open_clip_row=False, left_out=left_out)
    labels = [r.backend for r in rows]
    assert labels == ["ort fp32", "openvino fp32"] + (["openvino bf16"] if HAS_BF16 else [])
    assert HAS_BF16 or (len(left_out) == 1 and left_out[0].startswith("openvino bf16: precision 'bf16' refused"))
    machine = bench_json(rows, left_out)["machine"]
    assert set(machine["cpu_flags"]) == set(cpu_features.FLAGS_THAT_MATTER)
