"""Dataset indexes (waterbirds, celeba, csv) and the batch loader, on tiny fixture folders made here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from clip_debias.runtime.datasets import load_index
from clip_debias.runtime.limits import MaxSkipped
from clip_debias.runtime.ownership import SKIPPED_HEADER
from clip_debias.toolchain.datasets import iter_batches
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.loading import load_clip

CELEBA_ATTRS = ["5_o_Clock_Shadow", "Blond_Hair", "Male", "Young"]  # the real file has 40; the loader reads by name


def image(path: Path, mode: str = "RGB", size: tuple[int, int] = (8, 8), seed: int = 0) -> Path:
    """A small image with varied pixels, saved in the format of ``path``'s suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randint(0, 256, (size[1], size[0], 3), dtype=torch.uint8, generator=g).numpy()
    im = Image.fromarray(rgb, "RGB")
    im = im.convert(mode) if mode != "P" else im.quantize(16)
    im.save(path)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error(fn, *args, **kwargs) -> str:
    """The one-line message of the ClipDebiasError that ``fn`` raises."""
    with pytest.raises(ClipDebiasError) as e:
        fn(*args, **kwargs)
    message = str(e.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def preprocess():
    return load_clip("clipdebias-tiny", random_weights=True).preprocess


# ---- waterbirds --------------------------------------------------------------------------------------------------

WATERBIRDS_ROWS = [  # img_filename, y, split, place
    ("001.Black_footed_Albatross/a.jpg", 1, 0, 1),
    ("001.Black_footed_Albatross/b.jpg", 1, 0, 0),
    ("002.Laysan/c.jpg", 0, 0, 1),
    ("002.Laysan/d.jpg", 0, 1, 0),
    ("003.Sooty/e.jpg", 1, 2, 1),
    ("003.Sooty/f.jpg", 0, 2, 0),
]


def waterbirds(root: Path, rows=WATERBIRDS_ROWS,
               header: str = "img_id,img_filename,y,split,place,place_filename") -> Path:
    lines = [header] + [f"{i},{f},{y},{s},{p},/x/{i}.jpg" for i, (f, y, s, p) in enumerate(rows, 1)]
    write(root / "metadata.csv", "\n".join(lines) + "\n")
    for f, *_ in rows:
        image(root / f)
    return root


def test_waterbirds_groups_splits_names(tmp_path: Path) -> None:
    root = waterbirds(tmp_path)
    train = load_index("waterbirds", root, "train")
    assert [(r.path, r.label, r.group, r.attribute) for r in train.records] == [
        (root / "001.Black_footed_Albatross/a.jpg", 1, 3, 1),
        (root / "001.Black_footed_Albatross/b.jpg", 1, 2, 0),
        (root / "002.Laysan/c.jpg", 0, 1, 1),
    ]
    assert train.class_names == ["landbird", "waterbird"]
    assert train.group_names == ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
    assert (train.attribute_name, train.attribute_names) == ("place", ["land", "water"])
    assert [r.group for r in load_index("waterbirds", root, "val").records] == [0]
    assert [r.group for r in load_index("waterbirds", root, "test").records] == [3, 0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("img_filename,y,place\na.jpg,1,0\n", "metadata.csv: missing column 'split'"),
        ("img_filename,y,split,place\na.jpg,x,0,0\n", "metadata.csv line 2: column 'y' must be 0 or 1, got 'x'"),
        ("img_filename,y,split,place\na.jpg,1,0,2\n", "metadata.csv line 2: column 'place' must be 0 or 1, got '2'"),
        ("img_filename,y,split,place\na.jpg,1,0,0\n\nb.jpg,1,7,0\n",
         "metadata.csv line 4: column 'split' must be 0 or 1 or 2, got '7'"),
        ("img_filename,y,split,place\na.jpg,1,0\n", "metadata.csv line 2: expected 4 fields, got 3"),
    ],
)
def test_waterbirds_bad_metadata(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path / "metadata.csv", text)
    message = error(load_index, "waterbirds", tmp_path, "train")
    assert message.startswith(str(tmp_path / "metadata.csv")) and expected in message


def test_waterbirds_missing_file_and_empty_split(tmp_path: Path) -> None:
    assert "metadata.csv: not found" in error(load_index, "waterbirds", tmp_path, "train")
    write(tmp_path / "metadata.csv", "img_filename,y,split,place\na.jpg,1,0,0\n")
    assert "split 'test' of the waterbirds dataset has no images" in error(load_index, "waterbirds", tmp_path, "test")


def test_unknown_format_split_and_data(tmp_path: Path) -> None:
    root = waterbirds(tmp_path)
    assert "format 'imagenet' is unknown" in error(load_index, "imagenet", root, "train")
    assert "split 'validation' is unknown (expected one of: train, val, test)" in error(
        load_index, "waterbirds", root, "validation"
    )
    assert "nowhere: not found" in error(load_index, "waterbirds", tmp_path / "nowhere", "train")
    assert "only for the csv format" in error(load_index, "waterbirds", root, "train", classes=["a", "b"])


# ---- celeba ------------------------------------------------------------------------------------------------------

CELEBA_ROWS = [  # filename, Blond_Hair, Male, partition
    ("000001.jpg", 1, -1, 0),
    ("000002.jpg", -1, -1, 0),
    ("000003.jpg", -1, 1, 0),
    ("000004.jpg", 1, 1, 1),
    ("000005.jpg", -1, 1, 2),
]


def celeba(root: Path, attr: str = "txt", part: str = "txt", rows=CELEBA_ROWS, nested: bool = False) -> Path:
    images = root / "img_align_celeba" / ("img_align_celeba" if nested else "")
    for f, *_ in rows:
        image(images / f)
    values = [[f, "-1", str(b), str(m), "1"] for f, b, m, _ in rows]
    if attr == "txt":  # published: count, names, then space-padded rows
        write(root / "list_attr_celeba.txt",
              f"{len(rows)}\n{' '.join(CELEBA_ATTRS)} \n"
              + "".join(f"{v[0]} " + "  ".join(v[1:]) + "\n" for v in values))
    else:
        write(root / "list_attr_celeba.csv",
              "image_id," + ",".join(CELEBA_ATTRS) + "\n" + "".join(",".join(v) + "\n" for v in values))
    if part == "txt":
        write(root / "list_eval_partition.txt", "".join(f"{f} {p}\n" for f, *_, p in rows))
    else:
        write(root / "list_eval_partition.csv", "image_id,partition\n" + "".join(f"{f},{p}\n" for f, *_, p in rows))
    return root


@pytest.mark.parametrize("attr, part", [("txt", "txt"), ("csv", "csv"), ("txt", "csv"), ("csv", "txt")])
def test_celeba_formats(tmp_path: Path, attr: str, part: str) -> None:
    root = celeba(tmp_path, attr, part)
    train = load_index("celeba", root, "train")
    assert [(r.path.name, r.label, r.attribute, r.group) for r in train.records] == [
        ("000001.jpg", 1, 0, 2),
        ("000002.jpg", 0, 0, 0),
        ("000003.jpg", 0, 1, 1),
    ]
    assert train.records[0].path == root / "img_align_celeba" / "000001.jpg"
    assert train.class_names == ["not blond", "blond"]
    assert train.group_names == ["not blond/female", "not blond/male", "blond/female", "blond/male"]
    assert (train.attribute_name, train.attribute_names) == ("Male", ["female", "male"])
    assert [r.group for r in load_index("celeba", root, "val").records] == [3]
    assert [r.group for r in load_index("celeba", root, "test").records] == [1]


def test_celeba_kaggle_nested_image_folder(tmp_path: Path) -> None:
    root = celeba(tmp_path, "csv", "csv", nested=True)
    record = load_index("celeba", root, "val").records[0]
    assert record.path == root / "img_align_celeba" / "img_align_celeba" / "000004.jpg" and record.path.is_file()


def test_celeba_errors(tmp_path: Path) -> None:
    root = celeba(tmp_path)
    (root / "list_eval_partition.txt").unlink()
    assert "neither list_eval_partition.txt nor list_eval_partition.csv found" in error(
        load_index, "celeba", root, "train"
    )
    write(root / "list_eval_partition.txt", "000001.jpg 0\n000002.jpg 5\n")
    assert "list_eval_partition.txt line 2: column 'partition' must be 0 or 1 or 2, got '5'" in error(
        load_index, "celeba", root, "train"
    )
    write(root / "list_eval_partition.txt", "000001.jpg 0\n")
    assert "list_eval_partition.txt: no partition for '000002.jpg' (listed in" in error(
        load_index, "celeba", root, "train"
    )
    celeba(root)
    attr = root / "list_attr_celeba.txt"
    write(attr, attr.read_text().replace("000003.jpg -1  -1  1", "000003.jpg -1  0  1"))
    assert "list_attr_celeba.txt line 5: column 'Blond_Hair' must be -1 or 1, got '0'" in error(
        load_index, "celeba", root, "train"
    )
    write(attr, "1\nBlond_Hair Young\n000001.jpg 1 1\n")
    assert "list_attr_celeba.txt: missing column 'Male'" in error(load_index, "celeba", root, "train")
    for f in (root / "img_align_celeba").iterdir():
        f.unlink()
    (root / "img_align_celeba").rmdir()
    assert "img_align_celeba: not found" in error(load_index, "celeba", root, "train")


# ---- csv ---------------------------------------------------------------------------------------------------------


def csv_dataset(root: Path, lines: list[str], name: str = "data.csv") -> Path:
    for line in lines[1:]:
        image(root / line.split(",")[0])
    return write(root / name, "\n".join(lines) + "\n")


def test_csv_int_labels_directory_convention(tmp_path: Path) -> None:
    csv_dataset(tmp_path, ["path,label", "img/a.png,0", "img/b.png,2", "c.png,1"])
    index = load_index("csv", tmp_path, "test")
    assert [(r.path, r.label, r.group, r.attribute) for r in index.records] == [
        (tmp_path / "img/a.png", 0, 0, None),
        (tmp_path / "img/b.png", 2, 2, None),
        (tmp_path / "c.png", 1, 1, None),
    ]
    assert index.class_names == index.group_names == ["class_0", "class_1", "class_2"]
    assert index.attribute_name is None and index.root == tmp_path
    named = load_index("csv", tmp_path / "data.csv", "train", classes=["cat", "dog", "bird"])
    assert named.class_names == ["cat", "dog", "bird"] and len(named) == 3
    assert "column 'label' must be below 2" in error(load_index, "csv", tmp_path, "train", classes=["cat", "dog"])


def test_csv_without_split_column_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every split of a CSV without a 'split' column is the whole file; a held-out "test" result would be a lie, so
    loading says so (one warning line); with the column, nothing is said."""
    csv_dataset(tmp_path / "a", ["path,label", "x.png,0", "y.png,1"])
    with caplog.at_level("WARNING", logger="clip_debias.datasets"):
        assert len(load_index("csv", tmp_path / "a", "test")) == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"warning: {tmp_path / 'a' / 'data.csv'} has no 'split' column: split 'test' is every row of the file (so is "
        "every other split)"]
    caplog.clear()
    csv_dataset(tmp_path / "b", ["path,label,split", "x.png,0,test", "y.png,1,train"])
    with caplog.at_level("WARNING", logger="clip_debias.datasets"):
        assert len(load_index("csv", tmp_path / "b", "test")) == 1
    assert not caplog.records


def test_csv_string_labels_group_split(tmp_path: Path) -> None:
    path = csv_dataset(tmp_path / "sub", [
        "path,label,group,split", "a.png,dog,1,train", "b.png,cat,0,train", "c.png,dog,3,val", "d.png,cat,2,test",
    ], name="mine.csv")
    train = load_index("csv", path, "train")
    assert [(r.path.name, r.label, r.group) for r in train.records] == [("a.png", 1, 1), ("b.png", 0, 0)]
    assert train.class_names == ["cat", "dog"]
    assert train.group_names == ["group_0", "group_1", "group_2", "group_3"]
    ordered = load_index("csv", path, "val", classes=["dog", "cat"])
    assert [(r.label, r.group) for r in ordered.records] == [(0, 3)] and ordered.class_names == ["dog", "cat"]
    assert "column 'label' must be one of the class names (dog, bird), got 'cat'" in error(
        load_index, "csv", path, "train", classes=["dog", "bird"]
    )


@pytest.mark.parametrize(
    "lines, expected",
    [
        (["path,group", "a.png,0"], "data.csv: missing column 'label'"),
        (["path,label,group", "a.png,0,x"], "data.csv line 2: column 'group' must be an integer >= 0, got 'x'"),
        (["path,label,split", "a.png,0,dev"], "data.csv line 2: column 'split' must be one of train, val, test"),
        (["path,label", "a.png,"], "data.csv line 2: column 'label' is empty"),
        (["path,label,split", "a.png,0,val"], "split 'train' of the csv dataset has no images"),
    ],
)
def test_csv_bad_input(tmp_path: Path, lines: list[str], expected: str) -> None:
    csv_dataset(tmp_path, lines)
    assert expected in error(load_index, "csv", tmp_path, "train")


def test_csv_pairs_and_attribute_columns(tmp_path: Path) -> None:
    """``pair`` and attribute columns: every extra column is an attribute (ids, class names, or sorted strings);
    ``protected`` picks one (default the first)."""
    path = csv_dataset(tmp_path, [
        "path,label,split,pair,gender,bg,kind",
        "a.png,cat,test,7,f,cat,2", "b.png,cat,test,7,m,dog,0", "c.png,dog,test,,m,dog,1", "d.png,dog,train,,f,cat,0",
    ])
    index = load_index("csv", path, "test")
    assert [a.name for a in index.attributes] == ["gender", "bg", "kind"] and index.protected == "gender"
    assert [a.values for a in index.attributes] == [("f", "m"), ("cat", "dog"), ("0", "1", "2")]
    assert [(r.pair, r.attributes, r.attribute) for r in index.records] == [
        (7, (0, 0, 2), 0), (7, (1, 1, 0), 1), (None, (1, 1, 1), 1)]
    assert index.attribute_name == "gender" and index.attribute_ids("kind") == [2, 0, 1]
    assert load_index("csv", path, "test", protected="bg").protected == "bg"
    assert "--protected race: " in error(load_index, "csv", path, "test", protected="race")


@pytest.mark.parametrize(
    "lines, expected",
    [
        (["path,label,pair", "a.png,0,1", "b.png,0,1", "c.png,0,1"], "pair 1 is on 3 row(s)"),
        (["path,label,pair", "a.png,0,4", "b.png,1,4"], "pair 4 has a different label from line 2"),
        (["path,label,split,pair", "a.png,0,test,4", "b.png,0,val,4"], "pair 4 has a different split"),
        (["path,label,pair", "a.png,0,4"], "pair 4 is on 1 row(s)"),
        (["path,label,pair", "a.png,0,x", "b.png,0,x"], "column 'pair' must be an integer >= 0, got 'x'"),
        (["path,label,gender", "a.png,0,f", "b.png,0,"], "line 3: column 'gender' is empty"),
    ],
)
def test_csv_bad_pairs_and_attributes(tmp_path: Path, lines: list[str], expected: str) -> None:
    csv_dataset(tmp_path, lines)
    assert expected in error(load_index, "csv", tmp_path, "test")


# ---- fairface -----------------------------------------------------------------------------------------------------

FAIRFACE_ROWS = [  # file, age, gender, race, service_test (as published)
    ("train/1.jpg", "50-59", "Male", "East Asian", "True"),
    ("train/2.jpg", "30-39", "Female", "Indian", "False"),
    ("train/3.jpg", "3-9", "Female", "Black", "False"),
    ("val/1.jpg", "more than 70", "Male", "Latino_Hispanic", "True"),
    ("val/2.jpg", "20-29", "Female", "Middle Eastern", "False"),
]


def fairface(root: Path, rows=FAIRFACE_ROWS) -> Path:
    for split in ("train", "val"):
        lines = ["file,age,gender,race,service_test"] + [",".join(r) for r in rows if r[0].startswith(split)]
        write(root / f"fairface_label_{split}.csv", "\n".join(lines) + "\n")
    for r in rows:
        image(root / r[0])
    return root


def test_fairface_layout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from clip_debias.runtime.datasets import FAIRFACE_VALUES

    root = fairface(tmp_path)
    train = load_index("fairface", root, "train", target="race")
    assert train.class_names == list(FAIRFACE_VALUES["race"]) and train.protected == "gender"
    assert [a.name for a in train.attributes] == ["gender", "age"]
    race, gender, age = (FAIRFACE_VALUES[k] for k in ("race", "gender", "age"))
    assert [(r.path, r.label, r.attributes, r.group) for r in train.records] == [
        (root / f, race.index(rc), (gender.index(g), age.index(a)), 2 * race.index(rc) + gender.index(g))
        for f, a, g, rc, _ in FAIRFACE_ROWS[:3]]
    assert train.group_names[:2] == ["White/Male", "White/Female"] and len(train.group_names) == 14
    by_age = load_index("fairface", root, "val", target="gender", protected="age")
    assert by_age.class_names == ["Male", "Female"] and [a.name for a in by_age.attributes] == ["age", "race"]
    assert [r.group for r in by_age.records] == [0 * 9 + 8, 1 * 9 + 3] and by_age.protected == "age"
    assert load_index("fairface", root, "val", target="gender").protected == "race"
    with caplog.at_level("WARNING", logger="clip_debias.datasets"):
        test = load_index("fairface", root, "test", target="age")
    assert [r.path for r in test.records] == [root / "val/1.jpg", root / "val/2.jpg"]
    assert "FairFace publishes no test split" in caplog.text


def test_fairface_errors(tmp_path: Path) -> None:
    root = fairface(tmp_path)
    assert "--target: the fairface format needs one of age, gender, race" in error(load_index, "fairface", root, "val")
    assert "--target hair: expected one of age, gender, race" in error(load_index, "fairface", root, "val",
                                                                        target="hair")
    assert "--protected age: expected one of gender, race (a FairFace column other than the target age)" in error(
        load_index, "fairface", root, "val", target="age", protected="age")
    assert "--target race: only the fairface format" in error(load_index, "csv", root, "val", target="race")
    bad = fairface(tmp_path / "bad", [("val/1.jpg", "70+", "Male", "White", "True")])
    assert "fairface_label_val.csv line 2: column 'age' must be one of 0-2, 3-9" in error(
        load_index, "fairface", bad, "val", target="race")
    (bad / "fairface_label_train.csv").unlink()
    assert "fairface_label_train.csv: not found" in error(load_index, "fairface", bad, "train", target="race")
    outside = fairface(tmp_path / "out", [("val/../../x.jpg", "3-9", "Male", "White", "True")])
    assert "leaves the data folder" in error(load_index, "fairface", outside, "val", target="race")


def test_csv_missing_file(tmp_path: Path) -> None:
    assert "data.csv: not found (expected a CSV with columns path,label" in error(load_index, "csv", tmp_path, "val")


def test_index_does_not_import_torch() -> None:
    code = "import sys, runtime.datasets; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- loader ------------------------------------------------------------------------------------------------------


def test_batches_are_open_clip_preprocess(tmp_path: Path, preprocess) -> None:
    lines = ["path,label,group"] + [f"i{k}.png,{k % 2},{k % 3}" for k in range(5)]
    for k in range(5):
        image(tmp_path / f"i{k}.png", size=(12 + k, 9), seed=k)
    write(tmp_path / "data.csv", "\n".join(lines) + "\n")
    index = load_index("csv", tmp_path, "train")
    batches = iter_batches(index, preprocess, batch_size=2, progress=False)
    out = list(batches)
    assert [len(b) for b in out] == [2, 2, 1]
    first = out[0]
    assert first.images.shape == (2, 3, 32, 32) and first.images.dtype == torch.float32
    assert torch.equal(first.images[1], preprocess(Image.open(tmp_path / "i1.png")))
    assert torch.cat([b.labels for b in out]).tolist() == [0, 1, 0, 1, 0]
    assert torch.cat([b.groups for b in out]).tolist() == [0, 1, 2, 0, 1]
    assert torch.cat([b.indices for b in out]).tolist() == [0, 1, 2, 3, 4] and first.labels.dtype == torch.long
    assert first.attributes is None and first.paths == [str(tmp_path / "i0.png"), str(tmp_path / "i1.png")]
    assert batches.loaded_records() == index.records and batches.skipped == []


@pytest.mark.parametrize("mode, suffix", [("RGB", ".jpg"), ("RGBA", ".png"), ("L", ".png"), ("P", ".png"),
                                          ("LA", ".png"), ("1", ".png"), ("P", ".gif")])
def test_image_modes_load(tmp_path: Path, preprocess, mode: str, suffix: str) -> None:
    path = image(tmp_path / f"x{suffix}", mode, size=(10, 7))
    assert Image.open(path).mode == mode
    write(tmp_path / "data.csv", f"path,label\nx{suffix},0\n")
    (batch,) = iter_batches(load_index("csv", tmp_path, "val"), preprocess, progress=False)
    assert batch.images.shape == (1, 3, 32, 32)
    assert torch.equal(batch.images[0], preprocess(Image.open(path)))


def test_attributes_in_batches(tmp_path: Path, preprocess) -> None:
    (batch,) = iter_batches(load_index("waterbirds", waterbirds(tmp_path), "train"), preprocess, progress=False)
    assert batch.attributes.tolist() == [1, 0, 1] and batch.groups.tolist() == [3, 2, 1]


def bad_images(root: Path) -> Path:
    image(root / "good0.png")
    image(root / "good1.jpg")
    write(root / "corrupt.png", "not an image")
    jpeg = (root / "good1.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    return write(root / "data.csv",
                 "path,label\ngood0.png,0\ncorrupt.png,1\nmissing.png,0\ntruncated.jpg,1\ngood1.jpg,1\n")


def test_bad_image_stops_with_one_line(tmp_path: Path, preprocess) -> None:
    bad_images(tmp_path)
    index = load_index("csv", tmp_path, "train")
    message = error(lambda: list(iter_batches(index, preprocess, batch_size=2, progress=False)))
    assert message == f"{tmp_path / 'corrupt.png'}: cannot read image (not an image PIL can identify)"
    index.records[:] = [r for r in index.records if r.path.name != "corrupt.png"]
    assert error(lambda: list(iter_batches(index, preprocess, progress=False))) == (
        f"{tmp_path / 'missing.png'}: cannot read image (file not found)"
    )


def test_skip_bad_writes_log(tmp_path: Path, preprocess, capsys) -> None:
    bad_images(tmp_path)
    index = load_index("csv", tmp_path, "train")
    log = tmp_path / "logs" / "skipped.txt"
    batches = iter_batches(index, preprocess, batch_size=2, skip_bad=True, skipped_log=log, progress=False,
                           max_skipped=MaxSkipped(count=3))
    out = list(batches)
    assert [b.paths for b in out] == [[str(tmp_path / "good0.png")], [str(tmp_path / "good1.jpg")]]
    assert torch.cat([b.indices for b in out]).tolist() == batches.kept == [0, 4]
    assert [r.path.name for r in batches.loaded_records()] == ["good0.png", "good1.jpg"]
    header, *lines = log.read_text().splitlines()
    assert header == SKIPPED_HEADER  # what makes the list recognisably ours (runtime.ownership)
    logged = [line.split("\t") for line in lines]
    assert [Path(p).name for p, _ in logged] == ["corrupt.png", "missing.png", "truncated.jpg"]
    assert logged[1][1] == "file not found" and "truncated" in logged[2][1].lower()
    assert f"skipped 3 unreadable image(s) of 5 (listed in {log})\n" == capsys.readouterr().err


def test_skip_bad_with_nothing_readable(tmp_path: Path, preprocess) -> None:
    write(tmp_path / "data.csv", "path,label\nmissing.png,0\n")
    index = load_index("csv", tmp_path, "train")
    assert "none of the 1 images of split 'train' could be read" in error(
        lambda: list(iter_batches(index, preprocess, skip_bad=True, progress=False,
                                  max_skipped=MaxSkipped(fraction=1.0)))
    )


def test_too_many_skipped_stops_early_with_one_line(tmp_path: Path, preprocess) -> None:
    """More unreadable images than --max-skipped allows (default 1 %: none of 5) stop the run at the batch that
    crosses the limit, with the list written so far."""
    bad_images(tmp_path)
    index = load_index("csv", tmp_path, "train")
    log = tmp_path / "skipped.txt"
    message = error(lambda: list(iter_batches(index, preprocess, batch_size=2, skip_bad=True, skipped_log=log,
                                              progress=False)))
    assert message.startswith(f"{tmp_path}: 1 unreadable image(s) of 5 in split 'train' so far, over --max-skipped "
                              "1% of the images (0 image(s))")
    assert log.read_text().splitlines()[1].startswith(str(tmp_path / "corrupt.png"))
    assert "over --max-skipped 1 image(s)" in error(lambda: list(iter_batches(
        index, preprocess, batch_size=2, skip_bad=True, progress=False, max_skipped=MaxSkipped(count=1))))
