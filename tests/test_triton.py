"""Triton model repository: exact config.pbtxt (both backends), layout, engine / precision selection, int8 never
batched, threads per instance, GPU warm-up, labels and option errors. The real server: tests/test_triton_server.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip_debias.exporters.artifact import model_file
from clip_debias.exporters.onnx_export import export_onnx
from clip_debias.exporters.triton import PYTHON_MODEL, export_triton
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.manifest import MANIFEST_NAME, Manifest
from clip_debias.runtime.ownership import MARKER_NAME
from clip_debias.toolchain.correct.classifier import plain_classifier

IO_CONFIG = """\
input [
  {
    name: "image"
    data_type: TYPE_FP32
    dims: [ 3, 32, 32 ]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ 3 ]
    label_filename: "labels.txt"
  },
  {
    name: "embedding"
    data_type: TYPE_FP32
    dims: [ 32 ]
  }
]
"""

ONNX_CONFIG = """\
name: "clip_debias"
platform: "onnxruntime_onnx"
max_batch_size: 32
""" + IO_CONFIG + """\
dynamic_batching {
  max_queue_delay_microseconds: 100
}
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
parameters {
  key: "intra_op_thread_count"
  value: { string_value: "4" }
}
"""

PLAN_CONFIG = """\
name: "birds"
platform: "tensorrt_plan"
max_batch_size: 16
""" + IO_CONFIG + """\
dynamic_batching {
  max_queue_delay_microseconds: 250
}
instance_group [
  {
    count: 2
    kind: KIND_GPU
  }
]
model_warmup [
  {
    name: "zeros_batch_1"
    batch_size: 1
    inputs {
      key: "image"
      value {
        data_type: TYPE_FP32
        dims: [ 3, 32, 32 ]
        zero_data: true
      }
    }
  },
  {
    name: "zeros_batch_16"
    batch_size: 16
    inputs {
      key: "image"
      value {
        data_type: TYPE_FP32
        dims: [ 3, 32, 32 ]
        zero_data: true
      }
    }
  }
]
"""

PYTHON_CONFIG = """\
name: "clip_debias"
backend: "python"
max_batch_size: 8
""" + IO_CONFIG + """\
dynamic_batching {
  max_queue_delay_microseconds: 5000
}
instance_group [
  {
    count: 2
    kind: KIND_CPU
  }
]
parameters {
  key: "precision"
  value: { string_value: "fp32" }
}
parameters {
  key: "intra_op_thread_count"
  value: { string_value: "3" }
}
"""

INT8_CONFIG = """\
name: "clip_debias"
platform: "onnxruntime_onnx"
max_batch_size: 1
""" + IO_CONFIG + """\
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
parameters {
  key: "intra_op_thread_count"
  value: { string_value: "8" }
}
"""


@pytest.fixture(scope="module")
def artifact(tiny_clip, tmp_path_factory) -> Path:
    return export_onnx(plain_classifier(tiny_clip, ["a", "b", "c"]), tmp_path_factory.mktemp("t") / "art",
                       ort_optimize=False)


def _copy_fp32(artifact: Path, art: Path) -> Path:
    """A new folder ``art`` with ``artifact``'s fp32 model and manifest."""
    art.mkdir()
    for name in ("model.onnx", MANIFEST_NAME):
        (art / name).write_bytes((artifact / name).read_bytes())
    return art


def _list_file(art: Path, name: str, kind: str, precision: str) -> Path:
    """``art`` with ``name`` (already written there) listed in its manifest."""
    m = Manifest.load(art)
    m.files.append(model_file(art, name, kind, precision))
    m.save(art)
    return art


@pytest.fixture
def plan_artifact(artifact, tmp_path) -> Path:
    """A copy of ``artifact`` with a (fake) TensorRT engine listed, as ``export tensorrt`` would leave it."""
    art = _copy_fp32(artifact, tmp_path / "plan_art")
    (art / "model.plan").write_bytes(b"not a real engine")
    (art / "model.plan.json").write_text(json.dumps({"profile": {"input": "image", "min": 1, "opt": 6, "max": 16}}))
    return _list_file(art, "model.plan", "tensorrt", "fp16")


@pytest.fixture
def int8_artifact(artifact, tmp_path) -> Path:
    """A copy of ``artifact`` that also lists an int8 model (the fp32 graph under that name: configs only)."""
    art = _copy_fp32(artifact, tmp_path / "int8_art")
    (art / "model.int8.onnx").write_bytes((artifact / "model.onnx").read_bytes())
    return _list_file(art, "model.int8.onnx", "onnx", "int8")


def test_onnx_repository_exact_config(artifact, tmp_path):
    target = export_triton(artifact, tmp_path / "repo", server_cores=4)
    assert target == tmp_path / "repo" / "clip_debias"
    assert (target / "config.pbtxt").read_text() == ONNX_CONFIG
    assert (target / "1" / "model.onnx").read_bytes() == (artifact / "model.onnx").read_bytes()
    assert (target / MANIFEST_NAME).read_text() == (artifact / MANIFEST_NAME).read_text()
    assert (target / "labels.txt").read_text() == "a\nb\nc\n"
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == \
        sorted(["1", "1/model.onnx", MARKER_NAME, "config.pbtxt", "labels.txt", MANIFEST_NAME])
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["clip_debias"]


def test_plan_repository_exact_config(plan_artifact, tmp_path):
    target = export_triton(plan_artifact, tmp_path / "repo", name="birds", max_batch=16, instances=2,
                           max_queue_delay_us=250)
    assert (target / "config.pbtxt").read_text() == PLAN_CONFIG
    assert (target / "1" / "model.plan").read_bytes() == b"not a real engine"
    assert not (target / "1" / "model.onnx").exists()


def test_python_repository_exact_config_and_artifact_copy(artifact, tmp_path):
    """The python backend: config with the runtime's parameters (threads = 6 cores // 2 instances), model.py, and
    the artifact's files byte for byte (the runtime checks them again when the instance loads)."""
    target = export_triton(artifact, tmp_path / "repo", backend="python", max_batch=8, instances=2,
                           max_queue_delay_us=5000, server_cores=6)
    assert (target / "config.pbtxt").read_text() == PYTHON_CONFIG
    assert (target / "1" / "model.py").read_text() == PYTHON_MODEL
    copied = sorted(p.name for p in (target / "1" / "artifact").iterdir())
    assert copied == sorted(p.name for p in artifact.iterdir() if p.is_file())
    for name in copied:
        assert (target / "1" / "artifact" / name).read_bytes() == (artifact / name).read_bytes()
    assert not (target / "1" / "model.onnx").exists()


def test_int8_is_never_batched(int8_artifact, tmp_path):
    target = export_triton(int8_artifact, tmp_path / "repo", precision="int8", server_cores=8)
    assert (target / "config.pbtxt").read_text() == INT8_CONFIG
    assert (target / "1" / "model.onnx").read_bytes() == (int8_artifact / "model.int8.onnx").read_bytes()
    py = export_triton(int8_artifact, tmp_path / "repo_py", precision="int8", backend="python")
    text = (py / "config.pbtxt").read_text()
    assert "max_batch_size: 1\n" in text and "dynamic_batching" not in text and 'string_value: "int8"' in text
    with pytest.raises(ClipDebiasError, match=r"^--max-batch 4: an int8 model is never batched across requests"):
        export_triton(int8_artifact, tmp_path / "r", precision="int8", max_batch=4)
    with pytest.raises(ClipDebiasError, match="--precision int8: the int8 model runs on the CPU only"):
        export_triton(int8_artifact, tmp_path / "r", precision="int8", kind="gpu")
    # without --precision the fp32 model is chosen, batched
    assert "max_batch_size: 32\n" in (export_triton(int8_artifact, tmp_path / "r32") / "config.pbtxt").read_text()


def test_threads_per_cpu_instance(artifact, tmp_path):
    """intra_op_thread_count = max(1, cores // instances); none on GPU instances (they get warm-up instead)."""
    def text(**kw):
        return (export_triton(artifact, tmp_path / "r", **kw) / "config.pbtxt").read_text()

    assert 'string_value: "2"' in text(instances=3, server_cores=8)
    assert 'string_value: "1"' in text(instances=4, server_cores=2)
    gpu = text(kind="gpu", server_cores=8)
    assert "intra_op_thread_count" not in gpu and "model_warmup [" in gpu and "kind: KIND_GPU" in gpu
    assert "model_warmup" not in text(server_cores=8)


def test_plan_artifact_on_cpu_uses_onnx(plan_artifact, tmp_path):
    target = export_triton(plan_artifact, tmp_path / "repo", kind="cpu", max_batch=64)
    text = (target / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text and "kind: KIND_CPU" in text and "max_batch_size: 64" in text
    assert (target / "1" / "model.onnx").is_file()
    # the python backend serves ONNX through the runtime: never the plan, and cpu unless asked
    py = export_triton(plan_artifact, tmp_path / "repo_py", backend="python")
    assert "kind: KIND_CPU" in (py / "config.pbtxt").read_text()


def test_rewrite_replaces_model_dir(artifact, tmp_path):
    export_triton(artifact, tmp_path / "repo", max_batch=8)
    target = export_triton(artifact, tmp_path / "repo", max_batch=4)
    assert "max_batch_size: 4\n" in (target / "config.pbtxt").read_text()
    assert "preferred_batch_size" not in (target / "config.pbtxt").read_text()
    # python over onnxruntime and back: one model folder, rewritten whole
    export_triton(artifact, tmp_path / "repo", backend="python")
    target = export_triton(artifact, tmp_path / "repo")
    assert sorted(p.name for p in (target / "1").iterdir()) == ["model.onnx"]


def test_errors(artifact, plan_artifact, tmp_path):
    with pytest.raises(ClipDebiasError, match="--kind"):
        export_triton(artifact, tmp_path / "r", kind="tpu")
    with pytest.raises(ClipDebiasError, match="--backend 'tensorflow': expected one of onnxruntime, python"):
        export_triton(artifact, tmp_path / "r", backend="tensorflow")
    with pytest.raises(ClipDebiasError, match=r"no ONNX model of precision fp16 listed \(ONNX models: model.onnx"):
        export_triton(artifact, tmp_path / "r", precision="fp16")
    with pytest.raises(ClipDebiasError, match="--max-queue-delay-us -1"):
        export_triton(artifact, tmp_path / "r", max_queue_delay_us=-1)
    with pytest.raises(ClipDebiasError, match="--server-cores 0"):
        export_triton(artifact, tmp_path / "r", server_cores=0)
    with pytest.raises(ClipDebiasError, match="--max-batch 0"):
        export_triton(artifact, tmp_path / "r", max_batch=0)
    with pytest.raises(ClipDebiasError, match="--max-batch 32: the TensorRT engine's profile allows at most 16"):
        export_triton(plan_artifact, tmp_path / "r", max_batch=32)
    with pytest.raises(ClipDebiasError, match="--name"):
        export_triton(artifact, tmp_path / "r", name="../x")
    with pytest.raises(ClipDebiasError, match="--name"):
        export_triton(artifact, tmp_path / "r", name='a"b')
    assert not (tmp_path / "r").exists()
    (plan_artifact / "model.plan").write_bytes(b"tampered")
    with pytest.raises(ClipDebiasError, match="sha256"):
        export_triton(plan_artifact, tmp_path / "r")


def test_class_name_with_a_line_break_refused(artifact, tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    for name in ("model.onnx", MANIFEST_NAME):
        (art / name).write_bytes((artifact / name).read_bytes())
    m = Manifest.load(art)
    m.class_names[1] = "b\nc"
    m.save(art)
    with pytest.raises(ClipDebiasError, match=r"field 'class_names': 'b\\nc' cannot be a line of Triton's labels.txt"):
        export_triton(art, tmp_path / "r")
