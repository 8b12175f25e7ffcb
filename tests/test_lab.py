"""The bias lab: deterministic data with the requested group proportions, a short training run that learns, and the
shipped weights."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from toolchain.errors import ClipDebiasError
from toolchain.lab import LAB_RECIPE, LAB_WEIGHTS
from toolchain.lab.data import group_counts, make_lab_data, read_metadata


def _digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _groups(rows: list[dict], split: int) -> list[int]:
    c = Counter(2 * int(r["y"]) + int(r["place"]) for r in rows if r["split"] == split)
    return [c[g] for g in range(4)]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return make_lab_data(tmp_path_factory.mktemp("lab") / "data", n_train=200, correlation=0.9, n_val=16, n_test=24,
                         seed=3, workers=1)


def test_make_data_is_deterministic(small_data: Path, tmp_path: Path) -> None:
    again = make_lab_data(tmp_path / "again", n_train=200, correlation=0.9, n_val=16, n_test=24, seed=3, workers=2)
    assert _digest(again) == _digest(small_data)
    other = make_lab_data(tmp_path / "other", n_train=200, correlation=0.9, n_val=16, n_test=24, seed=4, workers=1)
    assert _digest(other) != _digest(small_data)
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary dir was renamed away


def test_make_data_layout_and_groups(small_data: Path) -> None:
    with open(small_data / "metadata.csv", newline="") as f:
        assert next(csv.reader(f)) == ["img_filename", "y", "split", "place"]
    rows = read_metadata(small_data)
    assert _groups(rows, 0) == [90, 10, 10, 90] == group_counts(200, 0.9)  # 90% agree, classes balanced
    assert _groups(rows, 1) == [4, 4, 4, 4]
    assert _groups(rows, 2) == [6, 6, 6, 6]
    assert all((small_data / r["img_filename"]).is_file() for r in rows)
    assert {r["img_filename"].split("/")[0].split("_")[0][4:] for r in rows} == {"landbird", "waterbird"}
    from PIL import Image

    with Image.open(small_data / rows[0]["img_filename"]) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    info = json.loads((small_data / "lab.json").read_text())
    assert info["seed"] == 3 and info["correlation"] == 0.9


def test_make_data_rejects_bad_input(tmp_path: Path, small_data: Path) -> None:
    with pytest.raises(ClipDebiasError, match="--correlation"):
        make_lab_data(tmp_path / "bad", correlation=1.5)
    with pytest.raises(ClipDebiasError, match="not empty"):
        make_lab_data(small_data, n_train=8, n_val=0, n_test=0)


def test_short_training_lowers_loss(tmp_path: Path) -> None:
    from toolchain.lab.train import train_lab_model

    data = make_lab_data(tmp_path / "d", n_train=16, n_val=8, n_test=0, correlation=1.0, seed=1, workers=1)
    res = train_lab_model(data, tmp_path / "w.safetensors", steps=15, batch_size=16, lr=1e-3, seed=0, threads=2,
                          log=lambda s: None)
    assert len(res.losses) == 15
    assert sum(res.losses[-4:]) / 4 < sum(res.losses[:4]) / 4 - 0.1
    from toolchain.models.loading import load_clip

    assert load_clip("clipdebias-lab", weights=res.out).identity.weights_sha256


def test_shipped_weights_load() -> None:
    from toolchain.models.loading import load_clip, sha256_file
    from toolchain.models.tower import tower_config_of

    assert LAB_WEIGHTS.stat().st_size < 20 * 2**20
    recipe = json.loads(LAB_RECIPE.read_text())
    assert recipe["weights_sha256"] == sha256_file(LAB_WEIGHTS)
    clip = load_clip("clipdebias-lab", weights=LAB_WEIGHTS)
    cfg = tower_config_of(clip.model.visual)
    assert (cfg.image_size, cfg.patch_size, cfg.heads) == ((64, 64), (8, 8), 4)
    emb = clip.encode_text(["a photo of a landbird.", "a photo of a waterbird."])
    assert emb.shape == (2, 64) and float((emb[0] @ emb[1])) < 0.999


def test_cli_make_data(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from toolchain.cli.app import app

    runner = CliRunner()
    res = runner.invoke(app, ["lab", "make-data", "--out", str(tmp_path / "c"), "--n-train", "20", "--n-val", "4",
                              "--n-test", "4", "--correlation", "0.9", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert _groups(read_metadata(tmp_path / "c"), 0) == [9, 1, 1, 9]
    res = runner.invoke(app, ["lab", "make-data", "--out", str(tmp_path / "e"), "--object-scale", "big"])
    assert isinstance(res.exception, ClipDebiasError) or (res.exit_code == 2 and "--object-scale" in res.output)
