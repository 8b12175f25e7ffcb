"""locate, build and evaluate --compare take the model their cache / plan records (--model only to override; a file
of another model is still refused, in one line)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from clip_debias.toolchain.cli.app import app
from clip_debias.toolchain.models.loading import ModelIdentity
from plan_fixtures import small_cache, write_plan

TINY = ModelIdentity("clipdebias-tiny")  # random init: the record loads random weights, with the usual warning


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_locate_build_and_compare_without_model(tmp_path: Path):
    cache = small_cache(tmp_path / "val.safetensors", TINY)
    res = run("locate", cache, "--out", tmp_path / "plan.json", "--minority-groups", "1,2",
              "--max-salient", "0")
    assert res.exit_code == 0, res.output
    assert "model clipdebias-tiny (random init): recorded in cache" in res.output
    res = run("build", "--plan", tmp_path / "plan.json", "--out", tmp_path / "model", "--no-project")
    assert res.exit_code == 0, res.output
    assert f"recorded in {tmp_path / 'plan.json'}" in res.output and "RANDOM weights" in res.output
    res = run("evaluate", "--compare", "--plan", tmp_path / "plan.json", "--cache", cache, "--contexts", "waterbirds")
    assert res.exit_code == 0, res.output


def test_an_override_of_another_model_is_refused(tmp_path: Path):
    small_cache(tmp_path / "val.safetensors", TINY)
    plan = write_plan(tmp_path / "plan.json", [[3, 1]], [])
    res = run("build", "--plan", plan, "--model", "clipdebias-lab", "--out", tmp_path / "model", "--no-project",
              "--calibration", tmp_path / "val.safetensors")
    assert res.exit_code == 2
    assert "comes from clipdebias-tiny (random init), but the model is clipdebias-lab" in res.output
    assert "Traceback" not in res.output


def test_a_recorded_local_weights_file_needs_weights(tmp_path: Path):
    other = ModelIdentity("clipdebias-tiny", weights_sha256="ab" * 32, weights_file="mine.safetensors")
    plan = write_plan(tmp_path / "plan.json", [], [], identity=other.to_dict())
    res = run("build", "--plan", plan, "--out", tmp_path / "model", "--no-project", "--no-ablate")
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1] == (
        f"error: {plan} records clipdebias-tiny with the weights file mine.safetensors (sha256 abababababab): "
        "pass --weights FILE")
