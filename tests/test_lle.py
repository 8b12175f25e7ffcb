"""Last Layer Ensemble (issues 17, 31): inference == a float64 transcription of the formula; the baked head in torch ==
the ONNX artifact; a shift classifier trained on separable shift types routes to the right head; augmentation types
(each pixel-exact against a transcription) and their refusals; the authors' head set, schedules, weight decay and
shift-classifier init; build --classifier lle end to end on lab data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clip_debias.runtime.datasets import load_index
from clip_debias.toolchain.correct.augment import (AUGMENT_TYPES, Sample, background_swap, background_swap_own,
                                                   clean_background, edge_map, fill_holes, object_swap,
                                                   object_swap_own, run_augment, texture, watermark)
from clip_debias.toolchain.correct.lle import LleHead, lle_logits
from clip_debias.toolchain.correct.lle_fit import (SCHEDULES, Embedded, LleOptions, RecordPool, init_shift, lle_loss,
                                                   train_lle)
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.lab.data import make_lab_data


def reference_logits(e: np.ndarray, w: np.ndarray, b: np.ndarray, wd: np.ndarray, bd: np.ndarray) -> np.ndarray:
    """logits(x) = sum_k softmax(W_d x + b_d)_k (W_k x + b_k), image by image and head by head, float64."""
    out = np.zeros((e.shape[0], w.shape[1]))
    for i, x in enumerate(e.astype(np.float64)):
        s = wd.astype(np.float64) @ x + bd
        p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
        for k in range(w.shape[0]):
            out[i] += p[k] * (w[k].astype(np.float64) @ x + b[k])
    return out


def random_head(k: int, c: int, d: int, seed: int, scale: float = 3.0) -> LleHead:
    g = torch.Generator().manual_seed(seed)
    return LleHead(scale * torch.randn(k, c, d, generator=g), torch.randn(k, c, generator=g),
                   scale * torch.randn(k, d, generator=g), torch.randn(k, generator=g),
                   ["original"] + [f"t{i}" for i in range(1, k)])


@pytest.mark.parametrize("k,c,d", [(1, 2, 8), (4, 3, 32), (3, 10, 16)])
def test_inference_equals_the_formula(k: int, c: int, d: int) -> None:
    head = random_head(k, c, d, seed=k * 100 + c)
    e = torch.nn.functional.normalize(torch.randn(9, d, generator=torch.Generator().manual_seed(1)), dim=-1)
    ref = reference_logits(e.numpy(), head.weight.numpy(), head.bias.numpy(), head.shift_weight.numpy(),
                           head.shift_bias.numpy())
    assert np.abs(head(e).double().numpy() - ref).max() <= 1e-5
    assert torch.equal(lle_logits(e, head.weight, head.bias, head.shift_weight, head.shift_bias), head(e))


def test_untrained_head_is_the_zero_shot_head() -> None:
    text = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    e = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    head = LleHead.from_zero_shot(text, 42.0, ["original", "watermark"])
    assert (head(e) - 42.0 * e @ text.T).abs().max() <= 1e-5
    assert (head.shift_probabilities(e) == 0.5).all()


def test_loss_is_each_heads_own_ce_plus_the_shift_ce() -> None:
    head = random_head(3, 4, 8, seed=5)
    params = {n: getattr(head, n).double() for n in ("weight", "bias", "shift_weight", "shift_bias")}
    g = torch.Generator().manual_seed(2)
    e = torch.randn(6, 8, generator=g).double()
    y, d = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([0, 1, 2, 2, 1, 0])
    want = 0.0
    for i in range(6):
        own = params["weight"][d[i]] @ e[i] + params["bias"][d[i]]
        shift = params["shift_weight"] @ e[i] + params["shift_bias"]
        want += -torch.log_softmax(own, 0)[y[i]] - torch.log_softmax(shift, 0)[d[i]]
    assert float(lle_loss(params, e, y, d)) == pytest.approx(float(want) / 6, abs=1e-10)


def test_head_refuses_shapes_and_names() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        LleHead(torch.zeros(2, 3, 4), torch.zeros(2, 2), torch.zeros(2, 4), torch.zeros(2), ["original", "x"])
    with pytest.raises(ValueError, match="shift names"):
        LleHead(torch.zeros(2, 3, 4), torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), ["original"])


def test_shift_classifier_routes_separable_types_to_their_heads() -> None:
    """Three shift types, each a cluster around its own direction; the class is a second direction whose meaning
    type 1 flips (so no single linear head fits all types). After training: the shift classifier picks each embedding's
    own type, and the ensemble's logits are (almost) that type's head's."""
    d, n = 12, 60
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0].T  # orthonormal rows
    e, y, t = [], [], []
    for k in range(3):
        for i in range(n):
            label = i % 2
            sign = 1.0 if label == 1 else -1.0
            flipped = -sign if k == 1 else sign
            x = 3.0 * basis[k] + flipped * basis[3] + 0.1 * (torch.randn(d - 4, generator=g) @ basis[4:])
            e.append(torch.nn.functional.normalize(x, dim=0))
            y.append(label)
            t.append(k)
    data = Embedded(torch.stack(e), torch.tensor(y), torch.tensor(t), torch.zeros(len(y), dtype=torch.long))
    init = LleHead(torch.zeros(3, 2, d), torch.zeros(3, 2), torch.zeros(3, d), torch.zeros(3),
                   ["original", "flip", "other"])
    head = train_lle(init, data, lr=1.0, weight_decay=0.0, epochs=60, batch_size=32, seed=0)
    with torch.no_grad():
        p = head.shift_probabilities(data.embeddings)
        routed = torch.einsum("bd,bcd->bc", data.embeddings, head.weight[data.shifts]) + head.bias[data.shifts]
        logits = head(data.embeddings)
    assert (p.argmax(dim=-1) == data.shifts).all()
    assert (logits.argmax(dim=-1) == data.labels).all()
    assert (routed.argmax(dim=-1) == data.labels).all()
    # head 1 learned the flipped meaning: it disagrees with head 0 on every embedding
    w0 = torch.einsum("bd,cd->bc", data.embeddings, head.weight[0]) + head.bias[0]
    w1 = torch.einsum("bd,cd->bc", data.embeddings, head.weight[1]) + head.bias[1]
    assert (w0.argmax(-1) != w1.argmax(-1)).all()


def test_training_is_reproducible_by_seed() -> None:
    g = torch.Generator().manual_seed(3)
    data = Embedded(torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=-1),
                    torch.randint(0, 2, (40,), generator=g), torch.randint(0, 2, (40,), generator=g),
                    torch.zeros(40, dtype=torch.long))
    init = LleHead(torch.zeros(2, 2, 8), torch.zeros(2, 2), torch.zeros(2, 8), torch.zeros(2), ["original", "w"])
    a, b = (train_lle(init, data, 0.5, 1e-4, 3, 8, seed=7) for _ in range(2))
    assert torch.equal(a.weight, b.weight) and torch.equal(a.shift_weight, b.shift_weight)


# ---- the baked head and its ONNX artifact -------------------------------------------------------------------------

def test_baked_lle_head_equals_the_onnx_artifact(tiny_clip, tmp_path: Path) -> None:
    from clip_debias.exporters.onnx_export import export_onnx
    from clip_debias.runtime.backends import ort_session
    from clip_debias.toolchain.correct.classifier import DebiasedClassifier, plain_classifier

    base = plain_classifier(tiny_clip, ["a", "b", "c"], group_names=["g0", "g1"])
    head = random_head(4, 3, base.tower.cfg.embed_dim, seed=11, scale=5.0)
    model = DebiasedClassifier(base.tower, head, base.spec).eval()
    saved = DebiasedClassifier.load(model.save(tmp_path / "model"))
    assert saved.head.kind == "lle" and saved.head.shifts == head.shifts
    art = export_onnx(tmp_path / "model", tmp_path / "artifact", precision="fp32")
    sess = ort_session(art / "model.onnx")
    h, w = model.tower.cfg.image_size
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 3, h, w)).astype(np.float32)
        with torch.no_grad():
            want, e = model(torch.from_numpy(x))
        logits, = sess.run(["logits"], {"image": x})
        assert np.abs(logits - want.numpy()).max() <= 1e-5
        assert np.abs(want.double().numpy() - reference_logits(e.numpy(), head.weight.numpy(), head.bias.numpy(),
                                                               head.shift_weight.numpy(),
                                                               head.shift_bias.numpy())).max() <= 1e-4


# ---- augmentations ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    return make_lab_data(tmp_path_factory.mktemp("two") / "d", n_train=24, correlation=0.8, n_val=8, n_test=8,
                         image_size=32, shortcuts="background,object", seed=3, workers=1)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """Today's one-shortcut lab data: no masks."""
    return make_lab_data(tmp_path_factory.mktemp("plain") / "d", n_train=12, n_val=8, n_test=4, image_size=32, seed=1,
                         workers=1)


class OneDonor:
    def __init__(self, donor: Sample, mate: Sample | None = None):
        self.donor, self.mate = donor, mate or donor

    def other_class(self, label: int, rng: np.random.Generator) -> Sample:
        return self.donor

    def same_class(self, label: int, rng: np.random.Generator) -> Sample:
        return self.mate


def _pair(two: Path) -> tuple[Sample, Sample]:
    index = load_index("waterbirds", two, "train")
    pool = RecordPool(index, ("fg", "object"), None)
    first = pool.sample(0)
    other = next(i for i, r in enumerate(index.records) if r.label != first.label)
    return first, pool.sample(other)


def test_own_swaps_keep_the_samples_parts_and_take_the_donors(two: Path) -> None:
    sample, donor = _pair(two)
    rng = np.random.default_rng(0)
    bg = background_swap_own(sample, OneDonor(donor), rng)
    fg = sample.masks["fg"] == 255
    assert (bg[fg] == sample.image[fg]).all()  # the bird, where it fully covers the pixel, is the sample's
    free = ~(sample.parts_hole() | donor.parts_hole())
    assert (bg[free] == donor.image[free]).all()  # elsewhere the donor's background (its parts filled in)
    obj = object_swap_own(sample, OneDonor(donor), rng)
    assert (obj[fg] == sample.image[fg]).all()
    assert not (obj == sample.image).all()


def test_fill_holes_copies_only_pixels_outside_the_hole() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    hole = np.zeros((20, 24), bool)
    hole[3:9, 4:15] = True
    hole[12:19, 18:23] = True
    out, source = fill_holes(image, hole)
    assert (out[~hole] == image[~hole]).all()
    assert not hole[source[..., 0], source[..., 1]].any()
    assert (out == image[source[..., 0], source[..., 1]]).all()


def test_watermark_is_seeded_and_leaves_size_and_type() -> None:
    sample = Sample(np.full((32, 40, 3), 60, np.uint8), 0)
    a = watermark(sample, OneDonor(sample), np.random.default_rng(4))
    b = watermark(sample, OneDonor(sample), np.random.default_rng(4))
    assert a.shape == (32, 40, 3) and a.dtype == np.uint8 and (a == b).all() and (a != sample.image).any()


def test_user_function_must_return_an_image_of_the_same_size() -> None:
    from clip_debias.toolchain.correct.augment import AugmentType

    sample = Sample(np.zeros((8, 8, 3), np.uint8), 0)
    bad = AugmentType("mine", lambda s, d, r: np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ClipDebiasError, match=r"^--augment mine: the function returned an array uint8 \(4, 4, 3\), "
                                              r"expected an RGB image of 8x8"):
        run_augment(bad, sample, OneDonor(sample), np.random.default_rng(0))


def test_masks_missing_are_refused_with_one_line(plain: Path, tmp_path: Path) -> None:
    opts = LleOptions(data=plain, augment=("background-swap",))
    with pytest.raises(ClipDebiasError) as e:
        opts.resolve_augmentations()
    line = str(e.value)
    assert "\n" not in line and line.startswith("--augment background-swap needs foreground masks: ")
    assert str(plain / "metadata.csv") in line and "'fg_mask'" in line
    with pytest.raises(ClipDebiasError, match=r"^--augment object-swap needs foreground masks"):
        LleOptions(data=plain, augment=("object-swap",)).resolve_augmentations()
    # fg masks but no co-object: object-swap names the co-object masks
    fg_only = make_lab_data(tmp_path / "fg", n_train=8, n_val=4, n_test=4, image_size=32, seed=1, workers=1, masks=True)
    with pytest.raises(ClipDebiasError, match=r"^--augment object-swap needs co-object masks: .*'object_mask'"):
        LleOptions(data=fg_only, augment=("object-swap",)).resolve_augmentations()
    assert LleOptions(data=fg_only).resolve_augmentations().names() == ["background-swap"]  # the authors' set
    # auto keeps what the data allows
    assert LleOptions(data=plain).resolve_augmentations().names() == ["watermark"]


def test_augment_specs_are_checked(plain: Path, tmp_path: Path) -> None:
    hook = tmp_path / "aug.py"
    hook.write_text("def grey(sample, donors, rng):\n    return sample.image // 2\n")
    names = LleOptions(data=plain, augment=("watermark", f"dim={hook}:grey")).resolve_augmentations().names()
    assert names == ["watermark", "dim"]
    for spec, needle in ((f"{hook}:nothing", "has no function 'nothing'"),
                         (f"watermark={hook}:grey", "the name 'watermark' is taken"),
                         ("nonsense", "expected a built-in type"),
                         (str(tmp_path / "none.py") + ":f", "not found")):
        with pytest.raises(ClipDebiasError, match=needle):
            LleOptions(data=plain, augment=(spec,)).resolve_augmentations()
    with pytest.raises(ClipDebiasError, match="listed twice"):
        LleOptions(data=plain, augment=("watermark", "watermark")).resolve_augmentations()
    with pytest.raises(ClipDebiasError, match="--lle-val-split train"):
        LleOptions(data=plain, val_split="train")


def test_every_built_in_type_runs_on_two_shortcut_data(two: Path) -> None:
    sample, donor = _pair(two)
    for aug in AUGMENT_TYPES.values():
        out = run_augment(aug, sample, OneDonor(donor), np.random.default_rng(1))
        assert out.shape == sample.image.shape and out.dtype == np.uint8


# ---- build --classifier lle ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plan_file(tiny_clip, two: Path, tmp_path_factory) -> Path:
    """A plan located on the two-shortcut val split with the tiny random-weight model (its heads are never used:
    the builds below pass --no-ablate --no-project)."""
    from clip_debias.toolchain.decompose.run import decompose_dataset
    from clip_debias.toolchain.locate.ltc import locate_cache

    folder = tmp_path_factory.mktemp("plan")
    cache = decompose_dataset(tiny_clip, load_index("waterbirds", two, "val"), [3], batch_size=8, progress=False,
                              out=folder / "val.safetensors")
    return locate_cache(cache, tiny_clip, minority_from="predictions").save(folder / "plan.json")


def test_cli_build_lle_trains_saves_and_records(plan_file: Path, two: Path, tmp_path: Path) -> None:
    from clip_debias.toolchain.cli.app import app
    from clip_debias.toolchain.correct.classifier import DebiasedClassifier

    runner = CliRunner()
    base = ["build", "--plan", str(plan_file), "--model", "clipdebias-tiny", "--random-weights", "--no-ablate",
            "--no-project", "--out", str(tmp_path / "m")]
    res = runner.invoke(app, base + ["--classifier", "lle", "--data", str(two), "--augment", "object-swap,watermark",
                                     "--lle-epochs", "2", "--lle-seed", "5"])
    assert res.exit_code == 0, res.output
    assert "LLE heads original, object-swap, watermark: trained on waterbirds/train" in res.output
    model = DebiasedClassifier.load(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())["head"]
    assert cfg["kind"] == "lle" and cfg["shifts"] == ["original", "object-swap", "watermark"]
    t = cfg["training"]
    assert t["options"]["seed"] == 5 and t["options"]["epochs"] == 2 and t["train"]["split"] == "train"
    assert t["train"]["per_shift"] == {"original": 24, "object-swap": 24, "watermark": 24}
    assert t["val"]["split"] == "val" and t["chosen"]["epoch"] in (1, 2)
    assert len(t["trials"]) == 1 and t["schedule"]["name"] == "urbancars"  # the authors' lr 1e-3, wd 1e-4
    assert t["chosen"]["lr"] == 1e-3 and t["chosen"]["weight_decay"] == 1e-4 and t["redraw"] == "cross"
    assert model.head.weight.shape[:2] == (3, 2) and model.head.training_record == t


@pytest.mark.parametrize("args,needle", [
    (["--classifier", "lle"], "error: --classifier lle trains its heads on images: pass --data DIR"),
    (["--classifier", "zeroshot", "--data", "DATA"], "only --classifier lle trains on images"),
    (["--classifier", "lle", "--data", "PLAIN", "--augment", "background-swap"],
     "error: --augment background-swap needs foreground masks: "),
])
def test_cli_build_lle_refusals(plan_file: Path, plain: Path, two: Path, tmp_path: Path, args: list[str],
                                needle: str) -> None:
    from clip_debias.toolchain.cli.app import app

    args = [str(two) if a == "DATA" else str(plain) if a == "PLAIN" else a for a in args]
    res = CliRunner().invoke(app, ["build", "--plan", str(plan_file), "--model", "clipdebias-tiny", "--random-weights",
                                   "--no-ablate", "--no-project", "--out", str(tmp_path / "m"), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output and not (tmp_path / "m").exists()


@pytest.mark.parametrize("shifts,needle", [
    (["watermark", "original"], "field 'head.shifts[0]': is 'watermark', expected 'original'"),
    (["original", "w", "w"], "field 'head.shifts': names the shift type 'w' twice"),
])
def test_malformed_lle_config_is_one_line(tiny_clip, tmp_path: Path, shifts: list[str], needle: str) -> None:
    from clip_debias.toolchain.correct.classifier import DebiasedClassifier, plain_classifier

    base = plain_classifier(tiny_clip, ["a", "b"])
    head = random_head(len(shifts), 2, base.tower.cfg.embed_dim, seed=1)
    DebiasedClassifier(base.tower, head, base.spec).save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["head"]["shifts"] = shifts
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ClipDebiasError) as e:
        DebiasedClassifier.load(tmp_path / "m")
    assert needle in str(e.value) and "\n" not in str(e.value)


# ---- the authors' defaults (issue 31) -----------------------------------------------------------------------------

def test_auto_is_the_authors_urbancars_head_set(two: Path) -> None:
    """Two-shortcut data: original + background + co-object heads (watermark, texture, edge-map only when named),
    with the authors' cross-redraw unless --lle-redraw own."""
    types = LleOptions(data=two).resolve_augmentations().types
    assert [t.name for t in types] == ["background-swap", "object-swap"]
    assert [t.fn for t in types] == [background_swap, object_swap] and all("the authors'" in t.help for t in types)
    own = LleOptions(data=two, redraw="own").resolve_augmentations().types
    assert [t.fn for t in own] == [background_swap_own, object_swap_own] and all("ours" in t.help for t in own)
    named = LleOptions(data=two, augment=("auto", "watermark", "texture", "edge-map")).resolve_augmentations()
    assert named.names() == ["background-swap", "object-swap", "watermark", "texture", "edge-map"]
    with pytest.raises(ClipDebiasError, match="--lle-redraw 'mine': expected one of cross, own"):
        LleOptions(data=two, redraw="mine")


def _composite(canvas: np.ndarray, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The authors' ``x * mask + canvas * (1 - mask)`` (urbancars_trainers/lle.py), float32 on the 0..255 scale."""
    m = (mask.astype(np.float32) / 255.0)[..., None]
    return image.astype(np.float32) * m + canvas.astype(np.float32) * (1 - m)


def _round(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["background-swap", "object-swap"])
def test_cross_redraws_equal_a_transcription_of_the_authors(two: Path, kind: str) -> None:
    """dataset/urbancars_aug.py: the background from an image of another class (background swap) or of the same
    class (object swap), the co-object from an image of the same class (background swap) or another (object swap)
    where it stood there, the sample's object (foreground) on top; background drawn first. Their stored
    background-only image is our ``clean_background`` of that image."""
    index = load_index("waterbirds", two, "train")
    pool = RecordPool(index, ("fg", "object"), None)
    labels = [r.label for r in index.records]
    for i, seed in ((0, 0), (5, 1), (11, 2)):
        sample = pool.sample(i)
        pool.size = (sample.image.shape[1], sample.image.shape[0])
        got = run_augment(AUGMENT_TYPES[kind], sample, pool, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        same = [j for j, y in enumerate(labels) if y == labels[i]]
        other = [j for j, y in enumerate(labels) if y != labels[i]]
        first, second = (other, same) if kind == "background-swap" else (same, other)
        bg_image = pool.sample(first[int(rng.integers(len(first)))])
        co_image = pool.sample(second[int(rng.integers(len(second)))])
        with_co = _composite(clean_background(bg_image), co_image.image, co_image.masks["object"])
        want = _round(_composite(with_co, sample.image, sample.masks["fg"]))
        assert np.array_equal(got, want)
        assert not np.array_equal(got, sample.image)


def test_texture_equals_a_transcription(two: Path) -> None:
    index = load_index("waterbirds", two, "train")
    sample = RecordPool(index, ("fg",), None).sample(3)
    got = texture(sample, OneDonor(sample), np.random.default_rng(7))
    rng = np.random.default_rng(7)
    c = int(rng.integers(4, 17))
    h, w = sample.image.shape[:2]
    colours = rng.integers(0, 256, ((h + c - 1) // c, (w + c - 1) // c, 3))
    want = np.zeros_like(sample.image)
    for y in range(h):
        for x in range(w):
            a = 0.5 * (float(sample.masks["fg"][y, x]) / 255.0)
            for ch in range(3):
                v = float(sample.image[y, x, ch]) * (1 - a) + float(colours[y // c, x // c, ch]) * a
                want[y, x, ch] = min(255, max(0, int(np.floor(v + 0.5))))
    assert np.array_equal(got, want)
    fg = sample.masks["fg"] == 0
    assert np.array_equal(got[fg], sample.image[fg]) and not np.array_equal(got, sample.image)


def test_edge_map_equals_a_transcription(two: Path) -> None:
    import math

    sample = RecordPool(load_index("waterbirds", two, "train"), (), None).sample(2)
    got = edge_map(sample, OneDonor(sample), np.random.default_rng(0))
    h, w = sample.image.shape[:2]
    grey = [[299 * int(p[0]) + 587 * int(p[1]) + 114 * int(p[2]) for p in row] for row in sample.image]
    k = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]

    def at(y: int, x: int) -> int:
        return grey[min(max(y, 0), h - 1)][min(max(x, 0), w - 1)]

    m = [[math.sqrt(sum(k[a][b] * at(y + a - 1, x + b - 1) for a in range(3) for b in range(3)) ** 2
                    + sum(k[b][a] * at(y + a - 1, x + b - 1) for a in range(3) for b in range(3)) ** 2)
          for x in range(w)] for y in range(h)]
    top = max(max(row) for row in m)
    want = np.array([[[min(255, max(0, int(np.floor(255.0 * (1.0 - v / top) + 0.5))))] * 3 for v in row] for row in m],
                    np.uint8)
    assert np.array_equal(got, want)
    flat = Sample(np.full((6, 5, 3), 90, np.uint8), 0)
    assert (edge_map(flat, OneDonor(flat), np.random.default_rng(0)) == 255).all()


def test_shift_classifier_init_as_configured() -> None:
    """random (the authors'): nn.Linear's default U(-1/sqrt(D), 1/sqrt(D)) for W_d then b_d from a seeded
    generator; zero (ours): 0. The class heads are untouched, so the untrained head is still zero-shot."""
    k, c, d = 3, 2, 16
    text = torch.nn.functional.normalize(torch.randn(c, d, generator=torch.Generator().manual_seed(0)), dim=-1)
    head = LleHead.from_zero_shot(text, 10.0, ["original", "a", "b"])
    r = init_shift(head, "random", seed=4)
    g = torch.Generator().manual_seed(4)
    w = (torch.rand(k, d, generator=g, dtype=torch.float64) * 2 - 1) / np.sqrt(d)
    b = (torch.rand(k, generator=g, dtype=torch.float64) * 2 - 1) / np.sqrt(d)
    assert torch.equal(r.shift_weight, w.float()) and torch.equal(r.shift_bias, b.float())
    assert r.shift_weight.abs().max() <= 1 / np.sqrt(d) and r.shift_weight.std() > 0
    assert torch.equal(r.weight, head.weight) and torch.equal(r.bias, head.bias)
    e = torch.nn.functional.normalize(torch.randn(5, d), dim=-1)
    assert (r(e) - 10.0 * e @ text.T).abs().max() <= 1e-5
    z = init_shift(r, "zero", seed=4)
    assert not z.shift_weight.any() and not z.shift_bias.any()


def _tiny_data(n: int = 6, d: int = 8) -> Embedded:
    g = torch.Generator().manual_seed(1)
    return Embedded(torch.nn.functional.normalize(torch.randn(2 * n, d, generator=g), dim=-1),
                    torch.randint(0, 2, (2 * n,), generator=g), torch.tensor([0] * n + [1] * n),
                    torch.zeros(2 * n, dtype=torch.long))


@pytest.mark.parametrize("schedule,biases_decay", [("urbancars", True), ("grid", False)])
def test_weight_decay_as_configured(schedule: str, biases_decay: bool) -> None:
    """One SGD step over every embedding: p - lr (grad + wd p) on W, W_d and, as the authors do (every classifier
    parameter), on b and b_d; the grid schedule (ours) leaves the biases undecayed."""
    data = _tiny_data()
    init = random_head(2, 2, 8, seed=3, scale=1.0)
    lr, wd = 0.1, 0.5
    plan = SCHEDULES[schedule]
    got = train_lle(init, data, lr, wd, 1, 100, seed=0, schedule=plan, per_epoch=len(data.labels))
    params = {n: getattr(init, n).clone().requires_grad_(True) for n in ("weight", "bias", "shift_weight",
                                                                         "shift_bias")}
    lle_loss(params, data.embeddings, data.labels, data.shifts).backward()
    step = plan.lr(lr, 0)
    for name, p in params.items():
        decay = wd if name in ("weight", "shift_weight") or biases_decay else 0.0
        want = p.detach() - step * (p.grad + decay * p.detach())
        assert (getattr(got, name) - want).abs().max() <= 1e-6, name


def test_schedules_and_per_epoch_sampling(monkeypatch) -> None:
    """urbancars: lr constant; imagenet: lr x batch / 256, cosine over its 90 epochs; both train on as many
    embeddings per epoch as there are originals (drawn without replacement from the pool), grid on all of them."""
    import clip_debias.toolchain.correct.lle_fit as fit

    u, i = SCHEDULES["urbancars"], SCHEDULES["imagenet"]
    assert (u.learning_rates, u.weight_decays, u.epochs, u.batch_size) == ((1e-3,), (1e-4,), 300, 128)
    assert all(u.lr(1e-3, t) == 1e-3 for t in (0, 150, 299)) and not u.last_epoch
    assert i.lr(1e-3, 0) == pytest.approx(4e-3) and i.lr(1e-3, 45) == pytest.approx(2e-3) and i.last_epoch
    seen: list[list[int]] = []
    real = fit.lle_loss

    def counting(head, e, y, d):  # noqa: ANN001, ANN202
        seen[-1].extend(d.tolist())
        return real(head, e, y, d)

    monkeypatch.setattr(fit, "lle_loss", counting)
    data = _tiny_data(n=10)
    init = random_head(2, 2, 8, seed=3, scale=1.0)
    for name, per_epoch in (("urbancars", 10), ("grid", 20)):
        seen[:] = [[]]
        train_lle(init, data, 0.1, 0.0, 3, 4, seed=0, schedule=SCHEDULES[name],
                  on_epoch=lambda epoch, head: seen.append([]))
        assert [len(s) for s in seen[:3]] == [per_epoch] * 3, name
    assert all(0 < sum(s) < 20 for s in seen[:3])  # grid: both types every epoch


def test_progress_line_of_epochs_has_no_batch_count() -> None:
    from clip_debias.runtime.progress import Progress

    p = Progress("LLE: train 300 epochs", 300, 300, unit="epochs", enabled=False)
    p.advance(1)
    assert p.line().startswith("LLE: train 300 epochs: 1/300 epochs (0%), ") and "batch" not in p.line()
    q = Progress("embed", 100, 4)
    q.advance(25)
    assert ", batch 1/4, " in q.line()
