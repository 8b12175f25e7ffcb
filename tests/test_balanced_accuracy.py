"""``runtime.metrics.balanced_accuracy``: one module registered with the metric registry, no other file touched --
the value equals scikit-learn's, and verify reports it (JSON ``metrics.balanced_accuracy``), gates on it
(``--min-balanced-accuracy``, interval-based) and prints its table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from runtime_fixtures import build_artifact, build_waterbirds
from typer.testing import CliRunner

from clip_debias.runtime.metrics.balanced_accuracy import balanced_accuracy
from clip_debias.runtime.metrics.evidence import Proportion, mover
from clip_debias.runtime.metrics.registry import families, gates


def test_equals_sklearn():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 4, 300))
    b = balanced_accuracy(pred, y, ["a", "b", "c", "d"])
    assert b.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12) and b.missing == []
    assert balanced_accuracy(np.array([0, 1]), np.array([0, 0]), ["a", "b"]).missing == ["b"]


def test_registered_with_a_gate():
    assert "balanced_accuracy" in [f.name for f in families()]
    assert "min_balanced_accuracy" in [g.name for g in gates()]


def test_verify_reports_and_gates_it(tmp_path: Path):
    from clip_debias.toolchain.cli.app import app

    art = build_artifact(tmp_path / "a", fp16=False)
    build_waterbirds(tmp_path / "wb", {"test": 40})
    base = ["verify", str(art.path), "--dataset", "waterbirds", "--data", str(tmp_path / "wb"), "--split", "test",
            "--no-progress", "--min-group-size", "1", "--json", str(tmp_path / "r.json"), "--force"]
    ok = CliRunner().invoke(app, [*base, "--min-balanced-accuracy", "0"])
    assert ok.exit_code == 0 and "balanced accuracy (recall per class)" in ok.output, ok.output
    report = json.loads((tmp_path / "r.json").read_text())
    b = report["metrics"]["balanced_accuracy"]
    recalls = [g["accuracy"] for g in b["classes"].values()]
    assert b["balanced_accuracy"] == pytest.approx(np.mean(recalls), abs=1e-12)
    t = report["thresholds"]["min_balanced_accuracy"]
    want = mover([(0.5, Proportion.of(round(g["accuracy"] * g["n"]), g["n"], 0.95)) for g in b["classes"].values()])
    assert t["decision"] == "PASS" and t["interval"] == pytest.approx(list(want), abs=1e-12)
    bad = CliRunner().invoke(app, [*base, "--min-balanced-accuracy", "1"])
    assert bad.exit_code == 1
    assert json.loads((tmp_path / "r.json").read_text())["thresholds"]["min_balanced_accuracy"]["decision"] in (
        "FAIL", "INCONCLUSIVE")
