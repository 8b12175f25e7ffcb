"""The torch-free runtime: loading/validation, preprocessing parity with open_clip, input checks, threads, fp16."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_debias import runtime
from clip_debias.runtime.backends import BackendError, ort_optimization_level
from clip_debias.runtime.errors import ArtifactError, InputError
from clip_debias.runtime.manifest import Preprocessing
from clip_debias.runtime.preprocess import Preprocessor
from runtime_fixtures import OPENAI_MEAN, OPENAI_STD, build_artifact

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return build_artifact(tmp_path_factory.mktemp("art") / "artifact", ort_optimized=True)


@pytest.fixture(scope="module")
def clf(art):
    return runtime.load(art.path, device="cpu")


def _batch(n: int, size=(24, 24), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, *size)).astype(np.float32)


def _copy(art, tmp_path, name: str = "copy") -> Path:
    import shutil

    dst = tmp_path / name
    shutil.copytree(art.path, dst)
    return dst


def _edit_manifest(path: Path, edit) -> None:
    d = json.loads((path / "manifest.json").read_text())
    edit(d)
    (path / "manifest.json").write_text(json.dumps(d))


# ------------------------------------------------------------------------------------------------------------
# torch-free
# ------------------------------------------------------------------------------------------------------------
def test_runtime_imports_no_torch(tmp_path):
    r = _python(f"""
        import sys
        import clip_debias.runtime as runtime, clip_debias.runtime.classifier, clip_debias.runtime.verify
        import clip_debias.runtime.backends, clip_debias.runtime.preprocess
        import clip_debias.toolchain.cli.verify_cmd
        from runtime_fixtures import build_artifact
        a = build_artifact({str(tmp_path / 'a')!r})
        import numpy as np
        runtime.load(a.path, device='cpu').predict_logits(np.zeros((2, 3, 24, 24), np.float32))
        assert 'torch' not in sys.modules, 'torch imported'
        assert 'torchvision' not in sys.modules and 'open_clip' not in sys.modules
        print('ok')
    """)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


# ------------------------------------------------------------------------------------------------------------
# preprocessing parity with open_clip
# ------------------------------------------------------------------------------------------------------------
def _test_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (157, 301, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (157, 301, 1), dtype=np.uint8)
    return {
        "rgb": Image.fromarray(a),
        "gray": Image.fromarray(a[..., 0]),
        "rgba": Image.fromarray(np.concatenate([a, alpha], -1)),
        "palette": Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=64),
        "tall": Image.fromarray(rng.integers(0, 256, (301, 157, 3), dtype=np.uint8)),
        "small": Image.fromarray(rng.integers(0, 256, (13, 29, 3), dtype=np.uint8)),
        "small_palette": Image.fromarray(rng.integers(0, 256, (13, 29, 3), dtype=np.uint8)).convert("P"),
    }


PARITY_CONFIGS = [
    ((224, 224), "bicubic", "shortest", 0),
    ((224, 224), "bilinear", "shortest", 0),
    ((224, 224), "bicubic", "squash", 0),
    ((224, 224), "bicubic", "longest", 0),
    ((192, 256), "bilinear", "shortest", 0),
    ((192, 256), "bilinear", "longest", 128),
    ((97, 61), "bicubic", "longest", 255),
    ((97, 61), "bilinear", "squash", 0),
]


@pytest.mark.parametrize("size,interpolation,mode,fill", PARITY_CONFIGS)
def test_preprocess_matches_open_clip(size, interpolation, mode, fill):
    open_clip = pytest.importorskip("open_clip")
    ref_t = open_clip.image_transform(size, is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD, resize_mode=mode,
                                      interpolation=interpolation, fill_color=fill)
    pre = Preprocessor.from_manifest(Preprocessing(list(size), OPENAI_MEAN, OPENAI_STD, interpolation, mode, fill))
    for name, im in _test_images().items():
        ref = ref_t(im).numpy()
        got = pre(im)
        assert got.dtype == np.float32 and got.shape == ref.shape == (3, *size), name
        assert np.abs(got - ref).max() <= 1e-6, (name, float(np.abs(got - ref).max()))


def test_preprocess_matches_vit_b32_default_transform(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    _, _, ref_t = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    pre = Preprocessor.from_manifest(Preprocessing([224, 224], list(OPENAI_MEAN), list(OPENAI_STD)))
    for name, im in _test_images().items():
        assert np.abs(pre(im) - ref_t(im).numpy()).max() <= 1e-6, name
    # and from a file path, like verify reads images
    _test_images()["rgba"].save(tmp_path / "x.png")
    assert np.abs(pre(tmp_path / "x.png") - ref_t(Image.open(tmp_path / "x.png")).numpy()).max() <= 1e-6


def test_unreadable_image_names_the_file(clf, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match="broken.jpg"):
        clf.classify([bad])
    with pytest.raises(InputError, match="not found"):
        clf.preprocess(tmp_path / "nope.png")


# ------------------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7])
def test_dynamic_batch_matches_numpy(clf, art, n):
    x = _batch(n)
    logits = clf.predict_logits(x)
    ref_logits, ref_emb = art.reference(x)
    assert logits.shape == (n, 2) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    np.testing.assert_allclose(clf.embed(x), ref_emb, atol=1e-5)


def test_prefers_ort_optimized_on_cpu_and_plain_when_asked(art):
    assert runtime.load(art.path, device="cpu").info()["file"] == "model.ort.onnx"
    assert runtime.load(art.path, device="cpu", use_ort_optimized=False).info()["file"] == "model.onnx"


def test_classify_images_and_paths(clf, art, tmp_path):
    colors = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]
    images = [Image.new("RGB", (31 + 7 * i, 17), c) for i, c in enumerate(colors)]
    images[1].save(tmp_path / "g.png")
    preds = clf.classify([images[0], tmp_path / "g.png", images[2]], batch_size=2)
    assert len(preds) == 3
    for p, c in zip(preds, colors):
        ref = art.color_logits(c)
        assert p.index == int(ref.argmax()) and p.label == clf.class_names[p.index]
        assert abs(float(p.probabilities.sum()) - 1.0) < 1e-6
        np.testing.assert_allclose(p.logits, ref, atol=1e-4)
    assert clf.preprocess(images[0]).shape == (3, 24, 24)
    assert clf.embed(images).shape == (3, 8)
    assert clf.classify(images[0])[0].index == preds[0].index  # a single image is fine too


def test_threads_match_serial_bit_exact(clf):
    batches = [_batch(1 + i % 5, seed=i) for i in range(32)]
    serial = [clf.predict_logits(b) for b in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            threaded = list(pool.map(clf.predict_logits, batches))
            for s, t in zip(serial, threaded):
                assert np.array_equal(s, t)


# ------------------------------------------------------------------------------------------------------------
# bad input on call
# ------------------------------------------------------------------------------------------------------------
def test_bad_inputs_refused_with_one_line(clf):
    cases = [
        (_batch(2)[0], "rank 3"),
        (_batch(2, size=(24, 25)), r"expected \[N, 3, 24, 24\]"),
        (np.zeros((2, 1, 24, 24), np.float32), r"\[2, 1, 24, 24\]"),
        (np.zeros((0, 3, 24, 24), np.float32), "empty"),
        (np.zeros((2, 3, 24, 24), np.uint8), "dtype uint8"),
        (np.zeros((2, 3, 24, 24), np.int64), "dtype int64"),
        ([[0.0]], "numpy array"),
    ]
    for x, msg in cases:
        with pytest.raises(InputError, match=msg) as e:
            clf.predict_logits(x)
        assert "\n" not in str(e.value)
    x = _batch(3)
    x[1, 0, 2, 3] = np.nan
    with pytest.raises(InputError, match=r"NaN/Inf.*batch item 1"):
        clf.predict_logits(x)
    x = _batch(3)
    x[2, 1, 0, 0] = np.inf
    with pytest.raises(InputError, match="NaN/Inf"):
        clf.predict_logits(x)
    with pytest.raises(InputError, match="NaN/Inf"):  # finite float64 that overflows float32
        clf.predict_logits(np.full((1, 3, 24, 24), 1e300))
    x = _batch(2)
    x[1, 2, 23, 23] = -np.inf  # the last element: the fast sum-of-squares check must still see it
    with pytest.raises(InputError, match=r"NaN/Inf.*batch item 1"):
        clf.predict_logits(x)
    big = np.full((1, 3, 24, 24), 1e30, np.float32)  # finite, but its sum of squares overflows: still accepted
    assert clf.check_batch(big) is not None


def test_float64_and_float16_are_cast(clf):
    x = _batch(2)
    expected = clf.predict_logits(x)
    np.testing.assert_array_equal(clf.predict_logits(x.astype(np.float64)), expected)
    np.testing.assert_allclose(clf.predict_logits(x.astype(np.float16)), expected, atol=1e-2)
    np.testing.assert_array_equal(clf.predict_logits(np.asfortranarray(x)), expected)


# ------------------------------------------------------------------------------------------------------------
# artifact validation on load
# ------------------------------------------------------------------------------------------------------------
def test_tampered_model_refused(art, tmp_path):
    path = _copy(art, tmp_path)
    with open(path / "model.onnx", "ab") as f:
        f.write(b"\0")
    for ort_optimized in (False, True):  # every listed file is hashed, not only the one that is loaded
        with pytest.raises(ArtifactError, match=r"model\.onnx: sha256 .* does not match manifest\.json"):
            runtime.load(path, device="cpu", use_ort_optimized=ort_optimized)


@pytest.mark.parametrize(
    "edit,msg",
    [
        (lambda d: d.pop("outputs"), "field 'outputs': missing"),
        (lambda d: d.pop("class_names"), "field 'class_names': missing"),
        (lambda d: d["preprocessing"].pop("mean"), r"field 'preprocessing\.mean': missing"),
        (lambda d: d.update(format_version=2), "field 'format_version': is 2, expected 1"),
        (lambda d: d.pop("format_version"), "field 'format_version': missing"),
        (lambda d: d["files"][0].update(path="../model.onnx"), r"field 'files\[0\]\.path': expected a relative path"),
        (lambda d: d["files"][0].update(kind="pytorch"), r"field 'files\[0\]\.kind': expected one of"),
        (lambda d: d["files"][0].update(sha256="f" * 63), r"field 'files\[0\]\.sha256': expected a sha256 digest"),
        (lambda d: d.update(opset=True), "field 'opset': expected an integer, got true"),
        (lambda d: d.update(surprise={}), "field 'surprise': unknown field"),
        (lambda d: d.update(class_names=["a", "b", "c"]), "'logits' has 2 columns"),
        (lambda d: d["inputs"][0].update(shape=["batch", 3, 32, 32]), r"inputs\[0\].shape"),
        (lambda d: d["outputs"][1].update(shape=["batch", 9]), r"graph output 'embedding' has shape \['batch', 8\]"),
        (lambda d: d["outputs"][0].update(name="scores"), "no 'logits'"),
        (lambda d: d["preprocessing"].update(resize_mode="crop"), "resize_mode 'crop'"),
    ],
)
def test_manifest_problems_refused(art, tmp_path, edit, msg):
    path = _copy(art, tmp_path)
    _edit_manifest(path, edit)
    with pytest.raises(ArtifactError, match=msg) as e:
        runtime.load(path, device="cpu")
    assert "manifest.json" in str(e.value) or "model" in str(e.value)
    assert "\n" not in str(e.value)


def test_listed_file_missing(art, tmp_path):
    path = _copy(art, tmp_path)
    (path / "model.fp16.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"model\.fp16\.onnx: listed in manifest\.json but missing"):
        runtime.load(path, device="cpu")


def test_graph_with_fixed_batch_refused(art, tmp_path):
    import onnx

    path = _copy(art, tmp_path)
    m = onnx.load(path / "model.onnx")
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(m, path / "model.onnx")
    from clip_debias.runtime.manifest import sha256_file

    _edit_manifest(path, lambda d: d["files"][0].update(sha256=sha256_file(path / "model.onnx")))
    with pytest.raises(ArtifactError, match=r"model\.onnx: graph input 'image' has shape \[1, 3, 24, 24\]"):
        runtime.load(path, device="cpu", use_ort_optimized=False)


def test_half_written_artifact_refused(art, tmp_path):
    path = _copy(art, tmp_path)
    (path / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"manifest\.json: missing"):
        runtime.load(path)
    tmp_dir = _copy(art, tmp_path, "artifact.tmp-1234")
    with pytest.raises(ArtifactError, match="temporary export directory"):
        runtime.load(tmp_dir)
    with pytest.raises(ArtifactError, match="not found"):
        runtime.load(tmp_path / "nowhere")
    (path / "manifest.json").write_text("{ half")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        runtime.load(path)


# ------------------------------------------------------------------------------------------------------------
# backends, devices, precision
# ------------------------------------------------------------------------------------------------------------
def test_fp16_on_cpu_loads_and_runs_in_subprocess(art):
    """A segfault while creating the fp16 CPU session must fail this test, not kill pytest."""
    r = _python(f"""
        import numpy as np, runtime
        c = runtime.load({str(art.path)!r}, device='cpu', precision='fp16')
        x = np.random.default_rng(0).standard_normal((5, 3, 24, 24)).astype(np.float32)
        print(c.info()['file'], c.info()['graph_optimization_level'])
        print(repr(c.predict_logits(x).tolist()))
    """)
    assert r.returncode == 0, f"rc={r.returncode} (negative = killed by signal) {r.stderr[-2000:]}"
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("model.fp16.onnx") and "ORT_ENABLE_ALL" not in lines[0]
    got = np.array(eval(lines[1]))
    np.testing.assert_allclose(got, art.reference(_batch(5))[0], atol=2e-2)


def test_fp16_optimization_level_is_never_all():
    import onnxruntime as ort

    assert ort_optimization_level("cpu", "fp16") == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert ort_optimization_level("auto", "fp16") == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert ort_optimization_level("cpu", "fp32") == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_ort_policy_is_one_place(art):
    """The fp16-on-CPU rule caps a level asked for explicitly too (the export's saved graph, bench, benchmarks/ all
    make sessions through ``ort_session``); fp32 on CUDA is asked for without TF32."""
    import onnxruntime as ort

    from clip_debias.runtime.backends import ort_session
    from clip_debias.runtime.backends.ort import cuda_provider_options

    levels = ort.GraphOptimizationLevel
    assert ort_optimization_level("cpu", "fp16", "all") == levels.ORT_ENABLE_BASIC
    assert ort_optimization_level("cpu", "fp32", "extended") == levels.ORT_ENABLE_EXTENDED
    sess = ort_session(art.path / "model.fp16.onnx", "fp16", level="all")
    assert sess.get_session_options().graph_optimization_level == levels.ORT_ENABLE_BASIC
    assert cuda_provider_options("fp32")["use_tf32"] == "0" and "use_tf32" not in cuda_provider_options("fp16")
    assert cuda_provider_options("fp16", cuda_graph=True)["enable_cuda_graph"] == "1"


def test_backend_table_entries_are_complete_and_lazy():
    """A backend is one module plus one entry in ``BACKEND_MODULES``: each module has the selection interface, and
    neither importing the package nor running on ONNX Runtime imports OpenVINO or TensorRT."""
    from clip_debias.runtime.backends import BACKEND_MODULES, BACKENDS
    from clip_debias.runtime.backends.selection import backend_module

    assert BACKENDS == ("auto", *BACKEND_MODULES)
    for name in BACKEND_MODULES:
        mod = backend_module(name)
        assert mod.NAME == name and set(mod.DEVICES) <= {"auto", "cpu", "cuda"} and mod.PRECISIONS
        assert callable(mod.picked_by_auto) and callable(mod.open_backend)
    r = _python("""
        import sys
        import numpy as np
        from clip_debias import runtime
        from runtime_fixtures import build_artifact
        import tempfile
        a = build_artifact(tempfile.mkdtemp() + '/a')
        runtime.load(a.path, device='cpu').predict_logits(np.zeros((1, 3, 24, 24), np.float32))
        print(sorted(m for m in ('openvino', 'tensorrt', 'torch') if m in sys.modules))
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_fp16_missing_is_clear(tmp_path):
    a = build_artifact(tmp_path / "a", fp16=False)
    with pytest.raises(ArtifactError, match="no onnx fp16 model listed"):
        runtime.load(a.path, device="cpu", precision="fp16")


def test_cuda_not_silently_cpu(art):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu installed")
    with pytest.raises(BackendError, match="CUDAExecutionProvider"):
        runtime.load(art.path, device="cuda")
    assert runtime.load(art.path, device="auto").backend.device == "cpu"


def test_tensorrt_missing_is_one_line(art):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt installed")
    except ImportError:
        pass
    with pytest.raises(BackendError, match="backend 'tensorrt': TensorRT is not installed") as e:
        runtime.load(art.path, backend="tensorrt")
    assert "\n" not in str(e.value)
    with pytest.raises(BackendError, match="needs device 'cuda'"):
        runtime.load(art.path, backend="tensorrt", device="cpu")
    with pytest.raises(BackendError, match="backend 'onnx'"):
        runtime.load(art.path, backend="onnx")


def test_auto_without_tensorrt_uses_onnxruntime_even_with_a_plan(art, tmp_path):
    from clip_debias.runtime.manifest import sha256_file

    path = _copy(art, tmp_path)
    (path / "model.plan").write_bytes(b"not really an engine")
    _edit_manifest(path, lambda d: d["files"].append(
        {"path": "model.plan", "sha256": sha256_file(path / "model.plan"), "kind": "tensorrt", "precision": "fp32"}))
    clf = runtime.load(path, device="auto")
    assert clf.backend.name == "onnxruntime"


def test_cli_verify_path_imports_no_torch(art, tmp_path):
    """``clip-debias verify`` runs on the torch-free base install: the whole CLI app, not just verify_cmd."""
    r = _python(f"""
        import sys
        from runtime_fixtures import build_waterbirds
        from typer.testing import CliRunner
        from clip_debias.toolchain.cli.app import app
        build_waterbirds({str(tmp_path / 'wb')!r})
        res = CliRunner().invoke(app, ['verify', {str(art.path)!r}, '--dataset', 'waterbirds',
                                       '--data', {str(tmp_path / 'wb')!r}, '--split', 'test', '--no-progress'])
        assert res.exit_code == 0, res.output
        assert 'torch' not in sys.modules, 'torch imported'
        print('ok')
    """)
    assert r.returncode == 0 and "ok" in r.stdout, (r.stdout + r.stderr)[-2000:]


# ---- device-resident input ----------------------------------------------------------------------------------------
class _FakeCudaArray:
    """Exposes ``__cuda_array_interface__`` like a torch CUDA tensor / CuPy array (no memory behind the pointer: the
    CPU paths below must refuse it before anything reads it)."""

    def __init__(self, shape, typestr="<f4", strides=None):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (12345, False),
                                         "strides": strides, "version": 3}


def test_host_ortvalue_is_validated_like_an_array(clf):
    import onnxruntime as ort

    x = _batch(3)
    np.testing.assert_array_equal(clf.predict_logits(ort.OrtValue.ortvalue_from_numpy(x)), clf.predict_logits(x))
    x[2, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"NaN/Inf.*batch item 2"):
        clf.predict_logits(ort.OrtValue.ortvalue_from_numpy(x))


def test_cuda_array_interface_checked_then_refused_on_cpu(clf):
    from clip_debias.runtime.device_input import as_device_batch

    dev = as_device_batch(_FakeCudaArray((2, 3, 24, 24)))
    assert (dev.shape, dev.dtype, dev.device, dev.pointer) == ((2, 3, 24, 24), "float32", "cuda", 12345)
    assert as_device_batch(_batch(1)) is None
    cases = [(_FakeCudaArray((2, 3, 24, 24)), BackendError, "needs a session on CUDA"),
             (_FakeCudaArray((2, 3, 32, 24)), InputError, "expected \\[N, 3, 24, 24\\]"),
             (_FakeCudaArray((2, 3, 24, 24), "<f2"), InputError, "dtype float16"),
             (_FakeCudaArray((2, 3, 24, 24), strides=(4, 2 * 3 * 24 * 4, 24 * 4, 4)), InputError, "C-contiguous")]
    for x, err, msg in cases:
        with pytest.raises(err, match=msg) as e:
            clf.predict_logits(x)
        assert "\n" not in str(e.value)


def test_device_input_nonfinite_outputs_refused(clf, monkeypatch):
    """A device batch is not scanned (no host copy); NaN/Inf outputs are refused naming the batch items."""
    def fake_run_device(batch):
        logits, emb = np.zeros((batch.shape[0], 2), np.float32), np.zeros((batch.shape[0], 8), np.float32)
        emb[1, 3] = np.nan
        return logits, emb

    monkeypatch.setattr(clf.backend, "run_device", fake_run_device)
    with pytest.raises(InputError, match=r"batch item\(s\) \[1\]"):
        clf.predict_logits(_FakeCudaArray((3, 3, 24, 24)))


def test_ort_level_is_named_as_the_option_names_it():
    """info() and the reports say 'all', never the enum's repr 'GraphOptimizationLevel.ORT_ENABLE_ALL'."""
    import onnxruntime as ort

    from clip_debias.runtime.backends.ort import LEVELS, level_name

    levels = ort.GraphOptimizationLevel
    got = [level_name(v) for v in (levels.ORT_DISABLE_ALL, levels.ORT_ENABLE_BASIC, levels.ORT_ENABLE_EXTENDED,
                                   levels.ORT_ENABLE_ALL)]
    assert got == list(LEVELS)
