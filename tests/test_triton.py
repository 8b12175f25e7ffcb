"""Triton model repository: exact config.pbtxt, layout, engine selection and option errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip_debias.exporters.artifact import model_file
from clip_debias.exporters.onnx_export import export_onnx
from clip_debias.exporters.triton import export_triton, preferred_batch_sizes
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
  preferred_batch_size: [ 8, 16, 32 ]
  max_queue_delay_microseconds: 100
}
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""

PLAN_CONFIG = """\
name: "birds"
platform: "tensorrt_plan"
max_batch_size: 16
""" + IO_CONFIG + """\
dynamic_batching {
  preferred_batch_size: [ 4, 6, 8, 16 ]
  max_queue_delay_microseconds: 100
}
instance_group [
  {
    count: 2
    kind: KIND_GPU
  }
]
"""


@pytest.fixture(scope="module")
def artifact(tiny_clip, tmp_path_factory) -> Path:
    return export_onnx(plain_classifier(tiny_clip, ["a", "b", "c"]), tmp_path_factory.mktemp("t") / "art",
                       ort_optimize=False)


@pytest.fixture
def plan_artifact(artifact, tmp_path) -> Path:
    """A copy of ``artifact`` with a (fake) TensorRT engine listed, as ``export tensorrt`` would leave it."""
    art = tmp_path / "plan_art"
    art.mkdir()
    for name in ("model.onnx", MANIFEST_NAME):
        (art / name).write_bytes((artifact / name).read_bytes())
    (art / "model.plan").write_bytes(b"not a real engine")
    (art / "model.plan.json").write_text(json.dumps({"profile": {"input": "image", "min": 1, "opt": 6, "max": 16}}))
    m = Manifest.load(art)
    m.files.append(model_file(art, "model.plan", "tensorrt", "fp16"))
    m.save(art)
    return art


def test_onnx_repository_exact_config(artifact, tmp_path):
    target = export_triton(artifact, tmp_path / "repo")
    assert target == tmp_path / "repo" / "clip_debias"
    assert (target / "config.pbtxt").read_text() == ONNX_CONFIG
    assert (target / "1" / "model.onnx").read_bytes() == (artifact / "model.onnx").read_bytes()
    assert (target / MANIFEST_NAME).read_text() == (artifact / MANIFEST_NAME).read_text()
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == \
        ["1", "1/model.onnx", MARKER_NAME, "config.pbtxt", MANIFEST_NAME]
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["clip_debias"]


def test_plan_repository_exact_config(plan_artifact, tmp_path):
    target = export_triton(plan_artifact, tmp_path / "repo", name="birds", max_batch=16, instances=2)
    assert (target / "config.pbtxt").read_text() == PLAN_CONFIG
    assert (target / "1" / "model.plan").read_bytes() == b"not a real engine"
    assert not (target / "1" / "model.onnx").exists()


def test_plan_artifact_on_cpu_uses_onnx(plan_artifact, tmp_path):
    target = export_triton(plan_artifact, tmp_path / "repo", kind="cpu", max_batch=64)
    text = (target / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text and "kind: KIND_CPU" in text and "max_batch_size: 64" in text
    assert (target / "1" / "model.onnx").is_file()


def test_rewrite_replaces_model_dir(artifact, tmp_path):
    export_triton(artifact, tmp_path / "repo", max_batch=8)
    target = export_triton(artifact, tmp_path / "repo", max_batch=4)
    assert "max_batch_size: 4\n" in (target / "config.pbtxt").read_text()
    assert "preferred_batch_size: [ 1, 2, 4 ]" in (target / "config.pbtxt").read_text()


def test_errors(artifact, plan_artifact, tmp_path):
    with pytest.raises(ClipDebiasError, match="--kind"):
        export_triton(artifact, tmp_path / "r", kind="tpu")
    with pytest.raises(ClipDebiasError, match="--max-batch 32: the TensorRT engine's profile allows at most 16"):
        export_triton(plan_artifact, tmp_path / "r", max_batch=32)
    with pytest.raises(ClipDebiasError, match="--name"):
        export_triton(artifact, tmp_path / "r", name="../x")
    (plan_artifact / "model.plan").write_bytes(b"tampered")
    with pytest.raises(ClipDebiasError, match="sha256"):
        export_triton(plan_artifact, tmp_path / "r")


def test_preferred_batch_sizes():
    assert preferred_batch_sizes(32) == [8, 16, 32]
    assert preferred_batch_sizes(1) == [1]
    assert preferred_batch_sizes(24) == [8, 16, 24]
    assert preferred_batch_sizes(16, opt_batch=6) == [4, 6, 8, 16]
