"""``runtime.verify`` and ``clip-debias verify``: numbers equal a direct computation; thresholds drive the exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clip_debias.runtime.errors import InputError
from clip_debias.runtime.verify import Thresholds, verify
from runtime_fixtures import build_artifact, build_csv_dataset, build_waterbirds

REPO = Path(__file__).resolve().parents[1]
REPORT_KEYS = {"accuracy", "worst_group_accuracy", "groups", "latency_ms", "throughput_per_s", "thresholds", "passed"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    art = build_artifact(root / "artifact", fp16=False)
    images = build_waterbirds(root / "waterbirds")
    return art, root / "waterbirds", images


def _expected(art, images, split="test"):
    """Accuracy, worst group and per-group table computed directly from the images' colours."""
    test = [im for im in images if im.split == split]
    correct = np.array([int(np.argmax(art.color_logits(im.rgb))) == im.label for im in test])
    groups = np.array([im.group for im in test])
    names = ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
    table = {names[g]: (int((groups == g).sum()), float(correct[groups == g].mean())) for g in np.unique(groups)}
    return float(correct.mean()), min(a for _, a in table.values()), table


@pytest.mark.parametrize("batch_size", [32, 5])
def test_verify_numbers_equal_direct_computation(setup, batch_size):
    art, data, images = setup
    acc, worst, table = _expected(art, images)
    assert 0.0 < worst < 1.0  # the fixture is neither trivial nor hopeless
    r = verify(art.path, "waterbirds", data, "test", device="cpu", batch_size=batch_size, progress=False,
               thresholds=Thresholds(min_accuracy=0.0, min_worst_group=1.0, max_latency_ms=1e6))
    assert r.n == 12 and r.n_batches == -(-12 // batch_size)
    assert r.accuracy == pytest.approx(acc, abs=1e-12)
    assert r.worst_group_accuracy == pytest.approx(worst, abs=1e-12)
    assert {k: (v["n"], v["accuracy"]) for k, v in r.groups.items()} == table
    lat = r.latency_ms
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] and r.throughput_per_s > 0
    assert r.thresholds["min_accuracy"].passed and r.thresholds["max_latency_ms"].passed
    assert not r.thresholds["min_worst_group"].passed and not r.passed
    d = json.loads(r.to_json())
    assert REPORT_KEYS <= set(d) and set(d["latency_ms"]) >= {"p50", "p95", "p99"}
    assert set(d["thresholds"]["min_accuracy"]) == {"threshold", "value", "passed"}


def test_verify_csv_dataset_three_classes(tmp_path):
    names = ("cat", "dog", "fox")
    art = build_artifact(tmp_path / "a", class_names=names, group_names=(), fp16=False, size=(16, 20), seed=3)
    images = build_csv_dataset(tmp_path / "d", names, n=10, split="val")
    r = verify(art.path, "csv", tmp_path / "d", "val", device="cpu", batch_size=4, progress=False)
    test = [im for im in images if im.split == "val"]
    correct = [int(np.argmax(art.color_logits(im.rgb))) == im.label for im in test]
    assert r.n == 10 and r.accuracy == pytest.approx(float(np.mean(correct)))
    assert r.passed and r.thresholds == {}  # no thresholds: nothing to fail


def test_verify_skip_bad_leaves_out_unreadable_images(tmp_path):
    """An unreadable image stops verify with one line naming it; with skip_bad it is left out, listed in
    ``skipped``, and the numbers equal a direct computation over the readable images."""
    names = ("cat", "dog", "fox")
    art = build_artifact(tmp_path / "a", class_names=names, group_names=(), fp16=False, size=(16, 20), seed=3)
    images = build_csv_dataset(tmp_path / "d", names, n=10, split="val")
    bad = images[4]
    bad.path.write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read image") as e:
        verify(art.path, "csv", tmp_path / "d", "val", device="cpu", batch_size=4, progress=False)
    assert str(bad.path) in str(e.value)
    r = verify(art.path, "csv", tmp_path / "d", "val", device="cpu", batch_size=4, progress=False, skip_bad=True)
    good = [im for im in images if im.split == "val" and im is not bad]
    correct = [int(np.argmax(art.color_logits(im.rgb))) == im.label for im in good]
    assert r.skipped == [str(bad.path)] and r.n == 9 and r.n_batches == 3
    assert r.accuracy == pytest.approx(float(np.mean(correct)))
    assert json.loads(r.to_json())["skipped"] == [str(bad.path)]


def test_threshold_validation():
    with pytest.raises(InputError, match="fraction"):
        Thresholds(min_accuracy=90)
    with pytest.raises(InputError, match="max_latency_ms"):
        Thresholds(max_latency_ms=0)


# ------------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------------
def _cli(args: list[str]):
    from clip_debias.toolchain.cli.app import app

    return CliRunner().invoke(app, ["verify", *map(str, args)])


def test_cli_thresholds_drive_exit_code(setup, tmp_path):
    art, data, images = setup
    acc, worst, _ = _expected(art, images)
    base = [art.path, "--dataset", "waterbirds", "--data", data, "--split", "test", "--no-progress"]
    ok = _cli([*base, "--min-accuracy", acc - 0.01, "--min-worst-group", worst, "--json", tmp_path / "ok.json"])
    assert ok.exit_code == 0, ok.output
    assert "PASS" in ok.output and "FAILED" not in ok.output
    assert f"{100 * acc:.2f}%" in ok.output  # percent in the table
    report = json.loads((tmp_path / "ok.json").read_text())
    assert REPORT_KEYS <= set(report) and report["passed"] is True
    assert report["accuracy"] == pytest.approx(acc) and 0 <= report["worst_group_accuracy"] <= 1

    bad = _cli([*base, "--min-worst-group", worst + 0.01, "--json", tmp_path / "bad.json"])
    assert bad.exit_code == 1, bad.output
    assert "FAIL" in bad.output
    assert json.loads((tmp_path / "bad.json").read_text())["passed"] is False
    assert _cli([*base, "--max-latency-ms", 1e-9]).exit_code == 1


@pytest.mark.parametrize(
    "extra,msg",
    [
        (["--dataset", "imagenet"], "option --dataset: 'imagenet'"),
        (["--min-accuracy", "90"], "fraction"),
        (["--device", "gpu"], "option --device"),
        (["--split", "dev"], "split 'dev'"),
        (["--batch-size", "x"], "'--batch-size'"),
        (["--bogus"], "No such option: --bogus"),
    ],
)
def test_cli_bad_input_exit_2_one_line(setup, extra, msg):
    art, data, _ = setup
    args = [art.path, "--dataset", "waterbirds", "--data", data, "--no-progress", *extra]
    if "--dataset" in extra:
        args = [art.path, "--data", data, "--no-progress", *extra]
    r = _cli(args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], r.output


def test_cli_json_path_checked_before_running(setup, tmp_path):
    """--json under a file, or naming a folder, is refused in one line before any image is read."""
    art, data, _ = setup
    (tmp_path / "file.txt").write_text("mine")
    base = [art.path, "--dataset", "waterbirds", "--data", data, "--no-progress", "--json"]
    for target, msg in ((tmp_path / "file.txt" / "r.json", "is not an existing folder"), (tmp_path, "is a folder")):
        r = _cli([*base, target])
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and msg in lines[0], r.output
    assert (tmp_path / "file.txt").read_text() == "mine"


def test_cli_entry_point_subprocess(setup, tmp_path):
    """The installed ``clip-debias`` script: exit codes, one error line, no traceback."""
    art, data, _ = setup
    exe = Path(sys.executable).with_name("clip-debias")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "clip_debias.toolchain.cli.app"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(*args):
        return subprocess.run([*cmd, "verify", *map(str, args)], capture_output=True, text=True, env=env, timeout=120)

    r = run(art.path, "--dataset", "waterbirds", "--data", data, "--no-progress", "--min-accuracy", "1.0")
    assert r.returncode == 1 and "FAILED" in r.stdout, r.stderr
    r = run(tmp_path / "missing", "--dataset", "waterbirds", "--data", data)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    r = run(art.path, "--data", data)  # a usage error from typer itself: one line too, no traceback
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: clip-debias verify: Missing option '--dataset'. (see clip-debias verify --help)"], r.stderr
