"""The bias lab: deterministic data with the requested group proportions, a short training run that learns, and the
shipped weights."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from clip_debias.runtime.ownership import MARKER_NAME
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.lab import (LAB2_RECIPE, LAB2_WEIGHTS, LAB_RECIPE, LAB_WEIGHTS, LABMAP_RECIPE,
                                       LABMAP_WEIGHTS)
from clip_debias.toolchain.lab.data import make_lab_data, read_metadata
from clip_debias.toolchain.lab.groups import group_counts


def _digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes (but the output marker's)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MARKER_NAME:  # the marker records when and by which process
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
    from clip_debias.toolchain.lab.train import train_lab_model

    data = make_lab_data(tmp_path / "d", n_train=16, n_val=8, n_test=0, correlation=1.0, seed=1, workers=1)
    res = train_lab_model(data, tmp_path / "w.safetensors", steps=15, batch_size=16, lr=1e-3, seed=0, threads=2,
                          log=lambda s: None)
    assert len(res.losses) == 15
    assert sum(res.losses[-4:]) / 4 < sum(res.losses[:4]) / 4 - 0.1
    from clip_debias.toolchain.models.loading import load_clip

    assert load_clip("clipdebias-lab", weights=res.out).identity.weights_sha256


@pytest.mark.parametrize("model,weights,recipe_file", [
    ("clipdebias-lab", LAB_WEIGHTS, LAB_RECIPE), ("clipdebias-lab2", LAB2_WEIGHTS, LAB2_RECIPE),
    ("clipdebias-lab-map", LABMAP_WEIGHTS, LABMAP_RECIPE),
])
def test_shipped_weights_load(model: str, weights: Path, recipe_file: Path) -> None:
    from clip_debias.toolchain.models.loading import load_clip, sha256_file
    from clip_debias.toolchain.models.tower import tower_config_of

    assert weights.stat().st_size < 20 * 2**20
    recipe = json.loads(recipe_file.read_text())
    assert recipe["model"] == model and recipe["weights"].endswith(weights.name)
    assert recipe["weights_sha256"] == sha256_file(weights)
    clip = load_clip(model)  # by name: the shipped weights
    assert clip.identity.weights_sha256 == recipe["weights_sha256"]
    tower = clip.tower
    assert (tower.layers, tower.heads, tower.width) == (6, 4, 128)
    if model != "clipdebias-lab-map":  # open_clip's own ViT (the MAP model's is timm's: tests/test_timm_towers.py)
        cfg = tower_config_of(clip.model.visual)
        assert (cfg.image_size, cfg.patch_size, cfg.heads) == ((64, 64), (8, 8), 4)
    emb = clip.encode_text(["a photo of a landbird.", "a photo of a waterbird."])
    assert emb.shape == (2, 64) and float((emb[0] @ emb[1])) < 0.999


def test_cli_make_data(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clip_debias.toolchain.cli.app import app

    runner = CliRunner()
    res = runner.invoke(app, ["lab", "make-data", "--out", str(tmp_path / "c"), "--n-train", "20", "--n-val", "4",
                              "--n-test", "4", "--correlation", "0.9", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert _groups(read_metadata(tmp_path / "c"), 0) == [9, 1, 1, 9]
    res = runner.invoke(app, ["lab", "make-data", "--out", str(tmp_path / "e"), "--object-scale", "big"])
    assert isinstance(res.exception, ClipDebiasError) or (res.exit_code == 2 and "--object-scale" in res.output)


def _one_error_line(args: list[str], *needles: str) -> None:
    """The CLI run fails with exit code 2 and a single 'error: ...' line containing ``needles`` (no traceback), on
    stderr after what the command was doing (a 'loading ...' line) and nothing on stdout."""
    from typer.testing import CliRunner

    from clip_debias.toolchain.cli.app import app

    res = CliRunner().invoke(app, args)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert res.exit_code == 2 and errors == lines[-1:] and not res.stdout.strip(), (args, res.output)
    assert "Traceback" not in res.output and all(n in errors[0] for n in needles), errors


@pytest.mark.parametrize("option,value", [
    ("--class-texture", "2"), ("--class-texture", "-0.1"), ("--workers", "0"), ("--n-val", "6"), ("--n-test", "10"),
    ("--seed", "-1"), ("--correlation", "1.5"), ("--n-train", "-1"), ("--image-size", "8"),
])
def test_cli_make_data_refuses_bad_values(tmp_path: Path, option: str, value: str) -> None:
    _one_error_line(["lab", "make-data", "--out", str(tmp_path / "d"), "--n-train", "8", "--n-val", "4",
                     "--n-test", "4", option, value], option)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("option,value", [
    ("--lr", "-1"), ("--lr", "0"), ("--p-background", "3"), ("--threads", "0"), ("--eval-every", "-1"),
    ("--device", "gpu"), ("--steps", "0"),
])
def test_cli_train_refuses_bad_values(small_data: Path, tmp_path: Path, option: str, value: str) -> None:
    _one_error_line(["lab", "train", "--data", str(small_data), "--out", str(tmp_path / "w.safetensors"),
                     "--steps", "1", "--batch-size", "8", option, value], option)
    assert not (tmp_path / "w.safetensors").exists()


def test_cli_report_refuses_bad_split_and_model(small_data: Path) -> None:
    _one_error_line(["lab", "report", "--weights", str(LAB_WEIGHTS), "--data", str(small_data), "--splits", "val,dev"],
                    "--splits val,dev")
    _one_error_line(["lab", "report", "--weights", str(LAB_WEIGHTS), "--data", str(small_data), "--model", "ViT-B-32"],
                    LAB_WEIGHTS.name, "--model ViT-B-32", "differ in shape", "in the file", "in the model")


def test_cli_report_defaults_to_the_shipped_weights(small_data: Path) -> None:
    """`lab report` without --weights reports the weights shipped for --model (the same numbers as --weights FILE)."""
    from typer.testing import CliRunner

    from clip_debias.toolchain.cli.app import app

    runs = [CliRunner().invoke(app, ["lab", "report", "--data", str(small_data), "--splits", "val", *extra])
            for extra in ([], ["--weights", str(LAB_WEIGHTS)])]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    assert runs[0].stdout == runs[1].stdout and runs[0].stdout.startswith("val   n=   16  avg ")
    assert runs[0].stderr.startswith("loading clipdebias-lab (shipped weights clipdebias-lab.safetensors)")


def test_make_data_defaults_are_the_recipe() -> None:
    """`lab make-data` with no options makes the data the shipped weights were trained on."""
    import inspect

    from clip_debias.toolchain.cli.lab_cmd import make_data
    from clip_debias.toolchain.lab.data import LabDataConfig, lab_data_config

    args = json.loads(LAB_RECIPE.read_text())["make_data"]["args"]
    cli = {k: p.default for k, p in inspect.signature(make_data).parameters.items()}
    lib = {k: p.default for k, p in inspect.signature(lab_data_config).parameters.items()}
    for key, want in args.items():
        if key == "object_scale":
            assert tuple(float(v) for v in cli[key].split(",")) == tuple(want) == lib[key], key
        else:
            assert cli[key] == want == lib[key] == getattr(LabDataConfig(), key), key
