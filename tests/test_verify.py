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
from clip_debias.runtime.limits import MaxSkipped
from clip_debias.runtime.verify import Evidence, Thresholds, verify
from runtime_fixtures import build_artifact, build_csv_dataset, build_waterbirds

REPO = Path(__file__).resolve().parents[1]
TINY = Evidence(min_group_size=1)  # the fixtures' groups hold a few images: judged on their intervals alone
RESULT_KEYS = {"threshold", "value", "passed", "over", "reason", "interval", "n", "decision"}
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
               thresholds=Thresholds(min_accuracy=0.0, min_worst_group=1.0, max_latency_ms=1e6), evidence=TINY)
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
    assert set(d["thresholds"]["min_accuracy"]) == RESULT_KEYS


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
    ok = _cli([*base, "--min-accuracy", acc - 0.01, "--min-worst-group", worst, "--json", tmp_path / "ok.json",
               "--allow-inconclusive"])  # 12 images: the intervals straddle the limits
    assert ok.exit_code == 0, ok.output
    assert "PASS" in ok.output and "FAILED" not in ok.output
    assert f"{100 * acc:.2f}%" in ok.output  # percent in the table
    report = json.loads((tmp_path / "ok.json").read_text())
    assert REPORT_KEYS <= set(report) and report["passed"] is True
    assert report["accuracy"] == pytest.approx(acc) and 0 <= report["worst_group_accuracy"] <= 1

    bad = _cli([*base, "--min-worst-group", worst + 0.01, "--json", tmp_path / "bad.json"])
    assert bad.exit_code == 1, bad.output
    assert "INCONCLUSIVE" in bad.output
    assert json.loads((tmp_path / "bad.json").read_text())["passed"] is False
    assert _cli([*base, "--max-latency-ms", 1e-9]).exit_code == 1


@pytest.mark.parametrize(
    "extra,msg",
    [
        (["--dataset", "imagenet"], "Invalid value for '--dataset': 'imagenet' is not one of 'waterbirds', 'celeba', "
                                    "'fairface', 'csv'"),
        (["--min-accuracy", "90"], "fraction"),
        (["--device", "gpu"], "Invalid value for '--device': 'gpu' is not one of 'auto', 'cpu', 'cuda'"),
        (["--split", "dev"], "Invalid value for '--split': 'dev' is not one of 'train', 'val', 'test'"),
        (["--batch-size", "x"], "'--batch-size'"),
        (["--bogus"], "No such option: --bogus"),
    ],
)
def test_cli_bad_input_exit_2_one_line(setup, extra, msg):
    art, data, _ = setup
    args = [art.path, "--dataset", "waterbirds", "--data", data, "--no-progress", *extra]
    if "--dataset" in extra:
        args = [art.path, "--data", data, "--no-progress", *extra]
    if "--split" not in extra:
        args += ["--split", "test"]
    r = _cli(args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], r.output


def test_cli_json_path_checked_before_running(setup, tmp_path):
    """--json under a file, or naming a folder, is refused in one line before any image is read."""
    art, data, _ = setup
    (tmp_path / "file.txt").write_text("mine")
    base = [art.path, "--dataset", "waterbirds", "--data", data, "--split", "test", "--no-progress", "--json"]
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

    r = run(art.path, "--dataset", "waterbirds", "--data", data, "--split", "test", "--no-progress", "--min-accuracy",
            "1.0", "--min-group-size", "1")
    assert r.returncode == 1 and "FAILED" in r.stdout, r.stderr
    r = run(tmp_path / "missing", "--dataset", "waterbirds", "--data", data, "--split", "test")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr
    r = run(art.path, "--data", data, "--split", "test")  # a usage error from typer itself: one line, no traceback
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: clip-debias verify: Missing option '--dataset'. Choose from: waterbirds, celeba, fairface, csv (see "
        "clip-debias verify --help)"], r.stderr


# ------------------------------------------------------------------------------------------------------------
# gates that cannot pass by omission
# ------------------------------------------------------------------------------------------------------------
def _drop_group(data: Path, group: int, out: Path) -> Path:
    """A copy of the fixture's metadata.csv without the test images of ``group`` (images shared by path)."""
    import csv

    out.mkdir()
    rows = list(csv.DictReader(open(data / "metadata.csv")))
    keep = [r for r in rows if not (r["split"] == "2" and 2 * int(r["y"]) + int(r["place"]) == group)]
    with open(out / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in keep:
            w.writerow({**r, "img_filename": str(data / r["img_filename"])})
    return out


def test_missing_group_fails_the_worst_group_gate(setup, tmp_path):
    """The issue's false PASS: without the worst group's images the minimum over the groups present rises above the
    threshold. verify knows the dataset's four groups: the missing one is listed with n = 0 and the gate FAILS."""
    art, data, images = setup
    _, worst, table = _expected(art, images)
    worst_name = min(table, key=lambda k: table[k][1])
    names = ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
    dropped = _drop_group(data, names.index(worst_name), tmp_path / "d")
    second = min(a for k, (_, a) in table.items() if k != worst_name)
    assert second > worst  # so the threshold below separates them
    r = verify(art.path, "waterbirds", dropped, progress=False, allow_outside_root=True,
               thresholds=Thresholds(min_worst_group=second))
    assert r.worst_group_accuracy == pytest.approx(second) and r.missing_groups == [worst_name]
    assert r.groups[worst_name] == {"n": 0, "accuracy": None} and list(r.groups) == names
    t = r.thresholds["min_worst_group"]
    assert not t.passed and not r.passed and worst_name in t.reason
    assert t.over["missing"] == [worst_name] and t.over["expected_groups"] == names
    assert t.over["groups_from"] == "dataset"
    res = _cli([art.path, "--dataset", "waterbirds", "--data", dropped, "--split", "test", "--no-progress",
                "--allow-outside-root", "--min-worst-group", second])
    assert res.exit_code == 1
    assert f"FAIL min_worst_group: group(s) {worst_name} have no image" in " ".join(res.output.split())


def test_group_emptied_by_skip_bad_fails(setup, tmp_path):
    art, data, images = setup
    test = [im for im in images if im.split == "test"]
    group = test[0].group
    for im in test:
        if im.group == group:
            im.path.rename(im.path.with_suffix(".gone"))
    try:
        r = verify(art.path, "waterbirds", data, progress=False, skip_bad=True,
                   thresholds=Thresholds(min_worst_group=0.0, max_skipped=MaxSkipped(fraction=0.5)))
    finally:
        for im in test:
            if im.group == group:
                im.path.with_suffix(".gone").rename(im.path)
    assert r.n == 9 and len(r.skipped) == 3 and r.thresholds["max_skipped"].passed
    assert not r.thresholds["min_worst_group"].passed and r.missing_groups == [list(r.groups)[group]]


def test_too_many_skipped_images_fail(tmp_path):
    """36 of 40 images unreadable passed before; now --max-skipped (default 1 %) fails it, and says over what."""
    names = ("cat", "dog", "fox")
    art = build_artifact(tmp_path / "a", class_names=names, group_names=(), fp16=False, size=(16, 20), seed=3)
    images = build_csv_dataset(tmp_path / "d", names, n=40, split="val")
    for im in images[4:40]:
        im.path.write_bytes(b"not an image")
    r = verify(art.path, "csv", tmp_path / "d", "val", progress=False, skip_bad=True,
               thresholds=Thresholds(min_accuracy=0.0))
    t = r.thresholds["max_skipped"]
    assert not r.passed and not t.passed and t.value == 36 and t.threshold == 0  # floor(1 % of 40)
    assert t.over == {"images_in_split": 40, "max_skipped": {"count": None, "fraction": 0.01}, "limit_images": 0}
    assert r.thresholds["min_accuracy"].over["images"] == 4 and r.thresholds["min_accuracy"].over["skipped"] == 36
    ok = verify(art.path, "csv", tmp_path / "d", "val", progress=False, skip_bad=True,
                thresholds=Thresholds(max_skipped=MaxSkipped(count=36)))
    assert ok.thresholds["max_skipped"].passed
    base = [art.path, "--dataset", "csv", "--data", tmp_path / "d", "--split", "val", "--no-progress", "--skip-bad"]
    assert _cli(base).exit_code == 1
    assert _cli([*base, "--max-skipped", "90%"]).exit_code == 0
    res = _cli([art.path, "--dataset", "csv", "--data", tmp_path / "d", "--split", "val", "--max-skipped", "5"])
    assert res.exit_code == 2 and "--max-skipped applies with --skip-bad" in res.output


def test_every_threshold_says_what_it_was_computed_over(setup):
    art, data, _ = setup
    r = verify(art.path, "waterbirds", data, progress=False, batch_size=5,
               thresholds=Thresholds(min_accuracy=0.0, min_worst_group=0.0, max_latency_ms=1e6), evidence=TINY)
    over = {k: v.over for k, v in r.thresholds.items()}
    assert over["min_accuracy"]["images"] == 12 and over["min_accuracy"]["images_in_split"] == 12
    assert over["min_worst_group"]["groups"] == {k: v["n"] for k, v in r.groups.items()}
    assert over["max_latency_ms"]["batches"] == 20 and over["max_latency_ms"]["batch_size"] == 5
    assert set(json.loads(r.to_json())["thresholds"]["min_accuracy"]) == RESULT_KEYS


def test_latency_is_per_call_on_full_batches_over_enough_calls(setup, tmp_path):
    """Issue 16 item 7: p95 is per model call on a batch of --batch-size images, said in the report and the table;
    12 test images at batch 5 give 2 full batches (the last, of 2, is another batch size), so one batch is timed again
    up to 20 calls (p95's minimum); percentiles on fewer calls than they need are warned about."""
    art, data, _ = setup
    r = verify(art.path, "waterbirds", data, progress=False, batch_size=5, thresholds=Thresholds(max_latency_ms=1e6))
    assert r.latency_unit == "ms per model call on a batch of 5 images" and r.latency_batch_size == 5
    assert (r.n_batches, r.latency_batches, r.latency_extra_runs) == (3, 20, 18)
    assert len(r.latency_warnings) == 1 and r.latency_warnings[0].startswith("p99 rests on 20 timed calls of batch 5")
    over = r.thresholds["max_latency_ms"].over
    assert (over["unit"], over["batches"], over["batch_size"], over["extra_runs"]) == (r.latency_unit, 20, 5, 18)
    saved = json.loads(r.to_json())
    assert saved["latency_unit"] == r.latency_unit and saved["latency_batches"] == 20
    few = verify(art.path, "waterbirds", data, progress=False, batch_size=5, latency_batches=0)
    assert (few.latency_batches, few.latency_extra_runs) == (2, 0)
    assert [w.split(" rests on ")[0] for w in few.latency_warnings] == ["p95", "p99"]
    small = verify(art.path, "waterbirds", data, progress=False, batch_size=32)  # the split is one smaller batch
    assert small.latency_unit == "ms per model call on a batch of 12 images" and small.latency_batches == 20
    res = _cli([art.path, "--dataset", "waterbirds", "--data", data, "--split", "test", "--no-progress",
                "--batch-size", "5", "--latency-batches", "0", "--max-latency-ms", "100000"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "model latency, ms per model call on a batch of 5 images (2 timed calls)" in text
    assert "warning: p95 rests on 2 timed calls of batch 5" in text
    assert "p95 latency <= 100000.00 ms per batch of 5" in text


def test_cli_output_through_a_pipe_keeps_names_whole(setup):
    """CliRunner's output is not a terminal: tables take their natural width, nothing is cut; the log line on
    stderr says what is being done, and the progress line replaces the bar."""
    art, data, _ = setup
    res = _cli([art.path, "--dataset", "waterbirds", "--data", data, "--split", "test", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    assert "…" not in res.output and "waterbird/water" in res.stdout and "landbird/water" in res.stdout
    assert res.stderr.splitlines()[0].startswith(f"verify {art.path}: 12 images of waterbirds/test on onnxruntime")
    assert "verify waterbirds/test: 12/12 images (100%), batch 3/3" in res.stderr


def test_csv_expected_groups(tmp_path):
    """csv with a group column: --groups names its ids, else the manifest's names, else group_N; a csv without one:
    its classes. A name given for an id the split lacks is a missing group."""
    names = ("cat", "dog", "fox")
    art = build_artifact(tmp_path / "a", class_names=names, group_names=("g0", "g1", "g2", "g3"), fp16=False,
                         size=(16, 20), seed=3)
    build_csv_dataset(tmp_path / "d", names, n=10, split="val")  # group ids 0..2
    r = verify(art.path, "csv", tmp_path / "d", "val", progress=False, thresholds=Thresholds(min_worst_group=0.0),
               evidence=TINY)
    assert r.groups_from == "manifest" and r.missing_groups == ["g3"] and not r.passed
    r = verify(art.path, "csv", tmp_path / "d", "val", progress=False, groups=["x", "y", "z"],
               thresholds=Thresholds(min_worst_group=0.0), evidence=TINY)
    assert r.groups_from == "--groups" and list(r.groups) == ["x", "y", "z"] and r.passed
    with pytest.raises(InputError, match="--groups x,y: expected 3 or more distinct names"):
        verify(art.path, "csv", tmp_path / "d", "val", progress=False, groups=["x", "y"])
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "data.csv").write_text("path,label\n" + "".join(
        f"{p},{lab}\n" for p, lab in (("../d/img/000.png", "cat"), ("../d/img/001.png", "dog"))))
    r = verify(art.path, "csv", tmp_path / "n", "val", progress=False, allow_outside_root=True,
               thresholds=Thresholds(min_worst_group=0.0))
    assert r.groups_from == "classes" and r.missing_groups == ["fox"] and not r.passed
    with pytest.raises(InputError, match="has no 'group' column, so its groups are its classes"):
        verify(art.path, "csv", tmp_path / "n", "val", progress=False, allow_outside_root=True, groups=["a"])
