"""The bias lab's new data: two shortcuts (background and a co-occurring object), masks, counterfactual pairs and
planted signatures; today's background-only data unchanged; the index, verify and the lab report on 8 groups."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_debias.runtime.datasets import load_index
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.lab.data import make_lab_data, read_metadata
from clip_debias.toolchain.lab.groups import cell_counts, group_id
from clip_debias.toolchain.lab.signature import Signature, parse_signature

TWO = "background,object"
# sha256 of metadata.csv and every PNG's path and decoded pixels, for make_lab_data(n_train=40, correlation=0.8,
# n_val=8, n_test=12, seed=5): computed with the generator before two shortcuts existed (commit a12fc7b).
BACKGROUND_ONLY_DIGEST = "881a1ee17829a0b8dce6c33ed962a0e9fe9b47cdd2cb9be58a08369ee0ceb0a8"


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy()


def _pixel_digest(root: Path) -> str:
    h = hashlib.sha256()
    h.update((root / "metadata.csv").read_bytes())
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(_pixels(p).tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    return make_lab_data(tmp_path_factory.mktemp("two") / "d", n_train=400, correlation=0.8, n_val=16, n_test=32,
                         seed=1, workers=1, shortcuts=TWO)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return make_lab_data(tmp_path_factory.mktemp("pairs") / "d", n_train=0, n_val=0, n_test=64, seed=2, workers=1,
                         shortcuts=TWO, counterfactual=True)


# ---- today's data ---------------------------------------------------------------------------------------------------
def test_background_only_data_is_unchanged(tmp_path: Path) -> None:
    out = make_lab_data(tmp_path / "d", n_train=40, correlation=0.8, n_val=8, n_test=12, seed=5, workers=1)
    assert _pixel_digest(out) == BACKGROUND_ONLY_DIGEST
    assert (out / "metadata.csv").read_text().splitlines()[0] == "img_filename,y,split,place"
    assert not (out / "masks").exists()


# ---- two shortcuts --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 7, 400, 4801])
@pytest.mark.parametrize("c", [0.5, 0.8, 0.85, 0.95, 1.0])
def test_cell_counts_are_the_planned_independent_agreements(n: int, c: float) -> None:
    """Per class n_y (the larger half to class 0): the place agrees for round(c n_y) images and, within each place
    cell, the object agrees for round(c * cell); so every cell is within one image of its c^2 / c(1-c) / (1-c)^2
    share of n_y, with no sampling."""
    counts = cell_counts(n, c)
    assert sum(counts) == n and min(counts) >= 0
    for y, n_y in ((0, n - n // 2), (1, n // 2)):
        def cell(place_ok: bool, object_ok: bool) -> int:
            return counts[group_id(y, y if place_ok else 1 - y, y if object_ok else 1 - y)]

        assert sum(cell(p, o) for p in (True, False) for o in (True, False)) == n_y
        place_agree = cell(True, True) + cell(True, False)
        assert abs(place_agree - c * n_y) <= 0.5
        for p in (True, False):
            within = cell(p, True) + cell(p, False)
            assert abs(cell(p, True) - c * within) <= 0.5  # the object's agreement does not depend on the place's
        for (p, o), share in {(True, True): c * c, (True, False): c * (1 - c), (False, True): (1 - c) * c,
                              (False, False): (1 - c) ** 2}.items():
            assert abs(cell(p, o) - share * n_y) <= 1.0
    assert cell_counts(n, None) == [n // 8 + (g < n % 8) for g in range(8)]


def test_two_shortcut_data_correlations_and_balance(two: Path) -> None:
    rows = read_metadata(two)
    train = [r for r in rows if r["split"] == 0]
    n, c = len(train), 0.8
    place_ok = np.array([r["place"] == r["y"] for r in train])
    object_ok = np.array([r["object"] == r["y"] for r in train])
    # Exact allocation: each fraction is c up to rounding (<= 1 image per class); a Bernoulli(c) draw would be
    # within 3 standard errors, 3 sqrt(c (1 - c) / n) = 0.06 here, a far looser bound.
    assert abs(place_ok.mean() - c) <= 1 / n and abs(object_ok.mean() - c) <= 1 / n
    assert abs(object_ok[place_ok].mean() - c) <= 1 / place_ok.sum()  # independent of the place's agreement
    assert abs(object_ok[~place_ok].mean() - c) <= 1 / (~place_ok).sum()
    assert Counter(r["y"] for r in train) == {0: 200, 1: 200}
    for split, n_split in ((1, 16), (2, 32)):
        groups = Counter(4 * r["y"] + 2 * r["place"] + r["object"] for r in rows if r["split"] == split)
        assert groups == {g: n_split // 8 for g in range(8)}
    assert (two / "metadata.csv").read_text().splitlines()[0] == \
        "img_filename,y,split,place,object,fg_mask,object_mask"


def test_masks_cover_the_bird_and_the_object_apart(two: Path) -> None:
    for r in read_metadata(two)[:40]:
        fg, obj = _pixels(two / r["fg_mask"]), _pixels(two / r["object_mask"])
        assert fg.dtype == np.uint8 and fg.shape == (64, 64) and obj.shape == (64, 64)
        assert (fg == 255).sum() > 20 and (obj == 255).sum() > 5  # both drawn, fully covered inside
        assert not np.any((fg > 0) & (obj > 0))  # the object stands beside the bird, never on it


def test_index_exposes_both_attributes_pairs_and_masks(two: Path, pairs: Path) -> None:
    index = load_index("waterbirds", two, "val")
    assert [(a.name, a.values) for a in index.attributes] == [("place", ("land", "water")),
                                                                ("object", ("flower", "boat"))]
    assert (index.attribute_name, index.attribute_names) == ("place", ["land", "water"])
    assert index.group_names[5] == "waterbird/land/boat" and len(index.group_names) == 8
    rows = {str(two / r["img_filename"]): r for r in read_metadata(two) if r["split"] == 1}
    for rec in index.records:
        r = rows[str(rec.path)]
        assert rec.attributes == (r["place"], r["object"]) and rec.attribute == r["place"]
        assert rec.group == 4 * r["y"] + 2 * r["place"] + r["object"] and rec.pair is None
        assert rec.masks == {"fg": two / r["fg_mask"], "object": two / r["object_mask"]}
    test = load_index("waterbirds", pairs, "test")
    assert Counter(rec.pair for rec in test.records) == {p: 2 for p in range(32)}


def test_index_of_published_layout_has_one_attribute(tmp_path: Path) -> None:
    out = make_lab_data(tmp_path / "d", n_train=8, n_val=4, n_test=4, seed=0, workers=1)
    index = load_index("waterbirds", out, "train")
    assert [a.name for a in index.attributes] == ["place"] and len(index.group_names) == 4
    assert all(rec.attributes == (rec.attribute,) and rec.group == 2 * rec.label + rec.attribute and not rec.masks
               and rec.pair is None for rec in index.records)


# ---- counterfactual pairs -------------------------------------------------------------------------------------------
def _pairs_of(root: Path) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in read_metadata(root):
        if r["pair"] is not None:
            out.setdefault(int(r["pair"]), []).append(r)
    return out


def test_counterfactual_pairs_differ_only_in_the_swapped_part(pairs: Path) -> None:
    swaps = Counter()
    for pair, (a, b) in _pairs_of(pairs).items():
        assert a["y"] == b["y"] and a["img_filename"].split("/")[0] == b["img_filename"].split("/")[0]
        swapped = [k for k in ("place", "object") if a[k] != b[k]]
        assert len(swapped) == 1
        swaps[(swapped[0], 4 * a["y"] + 2 * a["place"] + a["object"])] += 1
        swaps[(swapped[0], 4 * b["y"] + 2 * b["place"] + b["object"])] += 1
        ia, ib = _pixels(pairs / a["img_filename"]), _pixels(pairs / b["img_filename"])
        fa, fb = _pixels(pairs / a["fg_mask"]), _pixels(pairs / b["fg_mask"])
        oa, ob = _pixels(pairs / a["object_mask"]), _pixels(pairs / b["object_mask"])
        assert np.array_equal(fa, fb)  # the bird is the same bird at the same place
        full = fa == 255
        assert full.sum() > 20 and np.array_equal(ia[full], ib[full])  # identical on the foreground mask
        if swapped == ["place"]:
            assert np.array_equal(oa, ob)
            assert np.array_equal(ia[oa == 255], ib[oa == 255])  # and on the object
            assert not np.array_equal(ia[fa == 0], ib[fa == 0])  # the background did change
        else:
            outside = (oa == 0) & (ob == 0)
            assert np.array_equal(ia[outside], ib[outside])  # identical outside both objects
            assert not np.array_equal(ia[~outside], ib[~outside])
    # each swap kind on its own covers the 8 groups equally: 64 images, 16 pairs of each kind, 4 images per group
    assert swaps == {(k, g): 4 for k in ("place", "object") for g in range(8)}


def test_background_only_counterfactual_changes_only_the_test_split(tmp_path: Path) -> None:
    args = dict(n_train=24, n_val=8, n_test=16, seed=4, workers=1)
    plain = make_lab_data(tmp_path / "plain", **args)
    cf = make_lab_data(tmp_path / "cf", counterfactual=True, **args)
    rows_p, rows_c = read_metadata(plain), read_metadata(cf)
    for rp, rc in zip(rows_p, rows_c):
        if rp["split"] < 2:
            assert np.array_equal(_pixels(plain / rp["img_filename"]), _pixels(cf / rc["img_filename"]))
            assert rc["pair"] is None
    groups = Counter(2 * r["y"] + r["place"] for r in rows_c if r["split"] == 2)
    assert groups == {g: 4 for g in range(4)}
    for a, b in _pairs_of(cf).values():
        assert (a["y"], a["place"], b["place"]) == (b["y"], 0, 1)
        fg = _pixels(cf / a["fg_mask"])
        assert np.array_equal(fg, _pixels(cf / b["fg_mask"]))
        ia, ib = _pixels(cf / a["img_filename"]), _pixels(cf / b["img_filename"])
        assert np.array_equal(ia[fg == 255], ib[fg == 255])


# ---- signatures -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["colour-cast:6", "jpeg:20"])
def test_signature_variant_differs_from_the_plain_rendering_only_by_the_signature(tmp_path: Path, spec: str) -> None:
    args = dict(n_train=16, n_val=8, n_test=16, seed=7, workers=1, shortcuts=TWO)
    plain = make_lab_data(tmp_path / "plain", **args)
    signed = make_lab_data(tmp_path / "signed", signature=spec, **args)
    assert (plain / "metadata.csv").read_bytes() == (signed / "metadata.csv").read_bytes()
    signature = parse_signature(spec)
    changed = 0
    for r in read_metadata(plain):
        a, b = _pixels(plain / r["img_filename"]), _pixels(signed / r["img_filename"])
        assert np.array_equal(signature.apply(a), b)
        changed += int(not np.array_equal(a, b))
        for col in ("fg_mask", "object_mask"):
            assert (plain / r[col]).read_bytes() == (signed / r[col]).read_bytes()
    assert changed == 40


def test_colour_cast_is_the_documented_shift() -> None:
    img = np.array([[[0, 100, 255], [10, 0, 3], [250, 128, 128]]], np.uint8)
    out = Signature("colour-cast", 6).apply(img)
    assert out.tolist() == [[[6, 100, 249], [16, 0, 0], [255, 128, 122]]]


def test_jpeg_signature_is_one_round_trip() -> None:
    import io

    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=20)
    assert np.array_equal(Signature("jpeg", 20).apply(img), np.asarray(Image.open(io.BytesIO(buf.getvalue()))))


@pytest.mark.parametrize("text,expected", [
    (None, None), ("none", None), ("colour-cast", Signature("colour-cast", 16)), ("jpeg", Signature("jpeg", 15)),
    ("jpeg:75", Signature("jpeg", 75)), ("colour-cast:1", Signature("colour-cast", 1)),
    ("jpeg:", Signature("jpeg", 15)),
])
def test_parse_signature(text, expected) -> None:
    assert parse_signature(text) == expected


@pytest.mark.parametrize("text", ["sepia", "jpeg:0", "jpeg:96", "colour-cast:x", "colour-cast:65", "jpeg:q:1"])
def test_parse_signature_refuses(text) -> None:
    with pytest.raises(ClipDebiasError, match="--signature"):
        parse_signature(text)


# ---- options --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needles", [
    (["--shortcuts", "object"], ["'--shortcuts': 'object' is not one of", "'background,object'"]),
    (["--shortcuts", "background,texture"], ["'--shortcuts': 'background,texture'"]),
    (["--shortcuts", TWO, "--n-val", "4"], ["--n-val 4", "multiple of 8"]),
    (["--shortcuts", TWO, "--n-test", "8", "--counterfactual"], ["--n-test 8", "multiple of 16"]),
    (["--shortcuts", TWO, "--co-object-scale", "0.3,0.4"], ["--co-object-scale 0.3,0.4"]),
    (["--shortcuts", TWO, "--co-object-scale", "big"], ["--co-object-scale 'big'"]),
    (["--shortcuts", TWO, "--object-scale", "0.4,0.45"], ["--object-scale 0.4,0.45", "--co-object-scale"]),
    (["--signature", "sepia"], ["--signature sepia"]),
    (["--signature", "jpeg:200"], ["--signature jpeg:200", "1..95"]),
])
def test_cli_make_data_refuses_bad_new_options(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    from typer.testing import CliRunner

    from clip_debias.toolchain.cli.app import app

    res = CliRunner().invoke(app, ["lab", "make-data", "--out", str(tmp_path / "d"), "--n-train", "8", "--n-val",
                                   "8", "--n-test", "16", *args])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert all(n in lines[0] for n in needles), lines[0]
    assert not (tmp_path / "d").exists()


def test_cli_make_data_two_shortcuts_counterfactual_signature(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clip_debias.toolchain.cli.app import app

    res = CliRunner().invoke(app, ["lab", "make-data", "--out", str(tmp_path / "d"), "--n-train", "20", "--n-val",
                                   "8", "--n-test", "16", "--shortcuts", TWO, "--counterfactual", "--signature",
                                   "jpeg", "--workers", "1"])
    assert res.exit_code == 0, res.output
    import json

    info = json.loads((tmp_path / "d" / "lab.json").read_text())
    assert (info["shortcuts"], info["counterfactual"], info["signature"], info["masks"]) == \
        (["background", "object"], True, "jpeg:15", True)
    assert info["object_names"] == ["flower", "boat"]
    header = (tmp_path / "d" / "metadata.csv").read_text().splitlines()[0]
    assert header == "img_filename,y,split,place,object,pair,fg_mask,object_mask"


# ---- training captions, the lab report ------------------------------------------------------------------------------
def test_captions_name_what_their_key_says_and_fit_the_context() -> None:
    import open_clip

    from clip_debias.toolchain.lab.train import caption_table
    from clip_debias.toolchain.models.loading import register_configs

    old, old_index = caption_table(False)
    new, index = caption_table(True)
    assert new[:len(old)] == old and {k: v for k, v in index.items() if k in old_index} == old_index
    register_configs()
    tokens = open_clip.get_tokenizer("clipdebias-lab2")(new)
    assert bool((tokens[:, -1] == 0).all())  # the longest caption ends before the 16-token context does
    for (y, place, kind), ids in index.items():
        for i in ids:
            words = new[i].rstrip(".").split()
            assert ("landbird", "waterbird")[y] in words
            assert (place is not None) == any(w in words for w in ("land", "water"))
            assert place is None or ("land", "water")[place] in words
            assert (kind is not None) == any(w in words for w in ("flower", "boat"))
            assert kind is None or ("flower", "boat")[kind] in words


def test_sample_captions_follow_the_probabilities() -> None:
    import torch

    from clip_debias.toolchain.lab.train import caption_table, sample_captions

    n = 4000
    gen = torch.Generator().manual_seed(0)
    y, place, kind = (torch.randint(0, 2, (n,), generator=gen) for _ in range(3))
    captions, index = caption_table(True)
    key_of = {i: k for k, ids in index.items() for i in ids}
    keys = [key_of[i] for i in sample_captions(y, place, 0.3, gen, kind, 0.6).tolist()]
    assert all(k[0] == yi and k[1] in (None, pi) and k[2] in (None, ki)
               for k, yi, pi, ki in zip(keys, y.tolist(), place.tolist(), kind.tolist()))
    named_bg = np.array([k[1] is not None for k in keys])
    named_obj = np.array([k[2] is not None for k in keys])
    se = math.sqrt(0.25 / n)
    assert abs(named_bg.mean() - 0.3) < 4 * se and abs(named_obj.mean() - 0.6) < 4 * se
    assert abs(named_obj[named_bg].mean() - 0.6) < 4 * math.sqrt(0.25 / named_bg.sum())


def test_lab_report_on_eight_groups(two: Path) -> None:
    from typer.testing import CliRunner

    from clip_debias.toolchain.cli.app import app
    from clip_debias.toolchain.lab import LAB_WEIGHTS
    from clip_debias.toolchain.lab.train import zero_shot_report

    out = zero_shot_report(LAB_WEIGHTS, two, "test", log=None)["test"]
    r = out.report
    assert [g.n for g in r.groups.values()] == [4] * 8 and out.gaps is not None and len(out.gaps.groups) == 8
    assert r.accuracy == pytest.approx(sum(g.accuracy for g in r.groups.values()) / 8)
    assert r.worst_group_accuracy == min(g.accuracy for g in r.groups.values())
    res = CliRunner().invoke(app, ["lab", "report", "--weights", str(LAB_WEIGHTS), "--data", str(two), "--splits",
                                   "test"])
    assert res.exit_code == 0, res.output
    assert "waterbird/water/boat" in res.output and "disagree/disagree" in res.output


def test_verify_reports_eight_groups(two: Path, tmp_path: Path) -> None:
    from runtime_fixtures import build_artifact

    from clip_debias.runtime.verify import Thresholds, verify

    names = load_index("waterbirds", two, "test").group_names
    art = build_artifact(tmp_path / "art", fp16=False, group_names=tuple(names))
    r = verify(art.path, "waterbirds", two, "test", device="cpu", batch_size=8, progress=False,
               thresholds=Thresholds(min_accuracy=0.0))
    assert sorted(r.groups) == sorted(names) and all(v["n"] == 4 for v in r.groups.values())
    assert r.accuracy == pytest.approx(sum(v["accuracy"] for v in r.groups.values()) / 8, abs=1e-12)
    assert r.worst_group_accuracy == min(v["accuracy"] for v in r.groups.values())
