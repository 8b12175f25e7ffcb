"""``verify --engine ray``: the verification as a Ray Data pipeline on a local Ray (num_cpus=2, 2 actors) gives the
local report: the same JSON schema, and accuracies, worst group, per-group table, counts, skipped images and
thresholds equal exactly -- on bias-lab data (``lab make-data``, tiny) and the shipped lab model. Latency is measured
per actor (the report's ``backend.ray.per_actor``). Needs the ``[ray]`` extra (skipped without Ray Data).
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.verify import Thresholds, verify

ray = pytest.importorskip("ray", reason="Ray not installed (pip install '.[ray]')")
pytest.importorskip("ray.data", reason="Ray Data not installed (pip install '.[ray]')")

from clip_debias.serving.ray_verify import RayEngine  # noqa: E402

EXACT = ("accuracy", "worst_group_accuracy", "worst_group", "groups", "n", "skipped", "class_names",
         "dataset_class_names", "class_names_match", "thresholds", "passed", "artifact", "dataset", "data", "split",
         "batch_size", "precision_gate")
THRESHOLDS = Thresholds(min_accuracy=0.5, min_worst_group=0.99, max_latency_ms=60_000)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(artifact of the shipped lab model, zero-shot; tiny lab data: 96 test images)."""
    from clip_debias.exporters.onnx_export import export_onnx
    from clip_debias.toolchain.correct.classifier import plain_classifier
    from clip_debias.toolchain.lab import LAB_MODEL, LAB_WEIGHTS
    from clip_debias.toolchain.lab.data import CLASS_NAMES, make_lab_data
    from clip_debias.toolchain.models.loading import load_clip

    tmp = tmp_path_factory.mktemp("rayverify")
    data = make_lab_data(tmp / "data", n_train=8, n_val=4, n_test=96, seed=1, workers=1)
    clip = load_clip(LAB_MODEL, weights=LAB_WEIGHTS)
    art = export_onnx(plain_classifier(clip, list(CLASS_NAMES)), tmp / "artifact", ort_optimize=False)
    return art, data


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (2 CPUs, addresses on 127.0.0.1); the engines reuse it."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 configure_logging=False)
    yield
    if started:
        ray.shutdown()


def _schema(x):
    """The JSON schema of a report: keys, recursively, and the types of the leaves (backend's contents aside)."""
    if isinstance(x, dict):
        return {k: ("backend" if k == "backend" else _schema(v)) for k, v in x.items()}
    if isinstance(x, list):
        return [_schema(v) for v in x[:1]]
    return "number" if isinstance(x, (int, float)) and not isinstance(x, bool) else type(x).__name__


TIMED_OVER = ("batches", "extra_runs")  # the latency threshold's 'over': the local engine tops the calls up to 20


def _same_report(local: dict, remote: dict) -> None:
    """Same schema; every number equal but the timings (the latency threshold's measured value is one, and so are
    the calls it rests on: only the local engine can time a call again, ``runtime.verify.time_calls``)."""
    assert _schema(remote) == _schema(local)

    def untimed_over(over: dict) -> dict:
        return {k: v for k, v in over.items() if k not in TIMED_OVER}

    untimed = lambda r: {**r, "thresholds": {  # noqa: E731
        k: {**v, "value": None, "over": untimed_over(v["over"])} if k == "max_latency_ms" else v
        for k, v in r["thresholds"].items()}}
    for key in EXACT:
        assert untimed(remote)[key] == untimed(local)[key], key


def test_ray_report_equals_local_report(lab, local_ray):
    art, data = lab
    local = verify(art, "waterbirds", data, "test", device="cpu", batch_size=16, thresholds=THRESHOLDS,
                   progress=False)
    with RayEngine(art, device="cpu", actors=2) as engine:
        remote = verify(art, "waterbirds", data, "test", batch_size=16, thresholds=THRESHOLDS, engine=engine)
    _same_report(local.to_dict(), remote.to_dict())
    assert 0.0 < local.worst_group_accuracy < local.accuracy < 1.0  # the lab model's bias: neither trivial nor hopeless
    assert local.n == remote.n == 96

    ray_info = remote.backend["ray"]
    assert remote.backend["engine"] == "ray" and ray_info["actors"] == 2
    assert {k: v for k, v in remote.backend.items() if k not in ("engine", "ray")} == local.backend
    per_actor = ray_info["per_actor"].values()
    assert sum(a["batches"] for a in per_actor) == remote.n_batches and sum(a["images"] for a in per_actor) == 96
    assert all(a["p50_ms"] > 0 for a in per_actor)


def test_skip_bad_and_unreadable_image(lab, local_ray, tmp_path):
    art, data = lab
    bad_data = tmp_path / "data"
    shutil.copytree(data, bad_data)
    victim = next(p for p in sorted(bad_data.rglob("test_*.png")))
    victim.write_bytes(b"not a png")
    local = verify(art, "waterbirds", bad_data, "test", batch_size=16, skip_bad=True, progress=False)
    with RayEngine(art, device="cpu", actors=2) as engine:
        remote = verify(art, "waterbirds", bad_data, "test", batch_size=16, skip_bad=True, engine=engine)
        assert remote.skipped == [str(victim)] and remote.n == 95
        _same_report(local.to_dict(), remote.to_dict())
        with pytest.raises(ClipDebiasError, match=rf"^{victim}: cannot read image"):
            verify(art, "waterbirds", bad_data, "test", batch_size=16, engine=engine)


def test_cli_engine_ray_writes_the_local_report(lab, local_ray, tmp_path):
    """The CLI path (it reuses the module's Ray, as it would a cluster's): --engine ray's JSON equals --engine local's
    on every number but the timings."""
    from clip_debias.toolchain.cli.app import app

    art, data = lab
    reports = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.json"
        res = CliRunner().invoke(app, ["verify", str(art), "--dataset", "waterbirds", "--data", str(data),
                                       "--split", "test", "--batch-size", "16", "--engine", engine, "--ray-actors", "2",
                                       "--no-progress", "--json", str(out)])
        assert res.exit_code == 0, res.output
        reports[engine] = json.loads(out.read_text())
    _same_report(reports["local"], reports["ray"])

    res = CliRunner().invoke(app, ["verify", str(art), "--dataset", "waterbirds", "--data", str(data),
                                   "--split", "test", "--engine", "spark"])
    assert res.exit_code == 2 and "Invalid value for '--engine': 'spark' is not one of 'local', 'ray'" in res.output
    res = CliRunner().invoke(app, ["verify", str(art), "--dataset", "waterbirds", "--data", str(data),
                                   "--split", "test", "--address", "127.0.0.1:1"])
    assert res.exit_code == 2 and "--address: only with --engine ray" in res.output
