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
