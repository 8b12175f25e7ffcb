"""Issue 25 items 3-5: duplicate rows, bounded work for every input, and no traceback on a bad input.

Duplicates: the same image file on two rows of a split is refused in one line naming the first two rows of one file
and the count, or with --allow-duplicates counted once. Bounded work: every size limit (pixels of every sub-image of
a container, metadata rows, lab image size / counts / memory / disk) is refused in one line before the work it bounds
allocates (peak RSS of a subprocess that meets each one stays under 300 MB). No traceback: the CLI, with warnings
turned into errors, ends every bad input in one ``error:`` line and a non-zero exit."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import IcoImagePlugin, Image
from typer.testing import CliRunner

from bad_inputs import (BAD_IMAGES, ico_real, ico_with_png, png_declaring, tiff_big_second_page, webp_animation,
                        write_waterbirds_listing)
from clip_debias.runtime import limits, progress
from clip_debias.runtime.datasets import load_index, read_csv, read_whitespace
from clip_debias.runtime.errors import ClipDebiasError, InputError
from clip_debias.runtime.images import ImageError, load_image
from clip_debias.runtime.limits import IndexChecks, available_memory, check_memory
from runtime_fixtures import build_artifact

TESTS = Path(__file__).parent
CLI = Path(sys.executable).with_name("clip-debias")


def _images(folder: Path, n: int = 4) -> list[str]:
    """``n`` small distinct PNGs ``0.png`` ... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (20, 20), (60 * i, 255 - 60 * i, 7)).save(folder / f"{i}.png")
    return [f"{i}.png" for i in range(n)]


def _csv(folder: Path, rows: list[str], header: str = "path,label,split") -> Path:
    (folder / "data.csv").write_text("\n".join([header, *rows]) + "\n")
    return folder / "data.csv"


# ---- duplicates ---------------------------------------------------------------------------------------------------
def test_duplicate_rows_refused_naming_the_first_two_and_the_count(tmp_path: Path) -> None:
    _images(tmp_path)
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path / "2.png", tmp_path / "link.png")
    rows = ["0.png,0,test", "1.png,1,test", "./0.png,0,test", "sub/../1.png,1,test", "2.png,0,test",
            "link.png,0,test", "3.png,1,test", "0.png,0,train"]  # the train row is another split: not a duplicate
    path = _csv(tmp_path, rows)
    with pytest.raises(InputError) as e:
        load_index("csv", path, "test")
    message = str(e.value)
    assert "\n" not in message
    assert "3 row(s) repeat an image file already listed (4 distinct of 7 rows; --dedupe path)" in message
    assert f"first: row 3 '{tmp_path / '0.png'}' is the same file as row 1 '{tmp_path / '0.png'}'" in message
    assert "--allow-duplicates" in message
    assert len(load_index("csv", path, "train").records) == 1


def test_allow_duplicates_counts_each_file_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One group's rows repeated 5 times (the issue's case): n is the number of distinct files."""
    names = _images(tmp_path / "img", 8)
    rows = [f"img/{n},{i % 2},test" for i, n in enumerate(names)]
    path = _csv(tmp_path, rows + rows[:2] * 4)
    with caplog.at_level(logging.WARNING, "clip_debias.datasets"):
        index = load_index("csv", path, "test", checks=IndexChecks(allow_duplicates=True))
    assert [r.path.name for r in index.records] == names and index.duplicates_dropped == 8
    assert "8 duplicate row(s) dropped (--allow-duplicates, --dedupe path): each of its 8 image files counts once" \
        in caplog.text


def test_dedupe_content_and_counterfactual_pairs(tmp_path: Path) -> None:
    """A copy under another name is a duplicate by content only; the two images of a counterfactual pair never are
    duplicates of each other, even with equal bytes, but the same path twice is one whatever its pair."""
    _images(tmp_path)
    shutil.copy(tmp_path / "2.png", tmp_path / "copy.png")
    plain = _csv(tmp_path, ["0.png,0,test,", "1.png,1,test,", "2.png,0,test,", "copy.png,0,test,"],
                 "path,label,split,pair")
    assert len(load_index("csv", plain, "test").records) == 4
    with pytest.raises(InputError, match=r"row 4 '.*copy.png' is the same bytes as row 3 '.*2.png'"):
        load_index("csv", plain, "test", checks=IndexChecks(dedupe="content"))
    paired = _csv(tmp_path, ["0.png,0,test,", "1.png,1,test,", "2.png,0,test,7", "copy.png,0,test,7"],
                  "path,label,split,pair")
    assert len(load_index("csv", paired, "test", checks=IndexChecks(dedupe="content")).records) == 4
    same = _csv(tmp_path, ["0.png,0,test,", "2.png,0,test,7", "./2.png,0,test,7"], "path,label,split,pair")
    with pytest.raises(InputError, match="1 row\\(s\\) repeat"):
        load_index("csv", same, "test", checks=IndexChecks(dedupe="content"))


def test_verify_refuses_duplicates_and_counts_them_once(tmp_path: Path) -> None:
    from clip_debias.toolchain.cli.app import app

    artifact = build_artifact(tmp_path / "a", fp16=False).path
    data = tmp_path / "wb"
    names = _images(data, 8)
    write_waterbirds_listing(data, names + names[:1] * 5)
    base = ["verify", str(artifact), "--dataset", "waterbirds", "--data", str(data), "--split", "test",
            "--no-progress", "--latency-batches", "0"]
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
    assert "5 row(s) repeat an image file already listed (8 distinct of 13 rows" in res.stderr
    res = CliRunner().invoke(app, [*base, "--allow-duplicates", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.stderr
    assert "5 duplicate row(s) dropped" in res.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["n"] == report["n_split"] == 8 and report["duplicates_dropped"] == 5


# ---- bounded work: metadata rows ----------------------------------------------------------------------------------
def test_max_rows_refused_while_reading(tmp_path: Path) -> None:
    path = _csv(tmp_path, [f"{i}.png,0,test" for i in range(5000)])
    with pytest.raises(ClipDebiasError, match=r"data.csv: more than 1,000 rows, over the limit of --max-rows 1,000"):
        load_index("csv", path, "test", checks=IndexChecks(max_rows=1000))
    assert len(read_csv(path, ("path",), max_rows=5000).rows) == 5000
    txt = tmp_path / "list.txt"
    txt.write_text("".join(f"{i}.jpg 0\n" for i in range(20)))
    with pytest.raises(ClipDebiasError, match="more than 10 rows"):
        read_whitespace(txt, ("partition",), columns=["partition"], max_rows=10)
    assert len(read_whitespace(txt, ("partition",), columns=["partition"], max_rows=20).rows) == 20
    with pytest.raises(InputError, match="--max-rows 0: expected a count of rows >= 1"):
        IndexChecks(max_rows=0)


def test_reading_and_passes_log_progress_every_few_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """With the clock interval at 0 a line comes every 1,024 rows read, and every batch of a pass (not only every
    tenth of the batches)."""
    monkeypatch.setattr(progress, "SECONDS", 0.0)
    path = _csv(tmp_path, [f"{i}.png,0,test" for i in range(5000)])
    with caplog.at_level(logging.INFO):
        read_csv(path, ("path",))
    assert caplog.text.count("rows so far") == 4 and "4,096 rows so far" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, "clip_debias.progress"):
        with progress.Progress("pass", 100, 100, console=_NotATerminal()) as p:
            for _ in range(5):
                p.advance(1)
    assert caplog.text.count("pass: ") == 5


class _NotATerminal:
    is_terminal = False


# ---- bounded work: lab, memory ------------------------------------------------------------------------------------
def _meminfo(tmp_path: Path, kib: int) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       99999999 kB\nMemAvailable:   {kib} kB\n")
    return path


def test_available_memory_and_check_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MEMINFO", _meminfo(tmp_path, 102400))
    assert available_memory() == 100 * 2 ** 20
    check_memory(100 * 2 ** 20, "fits")
    with pytest.raises(InputError, match=r"^job: needs about 200 MiB of memory, more than the 100 MiB available now"):
        check_memory(200 * 2 ** 20, "job")
    monkeypatch.setattr(limits, "MEMINFO", tmp_path / "missing")
    assert available_memory() is None
    check_memory(2 ** 60, "no meminfo: no check")


def test_lab_limits_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clip_debias.toolchain.lab import data as lab

    with pytest.raises(InputError, match=r"^--image-size 100,000: at most 1,024 \(pixels a side"):
        lab.lab_data_config(image_size=100_000)
    with pytest.raises(InputError, match=r"^--n-train 1,000,000,000,000: at most 1,000,000 \(images per split\)"):
        lab.lab_data_config(n_train=10 ** 12)
    with pytest.raises(InputError, match=r"^--n-test 1,000,004: at most 1,000,000"):
        lab.lab_data_config(n_test=1_000_004)
    monkeypatch.setattr(limits, "MEMINFO", _meminfo(tmp_path, 102400))
    with pytest.raises(InputError, match=r"^lab make-data: 1,001,800 images of 64x64 px: needs about 4\d\d MiB of "
                                         r"memory, more than the 100 MiB available now"):
        lab.make_lab_data(tmp_path / "out", n_train=1_000_000)
    monkeypatch.setattr(limits, "MEMINFO", _meminfo(tmp_path, 2 ** 30))
    monkeypatch.setattr(lab.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(2 ** 40, 2 ** 40 - 2 ** 30,
                                                                                      2 ** 30))
    with pytest.raises(ClipDebiasError, match=r"^lab make-data: 10,000 images of 1024x1024 px: the files need at least "
                                              r"9.77 GiB of disk, more than the 1 GiB free in"):
        lab.make_lab_data(tmp_path / "out", n_train=8_200, image_size=1024)
    assert not (tmp_path / "out").exists()


def test_lab_train_refuses_a_split_larger_than_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clip_debias.toolchain.lab.train import load_split

    names = _images(tmp_path, 4)
    (tmp_path / "metadata.csv").write_text("img_filename,y,split,place\n" +
                                           "".join(f"{n},0,0,{i % 2}\n" for i, n in enumerate(names)))
    assert tuple(load_split(tmp_path, "train").images.shape) == (4, 3, 20, 20)
    monkeypatch.setattr(limits, "MEMINFO", _meminfo(tmp_path, 1))  # 1 KiB: 4 x 20 x 20 x 3 x 3 B do not fit
    with pytest.raises(InputError, match=r"split train, 4 images of 20x20 px decoded: needs about 14.1 KiB"):
        load_split(tmp_path, "train")


# ---- bounded work: every sub-image of a container ------------------------------------------------------------------
@pytest.mark.parametrize("name, data, reason", [
    ("ico.ico", ico_with_png(8000, 8000), "entry 1 of 1: 8000x8000 = 64,000,000 pixels"),
    ("tiff.tif", tiff_big_second_page(9000, 9000), "frame 2 of 2: 9000x9000 = 81,000,000 pixels"),
    ("webp.webp", webp_animation(8000, 8000), "8000x8000 = 64,000,000 pixels"),
    ("png.png", png_declaring(13000, 13000), "13000x13000 = 169,000,000 pixels"),
])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bombs_refused_from_headers(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    """Small files declaring huge sub-images: refused from their headers (the ICO's directory says 256 x 256; the
    TIFF's first page is 32 x 32; the WebP's frames are 32 x 32 on an 8000 x 8000 canvas)."""
    path = tmp_path / name
    path.write_bytes(data)
    assert len(data) < 10_000
    with pytest.raises(ImageError, match=f"{name}: cannot read image \\({reason}, over the limit of 50,000,000"):
        load_image(path)


@pytest.mark.filterwarnings("ignore:Image was not the expected size")  # PIL, on the ICO entry it loads
def test_limit_applies_to_real_sub_images(tmp_path: Path) -> None:
    """Real files, no patched header: an ICO entry whose PNG is larger than its directory can say, a TIFF and an MPO
    whose second page / frame is the large one."""
    ico = tmp_path / "real.ico"
    ico.write_bytes(ico_real(300))
    with open(ico, "rb") as f:
        assert IcoImagePlugin.IcoFile(f).entry[0].dim == (256, 256)  # what the ICO directory says
    with pytest.raises(ImageError, match=r"entry 1 of 1: 300x300 = 90,000 pixels, over the limit of 10,000"):
        load_image(ico, max_pixels=10_000)
    assert load_image(ico, max_pixels=90_000).size == (300, 300)
    tif = tmp_path / "pages.tif"
    Image.new("L", (10, 10)).save(tif, save_all=True, append_images=[Image.new("L", (200, 200))])
    with pytest.raises(ImageError, match=r"frame 2 of 2: 200x200 = 40,000 pixels, over the limit of 10,000"):
        load_image(tif, max_pixels=10_000)
    assert load_image(tif, max_pixels=40_000).size == (10, 10)
    mpo = tmp_path / "pair.mpo"
    Image.new("RGB", (20, 20)).save(mpo, "MPO", save_all=True, append_images=[Image.new("RGB", (200, 150))])
    with pytest.raises(ImageError, match=r"frame 2 of 2: 200x150 = 30,000 pixels, over the limit of 10,000"):
        load_image(mpo, max_pixels=10_000)


RSS_SCRIPT = """
import resource, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from bad_inputs import BAD_IMAGES
from clip_debias.runtime.datasets import load_index
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.images import load_image
from clip_debias.runtime.limits import IndexChecks
from clip_debias.toolchain.lab.data import make_lab_data

tmp = Path({tmp!r})
attempts = [lambda: make_lab_data(tmp / "lab1", image_size=100_000),
            lambda: make_lab_data(tmp / "lab2", n_train=10 ** 12),
            lambda: make_lab_data(tmp / "lab3", n_train=1_000_000, n_val=1_000_000, n_test=1_000_000,
                                  image_size=1024),
            lambda: load_index("csv", tmp / "rows.csv", "test", checks=IndexChecks(max_rows=1000))]
for name in ("bomb.png", "ico_bomb.ico", "tiff_bomb.tif", "webp_bomb.webp"):
    (tmp / name).write_bytes(BAD_IMAGES[name])
    attempts.append(lambda name=name: load_image(tmp / name))
for attempt in attempts:
    try:
        attempt()
        print("accepted")
    except ClipDebiasError as e:
        print("refused:", e)
status = Path("/proc/self/status")
hwm = [l for l in status.read_text().splitlines() if l.startswith("VmHWM:")] if status.exists() else []
peak_kib = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("peak_rss_mb", peak_kib / 1024)
"""


def test_every_size_limit_refused_before_allocation(tmp_path: Path) -> None:
    """One subprocess meets every limit: each is refused and its peak resident memory stays under 300 MB (the issue's
    cases grew to 24 GB, asked for 7.28 TiB, +245 MB, 737 MB). The peak is the child's own ``VmHWM`` (Linux;
    elsewhere ``resource.getrusage``): Linux carries the peak of the process image before ``exec`` into the child's
    ``ru_maxrss``, and a subprocess of this test process starts from this process's (torch-sized) image."""
    (tmp_path / "rows.csv").write_text("path,label\n" + "x.png,0\n" * 100_000)
    res = subprocess.run([sys.executable, "-W", "error", "-c", RSS_SCRIPT.format(tests=str(TESTS), tmp=str(tmp_path))],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    *lines, peak = res.stdout.splitlines()
    assert len(lines) == 8 and all(line.startswith("refused: ") for line in lines), lines
    assert "at most 1,024" in lines[0] and "at most 1,000,000" in lines[1]
    assert "of disk" in lines[2] or "of memory" in lines[2]
    assert "more than 1,000 rows" in lines[3]
    assert all("cannot read image" in line for line in lines[4:])
    assert float(peak.split()[1]) < 300, peak


# ---- one meaning per number -----------------------------------------------------------------------------------------
def test_noise_strength_is_a_fraction_of_the_pixel_range() -> None:
    from clip_debias.toolchain.audit.corruptions import parse_corruptions

    assert parse_corruptions("noise0.2,noise1")[1].value == 1
    with pytest.raises(ClipDebiasError, match=r"'noise25': noise S is a fraction of the pixel range, at most 1"):
        parse_corruptions("noise25")


# ---- no traceback ---------------------------------------------------------------------------------------------------
def _bad_input_cases(root: Path) -> dict[str, list[str]]:
    """CLI argument lists, one per bad input, each to be refused in one line; except "bad images": every bad image of
    ``BAD_IMAGES`` and a directory in one verify --skip-bad run, each left out, which FAILS the max_skipped gate
    (exit 1, the report lists them)."""
    artifact = build_artifact(root / "a", fp16=False).path

    def data(name: str, files: list[str], extra: dict[str, bytes] | None = None) -> Path:
        folder = root / name
        _images(folder)
        for f, b in (extra or {}).items():
            (folder / f).write_bytes(b)
        return write_waterbirds_listing(folder, files)

    def verify(folder: Path, *more: str) -> list[str]:
        return ["verify", str(artifact), "--dataset", "waterbirds", "--data", str(folder), "--split", "test",
                "--no-progress", *more]

    images = data("images", ["0.png", "1.png", *BAD_IMAGES, "sub", "2.png", "3.png"], BAD_IMAGES)
    (images / "sub").mkdir()
    cases = {"bad images": verify(images, "--skip-bad", "--json", str(root / "bad-images.json"))}
    cases["duplicate rows"] = verify(data("dup", ["0.png", "1.png", "2.png", "3.png", "0.png"]))
    cases["--max-rows"] = verify(root / "dup", "--max-rows", "3")
    for name, content in {"csv not utf-8": b"img_filename,y,split,place\n\xff\xfe.png,0,2,0\n",
                          "csv with NUL": b"img_filename,y,split,place\n0.png\x00,0,2,0\n"}.items():
        folder = data(name.replace(" ", "_"), [])
        (folder / "metadata.csv").write_bytes(content)
        cases[name] = verify(folder)
    cases["--min-accuracy 90 (a percent)"] = verify(root / "dup", "--min-accuracy", "90")
    lab = ["lab", "make-data", "--out", str(root / "lab")]
    cases["lab --image-size"] = [*lab, "--image-size", "100000"]
    cases["lab --n-train"] = [*lab, "--n-train", "1000000000000"]
    cases["lab --correlation 85 (a percent)"] = [*lab, "--correlation", "85"]
    return cases


def test_bad_inputs_end_in_one_line_without_traceback(tmp_path: Path) -> None:
    """The console script with every warning an error (PYTHONWARNINGS=error): exit 2 and one ``error:`` line on
    stderr for each bad input; never ``Traceback``. Four at a time (each is a separate process)."""
    cases = _bad_input_cases(tmp_path)
    env = {**os.environ, "PYTHONWARNINGS": "error"}

    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([str(CLI), *args], capture_output=True, text=True, env=env, timeout=300)

    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(cases, pool.map(run, cases.values())))
    bad_images = results.pop("bad images")
    assert "Traceback" not in bad_images.stderr and bad_images.returncode == 1, bad_images.stderr[-600:]
    skipped = json.loads((tmp_path / "bad-images.json").read_text())["skipped"]
    assert len(skipped) == len(BAD_IMAGES) + 1
    failures = {name: r.stderr[-600:] for name, r in results.items()
                if "Traceback" in r.stderr or r.returncode != 2 or not r.stderr.splitlines()[-1].startswith("error: ")}
    assert not failures, failures
    assert "holds a NUL character" in results["csv with NUL"].stderr
