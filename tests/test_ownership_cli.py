"""Every command that writes refuses, in one line and before any work, to replace what clip-debias did not write:
the user's files are byte-identical afterwards and the exit code is 2. Our own outputs are replaced; a killed run's
staging folder is removed on the next run, which says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clip_debias.runtime.ownership import MARKER_NAME, host_id, new_marker
from clip_debias.toolchain.cli.app import app


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def project(path: Path, *names: str) -> Path:
    """A user's folder: ``names`` (files an output of ours also holds) and a src/ folder."""
    (path / "src").mkdir(parents=True)
    (path / "src" / "main.py").write_text("print('mine')\n")
    for n in names:
        (path / n).write_text(json.dumps({"user": n}))
    return path


def run(*args: object) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def refused(tmp_path: Path, *args: object, match: str) -> None:
    """The command exits 2 with one 'error:' line containing ``match`` and leaves ``tmp_path`` byte-identical."""
    before = snapshot(tmp_path)
    code, out = run(*args)
    assert code == 2, out
    assert out.count("\n") == 1 and out.startswith("error: ") and match in out, out
    assert "Traceback" not in out and snapshot(tmp_path) == before


@pytest.fixture(scope="module")
def built(tiny_clip, tmp_path_factory) -> dict[str, Path]:
    """A model directory, an artifact, lab data and a cache written by clip-debias (outside the test folders)."""
    from clip_debias.exporters.onnx_export import export_onnx
    from clip_debias.toolchain.correct.classifier import plain_classifier
    from clip_debias.toolchain.lab.data import make_lab_data

    root = tmp_path_factory.mktemp("built")
    model = plain_classifier(tiny_clip, ["landbird", "waterbird"], ["a", "b", "c", "d"]).save(root / "model")
    art = export_onnx(model, root / "art", ort_optimize=False)
    data = make_lab_data(root / "data", n_train=8, n_val=4, n_test=4, image_size=32, workers=1)
    return {"model": model, "art": art, "data": data}


# ---- folders ------------------------------------------------------------------------------------------------------
def test_build_refuses_a_project_folder(built, tmp_path: Path) -> None:
    proj = project(tmp_path / "proj", "config.json", "model.safetensors")
    refused(tmp_path, "build", "--plan", tmp_path / "plan.json", "--model", "clipdebias-tiny", "--random-weights",
            "--out", proj, match="has no clip-debias-output.json: not a model directory written by 'clip-debias build'")


def test_export_onnx_refuses_a_project_folder_and_a_touched_artifact(built, tmp_path: Path) -> None:
    proj = project(tmp_path / "proj", "manifest.json")
    refused(tmp_path, "export", "onnx", built["model"], "--out", proj, "--no-ort-optimize", "--no-text",
            match="not an artifact written by 'clip-debias export onnx'; refusing to replace it")
    code, out = run("export", "onnx", built["model"], "--out", tmp_path / "art", "--no-ort-optimize")
    assert code == 0 and "artifact digest sha256:" in out
    code, _ = run("export", "onnx", built["model"], "--out", tmp_path / "art", "--no-ort-optimize")
    assert code == 0  # our own artifact: replaced
    (tmp_path / "art" / "notes.txt").write_text("mine")
    refused(tmp_path, "export", "onnx", built["model"], "--out", tmp_path / "art", "--no-ort-optimize", "--no-text",
            match="holds notes.txt, which clip-debias did not write; refusing to replace it")


def test_export_triton_refuses_a_project_folder(built, tmp_path: Path) -> None:
    project(tmp_path / "repo" / "clip_debias", "config.pbtxt")
    refused(tmp_path, "export", "triton", built["art"], "--repo", tmp_path / "repo",
            match="not a Triton model folder written by 'clip-debias export triton'")
    code, _ = run("export", "triton", built["art"], "--repo", tmp_path / "repo2")
    assert code == 0 and run("export", "triton", built["art"], "--repo", tmp_path / "repo2")[0] == 0


@pytest.mark.parametrize("overwrite", [True, False])
def test_lab_make_data_refuses_a_project_folder(tmp_path: Path, overwrite: bool) -> None:
    proj = project(tmp_path / "proj", "lab.json", "metadata.csv")
    refused(tmp_path, "lab", "make-data", "--out", proj, "--n-train", 8, "--n-val", 4, "--n-test", 4, "--workers", 1,
            *(["--overwrite"] if overwrite else []),
            match="not a lab data set written by 'clip-debias lab make-data'" if overwrite else "--overwrite")


def test_demo_refuses_a_user_folder_before_step_1(tmp_path: Path) -> None:
    proj = project(tmp_path / "proj", "plan.json", "report.html", "demo.json")
    refused(tmp_path, "demo", "--quick", "--out", proj, match="not a demo folder written by 'clip-debias demo'")


@pytest.mark.parametrize("command", ["explain", "discover"])
def test_explain_and_discover_refuse_a_project_folder(built, tmp_path: Path, command: str) -> None:
    proj = project(tmp_path / "proj", "descriptions.json", "keywords.json")
    refused(tmp_path, command, tmp_path / "c.safetensors", "--model", "clipdebias-tiny", "--random-weights",
            "--out", proj,
            match=f"not {'an' if command == 'explain' else 'a'} {command} folder written by 'clip-debias {command}'")


# ---- single files -------------------------------------------------------------------------------------------------
def test_locate_refuses_user_files_including_the_png_beside(tmp_path: Path) -> None:
    (tmp_path / "holiday.png").write_bytes(b"\x89PNG my holiday")
    args = ("locate", tmp_path / "c.safetensors", "--model", "clipdebias-tiny", "--random-weights")
    refused(tmp_path, *args, "--out", tmp_path / "holiday.json",
            match="holiday.png: exists and is not a PNG figure written by clip-debias; refusing to overwrite it")
    (tmp_path / "mine.json").write_text('{"mine": 1}')
    refused(tmp_path, *args, "--out", tmp_path / "mine.json",
            match="mine.json: exists and is not a plan written by 'clip-debias locate'")
    refused(tmp_path, *args, "--out", tmp_path / "plan.png", match="expected a .json path")


def test_decompose_refuses_user_files(built, tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("my notes")
    args = ("decompose", "--model", "clipdebias-tiny", "--random-weights", "--dataset", "waterbirds", "--data",
            built["data"], "--split", "train")
    refused(tmp_path, *args, "--out", tmp_path / "mine.txt",
            match="mine.txt: exists and is not a decomposition cache written by 'clip-debias decompose'")
    (tmp_path / "new.skipped.txt").write_text("my list")
    refused(tmp_path, *args, "--out", tmp_path / "new.safetensors", "--skip-bad",
            match="new.skipped.txt: exists and is not a skipped-images list")


def test_verify_and_evaluate_json_refuse_user_files(built, tmp_path: Path) -> None:
    (tmp_path / "mine.json").write_text('{"mine": 1}')
    data = ("--dataset", "waterbirds", "--data", built["data"], "--split", "test")
    refused(tmp_path, "verify", built["art"], *data, "--json", tmp_path / "mine.json", "--no-progress",
            match="mine.json: exists and is not a report written by 'clip-debias verify --json'")
    refused(tmp_path, "evaluate", built["model"], *data, "--json", tmp_path / "mine.json",
            match="mine.json: exists and is not results written by 'clip-debias evaluate --json'")
    code, out = run("verify", built["art"], *data, "--json", tmp_path / "mine.json", "--no-progress", "--force")
    assert code == 0 and json.loads((tmp_path / "mine.json").read_text())["report"] == "clip-debias verify"
    assert run("verify", built["art"], *data, "--json", tmp_path / "mine.json", "--no-progress")[0] == 0  # ours now


def test_explain_image_report_and_lab_train_refuse_user_files(built, tmp_path: Path) -> None:
    (tmp_path / "mine.png").write_bytes(b"\x89PNG not ours")
    refused(tmp_path, "explain-image", tmp_path / "x.png", "--model", "clipdebias-tiny", "--random-weights",
            "--text", "a bird", "--out", tmp_path / "mine.png",
            match="mine.png: exists and is not a PNG figure written by clip-debias")
    (tmp_path / "report.html").write_text("<html>my page</html>")
    refused(tmp_path, "report", tmp_path, match="report.html: exists and is not report.html written by")
    (tmp_path / "w.safetensors").write_bytes(b"not lab weights")
    refused(tmp_path, "lab", "train", "--data", built["data"], "--out", tmp_path / "w.safetensors",
            match="w.safetensors: exists and is not lab weights written by 'clip-debias lab train'")


# ---- a killed run -------------------------------------------------------------------------------------------------
def test_next_run_removes_a_killed_runs_staging_folder_and_says_so(built, tmp_path: Path) -> None:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    stale = tmp_path / f".art.tmp-{host_id()}-{p.pid}-0123abcd"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"\0" * 1000)  # half an export
    new_marker("artifact", None, state="staging").write(stale)
    code, out = run("export", "onnx", built["model"], "--out", tmp_path / "art", "--no-ort-optimize")
    assert code == 0 and not stale.exists()
    assert f"removed {stale}, the staging folder of a killed run (pid {p.pid}) into {tmp_path / 'art'}" in out
    assert (tmp_path / "art" / MARKER_NAME).is_file()
