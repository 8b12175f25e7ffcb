"""``runtime.metrics.evidence`` and the decision rule: Wilson and Newcombe intervals equal float64 transcriptions of
their formulas (and published values); PASS / FAIL / INCONCLUSIVE; the evidence rule in verify (a group of 3 images,
the 1-of-160 run)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from runtime_fixtures import build_artifact, build_waterbirds
from typer.testing import CliRunner

from clip_debias.runtime.errors import InputError
from clip_debias.runtime.metrics.evidence import (Decision, Direction, Evidence, Proportion, absolute, decide,
                                                  mover, newcombe, wilson, z_value)
from clip_debias.runtime.verify import Thresholds, verify


def _wilson_direct(k: int, n: int, z: float) -> tuple[float, float]:
    """Wilson (1927), written out: (2k + z^2 -+ z sqrt(z^2 + 4k (n - k) / n)) / (2 (n + z^2))."""
    root = z * math.sqrt(z * z + 4.0 * k * (n - k) / n)
    return (2 * k + z * z - root) / (2 * (n + z * z)), (2 * k + z * z + root) / (2 * (n + z * z))


def test_normal_quantile_is_scipys():
    from scipy.stats import norm

    for confidence in (0.8, 0.9, 0.95, 0.99, 0.999):
        assert z_value(confidence) == pytest.approx(norm.ppf(0.5 + confidence / 2), abs=1e-12)


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_equals_the_formula(confidence):
    z = z_value(confidence)
    for n in (1, 2, 3, 7, 20, 160, 1200):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            lo, hi = wilson(k, n, confidence)
            want = _wilson_direct(k, n, z)
            assert lo == pytest.approx(max(0.0, want[0]), abs=1e-12) and hi == pytest.approx(min(1.0, want[1]),
                                                                                              abs=1e-12)
            assert lo <= k / n <= hi


def test_wilson_and_newcombe_published_values():
    """Newcombe (1998, Stat. Med. 17): Wilson 81/263 = 0.2553-0.3662, 0/20 = 0-0.1611; difference 56/70 - 48/80,
    method 10 (hybrid score) = 0.0524-0.3339."""
    assert np.round(wilson(81, 263), 4).tolist() == [0.2553, 0.3662]
    assert np.round(wilson(0, 20), 4).tolist() == [0.0, 0.1611]
    d = newcombe(Proportion.of(56, 70, 0.95), Proportion.of(48, 80, 0.95))
    assert np.round(d, 4).tolist() == [0.0524, 0.3339]


def test_newcombe_equals_the_formula():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n1, n2 = (int(v) for v in rng.integers(1, 300, 2))
        k1, k2 = int(rng.integers(0, n1 + 1)), int(rng.integers(0, n2 + 1))
        (l1, u1), (l2, u2) = wilson(k1, n1), wilson(k2, n2)
        p1, p2 = k1 / n1, k2 / n2
        want = (p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
                p1 - p2 + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))
        got = newcombe(Proportion.of(k1, n1, 0.95), Proportion.of(k2, n2, 0.95))
        assert got == pytest.approx(want, abs=1e-12)


def test_mover_of_a_weighted_sum_equals_the_formula():
    """sum_j w_j p_j: L = E - sqrt(sum (w p - w (l if w > 0 else u))^2), U likewise (Zou & Donner 2008)."""
    qs = [Proportion.of(k, n, 0.95) for k, n in ((30, 40), (5, 25), (12, 12), (0, 9))]
    ws = [0.5, -0.25, 0.125, -1.0]
    e = sum(w * q.p for w, q in zip(ws, qs))
    lo = e - math.sqrt(sum((w * q.p - w * (q.interval[0] if w > 0 else q.interval[1])) ** 2 for w, q in zip(ws, qs)))
    hi = e + math.sqrt(sum((w * (q.interval[1] if w > 0 else q.interval[0]) - w * q.p) ** 2 for w, q in zip(ws, qs)))
    assert mover(list(zip(ws, qs))) == pytest.approx((lo, hi), abs=1e-12)
    assert absolute((-0.2, 0.1)) == (0.0, 0.2) and absolute((-0.3, -0.1)) == (0.1, 0.3)


def test_decision_rule():
    assert decide((0.91, 0.97), 0.9, Direction.AT_LEAST) is Decision.PASS
    assert decide((0.80, 0.89), 0.9, Direction.AT_LEAST) is Decision.FAIL
    assert decide((0.85, 0.95), 0.9, Direction.AT_LEAST) is Decision.INCONCLUSIVE
    assert decide((0.01, 0.04), 0.05, Direction.AT_MOST) is Decision.PASS
    assert decide((0.06, 0.09), 0.05, Direction.AT_MOST) is Decision.FAIL
    assert decide((0.03, 0.07), 0.05, Direction.AT_MOST) is Decision.INCONCLUSIVE
    for bad in (dict(confidence=1.0), dict(confidence=0.0), dict(min_group_size=0)):
        with pytest.raises(InputError):
            Evidence(**bad)  # type: ignore[arg-type]


# ---- in verify ------------------------------------------------------------------------------------------------------


def test_group_of_three_makes_worst_group_inconclusive(tmp_path: Path):
    """Groups of 3 images each (12 test images): even a limit of 0 (every interval above it) is INCONCLUSIVE under
    --min-group-size 20; with --min-group-size 3 the same gate PASSES; --allow-inconclusive lets the run pass."""
    art = build_artifact(tmp_path / "a", fp16=False)
    build_waterbirds(tmp_path / "wb")
    r = verify(art.path, "waterbirds", tmp_path / "wb", progress=False, thresholds=Thresholds(min_worst_group=0.0))
    t = r.thresholds["min_worst_group"]
    assert t.decision == "INCONCLUSIVE" and not t.passed and not r.passed and r.decision == "INCONCLUSIVE"
    assert "under --min-group-size 20" in t.reason and t.n == 3 and t.interval[0] >= 0.0
    ok = verify(art.path, "waterbirds", tmp_path / "wb", progress=False, thresholds=Thresholds(min_worst_group=0.0),
                evidence=Evidence(min_group_size=3))
    assert ok.thresholds["min_worst_group"].decision == "PASS" and ok.passed
    allowed = verify(art.path, "waterbirds", tmp_path / "wb", progress=False, allow_inconclusive=True,
                     thresholds=Thresholds(min_worst_group=0.0))
    assert allowed.passed and allowed.decision == "PASS"
    assert allowed.thresholds["min_worst_group"].decision == "INCONCLUSIVE"


def test_one_of_160_images_is_not_a_pass(tmp_path: Path):
    """Issue 25: 159 of 160 test images missing, --max-skipped 1.0 -> refused (one line naming N and P%);
    --max-skipped 159 -> the one image left cannot pass --min-accuracy 0.9 (exit 1, INCONCLUSIVE or FAIL)."""
    from clip_debias.toolchain.cli.app import app

    art = build_artifact(tmp_path / "a", fp16=False)
    images = build_waterbirds(tmp_path / "wb", {"test": 160, "train": 4, "val": 4})
    for im in [im for im in images if im.split == "test"][1:]:
        im.path.unlink()
    base = ["verify", str(art.path), "--dataset", "waterbirds", "--data", str(tmp_path / "wb"), "--split", "test",
            "--no-progress", "--skip-bad", "--min-accuracy", "0.9"]
    refused = CliRunner().invoke(app, [*base, "--max-skipped", "1.0"])
    lines = [ln for ln in refused.output.splitlines() if ln.strip()]
    assert refused.exit_code == 2 and len(lines) == 1 and "expected N (a count of images" in lines[0] and \
        "P% (a percentage" in lines[0], refused.output
    res = CliRunner().invoke(app, [*base, "--max-skipped", "159", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 1 and "PASSED" not in res.output, res.output
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    t = report["thresholds"]["min_accuracy"]
    assert report["n"] == 1 and t["n"] == 1 and t["decision"] in ("INCONCLUSIVE", "FAIL") and not report["passed"]
    assert report["thresholds"]["max_skipped"]["decision"] == "PASS"  # 159 <= 159: the skip count is not the issue


def test_reference_protocol_model_is_named_in_a_warning(tmp_path: Path, capsys):
    """Issue 31.5: a model built under the reference (transductive) protocol -- recorded in its manifest's plan --
    gets one warning line from verify (and ``transductive: true`` in the JSON) and from export."""
    import json

    from clip_debias.runtime.manifest import Manifest
    from clip_debias.toolchain.cli.app import app
    from clip_debias.toolchain.cli.export_cmd import warn_if_transductive

    art = build_artifact(tmp_path / "a", fp16=False)
    build_waterbirds(tmp_path / "wb")
    args = ["verify", str(art.path), "--dataset", "waterbirds", "--data", str(tmp_path / "wb"), "--split", "test",
            "--no-progress", "--json", str(tmp_path / "r.json"), "--force"]
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 0 and "transductive" not in plain.output
    assert json.loads((tmp_path / "r.json").read_text())["transductive"] is False
    manifest = Manifest.load(art.path)
    manifest.plan["plan"] = {"transductive": True}
    manifest.save(art.path)
    res = CliRunner().invoke(app, args)
    warnings = [ln for ln in res.output.splitlines() if "transductive" in ln]
    assert res.exit_code == 0 and len(warnings) == 1 and warnings[0].startswith("warning: "), res.output
    assert json.loads((tmp_path / "r.json").read_text())["transductive"] is True
    warn_if_transductive(art.path)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: this model was built under the reference (transductive)")


def test_thresholds_and_cli_options_come_from_the_registry():
    """Issue 27: every registered metric gate is a ``Thresholds`` field and a verify option; options as dataclasses
    (``VerifyOptions.of`` refuses an unknown field)."""
    import dataclasses

    import typer.main

    from clip_debias.runtime.metrics.registry import gates
    from clip_debias.runtime.verify import VerifyOptions
    from clip_debias.toolchain.cli.app import app

    names = [g.name for g in gates()]
    assert {f.name for f in dataclasses.fields(Thresholds)} == {*names, "max_latency_ms", "max_skipped"}
    command = typer.main.get_command(app)
    options = {o for p in command.commands["verify"].params for o in p.opts}  # type: ignore[attr-defined]
    assert {g.option for g in gates()} <= options
    with pytest.raises(TypeError, match="unknown option 'batchsize'"):
        VerifyOptions.of(batchsize=3)
    o = VerifyOptions.of(batch_size=3, evidence=Evidence(confidence=0.9))
    assert o.run.batch_size == 3 and o.gates.evidence.confidence == 0.9
