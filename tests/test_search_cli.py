"""``clip-debias export onnx`` with the text tower, ``index`` and ``search`` end to end on the shipped lab model
(issue 29): the index of a csv split, a text query, the retrieval skew of a shipped query list, the digest check."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tokenizers")


def _run(args):
    from typer.testing import CliRunner

    from clip_debias.toolchain.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def lab_setup(tmp_path_factory):
    """Two lab-model artifacts with their text towers (two label sets: two digests) and a 16-image csv split with a
    'place' attribute."""
    from clip_debias.toolchain.correct.classifier import plain_classifier
    from clip_debias.toolchain.models.loading import load_clip

    root = tmp_path_factory.mktemp("lab-search")
    clip = load_clip("clipdebias-lab")
    arts = []
    for i, labels in enumerate((["landbird", "waterbird"], ["bird", "boat"])):
        plain_classifier(clip, labels).save(root / f"model{i}")
        res = _run(["export", "onnx", root / f"model{i}", "--out", root / f"art{i}", "--no-ort-optimize"])
        assert res.exit_code == 0, res.output
        arts.append(root / f"art{i}")
    data = root / "data"
    (data / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(data / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "place"])
        for i in range(16):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / "img" / f"{i:02d}.png")
            w.writerow([f"img/{i:02d}.png", ["landbird", "waterbird"][i % 2], "test", ["land", "water"][i // 8]])
    return arts, data, root


def test_export_writes_the_text_tower(lab_setup):
    from clip_debias.runtime.manifest import Manifest

    m = Manifest.load(lab_setup[0][0])
    assert [f.path for f in m.files] == ["model.onnx", "tokenizer.json", "text.onnx"]
    assert m.text is not None and m.text.context_length == 16 and m.text.templates == ["a photo of a {}."]


def test_index_search_and_retrieval_skew(lab_setup):
    (art, other), data, root = lab_setup
    idx = root / "idx"
    res = _run(["index", data, "--dataset", "csv", "--split", "test", "--artifact", art, "--out", idx, "--faiss"])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.stdout and "16 images" in res.stdout
    record = json.loads((idx / "index.json").read_text())
    assert record["attributes"]["place"] == ["land"] * 8 + ["water"] * 8 and record["ids"][0] == "img/00.png"
    for engine in ("numpy", "faiss"):
        res = _run(["search", idx, "a photo of a waterbird", "-k", "3", "--engine", engine, "--json",
                    root / f"hits-{engine}.json"])
        assert res.exit_code == 0, res.output
    hits = [json.loads((root / f"hits-{e}.json").read_text())["queries"]["a photo of a waterbird"]
            for e in ("numpy", "faiss")]
    assert len(hits[0]) == 3 and hits[0] == hits[1]
    res = _run(["search", idx, "--queries", "lab-birds", "--protected", "place", "--skew-k", "4,8", "--json",
                root / "skew.json"])
    assert res.exit_code == 0, res.output
    skew = json.loads((root / "skew.json").read_text())["retrieval_skew"]
    assert skew["attribute"] == "place" and [r["k"] for r in skew["at_k"]] == [4, 8]
    assert len(skew["at_k"][0]["queries"]) == 8
    worst = max(r["mean_max_skew"] for r in skew["at_k"])
    res = _run(["search", idx, "--queries", "lab-birds", "--protected", "place", "--skew-k", "4,8",
                "--max-retrieval-skew", worst])
    assert res.exit_code == 0 and res.stdout.splitlines()[-1].startswith("PASS: mean MaxSkew@"), res.output
    res = _run(["search", idx, "--queries", "lab-birds", "--protected", "place", "--skew-k", "4,8",
                "--max-retrieval-skew", worst / 2])
    assert res.exit_code == 1 and "FAIL: mean MaxSkew@" in res.stdout, res.output
    res = _run(["search", idx, "a bird", "--artifact", other])
    assert res.exit_code == 2 and "differs from the expected" in res.output


def _verify_skew(art, data, out, *extra):
    return _run(["verify", art, "--dataset", "csv", "--data", data, "--split", "test", "--batch-size", "16",
                 "--latency-batches", "0", "--no-progress", "--queries", "lab-birds", "--protected", "place",
                 "--skew-k", "4,8", "--json", out, "--force", *extra])


def test_verify_retrieval_skew_gate(lab_setup):
    """verify --queries --max-retrieval-skew: the split's image embeddings (from verify's own model calls) ranked for
    each query; the section and the gate's value equal ``runtime.retrieval_skew`` on ``encode_image`` /
    ``encode_text`` directly; PASS at that value, FAIL just under it, INCONCLUSIVE with a value under
    --min-group-size."""
    from clip_debias.runtime.classifier import load
    from clip_debias.runtime.retrieval_skew import read_queries, retrieval_skew

    (art, _), data, root = lab_setup
    clf = load(art, device="cpu")
    texts, _ = read_queries("lab-birds")
    paths = [data / "img" / f"{i:02d}.png" for i in range(16)]
    scores = clf.encode_image(paths, batch_size=16).astype(np.float64) @ clf.encode_text(texts).astype(np.float64).T
    ref = retrieval_skew(scores, [0] * 8 + [1] * 8, ["land", "water"], texts, (4, 8), "place")
    value = max(a.mean_max_skew for a in ref.at_k)
    assert value > 1e-4
    out = root / "verify-skew.json"
    res = _verify_skew(art, data, out, "--max-retrieval-skew", value + 1e-6, "--min-group-size", "8")
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    gate, section = report["thresholds"]["max_retrieval_skew"], report["metrics"]["retrieval_skew"]
    assert gate["decision"] == "PASS" and gate["interval"] is None and abs(gate["value"] - value) <= 1e-6
    assert gate["over"]["values"] == {"land": 8, "water": 8} and gate["over"]["queries"] == len(texts)
    for got, want in zip(section["at_k"], ref.at_k):
        assert got["k"] == want.k and abs(got["mean_max_skew"] - want.mean_max_skew) <= 1e-6
        assert abs(got["mean_ndkl"] - want.mean_ndkl) <= 1e-6
        assert [q["query"] for q in got["queries"]] == texts
    assert "retrieval skew of 'place'" in res.stdout
    res = _verify_skew(art, data, out, "--max-retrieval-skew", value - 1e-6, "--min-group-size", "8")
    assert res.exit_code == 1 and json.loads(out.read_text())["thresholds"]["max_retrieval_skew"]["decision"] == "FAIL"
    res = _verify_skew(art, data, out, "--max-retrieval-skew", value + 1e-6, "--min-group-size", "9")
    gate = json.loads(out.read_text())["thresholds"]["max_retrieval_skew"]
    assert res.exit_code == 1 and gate["decision"] == "INCONCLUSIVE" and "--min-group-size 9" in gate["reason"]


def test_verify_retrieval_skew_refusals(lab_setup, tmp_path):
    """One line, exit 2, before the model runs: an artifact without a text tower, the gate without --queries, a
    protected column the data lacks."""
    from runtime_fixtures import build_artifact

    (art, _), data, _ = lab_setup
    plain = build_artifact(tmp_path / "plain").path
    res = _verify_skew(plain, data, tmp_path / "a.json", "--max-retrieval-skew", "1")
    assert res.exit_code == 2 and "no text tower" in res.output and "Traceback" not in res.output, res.output
    res = _run(["verify", art, "--dataset", "csv", "--data", data, "--split", "test", "--protected", "place",
                "--max-retrieval-skew", "1"])
    assert res.exit_code == 2 and "needs --queries FILE" in res.output, res.output
    res = _verify_skew(art, data, tmp_path / "b.json", "--max-retrieval-skew", "1", "--protected", "nosuch")
    assert res.exit_code == 2 and "nosuch" in res.output and "Traceback" not in res.output, res.output


def test_index_of_a_folder_is_bounded_while_walking(lab_setup, tmp_path):
    """A folder of more image files than --max-rows is refused in one line before any image is opened; the walk
    (``runtime.image_folder``, also an audit's folder source) skips folders clip-debias wrote."""
    from clip_debias.runtime.errors import InputError
    from clip_debias.runtime.image_folder import folder_images
    from clip_debias.runtime.ownership import MARKER_NAME

    (art, _), data, _ = lab_setup
    res = _run(["index", data / "img", "--artifact", art, "--out", tmp_path / "idx", "--max-rows", "15"])
    assert res.exit_code == 2 and "more than 15 image files" in res.output and "Traceback" not in res.output, \
        res.output
    assert not (tmp_path / "idx").exists()
    (tmp_path / "f" / "ours").mkdir(parents=True)
    for name in ("b.PNG", "a.jpg", "ours/c.png", "notes.txt"):
        (tmp_path / "f" / name).write_bytes(b"x")
    (tmp_path / "f" / "ours" / MARKER_NAME).write_text("{}")
    assert folder_images(tmp_path / "f") == [tmp_path / "f" / "a.jpg", tmp_path / "f" / "b.PNG"]
    with pytest.raises(InputError, match="more than 1 image files"):
        folder_images(tmp_path / "f", max_images=1)
