"""Bad inputs get one line, never a silent wrong answer: 16-bit images through the one loader (runtime and toolchain),
the pixel limit, non-finite outputs from a finite input, dataset paths that leave the data folder."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clip_debias import runtime
from clip_debias.runtime.datasets import load_index
from clip_debias.runtime.errors import ClipDebiasError, InputError
from clip_debias.runtime.images import ImageError, load_image, to_8bit
from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS, MaxSkipped
from runtime_fixtures import build_artifact, build_waterbirds


def write_png(path: Path, samples: np.ndarray, color_type: int, bit_depth: int = 16, size=None) -> Path:
    """A PNG written by hand (PIL cannot write RGB48 / RGBA64): ``samples`` [H, W, C] (uint16 for 16 bits)."""
    h, w = samples.shape[:2] if size is None else size
    raw = b"".join(b"\x00" + samples[y].astype(">u2" if bit_depth == 16 else "u1").tobytes()
                   for y in range(samples.shape[0]))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    head = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """(8-bit file, 16-bit file with v16 = 257 v8) of a noisy picture, for gray, RGB (RGB48) and RGBA (RGBA64)."""
    root = tmp_path_factory.mktemp("pics")
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (37, 53, 4)).astype(np.uint8)
    rgba[..., 3] = 255
    out = {}
    for name, mode, channels, ctype in (("gray", "L", 1, 0), ("rgb", "RGB", 3, 2), ("rgba", "RGBA", 4, 6)):
        a8 = rgba[..., :channels]
        eight = root / f"{name}8.png"
        Image.fromarray(a8[..., 0] if channels == 1 else a8, mode).save(eight)
        wide = a8.astype(np.uint16) * 257
        if channels == 1:
            Image.fromarray(wide[..., 0]).save(root / f"{name}16.png")  # PIL writes I;16 grayscale itself
            assert Image.open(root / f"{name}16.png").mode == "I;16"
        else:
            write_png(root / f"{name}16.png", wide, ctype)
        out[name] = (eight, root / f"{name}16.png")
    return out


@pytest.mark.parametrize("name", ["gray", "rgb", "rgba"])
def test_16bit_png_predicts_like_its_8bit_version_in_the_runtime(pictures, tmp_path: Path, name: str) -> None:
    fx = build_artifact(tmp_path / "a", fp16=False)
    clf = runtime.load(fx.path, device="cpu")
    eight, sixteen = pictures[name]
    np.testing.assert_array_equal(clf.preprocess(sixteen), clf.preprocess(eight))  # exactly the same input
    p8, p16 = clf.classify([eight, sixteen])
    assert p8.label == p16.label and np.array_equal(p8.logits, p16.logits)


@pytest.mark.parametrize("name", ["gray", "rgb", "rgba"])
def test_16bit_png_predicts_like_its_8bit_version_in_the_toolchain(pictures, tiny_clip, name: str) -> None:
    """The toolchain's dataset loader decodes with the same loader; open_clip's transform then sees equal images."""
    from clip_debias.runtime.datasets import DatasetIndex, ImageRecord
    from clip_debias.toolchain.correct.classifier import plain_classifier
    from clip_debias.toolchain.datasets import iter_batches

    eight, sixteen = pictures[name]
    index = DatasetIndex("csv", eight.parent, "test", [ImageRecord(eight, 0, 0), ImageRecord(sixteen, 0, 0)],
                         ["a", "b"], ["a", "b"])
    (batch,) = iter_batches(index, tiny_clip.preprocess, progress=False)
    assert torch.equal(batch.images[0], batch.images[1])
    with torch.no_grad():
        logits, _ = plain_classifier(tiny_clip, ["a", "b"])(batch.images)
    assert torch.equal(logits[0], logits[1])


def test_16bit_rule_is_the_high_byte(tmp_path: Path) -> None:
    """v8 = v16 >> 8, for 16-bit grayscale in every byte order PIL produces, as PIL does for RGB48 PNGs."""
    v16 = np.array([[0, 255, 256, 32767, 32768, 65280, 65535, 1000]], dtype=np.uint16)
    want = (v16 >> 8).astype(np.uint8)
    pre = runtime.Preprocessor((1, 8), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), resize_mode="squash")
    for mode, dtype in (("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2"), ("I;16N", "=u2")):
        im = Image.frombytes(mode, (8, 1), v16.astype(dtype).tobytes())
        assert im.mode == mode and np.array_equal(np.asarray(to_8bit(im)), want), mode
        np.testing.assert_array_equal(pre(im), pre(Image.fromarray(want)), err_msg=mode)  # a PIL image passed in
    rgb = np.stack([v16[0]] * 3, axis=-1)[None]
    png = write_png(tmp_path / "rgb48.png", rgb, 2)
    assert np.array_equal(np.asarray(load_image(png))[0, :, 0], want[0])


@pytest.mark.parametrize("mode, suffix", [("I", ".tif"), ("F", ".tif")])
def test_undefined_sample_range_refused(tmp_path: Path, mode: str, suffix: str) -> None:
    path = tmp_path / f"x{suffix}"
    Image.fromarray(np.arange(64, dtype=np.int32 if mode == "I" else np.float32).reshape(8, 8)).save(path)
    assert Image.open(path).mode == mode
    with pytest.raises(ImageError, match=f"x.tif: cannot read image \\(mode {mode} samples have no defined 8-bit "
                                         "scale") as e:
        load_image(path)
    assert "\n" not in str(e.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns at open, before our check
def test_pixel_limit_refuses_before_decoding(tmp_path: Path) -> None:
    """A 13000 x 13000 header with next to no data: refused from the header, naming the file; the limit is an
    option (runtime.load(max_image_pixels=...), --max-pixels)."""
    bomb = write_png(tmp_path / "bomb.png", np.zeros((1, 1, 1), np.uint8), 0, 8, size=(13000, 13000))
    assert bomb.stat().st_size < 200 and DEFAULT_MAX_PIXELS == 50_000_000
    with pytest.raises(ImageError, match=r"bomb.png: cannot read image \(13000x13000 = 169,000,000 pixels, over "
                                         r"the limit of 50,000,000 \(--max-pixels"):
        load_image(bomb)
    small = tmp_path / "small.png"
    Image.new("RGB", (100, 60)).save(small)
    assert load_image(small).size == (100, 60)
    with pytest.raises(ImageError, match="small.png: .*100x60 = 6,000 pixels, over the limit of 5,000"):
        load_image(small, max_pixels=5000)
    fx = build_artifact(tmp_path / "a", fp16=False)
    with pytest.raises(ImageError, match="small.png"):
        runtime.load(fx.path, device="cpu", max_image_pixels=5000).classify(small)


def test_cli_max_pixels(tmp_path: Path) -> None:
    from clip_debias.toolchain.cli.app import app

    fx = build_artifact(tmp_path / "a", fp16=False)
    images = build_waterbirds(tmp_path / "wb")
    base = ["verify", str(fx.path), "--dataset", "waterbirds", "--data", str(tmp_path / "wb"), "--split", "test",
            "--no-progress"]
    res = CliRunner().invoke(app, [*base, "--max-pixels", "16"])
    first = next(im for im in images if im.split == "test")
    assert res.exit_code == 2 and res.stdout == ""  # stderr: what verify was doing, then the one error line
    *doing, error = res.stderr.splitlines()
    assert [line.split(":")[0] for line in doing] == [f"verify {fx.path}"]
    assert "pixels, over the limit of 16 (--max-pixels" in error
    assert error.startswith(f"error: {first.path}: cannot read image")


def test_non_finite_outputs_from_finite_input_refused(tmp_path: Path) -> None:
    fx = build_artifact(tmp_path / "a", fp16=False)
    clf = runtime.load(fx.path, device="cpu")
    x = np.zeros((3, 3, 24, 24), np.float32)
    x[1] = 3e38  # finite, but the model overflows on it
    with pytest.raises(InputError, match=r"outputs are NaN/Inf for batch item\(s\) \[1\], from a finite input") as e:
        clf.predict_logits(x)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="from a finite input"):
        clf.embed(x)


def test_verify_names_the_image_with_non_finite_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clip_debias.runtime.verify import verify

    fx = build_artifact(tmp_path / "a", fp16=False)
    images = build_waterbirds(tmp_path / "wb")
    clf = runtime.load(fx.path, device="cpu")
    run = clf.backend.run

    def overflow_third(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, emb = run(x)
        logits[2] = np.inf
        return logits, emb

    monkeypatch.setattr(clf.backend, "run", overflow_third)
    third = [im for im in images if im.split == "test"][2]
    with pytest.raises(InputError, match=f"{third.path}: outputs are NaN/Inf"):
        verify(fx.path, "waterbirds", tmp_path / "wb", classifier=clf, progress=False)


# ---- dataset paths that leave the data folder -------------------------------------------------------------------
def _waterbirds_with(root: Path, name: str) -> Path:
    build_waterbirds(root)
    with open(root / "metadata.csv", "a") as f:
        f.write(f"99,{name},0,2,0\n")
    return root


@pytest.mark.parametrize("name", ["../outside.png", "/tmp/outside.png", "a/../../outside.png"])
def test_waterbirds_path_outside_root_refused(tmp_path: Path, name: str) -> None:
    root = _waterbirds_with(tmp_path / "wb", name)
    with pytest.raises(ClipDebiasError, match=f"metadata.csv line 22: column 'img_filename' '{name}' leaves the data "
                                              "folder .* pass --allow-outside-root") as e:
        load_index("waterbirds", root, "test")
    assert "\n" not in str(e.value)
    index = load_index("waterbirds", root, "test", allow_outside_root=True)
    assert index.records[-1].path == root / name


def test_inside_paths_with_dotdot_are_fine(tmp_path: Path) -> None:
    root = _waterbirds_with(tmp_path / "wb", "000.Fixture_0/../000.Fixture_0/x.png")
    assert load_index("waterbirds", root, "test").records[-1].path.name == "x.png"


def test_celeba_and_csv_paths_outside_root_refused(tmp_path: Path) -> None:
    c = tmp_path / "celeba"
    (c / "img_align_celeba").mkdir(parents=True)
    names = ["5_o_Clock_Shadow", "Blond_Hair", "Male"]
    (c / "list_attr_celeba.txt").write_text(f"1\n{' '.join(names)}\n../../secret.jpg -1 1 1\n")
    (c / "list_eval_partition.txt").write_text("../../secret.jpg 2\n")
    with pytest.raises(ClipDebiasError, match="list_attr_celeba.txt line 3: column 'filename' '../../secret.jpg' "
                                              "leaves the data folder"):
        load_index("celeba", c, "test")
    d = tmp_path / "csv"
    d.mkdir()
    (d / "data.csv").write_text("path,label\n../secret/private.png,0\n")
    with pytest.raises(ClipDebiasError, match="data.csv line 2: column 'path' '../secret/private.png' leaves"):
        load_index("csv", d, "test")


def test_cli_allow_outside_root(tmp_path: Path) -> None:
    from clip_debias.toolchain.cli.app import app

    fx = build_artifact(tmp_path / "a", fp16=False)
    images = build_waterbirds(tmp_path / "wb")
    d = tmp_path / "csv"
    d.mkdir()
    rows = [im for im in images if im.split == "test"][:4]
    (d / "data.csv").write_text("path,label\n" + "".join(f"{im.path},{im.label}\n" for im in rows))
    base = ["verify", str(fx.path), "--dataset", "csv", "--data", str(d), "--split", "test", "--no-progress"]
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 2 and "leaves the data folder" in res.output and res.output.count("\n") == 1
    assert CliRunner().invoke(app, [*base, "--allow-outside-root"]).exit_code == 0


def test_max_skipped_parse() -> None:
    """One meaning per number: N images or P%; '1' is one image, '1%' one percent; a bare fraction ('1.0', '0.5',
    '0.02': '1.0' once meant 100 % a digit away from '1' = one image) is refused in one line naming both forms."""
    assert MaxSkipped.parse("5") == MaxSkipped(count=5) and MaxSkipped.parse("1") == MaxSkipped(count=1)
    assert MaxSkipped.parse("1%") == MaxSkipped(fraction=0.01) and MaxSkipped.parse("1").limit(160) == 1
    assert MaxSkipped.parse("2%") == MaxSkipped(fraction=0.02) and MaxSkipped.parse("2%").limit(1200) == 24
    assert MaxSkipped(fraction=0.01).limit(40) == 0 and MaxSkipped(fraction=0.01).limit(1200) == 12
    for bad in ("-1", "150%", "1.5", "x", "", "1.0", "0.5", "0.02"):
        with pytest.raises(InputError, match=r"--max-skipped .*expected N \(a count of images, e.g. 5\) or P% "):
            MaxSkipped.parse(bad)
