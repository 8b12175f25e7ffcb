"""The README's main job end to end, at CI size: shipped lab model, fresh lab data, every stage, offline."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from clip_debias.toolchain.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, quick=True, batch_size=64)


def test_demo_writes_every_artifact(demo_run):
    out, summary = demo_run
    for name in ("plan.json", "plan.png", "plan-reference.json", "train.safetensors", "val.safetensors",
                 "test.safetensors", "model/config.json",
                 "artifact/manifest.json", "artifact/model.onnx", "artifact-zeroshot/model.onnx", "report.json",
                 "demo.json", "compare.json", "report.html", "explain/descriptions.json", "discover/keywords.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    for key in ("accuracy", "worst_group_accuracy", "groups", "latency_ms", "throughput_per_s", "thresholds", "passed"):
        assert key in report
    assert summary.chosen in {r["method"] for r in summary.val_rows}
    page = (out / "report.html").read_text()  # every file the demo wrote reads back through its model
    assert "section skipped" not in page and "no compare.json" not in page and "Discovered keywords" in page
    assert "the artifacts taking turns call by call" in page and "ratio to " in page  # latency compared in turns
    assert summary.plan["protocol"] == "default" and summary.plan["located_on"]["split"] == "val"
    assert summary.plan["located_on"]["layers"] == list(range(6)) and summary.plan["convention"] == "textspan"
    reference = summary.reference_plan
    assert reference["protocol"] == "reference" and reference["located_on"]["split"] == "train"
    assert summary.reference_test_rows and summary.reference_test_rows[0]["method"] == "zero-shot"
    assert summary.reference_test_rows[0]["accuracy"] == summary.test_rows[0]["accuracy"]  # no edits: one model


def test_verified_artifacts_match_torch_rows(demo_run):
    """verify (ONNX, torch-free runtime) and the torch rows computed from cached terms score the same test images:
    the accuracies agree up to one image whose argmax could flip at float32 rounding."""
    _, s = demo_run
    rows = {r["method"]: r for r in s.test_rows}
    n = sum(g["n"] for g in s.verify["debiased"]["groups"].values())
    for artifact, method in (("debiased", s.chosen), ("zero-shot", "zero-shot")):
        assert abs(s.verify[artifact]["accuracy"] - rows[method]["accuracy"]) <= 1 / n + 1e-9


def test_probe_covers_every_head(demo_run):
    _, s = demo_run
    plan = json.loads(json.dumps(s.plan))
    assert len(s.probe) == 6 * 4  # every layer x 4 heads of the lab model
    located = {(r["layer"], r["head"]) for r in s.probe if r["located"] == "spurious"}
    assert located == {tuple(h) for h in plan["spurious"]}


def _readme_demo_table() -> list[str]:
    """The first column of docs/lab.md table "What `clip-debias demo` measures", markdown stripped."""
    from pathlib import Path

    lines = (Path(__file__).parents[1] / "docs" / "lab.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method (test split) |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line.split("|")[1].replace("**", "").replace("`", "").strip())
    return rows


def test_demo_table_has_the_readme_rows_in_order(demo_run):
    """The demo prints the README's table: the same row names in the same order (the shipped row names what the
    README's run chose on val)."""
    import re

    from clip_debias.toolchain.demo import VERIFY_ROW, result_rows

    _, s = demo_run
    readme = _readme_demo_table()
    printed = [label for label, _, _ in result_rows(s)]
    assert printed[:-1] == readme[:-1]
    chosen = re.fullmatch(re.escape(VERIFY_ROW).replace(r"\{chosen\}", "(.+)"), readme[-1]).group(1)
    assert printed[-1] == VERIFY_ROW.format(chosen=s.chosen) and chosen in {r["method"] for r in s.test_rows}


def test_demo_summary_prints_whole_names_through_a_pipe_and_folds_on_a_narrow_terminal(demo_run):
    import io

    from rich.console import Console

    from clip_debias.runtime.tables import PIPE_WIDTH
    from clip_debias.toolchain.demo import print_summary, result_rows

    _, s = demo_run
    piped = io.StringIO()
    print_summary(s, Console(file=piped, width=PIPE_WIDTH, force_terminal=False))
    for label, default, reference in result_rows(s):
        assert label in piped.getvalue() and default in piped.getvalue()
    narrow = io.StringIO()
    print_summary(s, Console(file=narrow, width=60, force_terminal=True, color_system=None))
    assert "…" not in narrow.getvalue() and "…" not in piped.getvalue()
    assert max(len(line) for line in narrow.getvalue().splitlines()) <= 60


def test_a_rerun_reuses_the_lab_data_and_fresh_makes_it_anew(tmp_path):
    from clip_debias.toolchain.demo import prepare_lab_data

    said: list[str] = []
    args = {"n_train": 40, "n_val": 8, "n_test": 8, "image_size": 32}
    data = tmp_path / "data"
    assert prepare_lab_data(data, args, False, said.append) is False and "reusing" not in said[-1]
    made = (data / "lab.json").stat().st_mtime_ns
    assert prepare_lab_data(data, args, False, said.append) is True
    assert f"reusing the lab data in {data}" in said[-1] and "--fresh" in said[-1]
    assert (data / "lab.json").stat().st_mtime_ns == made
    assert prepare_lab_data(data, args, True, said.append) is False and "(--fresh)" in said[-1]
    assert prepare_lab_data(data, {**args, "n_train": 80}, False, said.append) is False
    assert "made with other parameters" in said[-1]


def test_demo_command_ends_naming_report_html(monkeypatch, tmp_path):
    """The CLI's last line names report.html (run_demo replaced by a stub: the pipeline is tested above)."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import clip_debias.toolchain.demo as demo
    from clip_debias.toolchain.cli.app import app

    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: SimpleNamespace(chosen="PerceptionCLIP"))
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), "--quick", "--fresh"])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == f"report: {tmp_path / 'd' / 'report.html'} (open it in a browser)"


def test_decomposition_caches_are_reused_only_when_their_inputs_are_the_same(demo_run):
    """A rerun takes a split's cache from the folder when it was made by the same weights from the same images with
    the same layers; another split's images, other layers or other weights are decomposed anew."""
    import torch

    from clip_debias.runtime.datasets import load_index
    from clip_debias.toolchain.demo import reusable_cache
    from clip_debias.toolchain.lab import LAB_MODEL, LAB_WEIGHTS
    from clip_debias.toolchain.models.loading import load_clip

    out, _ = demo_run
    clip = load_clip(LAB_MODEL, weights=LAB_WEIGHTS)
    val = load_index("waterbirds", out / "data", "val")
    assert reusable_cache(out / "val.safetensors", clip, val, list(range(6))) is not None
    assert reusable_cache(out / "val.safetensors", clip, val, [4, 5]) is None
    assert reusable_cache(out / "test.safetensors", clip, val, list(range(6))) is None
    assert reusable_cache(out / "missing.safetensors", clip, val, list(range(6))) is None
    torch.manual_seed(0)
    other = load_clip(LAB_MODEL, random_weights=True)
    assert reusable_cache(out / "val.safetensors", other, val, list(range(6))) is None


def test_latency_is_measured_in_turns_with_its_spread(demo_run):
    from clip_debias.toolchain.demo import LATENCY_ROUNDS

    _, s = demo_run
    assert list(s.latency) == ["debiased", "zero-shot"]
    for name, r in s.latency.items():
        assert r["p10"] <= r["median"] <= r["p90"] and r["rounds"] == LATENCY_ROUNDS and r["batch_size"] > 0
    assert "median_ratio" in s.latency["zero-shot"] and "median_ratio" not in s.latency["debiased"]


def test_demo_on_the_map_pooled_lab_model(tmp_path):
    """``demo --model clipdebias-lab-map``: every stage through the attention-pool path (decompose, locate under both
    protocols, select, build, export, verify, explain) at CI size; the verified artifact agrees with its torch row;
    any other model is refused in one line before anything is written."""
    from typer.testing import CliRunner

    from clip_debias.toolchain.cli.app import app

    res = CliRunner().invoke(app, ["demo", "--model", "clipdebias-lab-map", "--quick", "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "d" / "demo.json").read_text())
    assert s["model"] == "clipdebias-lab-map" and s["plan"]["located_on"]["layers"] == list(range(6))
    rows = {r["method"]: r for r in s["test_rows"]}
    n = sum(g["n"] for g in s["verify"]["debiased"]["groups"].values())
    assert abs(s["verify"]["debiased"]["accuracy"] - rows[s["chosen"]]["accuracy"]) <= 1 / n + 1e-9
    assert "Bias lab (clipdebias-lab-map)" in res.output
    res = CliRunner().invoke(app, ["demo", "--model", "ViT-B-32", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "one-shortcut lab model" in res.output and not (tmp_path / "x").exists()
