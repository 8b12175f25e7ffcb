"""CUDA-graph IO bindings (``runtime.captured_graphs``), checked on the CPU provider: the same fixed buffers,
bindings, graph ids and lock run there without capture, so everything but the capture itself is exercised."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from clip_debias import runtime
from clip_debias.runtime.backends import OUTPUTS, BackendError
from clip_debias.runtime.captured_graphs import GPU_GRAPH_ID, UNCAPTURED, CapturedGraphs, run_options
from runtime_fixtures import build_artifact, build_waterbirds

SIZE = (24, 24)


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return build_artifact(tmp_path_factory.mktemp("cg") / "artifact", size=SIZE)


@pytest.fixture()
def session(art):
    return ort.InferenceSession(str(art.path / "model.onnx"), providers=["CPUExecutionProvider"])


def _graphs(session, art, max_graphs: int = 8) -> CapturedGraphs:
    dims = {o.name: [int(d) for d in o.shape[1:]] for o in art.manifest.outputs}
    return CapturedGraphs(session, "image", {n: dims[n] for n in OUTPUTS}, device="cpu", max_graphs=max_graphs)


def _batch(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, *SIZE)).astype(np.float32)


def test_fixed_buffers_give_session_run_results(session, art):
    """Sizes 1, 3, 1, 3: each size gets one slot (graph ids 0 and 1) whose buffers are refilled every call; results
    equal ``session.run`` on the same batch bit for bit, so a stale input buffer would show."""
    graphs = _graphs(session, art)
    for i, n in enumerate((1, 3, 1, 3)):
        x = _batch(n, seed=i)
        got = graphs.run(x)
        want = session.run(list(OUTPUTS), {"image": x})
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    assert graphs.batch_sizes == [1, 3]
    assert [graphs._slots[n].graph_id for n in (1, 3)] == [0, 1]
    assert graphs._slots[3].options.get_run_config_entry(GPU_GRAPH_ID) == "1"


def test_ortvalue_input_is_copied_in(session, art):
    x = _batch(2, seed=7)
    got = _graphs(session, art).run(ort.OrtValue.ortvalue_from_numpy(x))
    np.testing.assert_array_equal(got[0], session.run(["logits"], {"image": x})[0])


def test_dlpack_view_is_copied_in(session, art):
    """The path a torch CUDA tensor takes on a CUDA-graph session (``OrtValue.from_dlpack`` view, then a device-side
    ``update_inplace``), here with a numpy array, which speaks DLPack too."""
    x = _batch(3, seed=8)
    got = _graphs(session, art).run(ort.OrtValue.from_dlpack(x))
    np.testing.assert_array_equal(got[0], session.run(["logits"], {"image": x})[0])


def test_threads_share_buffers_safely(session, art):
    """16 calls from 8 threads over two batch sizes (shared buffers per size) == serial, bit-exact."""
    graphs = _graphs(session, art)
    batches = [_batch(1 + i % 2, seed=i) for i in range(16)]
    serial = [session.run(["logits"], {"image": x})[0] for x in batches]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda x: graphs.run(x)[0], batches))
    for s, t in zip(serial, threaded):
        np.testing.assert_array_equal(s, t)


def test_graph_budget(session, art):
    graphs = _graphs(session, art, max_graphs=2)
    graphs.run(_batch(1, 0)), graphs.run(_batch(2, 0))
    assert graphs.can_capture(2) and not graphs.can_capture(3)
    assert graphs.run(_batch(3, 0)) is None and graphs.batch_sizes == [1, 2]  # the caller runs it uncaptured


def test_uncaptured_run_option():
    assert run_options(UNCAPTURED).get_run_config_entry(GPU_GRAPH_ID) == "-1"


def test_cuda_graph_needs_cuda_in_one_line(art):
    for kwargs in ({"device": "cpu"}, {"device": "auto"}, {"device": "cuda", "backend": "tensorrt"}):
        with pytest.raises(BackendError, match="cuda_graph") as e:
            runtime.load(art.path, cuda_graph=True, **kwargs)
        assert "\n" not in str(e.value)


def test_cli_verify_cuda_graph_on_cpu_exits_2(art, tmp_path):
    from clip_debias.toolchain.cli.app import app

    build_waterbirds(tmp_path / "wb")
    res = CliRunner().invoke(app, ["verify", str(art.path), "--dataset", "waterbirds", "--data", str(tmp_path / "wb"),
                                   "--split", "test", "--cuda-graph", "--no-progress"])
    assert res.exit_code == 2 and "cuda_graph needs device 'cuda'" in res.output, res.output
