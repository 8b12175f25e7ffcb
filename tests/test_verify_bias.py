"""verify's bias sections (Whac-A-Mole gaps, counterfactual flips, MaxSkew@k, EO/DP gaps): equal to the metrics of
logits computed directly from the fixture images' colours; the gates drive the exit code; a gate the data cannot feed
is refused in one line; the JSON report reads back."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clip_debias.runtime.errors import InputError
from clip_debias.runtime.metric_inputs import MetricOptions
from clip_debias.runtime.metrics import AttributeColumn, BiasInputs, bias_metrics
from clip_debias.runtime.verify import Thresholds, verify
from runtime_fixtures import _save_solid, assert_close_tree, build_artifact, build_waterbirds

CLASSES = ("cat", "dog")


@dataclasses.dataclass
class Row:
    rel: str
    rgb: tuple[int, int, int]
    label: int
    pair: int | None
    gender: int
    bg: int
    obj: int


def _palette(art, n: int = 400, seed: int = 5) -> dict[int, list[tuple[int, int, int]]]:
    """Random colours sorted by the class the fixture model predicts for them."""
    rng = np.random.default_rng(seed)
    out: dict[int, list[tuple[int, int, int]]] = {0: [], 1: []}
    for _ in range(n):
        rgb = tuple(int(v) for v in rng.integers(0, 256, 3))
        out[int(np.argmax(art.color_logits(rgb)))].append(rgb)  # type: ignore[arg-type]
    return out


def build_bias_csv(root: Path, art) -> list[Row]:
    """40 test images (and 2 train ones): 12 counterfactual pairs (4 of them flip the predicted class, 2 of them do
    not differ in gender) and 16 single images; attributes gender (f/m), bg (class names: aligned), obj (ids)."""
    colours = _palette(art)
    rng = np.random.default_rng(7)
    rows: list[Row] = []
    k = 0

    def add(label: int, pred: int, pair: int | None, gender: int) -> None:
        nonlocal k
        rgb = colours[pred][k % len(colours[pred])]
        rows.append(Row(f"img/{k:03d}.png", rgb, label, pair, gender, int(rng.integers(0, 2)),
                        int(rng.integers(0, 2))))
        k += 1

    for p in range(12):
        label = p % 2
        first, second = (label, 1 - label) if p < 4 else (label, label)
        g2 = 0 if p in (10, 11) else 1  # pairs 10 and 11: both images gender f
        add(label, first, p, 0)
        add(label, second, p, g2)
    for i in range(16):
        add(i % 2, int(rng.integers(0, 2)), None, int(rng.integers(0, 2)))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "pair", "gender", "bg", "obj"])
        for r in rows:
            _save_solid(root / r.rel, r.rgb, (20, 18), "RGB")
            w.writerow([r.rel, CLASSES[r.label], "test", "" if r.pair is None else r.pair, "fm"[r.gender],
                        CLASSES[r.bg], r.obj])
        w.writerow(["img/train.png", "cat", "train", "", "f", "cat", 0])
        _save_solid(root / "img/train.png", (1, 2, 3), (20, 18), "RGB")
    return rows


@pytest.fixture(scope="module")
def bias_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bias")
    art = build_artifact(root / "artifact", class_names=CLASSES, group_names=(), fp16=False, seed=11)
    rows = build_bias_csv(root / "data", art)
    return art, root / "data", rows


def _expected(art, rows: list[Row], p_agree: float, ks: tuple[int, ...]):
    logits = np.stack([art.color_logits(r.rgb) for r in rows])
    labels = np.array([r.label for r in rows])
    col = lambda name, names: AttributeColumn(name, np.array([getattr(r, name) for r in rows]), names)  # noqa: E731
    inputs = BiasInputs(list(CLASSES), col("gender", ("f", "m")), (col("bg", CLASSES), col("obj", ("0", "1"))),
                        np.array([-1 if r.pair is None else r.pair for r in rows]), p_agree, "--train-correlation", ks)
    return bias_metrics(logits, labels, inputs, pairs_in_split=12)


def test_one_train_correlation_per_attribute(bias_setup, tmp_path):
    """Issue 31: --train-correlation background=P,object=Q weighs I.D. accuracy by P for the background and Q for the
    object (Whac-A-Mole's bg_ratio, co_occur_obj_ratio); lab.json's ``correlations`` give one per attribute name."""
    import json
    import shutil

    from clip_debias.runtime.metric_inputs import metric_inputs
    from clip_debias.runtime.metrics import shortcut_gaps
    from clip_debias.toolchain.cli.options import train_correlation
    from clip_debias.toolchain.errors import ClipDebiasError

    art, data, rows = bias_setup
    assert train_correlation("background=0.9,object=0.7") == {"background": 0.9, "object": 0.7}
    assert train_correlation("0.8") == 0.8
    for bad in ("bg=0.9,object=0.7", "background=0.9", "background=x,object=1"):
        with pytest.raises(ClipDebiasError, match="expected a fraction .* background=P,object=P"):
            train_correlation(bad)
    r = verify(art.path, "csv", data, "test", progress=False, protected="gender",
               metric_options=MetricOptions(("bg", "obj"), {"background": 0.9, "object": 0.7}))
    g = r.shortcut_gaps
    labels = np.array([row.label for row in rows])
    logits = np.stack([art.color_logits(row.rgb) for row in rows])
    col = lambda name, names: AttributeColumn(name, np.array([getattr(x, name) for x in rows]), names)  # noqa: E731
    want = shortcut_gaps(logits.argmax(1), labels, list(CLASSES), col("bg", CLASSES), col("obj", ("0", "1")), 0.9,
                         p_agree_object=0.7)
    assert g.p_agree == 0.9 and g.p_agree_object == 0.7 and g.id_accuracy == pytest.approx(want.id_accuracy, abs=1e-9)
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    (copy / "lab.json").write_text(json.dumps({"generator": "clip-debias lab", "correlations": {"bg": 0.6,
                                                                                                "obj": 0.8}}))
    from clip_debias.runtime.datasets import load_index

    inputs = metric_inputs(load_index("csv", copy, "test", classes=list(CLASSES)),
                           MetricOptions(("bg", "obj")))
    assert (inputs.p_agree, inputs.p_agree_object) == (0.6, 0.8) and "lab.json" in inputs.p_agree_from


def test_verify_bias_sections_equal_direct_computation(bias_setup):
    art, data, rows = bias_setup
    options = MetricOptions(("bg", "obj"), 0.9, (5, 10, 50))
    r = verify(art.path, "csv", data, "test", batch_size=7, progress=False, protected="gender",
               metric_options=options)
    expected = _expected(art, rows, 0.9, (5, 10, 50))
    for name in ("shortcut_gaps", "counterfactual", "skew", "parity"):
        assert_close_tree(dataclasses.asdict(getattr(expected, name)), dataclasses.asdict(getattr(r, name)))
    c = r.counterfactual
    assert r.protected == "gender" and c.pairs == 10 and c.excluded == {"incomplete": 0, "not_protected": 2}
    assert c.flipped == 4 and c.flip_rate == pytest.approx(0.4)
    assert [a.k for a in r.skew.at_k] == [5, 10, 40] and r.skew.requested_k == [5, 10, 50]
    assert r.not_computed == {}
    # the JSON report is one schema: it reads back through the report's model, bias sections included
    from clip_debias.toolchain.explain.report import read_verify_report

    path = data.parent / "bias-report.json"
    r.write_json(path)
    back = read_verify_report(path)
    assert back.counterfactual.flip_rate == c.flip_rate and back.skew.at_k[0].k == 5
    assert json.loads(path.read_text())["shortcut_gaps"]["gaps"].keys() == {"bg", "coobj", "bg+coobj"}


def test_verify_default_shortcuts_and_reasons(bias_setup, tmp_path):
    """Without --shortcut-attributes a dataset with three attributes has no default pair: the section is named in
    not_computed with the reason; the waterbirds fixture has no pairs; p_agree comes from lab.json when present."""
    art, data, rows = bias_setup
    r = verify(art.path, "csv", data, "test", progress=False)
    assert r.shortcut_gaps is None and "has 3 (gender, bg, obj); name two with" in r.not_computed["shortcut_gaps"]
    assert r.protected == "gender" and r.skew is not None
    wb_art = build_artifact(tmp_path / "wa", fp16=False)
    build_waterbirds(tmp_path / "wb")
    w = verify(wb_art.path, "waterbirds", tmp_path / "wb", "test", progress=False)
    assert w.protected == "place" and w.parity is not None and w.counterfactual is None
    assert "no counterfactual pairs" in w.not_computed["counterfactual"]
    assert "has 1 (place)" in w.not_computed["shortcut_gaps"]


def test_gates_on_missing_data_refused_before_running(bias_setup, tmp_path):
    art, data, rows = bias_setup
    wb_art = build_artifact(tmp_path / "wa", fp16=False)
    build_waterbirds(tmp_path / "wb")
    with pytest.raises(InputError, match=r"threshold max_flip_rate \(--max-flip-rate\): .* no counterfactual pairs"):
        verify(wb_art.path, "waterbirds", tmp_path / "wb", progress=False, thresholds=Thresholds(max_flip_rate=0.1))
    with pytest.raises(InputError, match=r"threshold max_gap .* the gaps need two spurious attributes"):
        verify(wb_art.path, "waterbirds", tmp_path / "wb", progress=False, thresholds=Thresholds(max_gap={"bg": .1}))
    plain = tmp_path / "plain.csv"
    plain.write_text("path,label\n" + "".join(f"{r.rel},{CLASSES[r.label]}\n" for r in rows[:6]))
    (tmp_path / "img").symlink_to(data / "img")
    with pytest.raises(InputError, match=r"--max-eo-gap\): .* has no protected attribute"):
        verify(art.path, "csv", plain, progress=False, thresholds=Thresholds(max_eo_gap=0.1))
    one = tmp_path / "one.csv"
    one.write_text("path,label,split,gender\n" + "".join(f"{r.rel},{CLASSES[r.label]},test,f\n" for r in rows[:6])
                   + "img/train.png,cat,train,m\n")
    with pytest.raises(InputError, match="'gender' has 1 value in split 'test'"):
        verify(art.path, "csv", one, progress=False, thresholds=Thresholds(max_skew=1.0))
    with pytest.raises(InputError, match="unknown gap 'background'"):
        Thresholds(max_gap={"background": 0.1})
    with pytest.raises(InputError, match="--shortcut-attributes bg,place: .* has no attribute place"):
        verify(art.path, "csv", data, progress=False, metric_options=MetricOptions(("bg", "place")))


# ---- CLI -------------------------------------------------------------------------------------------------------------


def _cli(args):
    from clip_debias.toolchain.cli.app import app

    return CliRunner().invoke(app, ["verify", *map(str, args)])


def test_cli_bias_gates_drive_exit_code(bias_setup, tmp_path):
    art, data, rows = bias_setup
    base = [art.path, "--dataset", "csv", "--data", data, "--split", "test", "--no-progress", "--protected",
            "gender", "--shortcut-attributes", "bg,obj", "--train-correlation", "0.9", "--skew-k", "5,10"]
    e = _expected(art, rows, 0.9, (5, 10))
    skew = max(a.max_max_skew for a in e.skew.at_k)
    gap = abs(e.shortcut_gaps.gaps["bg"])
    ok = _cli([*base, "--max-flip-rate", 0.4, "--max-skew", math.ceil(skew * 1e4) / 1e4, "--max-eo-gap", 1.0,
               "--max-dp-gap", 1.0, "--max-gap", f"bg={math.ceil(gap * 1e4) / 1e4}", "--max-gap", "bg+coobj=1",
               "--json", tmp_path / "ok.json", "--allow-inconclusive"])  # limits at the point values: intervals
    # straddle them, so the run passes only with --allow-inconclusive (none FAILs)
    assert ok.exit_code == 0, ok.output
    titles = ("Whac-A-Mole shortcut gaps", "counterfactual pairs", "MaxSkew@5", "equal opportunity", "flip rate <=")
    for title in titles:
        assert title in ok.output
    report = json.loads((tmp_path / "ok.json").read_text())
    assert set(report["thresholds"]) >= {"max_flip_rate", "max_skew", "max_eo_gap", "max_dp_gap", "max_gap_bg",
                                         "max_gap_bg+coobj"}
    assert report["thresholds"]["max_flip_rate"]["over"]["pairs"] == 10
    assert report["thresholds"]["max_skew"]["over"]["k"] == [5, 10]
    eo, dp = e.parity.max_eo_gap, e.parity.max_dp_gap
    assert eo > 1e-3 and dp > 1e-3  # the fixture has gaps to fail on
    for extra in (["--max-flip-rate", 0.39], ["--max-skew", math.floor(skew * 1e4) / 1e4 - 1e-4],
                  ["--max-gap", f"bg={math.floor(gap * 1e4) / 1e4 - 1e-4}"],
                  ["--max-eo-gap", math.floor(eo * 1e4) / 1e4 - 1e-4],
                  ["--max-dp-gap", math.floor(dp * 1e4) / 1e4 - 1e-4]):
        bad = _cli([*base, *extra, "--json", tmp_path / "bad.json", "--force"])
        assert bad.exit_code == 1, (extra, bad.output)
        decisions = {r["decision"] for r in json.loads((tmp_path / "bad.json").read_text())["thresholds"].values()}
        # a limit just under the point value: the interval straddles it (INCONCLUSIVE, exit 1); MaxSkew is a point gate
        assert decisions == ({"FAIL"} if extra[0] == "--max-skew" else {"INCONCLUSIVE"}), (extra, decisions)
        assert ("FAILED" if extra[0] == "--max-skew" else "INCONCLUSIVE (exit 1") in bad.output


@pytest.mark.parametrize("extra, msg", [
    (["--max-gap", "bogus=0.1"], "--max-gap bogus=0.1: expected NAME=VALUE with NAME one of bg, coobj, bg+coobj"),
    (["--max-gap", "bg=x"], "--max-gap bg=x: expected NAME=VALUE"),
    (["--skew-k", "10,a"], "--skew-k 10,a: expected comma-separated integers"),
    (["--skew-k", "0"], "--skew-k 0: expected integers >= 1"),
    (["--train-correlation", "1.5"], "--train-correlation 1.5: expected a fraction in [0, 1]"),
    (["--max-flip-rate", "2"], "threshold max_flip_rate = 2.0 must be a fraction"),
    (["--max-skew", "-1"], "threshold max_skew = -1.0 must be >= 0"),
    (["--protected", "age"], "--protected age: "),
    (["--shortcut-attributes", "bg"], "--shortcut-attributes bg: expected two attribute names"),
    (["--target", "race"], "--target race: only the fairface format has a target"),
])
def test_cli_bias_bad_input_one_line(bias_setup, extra, msg):
    art, data, _ = bias_setup
    r = _cli([art.path, "--dataset", "csv", "--data", data, "--split", "test", "--no-progress", *extra])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], r.output


def test_cli_gate_on_data_without_pairs_exit_2(tmp_path):
    art = build_artifact(tmp_path / "a", fp16=False)
    build_waterbirds(tmp_path / "wb")
    r = _cli([art.path, "--dataset", "waterbirds", "--data", tmp_path / "wb", "--split", "test", "--no-progress",
              "--max-flip-rate", 0.5])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "has no counterfactual pairs" in lines[0], r.output


def test_eo_gate_fails_on_an_empty_cell(bias_setup, tmp_path):
    """A (class, value) cell with no image leaves its recall undefined: the EO gate FAILs, naming the cell."""
    art, data, rows = bias_setup
    keep = [r for r in rows if not (r.label == 1 and r.gender == 1) and r.pair is None]
    sub = tmp_path / "sub.csv"
    sub.write_text("path,label,gender\n" + "".join(f"{r.rel},{CLASSES[r.label]},{'fm'[r.gender]}\n" for r in keep))
    (tmp_path / "img").symlink_to(data / "img")
    rep = verify(art.path, "csv", sub, "test", progress=False, thresholds=Thresholds(max_eo_gap=1.0))
    t = rep.thresholds["max_eo_gap"]
    assert not t.passed and not rep.passed and "dog/m have no image" in t.reason and t.over["missing"] == ["dog/m"]


def test_report_shows_the_bias_sections(bias_setup, tmp_path):
    """The HTML report renders verify's bias tables and gates, and the bias summary of evaluate's rows, from the
    JSON files (the numbers as written, formatted by runtime.metric_tables)."""
    from clip_debias.runtime.metric_tables import summary
    from clip_debias.runtime.metrics import accuracy_report
    from clip_debias.toolchain.evaluate import MethodResult, compare_file
    from clip_debias.toolchain.explain.report import build_report

    art, data, rows = bias_setup
    r = verify(art.path, "csv", data, "test", progress=False, protected="gender",
               metric_options=MetricOptions(("bg", "obj"), 0.9, (5, 10)), thresholds=Thresholds(max_flip_rate=0.2))
    root = tmp_path / "page"
    root.mkdir()
    r.write_json(root / "report.json")
    bias = _expected(art, rows, 0.9, (5, 10))
    labels = np.array([x.label for x in rows])
    acc = accuracy_report(labels, labels, labels, list(CLASSES))
    (root / "compare.json").write_text(compare_file([MethodResult("zero-shot", "none", acc, bias=bias)]).to_json())
    text = build_report(root).read_text()
    for needle in ("Whac-A-Mole shortcut gaps", "counterfactual pairs", "MaxSkew@5 / MinSkew@5 of &#x27;gender&#x27;",
                   "equal opportunity / demographic parity", "max_flip_rate", r.thresholds["max_flip_rate"].decision,
                   "Bias metrics per method",
                   *summary(bias).values()):
        assert needle in text, needle
    assert "section skipped" not in text


def test_verify_on_a_fairface_fixture(tmp_path):
    """FairFace as published (two label CSVs, images under train/ and val/): --target gender --protected race gives
    14 groups (gender x race), the parity section over race, and the EO gate's verdict from the same numbers."""
    from clip_debias.runtime.datasets import FAIRFACE_VALUES

    art = build_artifact(tmp_path / "a", class_names=FAIRFACE_VALUES["gender"], group_names=(), fp16=False, seed=4)
    rng = np.random.default_rng(3)
    root = tmp_path / "ff"
    rows = []
    for split, n in (("train", 4), ("val", 28)):
        lines = ["file,age,gender,race,service_test"]
        for i in range(n):
            race = FAIRFACE_VALUES["race"][i % 7]
            gender = FAIRFACE_VALUES["gender"][(i // 7) % 2]
            rgb = tuple(int(v) for v in rng.integers(0, 256, 3))
            _save_solid(root / split / f"{i}.jpg", rgb, (20, 20), "RGB")
            lines.append(f"{split}/{i}.jpg,20-29,{gender},{race},True")
            if split == "val":
                rows.append((rgb, FAIRFACE_VALUES["gender"].index(gender), FAIRFACE_VALUES["race"].index(race)))
        (root / f"fairface_label_{split}.csv").write_text("\n".join(lines) + "\n")
    r = verify(art.path, "fairface", root, "val", progress=False, target="gender", protected="race",
               thresholds=Thresholds(max_eo_gap=0.5))
    assert len(r.groups) == 14 and r.protected == "race" and r.n == 28
    # JPEG is lossy: the expected logits come from the decoded pixels' mean, as the runtime sees them
    from PIL import Image

    logits = np.stack([art.color_logits(tuple(np.asarray(Image.open(root / "val" / f"{i}.jpg").convert("RGB"),
                                                         np.float64).mean(axis=(0, 1))))
                       for i in range(28)])
    labels = np.array([g for _, g, _ in rows])
    race = AttributeColumn("race", np.array([x for _, _, x in rows]), FAIRFACE_VALUES["race"])
    from clip_debias.runtime.metrics import fairness_gaps

    expected = fairness_gaps(logits.argmax(axis=1), labels, list(FAIRFACE_VALUES["gender"]), race)
    assert_close_tree(dataclasses.asdict(expected), dataclasses.asdict(r.parity), atol=1e-9)
    assert r.thresholds["max_eo_gap"].passed == (expected.max_eo_gap <= 0.5 and not expected.missing)


# ---- the bias lab's data feeds the metrics --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab_pairs(tmp_path_factory):
    """Two-shortcut lab data whose test split is counterfactual pairs (16 pairs: 8 swap the place, 8 the object)."""
    from clip_debias.toolchain.lab.data import make_lab_data

    return make_lab_data(tmp_path_factory.mktemp("lab") / "d", n_train=0, n_val=0, n_test=32, correlation=0.8,
                         seed=3, workers=1, shortcuts="background,object", counterfactual=True)


def _lab_expected(art, data: Path, protected: str, p_agree_from: str):
    """bias_metrics of the fixture model's logits on the lab's test rows, the inputs read from metadata.csv."""
    from clip_debias.runtime.preprocess import Preprocessor
    from clip_debias.toolchain.lab.data import read_metadata

    rows = [r for r in read_metadata(data) if r["split"] == 2]
    pre = Preprocessor.from_manifest(art.manifest.preprocessing)
    logits = art.reference(pre.batch([data / str(r["img_filename"]) for r in rows]))[0]
    col = lambda name, names: AttributeColumn(name, np.array([r[name] for r in rows]), names)  # noqa: E731
    place, obj = col("place", ("land", "water")), col("object", ("flower", "boat"))
    inputs = BiasInputs(["landbird", "waterbird"], place if protected == "place" else obj, (place, obj),
                        np.array([r["pair"] for r in rows]), 0.8, p_agree_from)
    return bias_metrics(logits, np.array([r["y"] for r in rows]), inputs)


@pytest.mark.parametrize("protected", ["place", "object"])
def test_lab_two_shortcut_pairs_feed_the_gaps_and_the_flip_rate(lab_pairs, tmp_path, protected):
    """`lab make-data --shortcuts background,object --counterfactual`: verify computes the Whac-A-Mole gaps from the
    place and object columns with p_agree = lab.json's correlation, and the flip rate over the pairs that swap the
    protected attribute (the others are excluded as not_protected); equal to the metrics of directly computed
    logits."""
    from clip_debias.runtime.datasets import load_index

    names = load_index("waterbirds", lab_pairs, "test").group_names
    art = build_artifact(tmp_path / "a", fp16=False, group_names=tuple(names), seed=2)
    r = verify(art.path, "waterbirds", lab_pairs, "test", batch_size=8, progress=False, protected=protected)
    assert r.not_computed == {} and r.protected == protected
    g = r.shortcut_gaps
    assert g.attributes == ["place", "object"] and g.p_agree == 0.8 and "lab.json" in g.p_agree_from
    expected = _lab_expected(art, lab_pairs, protected, g.p_agree_from)
    for name in ("shortcut_gaps", "counterfactual", "skew", "parity"):
        assert_close_tree(dataclasses.asdict(getattr(expected, name)), dataclasses.asdict(getattr(r, name)))
    c = r.counterfactual
    assert c.pairs == 8 and c.pairs_in_split == 16 and c.excluded == {"incomplete": 0, "not_protected": 8}


def test_lab_background_only_pairs_feed_the_flip_rate(tmp_path):
    """`lab make-data --counterfactual` (background only): every pair swaps the place, so every pair counts; the
    gaps need two attributes and say so."""
    from clip_debias.toolchain.lab.data import make_lab_data

    data = make_lab_data(tmp_path / "d", n_train=0, n_val=0, n_test=16, seed=4, workers=1, counterfactual=True)
    art = build_artifact(tmp_path / "a", fp16=False, seed=2)
    r = verify(art.path, "waterbirds", data, "test", batch_size=8, progress=False)
    c = r.counterfactual
    assert c.protected == "place" and c.pairs == c.pairs_in_split == 8 and c.excluded["not_protected"] == 0
    assert r.shortcut_gaps is None and "has 1 (place)" in r.not_computed["shortcut_gaps"]
