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
