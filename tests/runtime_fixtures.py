"""Tiny artifacts and datasets for runtime / verify tests (numpy + onnx only, no torch).

The fixture graph, with x = image float32 [N, 3, H, W]::

    m         = mean(x, axes=(2, 3))             [N, 3]
    embedding = m @ W1                           [N, D]
    logits    = embedding @ W2                   [N, C]

so its outputs can be computed directly with numpy (``FixtureArtifact.reference``). The fp16 variant casts the
image to float16, computes the same in float16 and casts both outputs back to float32 (fp32 I/O, like exporters).
A solid-colour image with RGB value v preprocesses to the constant ``(v/255 - mean)/std`` per channel, so its
logits are ``((v/255 - mean)/std) @ W1 @ W2`` whatever its size -- used to predict verify's numbers independently
of the preprocessing code.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from clip_debias.runtime.manifest import Manifest, ModelFile, Preprocessing, TensorSpec, sha256_file

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
OPSET = 17


@dataclass
class FixtureArtifact:
    path: Path
    manifest: Manifest
    w1: np.ndarray  # [3, D] float32
    w2: np.ndarray  # [D, C] float32

    def reference(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits [N, C], embedding [N, D]) in float64 numpy, for a preprocessed batch [N, 3, H, W]."""
        m = np.asarray(batch, np.float64).mean(axis=(2, 3))
        emb = m @ self.w1.astype(np.float64)
        return emb @ self.w2.astype(np.float64), emb

    def color_logits(self, rgb: tuple[int, int, int]) -> np.ndarray:
        """Logits [C] of a solid-colour image (see the module docstring)."""
        pre = self.manifest.preprocessing
        x = (np.asarray(rgb, np.float64) / 255.0 - np.asarray(pre.mean)) / np.asarray(pre.std)
        return x @ self.w1.astype(np.float64) @ self.w2.astype(np.float64)


def _graph(w1: np.ndarray, w2: np.ndarray, size: tuple[int, int], fp16: bool,
           batch: str | int = "batch") -> onnx.ModelProto:
    h, w = size
    d, c = w2.shape
    wdt = np.float16 if fp16 else np.float32
    nodes = []
    x = "image"
    if fp16:
        nodes.append(helper.make_node("Cast", ["image"], ["image16"], to=TensorProto.FLOAT16))
        x = "image16"
    nodes += [
        helper.make_node("ReduceMean", [x], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W1"], ["emb_raw"]),
        helper.make_node("MatMul", ["emb_raw", "W2"], ["logits_raw"]),
    ]
    if fp16:
        nodes += [
            helper.make_node("Cast", ["emb_raw"], ["embedding"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["logits_raw"], ["logits"], to=TensorProto.FLOAT),
        ]
    else:
        nodes += [
            helper.make_node("Identity", ["emb_raw"], ["embedding"]),
            helper.make_node("Identity", ["logits_raw"], ["logits"]),
        ]
    graph = helper.make_graph(
        nodes,
        "clip_debias_fixture" + ("_fp16" if fp16 else ""),
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, h, w])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, c]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, d]),
        ],
        [numpy_helper.from_array(w1.astype(wdt), "W1"), numpy_helper.from_array(w2.astype(wdt), "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="clip-debias-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_artifact(
    root: str | Path,
    *,
    size: tuple[int, int] = (24, 24),
    class_names: tuple[str, ...] = ("landbird", "waterbird"),
    group_names: tuple[str, ...] = ("landbird/land", "landbird/water", "waterbird/land", "waterbird/water"),
    dim: int = 8,
    fp16: bool = True,
    ort_optimized: bool = False,
    resize_mode: str = "shortest",
    interpolation: str = "bicubic",
    w1: np.ndarray | None = None,
    w2: np.ndarray | None = None,
    seed: int = 0,
) -> FixtureArtifact:
    """Write ARTIFACT (model.onnx [+ model.fp16.onnx] [+ model.ort.onnx] + manifest.json) and return it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    c = len(class_names)
    w1 = (rng.standard_normal((3, dim)) if w1 is None else w1).astype(np.float32)
    w2 = (rng.standard_normal((w1.shape[1], c)) if w2 is None else w2).astype(np.float32)
    onnx.save(_graph(w1, w2, size, fp16=False), root / "model.onnx")
    files = [ModelFile("model.onnx", sha256_file(root / "model.onnx"), "onnx", "fp32")]
    if fp16:
        onnx.save(_graph(w1, w2, size, fp16=True), root / "model.fp16.onnx")
        files.append(ModelFile("model.fp16.onnx", sha256_file(root / "model.fp16.onnx"), "onnx", "fp16"))
    if ort_optimized:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(root / "model.ort.onnx")
        ort.InferenceSession(str(root / "model.onnx"), so, providers=["CPUExecutionProvider"])
        files.append(ModelFile("model.ort.onnx", sha256_file(root / "model.ort.onnx"), "onnx-ort", "fp32"))
    manifest = Manifest(
        model={"name": "fixture", "pretrained": None, "weights_sha256": None, "weights_file": None},
        plan={"classifier": "fixture-linear"},
        class_names=list(class_names),
        group_names=list(group_names),
        preprocessing=Preprocessing(
            size=list(size), mean=OPENAI_MEAN, std=OPENAI_STD, interpolation=interpolation, resize_mode=resize_mode
        ),
        inputs=[TensorSpec("image", "float32", ["batch", 3, size[0], size[1]])],
        outputs=[TensorSpec("logits", "float32", ["batch", c]), TensorSpec("embedding", "float32", ["batch", dim])],
        opset=OPSET,
        files=files,
        versions={"onnx": onnx.__version__},
    )
    manifest.save(root)
    return FixtureArtifact(root, manifest, w1, w2)


# ------------------------------------------------------------------------------------------------------------
# datasets of solid-colour images
# ------------------------------------------------------------------------------------------------------------
@dataclass
class FixtureImage:
    path: Path
    rgb: tuple[int, int, int]
    label: int
    group: int
    split: str


def _save_solid(path: Path, rgb: tuple[int, int, int], size: tuple[int, int], mode: str) -> None:
    im = Image.new("RGB", size, rgb)
    if mode == "RGBA":
        im = im.convert("RGBA")
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def build_waterbirds(
    root: str | Path, n_per_group: dict[str, int] | None = None, seed: int = 0
) -> list[FixtureImage]:
    """A Waterbirds-format dataset (``metadata.csv`` + images) of solid-colour PNGs of odd sizes.
    ``n_per_group``: images per split (default test 12, train 4, val 4), spread over the 4 groups (2*y + place)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_per_group = n_per_group or {"test": 12, "train": 4, "val": 4}
    split_id = {"train": 0, "val": 1, "test": 2}
    images: list[FixtureImage] = []
    rows = []
    k = 0
    for split, n in n_per_group.items():
        for i in range(n):
            y, place = (i // 2) % 2, i % 2
            rgb = tuple(int(v) for v in rng.integers(0, 256, 3))
            rel = f"{y:03d}.Fixture_{y}/img_{k:04d}.png"
            size = (int(rng.integers(17, 61)), int(rng.integers(17, 61)))
            _save_solid(root / rel, rgb, size, "RGBA" if k % 5 == 0 else "RGB")
            images.append(FixtureImage(root / rel, rgb, y, 2 * y + place, split))  # type: ignore[arg-type]
            rows.append({"img_id": k, "img_filename": rel, "y": y, "split": split_id[split], "place": place})
            k += 1
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["img_id", "img_filename", "y", "split", "place"])
        w.writeheader()
        w.writerows(rows)
    return images


def build_csv_dataset(
    root: str | Path, class_names: tuple[str, ...], n: int = 10, split: str = "test", seed: int = 1
) -> list[FixtureImage]:
    """A csv-format dataset (``data.csv`` with ``path,label,group,split``; labels by class name, group = i % 3)
    of ``n`` solid-colour images in ``split`` plus two in another split (which must be ignored)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    images: list[FixtureImage] = []
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group", "split"])
        for i in range(n + 2):
            s = split if i < n else ("train" if split != "train" else "val")
            rgb = tuple(int(v) for v in rng.integers(0, 256, 3))
            label = i % len(class_names)
            rel = f"img/{i:03d}.png"
            _save_solid(root / rel, rgb, (int(rng.integers(9, 50)), int(rng.integers(9, 50))), "RGB")
            w.writerow([rel, class_names[label], i % 3, s])
            images.append(FixtureImage(root / rel, rgb, label, i % 3, s))  # type: ignore[arg-type]
    return images


def assert_close_tree(a, b, atol: float = 1e-5, path: str = "") -> None:
    """``a`` and ``b`` (nested dicts / lists, e.g. ``dataclasses.asdict`` of a report section) have the same
    structure and strings, and numbers within ``atol``."""
    import pytest

    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            assert_close_tree(a[k], b[k], atol, f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close_tree(x, y, atol, f"{path}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert b == pytest.approx(a, abs=atol), path
    else:
        assert a == b, path
