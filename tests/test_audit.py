"""clip-debias audit: the corruptions are what the README says (pixel level, against float64 transcriptions), the
pseudo-dataset control and two draws of one distribution stay at chance, a planted head is separated and ranked
first, the gate drives the exit code, bad input is one line, and the features are the model's own."""

from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clip_debias.toolchain.audit.classify import make_splits, part_sizes
from clip_debias.toolchain.audit.corruptions import (ALL, Corruption, JitterFactors, apply_jitter, blur, blur_taps,
                                                     corrupted_preprocess, image_rng, lowres, noise, parse_corruptions)
from clip_debias.toolchain.audit.files import AuditFile
from clip_debias.toolchain.audit.run import AuditOptions, run_audit
from clip_debias.toolchain.cli.app import app
from clip_debias.toolchain.decompose.cache import DecompositionCache, load_cache, save_cache
from clip_debias.toolchain.errors import ClipDebiasError

TINY = ["--model", "clipdebias-tiny", "--random-weights"]


def _image(seed: int = 0, h: int = 24, w: int = 20) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((3, h, w), dtype=np.float32))


# ---- corruptions, pixel level --------------------------------------------------------------------------------------
def test_corruption_names():
    assert [c.name for c in parse_corruptions("all")] == list(ALL)
    assert parse_corruptions("none") == [] and parse_corruptions(None) == []
    assert parse_corruptions("lowres16, blur1.5,noise0.05") == [Corruption("lowres", 16), Corruption("blur", 1.5),
                                                               Corruption("noise", 0.05)]
    for bad, message in (("sharpen2", "'sharpen2' is not a corruption"), ("lowres3.5", "whole number of pixels"),
                         ("jitter3", "at most 2.5"), ("blur3,blur3", "'blur3' is given twice"),
                         ("noise0", "expected a value > 0")):
        with pytest.raises(ClipDebiasError, match=message):
            parse_corruptions(bad)


def test_lowres_down_and_up():
    x = _image()
    assert lowres(x, 24) is x and lowres(x, 64) is x and Corruption("lowres", 24).is_noop(24, 20)
    flat = torch.full((3, 24, 20), 0.3)
    assert (lowres(flat, 8) - 0.3).abs().max() <= 1e-6  # a constant survives exactly
    yy, xx = np.mgrid[0:24, 0:20]
    checker = torch.from_numpy(np.broadcast_to(((yy + xx) % 2).astype(np.float32), (3, 24, 20)).copy())
    assert (lowres(checker, 8) - 0.5).abs().max() <= 0.02  # the finest detail is gone: its mean remains
    smooth = torch.from_numpy(np.broadcast_to((0.5 + 0.3 * np.sin(2 * np.pi * xx / 20)).astype(np.float32),
                                              (3, 24, 20)).copy())
    assert (lowres(smooth, 16)[:, 4:-4, 4:-4] - smooth[:, 4:-4, 4:-4]).abs().max() <= 0.02  # coarse content stays
    out = lowres(x, 8)
    assert out.shape == x.shape and out.dtype == x.dtype and 0 <= float(out.min()) and float(out.max()) <= 1
    # the result is an upsampled 8-pixel image: downsampling it again changes little, unlike the original
    from torch.nn.functional import interpolate

    def down(t):
        return interpolate(t[None].double(), size=(10, 8), mode="bicubic", antialias=True)[0]

    assert float((down(out) - down(x)).abs().mean()) <= 0.1 * float((x - out).abs().mean())


def _gauss_transcription(x: np.ndarray, radius: float) -> np.ndarray:
    """float64 2-D Gaussian blur: weights exp(-t^2 / 2R^2) over t = -m..m (normalized), mirror edges without repeating
    the edge pixel, written as a direct double sum."""
    c, h, w = x.shape
    m = min(math.ceil(3 * radius), min(h, w) - 1)
    t = np.arange(-m, m + 1)
    k = np.exp(-t ** 2 / (2 * radius ** 2))
    k /= k.sum()

    def mirror(i: int, n: int) -> int:
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    out = np.zeros_like(x, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            acc = np.zeros(c)
            for a in range(-m, m + 1):
                for b in range(-m, m + 1):
                    acc += k[a + m] * k[b + m] * x[:, mirror(i + a, h), mirror(j + b, w)]
            out[:, i, j] = acc
    return out


@pytest.mark.parametrize("radius", [1.0, 1.7, 5.0])
def test_blur_is_the_gaussian_of_the_readme(radius):
    x = _image(1, 14, 12)
    got = blur(x.double(), radius).numpy()
    assert np.abs(got - _gauss_transcription(x.double().numpy(), radius)).max() <= 1e-12
    assert blur_taps(5.0, 14, 12) == 11 and blur_taps(1.7, 64, 64) == 6  # ceil(3R), at most the short side - 1
    impulse = torch.zeros(3, 15, 15, dtype=torch.float64)
    impulse[:, 7, 7] = 1.0
    response = blur(impulse, 1.0)[0].numpy()
    k = np.exp(-np.arange(-3, 4) ** 2 / 2.0)
    k /= k.sum()
    assert np.abs(response[4:11, 4:11] - np.outer(k, k)).max() <= 1e-15 and abs(response.sum() - 1) <= 1e-12


def test_noise_is_additive_gaussian_clipped():
    x = torch.full((3, 64, 64), 0.5)
    got = noise(x, 0.2, image_rng(x, 7))
    want = np.clip(0.5 + 0.2 * image_rng(x, 7).standard_normal((3, 64, 64)), 0, 1)
    assert np.abs(got.numpy() - want).max() <= 1e-7 and got.dtype == torch.float32
    assert abs(float(got.std()) - 0.2) <= 0.01  # 2.5 std to either edge: almost nothing clipped
    edge = noise(torch.zeros(3, 64, 64), 0.2, np.random.default_rng(0))
    assert float(edge.min()) == 0.0 and abs(float((edge == 0).float().mean()) - 0.5) <= 0.02  # half clipped at 0
    assert not np.array_equal(image_rng(x, 7).standard_normal(3), image_rng(x, 8).standard_normal(3))


def test_jitter_is_simclr_colour_jitter_in_a_fixed_order():
    rng = np.random.default_rng(3)
    draws = [JitterFactors.draw(1.0, rng) for _ in range(200)]
    assert all(0.2 <= d.brightness <= 1.8 and 0.2 <= d.contrast <= 1.8 and 0.2 <= d.saturation <= 1.8
               and -0.2 <= d.hue <= 0.2 for d in draws)
    assert min(d.hue for d in draws) < -0.15 and max(d.brightness for d in draws) > 1.7  # the whole range is used
    assert JitterFactors.draw(2.0, np.random.default_rng(0)).brightness >= 0.0  # max(0, 1 - 0.8 S)
    x = _image(2, 6, 5)
    f = JitterFactors(1.3, 0.7, 1.4, 0.12)
    got = apply_jitter(x, f).numpy()
    # float64 transcription: brightness, contrast (mean of the grayscale), saturation, hue (HSV shift), clip each
    y = x.double().numpy().transpose(1, 2, 0)
    gray = lambda z: 0.2989 * z[..., 0] + 0.587 * z[..., 1] + 0.114 * z[..., 2]  # noqa: E731
    y = np.clip(1.3 * y, 0, 1)
    y = np.clip(0.7 * y + 0.3 * gray(y).mean(), 0, 1)
    y = np.clip(1.4 * y + (1 - 1.4) * gray(y)[..., None], 0, 1)
    hsv = np.array([[colorsys.rgb_to_hsv(*p) for p in row] for row in y])
    hsv[..., 0] = (hsv[..., 0] + 0.12) % 1.0
    want = np.array([[colorsys.hsv_to_rgb(*p) for p in row] for row in hsv]).transpose(2, 0, 1)
    assert np.abs(got - want).max() <= 2e-6


def test_corruption_sits_between_the_geometry_and_the_normalization(tiny_clip):
    """The corrupted preprocessing = the model's resize/crop/RGB/to-[0, 1] steps, the corruption, then its
    normalization, exactly; the model's own preprocessing is that without the corruption."""
    from torchvision.transforms import Compose

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 41, 3), dtype=np.uint8))
    *geometry, normalize = tiny_clip.preprocess.transforms
    clean = Compose(geometry)(img)  # the model input in [0, 1], 32 x 32
    assert clean.shape == (3, 32, 32) and 0 <= float(clean.min()) and float(clean.max()) <= 1
    assert torch.equal(normalize(clean), tiny_clip.preprocess(img))
    for c in (Corruption("noise", 0.2), Corruption("blur", 1.0), Corruption("lowres", 8), Corruption("jitter", 1)):
        got = corrupted_preprocess(tiny_clip.preprocess, c, seed=5)(img)
        assert torch.equal(got, normalize(c(clean, image_rng(clean, 5)))), c.name
        assert (got - tiny_clip.preprocess(img)).abs().max() > 0.05, c.name
    assert not torch.equal(corrupted_preprocess(tiny_clip.preprocess, Corruption("noise", 0.2), 5)(img),
                           corrupted_preprocess(tiny_clip.preprocess, Corruption("noise", 0.2), 6)(img))
    with pytest.raises(ClipDebiasError, match="not open_clip's eval transform"):
        corrupted_preprocess(lambda im: im, Corruption("blur", 1), 0)


# ---- the classifier on hand-built sources ---------------------------------------------------------------------------
CARRIER = (2, 1)  # the head that carries the planted difference


def _cache(path: Path, identity, n: int, seed: int, shift: float = 0.0, carrier=CARRIER) -> Path:
    """A cache of n rows of hand-built contributions (4 layers x 4 heads, D = 32): every head N(0, 0.1^2) noise, the
    ``carrier`` head shifted by ``shift`` along the first axis; embeddings = the normalized sum with ``rest``."""
    g = torch.Generator().manual_seed(seed)
    heads = 0.1 * torch.randn(n, 4, 4, 32, generator=g)
    heads[:, carrier[0], carrier[1], 0] += shift
    rest = 0.1 * torch.randn(n, 32, generator=g)
    total = heads.sum(dim=(1, 2)) + rest
    cache = DecompositionCache(heads=heads, rest=rest, labels=torch.zeros(n, dtype=torch.long),
                               groups=torch.zeros(n, dtype=torch.long), layers=[0, 1, 2, 3], identity=identity,
                               dataset="csv", split="val", class_names=["image"], group_names=["image"],
                               paths=[f"{path.stem}-{i}.png" for i in range(n)], convention="textspan",
                               tower_layers=4, stored_embeddings=total / total.norm(dim=-1, keepdim=True))
    return save_cache(path, cache)


def _within(acc, sigmas: float = 3.0) -> bool:
    return abs(acc.mean - acc.chance) <= sigmas * acc.standard_error


def test_splits_are_disjoint_balanced_and_seeded():
    splits = make_splits([40, 40, 40], 0.25, [0, 1])
    for s in splits:
        assert not set(s.train) & set(s.val) and set(s.train) | set(s.val) == set(range(120))
        assert set(s.inner_train) | set(s.inner_val) == set(s.train) and not set(s.inner_train) & set(s.inner_val)
        assert [int(((s.val >= 40 * c) & (s.val < 40 * (c + 1))).sum()) for c in range(3)] == [10, 10, 10]
    assert not np.array_equal(splits[0].val, splits[1].val)
    assert np.array_equal(make_splits([40, 40, 40], 0.25, [1])[0].val, splits[1].val)
    assert part_sizes(10, 0.25) == (8, 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_control_and_two_draws_of_one_recipe_are_at_chance(tmp_path, tiny_clip, seed):
    """Two caches drawn from the same distribution cannot be told apart, and the pseudo-dataset control (one source
    in random halves) is at chance, within three standard errors of one validation split."""
    a = _cache(tmp_path / "a.safetensors", tiny_clip.identity, 240, seed=10 + seed)
    b = _cache(tmp_path / "b.safetensors", tiny_clip.identity, 240, seed=20 + seed)
    doc = run_audit([str(a), str(b)], lambda: tiny_clip, tmp_path / "out", AuditOptions(seed=seed, seeds=3))
    assert doc.per_source == 240 and doc.embedding.n_val == 120 and doc.embedding.chance == 0.5
    assert _within(doc.embedding) and _within(doc.control.accuracy) and doc.control.at_chance and not doc.warnings
    assert doc.control.per_part == 120 and doc.control.accuracy.n_val == 60
    assert len(doc.heads.ranking) == 16 and len(doc.embedding.per_seed) == 3


def test_planted_head_is_separated_and_ranked_first(tmp_path, tiny_clip):
    a = _cache(tmp_path / "plain.safetensors", tiny_clip.identity, 200, seed=1)
    b = _cache(tmp_path / "planted.safetensors", tiny_clip.identity, 200, seed=2, shift=0.8)
    out = tmp_path / "out"
    doc = run_audit([f"plain={a}", f"planted={b}"], lambda: tiny_clip, out, AuditOptions(seeds=3, top=3))
    assert [s.name for s in doc.sources] == ["plain", "planted"] and doc.sources[0].kind == "cache"
    assert doc.embedding.mean > doc.chance + 3 * doc.embedding.standard_error
    top = doc.heads.ranking[0]
    assert (top.layer, top.head) == CARRIER and top.accuracy >= 0.95
    assert top.accuracy - doc.heads.ranking[1].accuracy >= 0.2
    assert doc.heads.mean[CARRIER[0]][CARRIER[1]] == top.accuracy
    confusion = np.array(doc.embedding.confusion)
    assert confusion.sum() == 3 * doc.embedding.n_val and confusion.trace() / confusion.sum() == pytest.approx(
        doc.embedding.mean)
    assert doc.control.at_chance
    back = AuditFile.load(out / "audit.json")
    assert back == doc
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "audit.json", "clip-debias-output.json",
                                                      "heads.png"]


def test_gate_drives_the_exit_code(tmp_path, tiny_clip):
    a = _cache(tmp_path / "a.safetensors", tiny_clip.identity, 80, seed=1)
    b = _cache(tmp_path / "b.safetensors", tiny_clip.identity, 80, seed=2, shift=0.8)
    runner = CliRunner()
    res = runner.invoke(app, ["audit", str(a), str(b), *TINY, "--out", str(tmp_path / "o1"), "--max-accuracy", "0.6",
                              "--seeds", "2"])
    assert res.exit_code == 1, res.output
    assert "--max-accuracy 60.0%: embedding" in res.output and "FAIL" in res.output
    assert AuditFile.load(tmp_path / "o1" / "audit.json").gate.passed is False
    res = runner.invoke(app, ["audit", str(a), str(b), *TINY, "--out", str(tmp_path / "o1"), "--max-accuracy", "1",
                              "--seeds", "2"])
    assert res.exit_code == 0 and "PASS" in res.output, res.output  # and the audit folder of ours was replaced
    res = runner.invoke(app, ["audit", str(a), str(b), *TINY, "--out", str(tmp_path / "o2"), "--seeds", "2"])
    assert res.exit_code == 0 and AuditFile.load(tmp_path / "o2" / "audit.json").gate is None, res.output


# ---- real images through the tiny model ------------------------------------------------------------------------------
def _folder(root: Path, n: int, seed: int, cast: int = 0) -> Path:
    """n PNGs of random sizes and content; ``cast`` adds that much to red and takes it from blue."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = rng.integers(20, 48, 2)
        a = rng.integers(0, 256, (h, w, 3)).astype(np.int16) + np.array([cast, 0, -cast], np.int16)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / f"im{i:02d}.png")
    return root


def test_image_folders_through_the_model(tmp_path, tiny_clip):
    """Folders of images: decomposed through the model's one preprocessing and loader; the audited embedding is
    open_clip's encode_image of each image; corruption rows (a no-op one at the model's own size); the report
    shows the section."""
    from clip_debias.runtime.images import load_image

    a = _folder(tmp_path / "plain", 12, seed=0)
    b = _folder(tmp_path / "warm", 14, seed=1, cast=40)
    out = tmp_path / "report" / "audit"
    doc = run_audit([str(a), f"warm={b}"], lambda: tiny_clip, out,
                    AuditOptions(seeds=2, keep_caches=True,
                                 corruptions=parse_corruptions("lowres32,lowres16,blur1,noise0.1,jitter0.5")))
    assert AuditFile.load(out / "audit.json") == doc
    assert [s.name for s in doc.sources] == ["plain", "warm"] and [s.size for s in doc.sources] == [12, 14]
    assert doc.per_source == 12 and doc.layers == [0, 1, 2, 3] and doc.convention == "textspan"
    assert [(r.name, r.noop) for r in doc.corruptions] == [("lowres32", True), ("lowres16", False),
                                                         ("blur1", False), ("noise0.1", False), ("jitter0.5", False)]
    assert all(r.embedding is not None and len(r.embedding.per_seed) == 2 for r in doc.corruptions if not r.noop)
    caches = sorted((out / "caches").glob("*.safetensors"))
    assert [c.name for c in caches] == ["0-plain.safetensors", "1-warm.safetensors"]
    cache = load_cache(caches[1])
    assert len(cache) == 12 and len(set(cache.paths)) == 12 and all(Path(p).parent == b for p in cache.paths)
    with torch.no_grad():
        x = torch.stack([tiny_clip.preprocess(load_image(p)) for p in cache.paths])
        want = tiny_clip.model.encode_image(x, normalize=True)
    assert (cache.embeddings() - want).abs().max() <= 1e-5
    res = CliRunner().invoke(app, ["report", str(tmp_path / "report")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Dataset-bias audit" in page and 'src="audit/heads.png"' in page and "lowres16" in page


def test_corrected_embedding_of_a_built_model(tmp_path, tiny_clip):
    """--model-dir: the corrected embedding audited from the cached terms is the built model's own embedding of the
    images (DebiasedClassifier.embed), and sits beside the raw one."""
    from plan_fixtures import write_plan

    from clip_debias.runtime.images import load_image
    from clip_debias.toolchain.audit.run import Decomposed, Terms, load_edits
    from clip_debias.toolchain.audit.sources import open_source
    from clip_debias.toolchain.correct.build import BuildOptions, build_classifier
    from clip_debias.toolchain.decompose.run import decompose_dataset
    from clip_debias.toolchain.locate.ltc import LocatePlan
    from clip_debias.toolchain.prompts.defaults import attribute_pairs_for

    a = _folder(tmp_path / "a", 12, seed=3)
    b = _folder(tmp_path / "b", 12, seed=4, cast=60)
    calibration = decompose_dataset(tiny_clip, open_source(str(a)).image_index(), [0, 1, 2, 3], progress=False)
    plan = LocatePlan.load(write_plan(tmp_path / "plan.json", [[3, 1]], [[2, 2]], layers=(0, 1, 2, 3),
                                      identity=tiny_clip.identity.to_dict()))
    model = build_classifier(plan, calibration, tiny_clip,
                             BuildOptions(attribute_pairs=attribute_pairs_for("defaults", "waterbirds")))
    model.save(tmp_path / "model")
    out = tmp_path / "out"
    doc = run_audit([str(a), str(b)], lambda: tiny_clip, out,
                    AuditOptions(seeds=2, model_dir=tmp_path / "model", keep_caches=True,
                                 corruptions=[Corruption("blur", 1.0)]))
    assert doc.corrected is not None and doc.model_dir == str(tmp_path / "model")
    assert doc.corruptions[0].corrected is not None
    caches = [load_cache(p) for p in sorted((out / "caches").glob("*.safetensors"))]
    edits = load_edits(tmp_path / "model", tiny_clip, Terms([0, 1, 2, 3], "textspan"))
    got = Decomposed(caches, [np.arange(12), np.arange(12)]).corrected(edits)
    with torch.no_grad():
        x = torch.stack([tiny_clip.preprocess(load_image(p)) for c in caches for p in c.paths])
        want = model.embed(x)
    assert np.abs(got - want.numpy()).max() <= 1e-5
    assert np.abs(got - torch.cat([c.embeddings() for c in caches]).numpy()).max() > 1e-3  # the edits act
    with pytest.raises(ClipDebiasError, match="built on 'textspan' terms, the audit's are 'centred'"):
        run_audit([str(a), str(b)], lambda: tiny_clip, tmp_path / "o2",
                  AuditOptions(model_dir=tmp_path / "model", convention="centred"))


# ---- bad input: one line each ----------------------------------------------------------------------------------------
def _one_error_line(res) -> str:
    lines = [l for l in res.output.splitlines() if l.startswith("error: ")]
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def test_bad_inputs_are_one_line(tmp_path, tiny_clip):
    a = _folder(tmp_path / "a", 16, seed=0)
    b = _folder(tmp_path / "b", 16, seed=1)
    small = _folder(tmp_path / "small", 3, seed=2)
    bad = _folder(tmp_path / "bad", 16, seed=3)
    (bad / "im04.png").write_bytes(b"")
    wb = tmp_path / "wb"
    wb.mkdir()
    (wb / "metadata.csv").write_text("img_filename,y,split,place\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    out = str(tmp_path / "out")
    runner = CliRunner()
    cases = [
        ([str(a)], "audit needs at least two sources"),
        ([str(a), str(small)], "source 'small' (3 images): 3 image(s) give 2 train and 1 validation image(s)"),
        ([str(a), str(bad)], "im04.png: cannot read image (not an image PIL can identify)"),
        ([str(a), str(tmp_path / "nowhere")], "nowhere not found"),
        ([str(a), str(wb)], "a waterbirds folder holds several splits; name one"),
        ([str(a), str(b), "--per-source", "17"], "--per-source 17: source 'a' holds only 16 image(s)"),
        ([f"x={a}", f"x={b}"], "are both named 'x'; name them: NAME=PATH"),
        ([str(a), str(b), "--control", "c"], "--control c: no source of that name (sources: a, b)"),
        ([str(a), str(b), "--corruptions", "fog2"], "'fog2' is not a corruption"),
        ([str(a), str(b), "--max-accuracy", "60"], "--max-accuracy 60.0: expected a fraction 0..1"),
        ([str(a), str(b), "--val-fraction", "1"], "--val-fraction 1.0: expected a fraction between 0 and 1"),
        ([str(a), f"{b}:val"], "a folder of images has no splits"),
    ]
    for args, message in cases:
        line = _one_error_line(runner.invoke(app, ["audit", *args, *TINY, "--out", out]))
        assert message in line, (args, line)
        assert not Path(out).exists()
    line = _one_error_line(runner.invoke(app, ["audit", str(a), str(b), *TINY, "--out", str(mine)]))
    assert "has no clip-debias-output.json" in line and (mine / "notes.txt").read_text() == "keep"
    res = runner.invoke(app, ["audit", str(a), str(bad), *TINY, "--out", out, "--skip-bad", "--max-skipped", "1",
                              "--seeds", "1"])
    assert res.exit_code == 0, res.output
    doc = AuditFile.load(Path(out) / "audit.json")
    assert doc.per_source == 15 and [s.skipped for s in doc.sources] == [0, 1]
    assert (Path(out) / "1-bad.skipped.txt").read_text().count("im04.png") == 1


def test_sources_parse_names_splits_and_kinds(tmp_path):
    from clip_debias.toolchain.audit.sources import open_source, split_source_text

    assert split_source_text("a=data/x:val") == ("a", "data/x", "val")
    assert split_source_text("data/x:val") == (None, "data/x", "val")
    assert split_source_text("dir/a=b") == (None, "dir/a=b", None)  # '=' after a path separator is a path
    csv_dir = tmp_path / "c"
    _folder(csv_dir / "imgs", 4, seed=0)
    (csv_dir / "data.csv").write_text("path,split\nimgs/im00.png,train\nimgs/im01.png,val\nimgs/im02.png,val\n")
    s = open_source(f"{csv_dir}:val")
    assert s.kind == "csv" and s.name == "c:val" and [r.path.name for r in s.index.records] == ["im01.png",
                                                                                                "im02.png"]
    assert len(open_source(str(csv_dir))) == 3
    (csv_dir / "out.csv").write_text("path\n../../etc/passwd\n")
    with pytest.raises(ClipDebiasError, match="leaves the data folder"):
        open_source(str(csv_dir / "out.csv"))
    with pytest.raises(ClipDebiasError, match="no image files"):
        (tmp_path / "empty").mkdir()
        open_source(str(tmp_path / "empty"))
    # a folder clip-debias wrote inside an image folder (an earlier audit's --out: its figures) is not data
    images = _folder(tmp_path / "imgs", 3, seed=1)
    _folder(images / "sub", 2, seed=2)
    _folder(images / "audit", 2, seed=3)
    (images / "audit" / "clip-debias-output.json").write_text("{}")
    assert sorted(r.path.relative_to(images).as_posix() for r in open_source(str(images)).index.records) == [
        "im00.png", "im01.png", "im02.png", "sub/im00.png", "sub/im01.png"]


def test_pixel_cache_gives_the_features_of_reading_the_images_again(tmp_path, tiny_clip):
    """The corruption passes from the decoded-once pixels (PixelCache) give the embeddings that reading, corrupting
    and decomposing every image again gives (float32 rounding), and say what they reuse."""
    from types import SimpleNamespace as NS

    from clip_debias.toolchain.audit.run import Decomposed, corrupted_features, pixel_cache

    folders = [_folder(tmp_path / "plain", 6, seed=0), _folder(tmp_path / "warm", 5, seed=1, cast=40)]
    caches = [NS(paths=sorted(str(p) for p in f.glob("*.png")), source=str(f), split="all") for f in folders]
    decomposed = Decomposed(caches, [np.arange(6), np.arange(5)])
    sample = NS(sources=[NS(name="plain"), NS(name="warm")])
    terms, options, lines = NS(layers=[0, 1, 2, 3], convention="textspan"), AuditOptions(batch_size=4), []
    pixels = pixel_cache(decomposed, sample, tiny_clip, options, lines.append)
    assert lines == ["pixel cache: 11 images decoded once (0 MiB, model input (3, 32, 32)); every corruption pass "
                     "reuses them"]
    for c in parse_corruptions("lowres16,blur1,noise0.1,jitter0.5"):
        cached = corrupted_features(decomposed, sample, c, tiny_clip, terms, None, options, lines.append, pixels)[0]
        read = corrupted_features(decomposed, sample, c, tiny_clip, terms, None, options, lines.append)[0]
        assert cached.shape == (11, 32)
        np.testing.assert_allclose(cached, read, rtol=0, atol=1e-6)
    assert sum("(from the pixel cache)" in line for line in lines) == 2 * 4
