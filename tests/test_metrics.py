"""``runtime.metrics``: every bias metric equals a direct float64 transcription of its definition, on hand-built
prediction tables (ties in the ranking, k larger than a class, values absent from the top k, empty cells)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from clip_debias.runtime.metrics import (AttributeColumn, BiasInputs, bias_metrics, counterfactual_flips,
                                         fairness_gaps, shortcut_gaps, skew_at_k, top_k_weights)

# ---- Whac-A-Mole ----------------------------------------------------------------------------------------------------


def _direct_gaps(pred, y, bg, obj, p):
    """UrbanCars' definitions written out: acc(b, o) = mean over classes of the cell accuracy, I.D. = sum acc p p."""
    def cell_acc(c, b_agree, o_agree):
        rows = [i for i in range(len(y)) if y[i] == c and (bg[i] == c) == b_agree and (obj[i] == c) == o_agree]
        return sum(pred[i] == y[i] for i in rows) / len(rows)

    acc = {(b, o): (cell_acc(0, b, o) + cell_acc(1, b, o)) / 2 for b in (True, False) for o in (True, False)}
    pb = {True: p, False: 1 - p}
    id_acc = sum(acc[b, o] * pb[b] * pb[o] for b, o in acc)
    return id_acc, {"bg": acc[False, True] - id_acc, "coobj": acc[True, False] - id_acc,
                    "bg+coobj": acc[False, False] - id_acc}, acc


@pytest.mark.parametrize("p_agree", [0.95, 0.85, 0.5])
def test_shortcut_gaps_equal_direct_computation(p_agree):
    rng = np.random.default_rng(0)
    n = 200
    y, bg, obj = (rng.integers(0, 2, n) for _ in range(3))
    # a model that leans on the background: right when the background agrees, often wrong otherwise
    pred = np.where(bg == y, y, np.where(rng.random(n) < 0.4, y, 1 - y))
    g = shortcut_gaps(pred, y, ["landbird", "waterbird"], AttributeColumn("place", bg, ("land", "water")),
                      AttributeColumn("object", obj, ("flower", "boat")), p_agree, "test")
    id_acc, gaps, acc = _direct_gaps(pred.tolist(), y.tolist(), bg.tolist(), obj.tolist(), p_agree)
    assert g.id_accuracy == pytest.approx(id_acc, abs=1e-12)
    for name in gaps:
        assert g.gaps[name] == pytest.approx(gaps[name], abs=1e-12)
    assert g.agreement_accuracy["disagree/disagree"] == pytest.approx(acc[False, False], abs=1e-12)
    # the 8 groups: class/place/object, each its own accuracy; worst = their minimum
    assert len(g.groups) == 8 and not g.missing
    for yy, b, o in itertools.product((0, 1), (0, 1), (0, 1)):
        rows = (y == yy) & (bg == b) & (obj == o)
        name = f"{['landbird', 'waterbird'][yy]}/{['land', 'water'][b]}/{['flower', 'boat'][o]}"
        assert g.groups[name].n == rows.sum() and g.groups[name].accuracy == pytest.approx((pred == y)[rows].mean())
    assert g.worst_group_accuracy == min(v.accuracy for v in g.groups.values())
    assert g.gaps["bg"] < 0  # the background dependence shows


def _eval_split_transcription(pred, y, bg, obj, n_classes, bg_ratio, co_occur_obj_ratio):
    """Whac-A-Mole's ``urbancars_trainers/base_trainer.py::_eval_split`` transcribed to numpy: per-cell accuracy
    [class, bg, obj]; for each (bg, obj) agreement (0 absent = disagrees, 1 present = agrees) the plain mean of the
    masked cells' accuracies; I.D. = sum of those weighted by the per-attribute ratios; gaps against it."""
    cum, cnt = np.zeros((n_classes,) * 3), np.zeros((n_classes,) * 3)
    for p, t, b, o in zip(pred, y, bg, obj):
        cnt[t, b, o] += 1
        cum[t, b, o] += p == t
    acc = cum / cnt
    eye = np.eye(n_classes)
    bg_ratios, obj_ratios = [1 - bg_ratio, bg_ratio], [1 - co_occur_obj_ratio, co_occur_obj_ratio]
    log, weighted = {}, 0.0
    for b in (0, 1):
        for o in (0, 1):
            mask = (eye == b)[:, :, None] * (eye == o)[:, None, :]
            log[b, o] = acc[mask].mean()
            weighted += log[b, o] * bg_ratios[b] * obj_ratios[o]
    return weighted, {"bg": log[0, 1] - weighted, "coobj": log[1, 0] - weighted, "bg+coobj": log[0, 0] - weighted}


@pytest.mark.parametrize("n_classes", [2, 3, 4])
@pytest.mark.parametrize("ratios", [(0.95, 0.95), (0.9, 0.7)])
def test_shortcut_gaps_equal_whac_a_mole_eval_split(n_classes, ratios):
    """Issue 31: the gaps are the reference's cell means for any number of classes (on skewed tables, where pooling
    each class's images first would differ), with one train ratio per attribute."""
    rng = np.random.default_rng(n_classes)
    n = 600 * n_classes
    y = rng.integers(0, n_classes, n)
    bg = np.where(rng.random(n) < 0.6, y, rng.integers(0, n_classes, n))  # skewed: most images agree
    obj = np.where(rng.random(n) < 0.3, y, rng.integers(0, n_classes, n))
    pred = np.where((bg == y) | (rng.random(n) < 0.5), y, rng.integers(0, n_classes, n))
    names = [f"c{i}" for i in range(n_classes)]
    g = shortcut_gaps(pred, y, names, AttributeColumn("bg", bg, tuple(names)),
                      AttributeColumn("obj", obj, tuple(names)), ratios[0], "test", p_agree_object=ratios[1])
    assert not g.missing and len(g.groups) == n_classes ** 3
    id_acc, gaps = _eval_split_transcription(pred, y, bg, obj, n_classes, *ratios)
    assert g.id_accuracy == pytest.approx(id_acc, abs=1e-12)
    for name, value in gaps.items():
        assert g.gaps[name] == pytest.approx(value, abs=1e-12)
    assert g.p_agree == ratios[0] and g.p_agree_object == ratios[1]


def test_shortcut_gaps_empty_cell_is_none_and_named():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    bg = np.array([0, 1, 0, 1, 0, 1, 0])
    obj = np.array([0, 0, 1, 1, 1, 0, 0])  # no class-0 image with both cues disagreeing (bg 1, obj 1)
    g = shortcut_gaps(y, y, ["a", "b"], AttributeColumn("bg", bg, ("0", "1")), AttributeColumn("o", obj, ("0", "1")))
    assert g.missing == ["a/1/1"]
    assert g.agreement_accuracy["disagree/disagree"] is None and g.gaps["bg+coobj"] is None and g.id_accuracy is None
    with pytest.raises(ValueError, match="one value per class"):
        shortcut_gaps(y, y, ["a", "b", "c"], AttributeColumn("bg", bg, ("0", "1")),
                      AttributeColumn("o", obj, ("0", "1")))


# ---- counterfactual flips -------------------------------------------------------------------------------------------


def test_flip_rate_equals_direct_computation():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((11, 3))
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2])
    pairs = np.array([5, 5, 3, 3, 9, 9, 1, 1, 7, 7, 4])  # pair 4: one image (incomplete)
    gender = np.array([0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 1])  # pair 1: same gender on both images
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred = logits.argmax(axis=1)
    r = counterfactual_flips(pred, probs, labels, pairs, ["a", "b", "c"], AttributeColumn("gender", gender, ("f", "m")))
    counted = [(0, 1), (2, 3), (4, 5), (8, 9)]
    flips = [pred[i] != pred[j] for i, j in counted]
    diffs = [abs(probs[i, labels[i]] - probs[j, labels[i]]) for i, j in counted]
    assert (r.pairs, r.flipped) == (4, sum(flips))
    assert r.flip_rate == pytest.approx(np.mean(flips)) and r.mean_abs_prob_diff == pytest.approx(np.mean(diffs))
    assert r.excluded == {"incomplete": 1, "not_protected": 1} and r.pairs_in_split == 6
    for c, rows in (("a", [0]), ("b", [1, 3]), ("c", [2])):
        assert r.classes[c].pairs == len(rows)
        assert r.classes[c].flip_rate == pytest.approx(np.mean([flips[k] for k in rows]))
        assert r.classes[c].mean_abs_prob_diff == pytest.approx(np.mean([diffs[k] for k in rows]))
    everything = counterfactual_flips(pred, probs, labels, pairs, ["a", "b", "c"])  # no protected attribute
    assert everything.pairs == 5 and everything.excluded == {"incomplete": 1}


def test_flip_rate_refuses_bad_pairs():
    probs = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match="on 3 images"):
        counterfactual_flips(np.zeros(3, int), probs, np.zeros(3, int), np.array([0, 0, 0]), ["a", "b"])
    with pytest.raises(ValueError, match="different labels"):
        counterfactual_flips(np.zeros(2, int), probs[:2], np.array([0, 1]), np.array([0, 0]), ["a", "b"])


# ---- MaxSkew@k ------------------------------------------------------------------------------------------------------


def _direct_top_shares(scores, ids, k, values):
    """Expected share of each value among the top k over every order of the rows tied at the k-th score (a brute
    transcription of 'ties are broken uniformly at random')."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kth = scores[order[k - 1]]
    above = [i for i in order if scores[i] > kth]
    tied = [i for i in order if scores[i] == kth]
    totals = {v: 0.0 for v in values}
    perms = list(itertools.permutations(tied))
    for perm in perms:
        for i in above + list(perm)[: k - len(above)]:
            totals[ids[i]] += 1.0 / len(perms)
    return {v: totals[v] / k for v in values}


def test_top_k_weights_sum_to_k_and_split_ties():
    w = top_k_weights(np.array([3.0, 1.0, 2.0, 2.0, 2.0, 0.0]), 3)
    assert w.sum() == pytest.approx(3.0)
    assert w.tolist() == pytest.approx([1.0, 0.0, 2 / 3, 2 / 3, 2 / 3, 0.0])


def test_skew_equals_direct_computation_with_ties_and_empty_values():
    # 10 images ranked by each class's logit (whatever their label), protected attribute with 3 values present;
    # k = 5 exceeds the 3 images that lead class y, k = 20 exceeds the set
    logits = np.array([[5, 0], [5, 1], [5, 2], [2, 2], [1, 9], [0, 9], [3, 1], [3, 0], [1, 0], [0, 4]], float)
    ids = np.array([0, 1, 2, 0, 0, 0, 1, 1, 0, 2])
    attr = AttributeColumn("race", ids, ("a", "b", "c", "d"))  # value d: no image in the set
    r = skew_at_k(logits, attr, ["x", "y"], ks=[2, 5, 20])
    assert r.values == ["a", "b", "c"] and r.absent == ["d"] and r.requested_k == [2, 5, 20]
    assert [a.k for a in r.at_k] == [2, 5, 10]  # 20 capped at N = 10
    shares = {v: float(np.mean(ids == i)) for i, v in enumerate("abc")}
    assert r.shares == pytest.approx(shares)
    for at in r.at_k:
        for c, name in enumerate(["x", "y"]):
            top = _direct_top_shares(logits[:, c].tolist(), ["abc"[i] for i in ids], at.k, "abc")
            got = at.classes[name]
            assert got.top_shares == pytest.approx(top, abs=1e-12)
            skews = {v: math.log(top[v] / shares[v]) for v in "abc" if top[v] > 0}
            empty = [v for v in "abc" if top[v] == 0]
            assert got.empty == empty and got.max_skew == pytest.approx(max(skews.values()), abs=1e-12)
            assert got.min_skew == (None if empty else pytest.approx(min(skews.values()), abs=1e-12))
        maxes = [at.classes[n].max_skew for n in ("x", "y")]
        assert at.mean_max_skew == pytest.approx(np.mean(maxes)) and at.max_max_skew == max(maxes)
    k2 = r.at_k[0].classes["x"]  # top 2 of x: three images tied at 5 (values a, b, c): each 2/3 of a place
    assert k2.top_shares == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}) and k2.empty == []
    assert r.at_k[0].classes["y"].empty == ["b", "c"] and r.at_k[0].classes["y"].min_skew is None
    assert r.at_k[0].min_min_skew is None and r.at_k[0].mean_min_skew is None  # reported as empty, not -inf
    assert r.at_k[-1].classes["x"].max_skew == pytest.approx(0.0, abs=1e-12)  # k = N: the top k is the whole set


def test_skew_needs_two_values():
    with pytest.raises(ValueError, match="1 value"):
        skew_at_k(np.zeros((3, 2)), AttributeColumn("g", np.zeros(3, int), ("f", "m")), ["a", "b"], [2])


# ---- equal opportunity / demographic parity -------------------------------------------------------------------------


def test_parity_gaps_equal_direct_computation():
    rng = np.random.default_rng(2)
    n = 120
    labels, gender = rng.integers(0, 3, n), rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.7 + 0.2 * gender, labels, rng.integers(0, 3, n))
    r = fairness_gaps(pred, labels, ["a", "b", "c"], AttributeColumn("gender", gender, ("f", "m")))
    eo, dp = {}, {}
    for c, name in enumerate("abc"):
        rec = [np.mean(pred[(labels == c) & (gender == g)] == c) for g in (0, 1)]
        rate = [np.mean(pred[gender == g] == c) for g in (0, 1)]
        eo[name], dp[name] = max(rec) - min(rec), max(rate) - min(rate)
        assert r.classes[name].recall == pytest.approx({"f": rec[0], "m": rec[1]})
        assert r.classes[name].positive_rate == pytest.approx({"f": rate[0], "m": rate[1]})
        assert r.classes[name].eo_gap == pytest.approx(eo[name]) and r.classes[name].dp_gap == pytest.approx(dp[name])
    assert r.max_eo_gap == pytest.approx(max(eo.values())) and r.max_eo_class == max(eo, key=eo.get)
    assert r.mean_eo_gap == pytest.approx(np.mean(list(eo.values())))
    assert r.max_dp_gap == pytest.approx(max(dp.values()))
    assert r.mean_dp_gap == pytest.approx(np.mean(list(dp.values())))
    assert r.missing == []


def test_parity_missing_cell_named():
    labels = np.array([0, 0, 1, 1])
    gender = np.array([0, 1, 0, 0])  # class 1 has no 'm' image
    r = fairness_gaps(labels, labels, ["a", "b"], AttributeColumn("gender", gender, ("f", "m")))
    assert r.missing == ["b/m"] and r.classes["b"].recall["m"] is None and r.classes["b"].eo_gap is None
    assert r.max_eo_gap == 0.0 and r.max_eo_class == "a"


def test_bias_metrics_sections_and_reasons():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    labels = np.array([0, 1, 0, 1])
    one_value = AttributeColumn("g", np.zeros(4, int), ("f", "m"))
    out = bias_metrics(logits, labels, BiasInputs(["a", "b"], protected=one_value, missing={"counterfactual": "no"}))
    assert out.skew is None and "1 value" in out.not_computed["skew"] and out.parity is not None
    assert out.counterfactual is None and out.not_computed["counterfactual"] == "no"
    assert set(out.sections()) == {"shortcut_gaps", "counterfactual", "skew", "parity", "not_computed", "metrics"}
