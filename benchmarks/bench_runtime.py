"""Runtime micro-benchmarks (pytest-benchmark): ``pytest benchmarks/bench_runtime.py``.

Preprocessing of a 640x480 photo-sized image to 224x224 and the ORT call on the tiny fixture graph (overhead of the
runtime around onnxruntime: validation + session.run), batch 1 and 32.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from clip_debias import runtime  # noqa: E402
from runtime_fixtures import build_artifact  # noqa: E402


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    art = build_artifact(tmp_path_factory.mktemp("bench") / "a", size=(224, 224))
    return runtime.load(art.path, device="cpu")


def test_preprocess_640x480(benchmark, clf):
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    out = benchmark(clf.preprocess, im)
    assert out.shape == (3, 224, 224)


@pytest.mark.parametrize("n", [1, 32])
def test_predict_logits(benchmark, clf, n):
    x = np.random.default_rng(0).standard_normal((n, 3, 224, 224)).astype(np.float32)
    out = benchmark(clf.predict_logits, x)
    assert out.shape == (n, 2)
