"""The Whac-A-Mole table (``lab report --whac-a-mole``): its rows are the methods' own logits with the metrics of
runtime.metrics; the findings name exactly the methods that narrowed one gap and widened the other; refusals."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clip_debias.runtime.datasets import load_index
from clip_debias.runtime.metric_inputs import metric_inputs
from clip_debias.runtime.metrics import shortcut_gaps
from clip_debias.toolchain.lab.data import make_lab_data
from clip_debias.toolchain.lab.whac_a_mole import METHODS, LleSettings, amplified, table_cells, whac_a_mole


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    return make_lab_data(tmp_path_factory.mktemp("two") / "d", n_train=48, correlation=0.8, n_val=16, n_test=32,
                         image_size=32, shortcuts="background,object", seed=4, workers=1)


def test_rows_are_the_methods_logits_with_runtime_metrics(tiny_clip, two: Path) -> None:
    from clip_debias.toolchain.correct.classifier import plain_classifier
    from clip_debias.toolchain.datasets import eval_transform, iter_batches

    result = whac_a_mole(two, tiny_clip, LleSettings(epochs=1, progress=False), batch_size=16, progress=False)
    assert [r.method for r in result.rows] == list(METHODS)
    index = load_index("waterbirds", two, "test")
    inputs = metric_inputs(index)
    labels = np.array([r.label for r in index.records])
    for r in result.rows:
        pred = r.logits.argmax(-1).numpy()
        want = shortcut_gaps(pred, labels, list(index.class_names), *inputs.shortcuts, p_agree=inputs.p_agree)
        got = r.bias.shortcut_gaps
        assert got.gaps == want.gaps and got.id_accuracy == want.id_accuracy and got.p_agree == 0.8
        assert got.worst_group_accuracy == want.worst_group_accuracy and len(got.groups) == 8
        assert r.report.accuracy == pytest.approx(float((pred == labels).mean()))
    # the zero-shot row is the plain classifier run on the test images
    plain = plain_classifier(tiny_clip, list(index.class_names))
    with torch.no_grad():
        logits = torch.cat([plain(b.images)[0] for b in iter_batches(index, eval_transform(plain.spec.preprocess),
                                                                     batch_size=16)])
    assert (logits - result.rows[0].logits).abs().max() <= 1e-4
    assert set(result.lle_training) == {"LLE", "LTC + LLE"}
    assert result.lle_training["LLE"]["train"]["split"] == "train"
    assert [c[0] for c in table_cells(result.rows)] == list(METHODS)
    # routing: each LLE row's mean shift weights per agreement cell, transcribed from the head's own probabilities
    assert set(result.routing) == {"LLE", "LTC + LLE"}
    rows = {r.method: r for r in result.rows}
    bg, obj = (np.asarray(a.ids) for a in inputs.shortcuts)
    for method, routing in result.routing.items():
        assert routing.shifts == ["original", "background-swap", "object-swap"]
        assert sum(c.n for c in routing.cells) == len(labels) and len(routing.cells) == 8
        pred = rows[method].logits.argmax(-1).numpy()
        for c in routing.cells:
            y = list(index.class_names).index(c.label)
            m = (labels == y) & ((bg == y) == c.bg_agrees) & ((obj == y) == c.obj_agrees)
            assert c.n == int(m.sum()) and c.accuracy == pytest.approx(float((pred[m] == y).mean()))
            assert sum(c.weights) == pytest.approx(1.0, abs=1e-5)


def _row(method: str, bg: float, coobj: float) -> SimpleNamespace:
    gaps = SimpleNamespace(gaps={"bg": bg, "coobj": coobj, "bg+coobj": bg + coobj})
    return SimpleNamespace(method=method, bias=SimpleNamespace(shortcut_gaps=gaps))


def test_findings_name_exactly_the_whac_a_mole_methods() -> None:
    rows = [_row("zero-shot", -0.20, -0.10), _row("A", -0.05, -0.15), _row("B", -0.25, -0.05),
            _row("C", -0.10, -0.05), _row("D", -0.30, -0.20)]
    assert amplified(rows) == [
        "A narrowed the BG gap (-20.0 -> -5.0 pts) and widened the CoObj gap (-10.0 -> -15.0 pts)",
        "B narrowed the CoObj gap (-10.0 -> -5.0 pts) and widened the BG gap (-20.0 -> -25.0 pts)",
    ]


def test_cli_refuses_background_only_data(tmp_path: Path) -> None:
    from clip_debias.toolchain.cli.app import app

    one = make_lab_data(tmp_path / "one", n_train=8, n_val=4, n_test=8, image_size=32, seed=1, workers=1)
    res = CliRunner().invoke(app, ["lab", "report", "--data", str(one), "--whac-a-mole"])
    assert res.exit_code == 2
    assert "the Whac-A-Mole table needs two-shortcut lab data" in res.output
