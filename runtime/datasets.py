"""Dataset indexes (torch-free): which image files belong to a split, with label, group and spurious attribute.

``load_index(dataset, data, split)`` reads one of these formats (``data`` is the DATA argument):

- ``waterbirds``: DATA is a folder with ``metadata.csv`` (columns ``img_filename, y, split, place``; extra columns
  such as ``img_id``/``place_filename`` are ignored); split 0/1/2 = train/val/test; group = 2*y + place;
  classes (landbird, waterbird); attribute ``place`` (land, water). Image paths are relative to DATA.
  Optional columns (the bias lab's, ``clip-debias lab make-data``): ``object`` (a second spurious attribute, the
  co-occurring object: 0 flower, 1 boat; then group = 4*y + 2*place + object, 8 groups named
  ``class/place/object``), ``pair`` (counterfactual pair id, an integer >= 0, or empty: no pair), ``fg_mask`` /
  ``object_mask`` (coverage mask paths relative to DATA, or empty; ``ImageRecord.masks`` keys ``fg`` / ``object``).
- ``celeba``: DATA is a folder with ``img_align_celeba/`` (or Kaggle's nested ``img_align_celeba/img_align_celeba/``),
  ``list_attr_celeba.txt`` (published: count line, attribute-names line, ``filename v1 ... v40`` rows) or
  ``list_attr_celeba.csv`` (Kaggle: ``image_id,5_o_Clock_Shadow,...``), and ``list_eval_partition.txt``
  (``filename partition``) or ``list_eval_partition.csv`` (``image_id,partition``); partition 0/1/2 =
  train/val/test. Target ``Blond_Hair``, attribute ``Male``, -1/1 -> 0/1, group = 2*y + a.
- ``fairface``: DATA is FairFace as published: ``fairface_label_train.csv`` and ``fairface_label_val.csv`` (columns
  ``file, age, gender, race[, service_test]``; ``file`` relative to DATA, e.g. ``train/1.jpg``), images under
  ``train/`` and ``val/``. ``target`` (age | race | gender) is the class; ``protected`` (default gender, or race when
  the target is gender) the first attribute, the remaining column the second; group = y * P + protected value.
  Values in FairFace's spelling and order: age 0-2, 3-9, 10-19, 20-29, 30-39, 40-49, 50-59, 60-69, more than 70;
  gender Male, Female; race White, Black, Latino_Hispanic, East Asian, Southeast Asian, Indian, Middle Eastern.
  FairFace publishes no test split: ``val`` and ``test`` both read the validation labels (a warning says so).
- ``csv``: DATA is a ``.csv`` file, or a folder holding ``data.csv``. Columns
  ``path,label[,group][,split][,pair][,<attribute>...]``:

  - ``path``: image path relative to the CSV's folder;
  - ``label``: either all integers 0..C-1 (class names from ``classes``, else ``class_0``, ``class_1``, ...) or
    strings (the class names: sorted, or in the order of ``classes`` when given);
  - ``group``: optional integer >= 0 (names ``group_0``, ...); without it group = label (names = class names);
  - ``split``: optional ``train``/``val``/``test``; without the column every row belongs to every split;
  - ``pair``: optional counterfactual pair id, an integer >= 0 on exactly two rows (same split, same label), or
    empty (not in a pair);
  - every other column is an attribute (e.g. ``gender``; chosen as the protected one by ``--protected``): a value
    on every row, all integers (ids; value names ``0``, ``1``, ...), all class names (ids of the classes: the value
    *agrees* with the class of the same name), or other strings (sorted).

  Classes, groups and attribute values are counted over the whole file, so every split of one CSV gets the same names.

Image paths must stay inside the data folder (DATA; celeba: its image folder; csv: the CSV's folder): an absolute
path, or one whose ``..`` climbs out of it, is refused with one line naming the file, line and column, unless
``allow_outside_root`` (``--allow-outside-root``). The check is on the text of the path; symbolic links inside the
folder are followed as the file system resolves them.

``DatasetIndex.group_source`` says where the groups come from: ``dataset`` (waterbirds, celeba: named by the
format), ``csv column`` (ids of a csv ``group`` column, named ``group_N``) or ``labels`` (a csv without one: each
class is its own group).

Bounded work (``runtime.limits.IndexChecks``): a metadata file of more than ``max_rows`` rows (default 10^6,
``--max-rows``) is refused as soon as its reading passes that count; a file that takes longer than a few seconds to
read logs its row count every few seconds (``runtime.progress.Heartbeat``). The same image file on two rows of the
split is refused (``runtime.duplicates``: by resolved path, or by bytes with ``--dedupe content``; counterfactual
pairs are not duplicates) unless ``allow_duplicates``: then each file counts once (its first row) and
``DatasetIndex.duplicates_dropped`` says how many rows were dropped (also logged as a warning).

Expected problems raise ``ClipDebiasError`` with one line naming the file, the line and the field. Images are not
opened here (see ``toolchain.datasets.loader``).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path

from clip_debias.runtime.choices import DatasetFormat, Split
from clip_debias.runtime.duplicates import drop_rows, duplicates_error, find_duplicates
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.limits import IndexChecks
from clip_debias.runtime.metadata_tables import (  # noqa: F401 (read_csv, read_whitespace: imported from here too)
    Table, _first_existing, _require_file, image_path, parse_int, parse_partition, read_csv, read_whitespace,
)

log = logging.getLogger("clip_debias.datasets")

SPLITS = Split.values()
FORMATS = DatasetFormat.values()

WATERBIRDS_CLASSES = ["landbird", "waterbird"]
WATERBIRDS_ATTRIBUTES = ["land", "water"]
WATERBIRDS_OBJECTS = ["flower", "boat"]  # the bias lab's co-occurring object (column ``object``)
CELEBA_TARGET, CELEBA_ATTRIBUTE = "Blond_Hair", "Male"
CELEBA_CLASSES = ["not blond", "blond"]
CELEBA_ATTRIBUTES = ["female", "male"]
FAIRFACE_VALUES = {  # FairFace's columns and their values, in its spelling and order
    "age": ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"),
    "gender": ("Male", "Female"),
    "race": ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"),
}
FAIRFACE_FILES = {"train": "fairface_label_train.csv", "val": "fairface_label_val.csv",
                  "test": "fairface_label_val.csv"}
CSV_COLUMNS = ("path", "label", "group", "split", "pair")  # every other csv column is an attribute


@dataclass(frozen=True)
class Attribute:
    """A spurious attribute of a dataset: its ``name`` (the column) and the names of its values by id."""

    name: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class ImageRecord:
    """One image: ``attribute`` the value of the dataset's first spurious attribute (None without one),
    ``attributes`` the values of all of them in ``DatasetIndex.attributes`` order, ``pair`` its counterfactual pair
    id (None: not in a pair), ``masks`` coverage mask paths by part (``fg``, ``object``) where the dataset has them."""

    path: Path
    label: int
    group: int
    attribute: int | None = None
    attributes: tuple[int, ...] = ()
    pair: int | None = None
    masks: dict[str, Path] = field(default_factory=dict, hash=False)


@dataclass
class DatasetIndex:
    """One split of one dataset. ``group_names[g]`` names group id g; ``attribute_name`` / ``attribute_names`` the
    first spurious attribute and its values; ``attributes`` every spurious attribute (its name and value names)."""

    dataset: str
    root: Path
    split: str
    records: list[ImageRecord]
    class_names: list[str]
    group_names: list[str]
    attribute_name: str | None = None
    attribute_names: list[str] = field(default_factory=list)
    group_source: str = "dataset"  # dataset | csv column | labels (see the module docstring)
    attributes: list[Attribute] = field(default_factory=list)
    protected: str | None = None  # the attribute the fairness metrics are about (load_index's ``protected``)
    duplicates_dropped: int = 0  # rows left out as repeats of an earlier row's file (``IndexChecks.allow_duplicates``)

    def attribute_ids(self, name: str) -> list[int]:
        """The value id of attribute ``name`` for every record (``attributes`` order; the first attribute of a
        dataset that lists none in ``attributes`` is ``ImageRecord.attribute``)."""
        position = [a.name for a in self.attributes].index(name) if self.attributes else None
        return [r.attribute if position is None else r.attributes[position] for r in self.records]  # type: ignore

    def all_attributes(self) -> list[Attribute]:
        """``attributes``, or for a dataset that lists none there, its first attribute (``attribute_name``)."""
        if self.attributes or self.attribute_name is None:
            return list(self.attributes)
        return [Attribute(self.attribute_name, tuple(self.attribute_names))]

    def __len__(self) -> int:
        return len(self.records)


def load_index(dataset: str, data: Path, split: str, *, classes: list[str] | None = None,
               allow_outside_root: bool = False, target: str | None = None,
               protected: str | None = None, checks: IndexChecks | None = None) -> DatasetIndex:
    """The records of ``split`` (train/val/test) of ``dataset`` (one of ``FORMATS``) stored at ``data``.
    ``classes`` names (and for string labels orders) the classes of a ``csv`` dataset. ``allow_outside_root``:
    accept image paths that leave the data folder (see the module docstring). ``target``: the class column of
    ``fairface`` (required there, refused elsewhere). ``protected``: the attribute the fairness metrics are about
    (``DatasetIndex.protected``), one of the dataset's attributes; default its first, if it has any. ``checks``: the
    row count and duplicate rules (module docstring; default ``IndexChecks()``)."""
    data = Path(data)
    checks = checks or IndexChecks()
    if dataset not in FORMATS:
        raise ClipDebiasError(f"dataset format '{dataset}' is unknown (expected one of: {', '.join(FORMATS)})")
    if split not in SPLITS:
        raise ClipDebiasError(f"split '{split}' is unknown (expected one of: {', '.join(SPLITS)})")
    if not data.exists():
        raise ClipDebiasError(f"{data}: not found (expected the {dataset} dataset)")
    if classes is not None and dataset != "csv":
        raise ClipDebiasError(f"class names are fixed for the {dataset} format; give classes only for the csv format")
    if (target is not None) != (dataset == "fairface"):
        raise ClipDebiasError(f"--target: the fairface format needs one of {', '.join(FAIRFACE_VALUES)}"
                              if target is None else f"--target {target}: only the fairface format has a target")
    if dataset == "fairface":
        index = _load_fairface(data, split, target, protected, allow_outside_root,  # type: ignore[arg-type]
                               checks.max_rows)
    else:
        loaders = {"waterbirds": _load_waterbirds, "celeba": _load_celeba, "csv": _load_csv}
        index = loaders[dataset](data, split, classes, allow_outside_root, checks.max_rows)
    if not index.records:
        raise ClipDebiasError(f"{data}: split '{split}' of the {dataset} dataset has no images")
    index.protected = _protected(index, protected)
    dedupe(index, checks)
    return index


def dedupe(index: DatasetIndex, checks: IndexChecks) -> None:
    """Refuse a split that lists one image file on two rows, or with ``checks.allow_duplicates`` keep the first row
    of each file (``index.duplicates_dropped`` rows dropped, one warning line)."""
    paths = [r.path for r in index.records]
    found = find_duplicates(paths, [r.pair for r in index.records], checks.dedupe)
    if not found:
        return
    where = f"{index.root}: split '{index.split}' of the {index.dataset} dataset"
    if not checks.allow_duplicates:
        raise duplicates_error(found, paths, where, checks.dedupe)
    index.records = drop_rows(index.records, found.rows)
    index.duplicates_dropped = len(found)
    log.warning("warning: %s: %d duplicate row(s) dropped (--allow-duplicates, --dedupe %s): each of its %d image "
                "files counts once", where, len(found), checks.dedupe, len(index.records))


def _protected(index: DatasetIndex, protected: str | None) -> str | None:
    """``protected`` when it names one of the index's attributes (one line otherwise); default the first."""
    names = [a.name for a in index.all_attributes()]
    if protected is None:
        return names[0] if names else None
    if protected not in names:
        has = f"has the attribute(s) {', '.join(names)}" if names else "has no attribute"
        hint = " (a csv names its attributes by extra columns)" if index.dataset == "csv" else ""
        raise ClipDebiasError(f"--protected {protected}: {index.root} ({index.dataset}) {has}{hint}")
    return protected


# ---- shared parsing -------------------------------------------------------------------------------------------


def crossed_groups(class_names: list[str], *attribute_names: list[str]) -> list[str]:
    """Names of the groups of every (class, attribute value, ...) combination, ``class/value/...``, in the order of
    the id ``(y * A1 + a1) * A2 + a2 ...`` (binary: 2*y + a; two binary attributes: 4*y + 2*a + b)."""
    return ["/".join(parts) for parts in itertools.product(class_names, *attribute_names)]


# ---- formats ---------------------------------------------------------------------------------------------------


def _load_waterbirds(data: Path, split: str, classes: list[str] | None, outside: bool, max_rows: int) -> DatasetIndex:
    path = _require_file(data / "metadata.csv", "the Waterbirds metadata with columns img_filename, y, split, place")
    table = read_csv(path, ("img_filename", "y", "split", "place"), max_rows)
    attributes = [Attribute("place", tuple(WATERBIRDS_ATTRIBUTES))]
    if "object" in table.columns:
        attributes.append(Attribute("object", tuple(WATERBIRDS_OBJECTS)))
    mask_columns = {part: f"{part}_mask" for part in ("fg", "object") if f"{part}_mask" in table.columns}
    records = []
    for line, row in table.rows:
        if parse_partition(table, line, "split", row["split"]) != split:
            continue
        y = parse_int(table, line, "y", row["y"], (0, 1))
        values = tuple(parse_int(table, line, a.name, row[a.name], (0, 1)) for a in attributes)
        group = y
        for v in values:
            group = 2 * group + v
        pair = parse_int(table, line, "pair", row["pair"]) if row.get("pair") else None
        masks = {part: image_path(data, table, line, col, row[col], outside)
                 for part, col in mask_columns.items() if row[col]}
        path = image_path(data, table, line, "img_filename", row["img_filename"], outside)
        records.append(ImageRecord(path, y, group, values[0], values, pair, masks))
    return DatasetIndex(
        "waterbirds", data, split, records, list(WATERBIRDS_CLASSES),
        crossed_groups(WATERBIRDS_CLASSES, *(list(a.values) for a in attributes)), "place",
        list(WATERBIRDS_ATTRIBUTES), attributes=attributes,
    )


def _celeba_table(data: Path, stem: str, what: str, required: tuple[str, ...], txt_columns: list[str] | None,
                  txt_skip: int, max_rows: int) -> tuple[Table, str]:
    """``stem``.txt (published) or ``stem``.csv (Kaggle) as a table, and the name of its image file column."""
    path = _first_existing(data, (f"{stem}.txt", f"{stem}.csv"), what)
    if path.suffix == ".csv":
        return read_csv(path, ("image_id", *required), max_rows), "image_id"
    return read_whitespace(path, required, columns=txt_columns, skip=txt_skip, max_rows=max_rows), "filename"


def _load_celeba(data: Path, split: str, classes: list[str] | None, outside: bool, max_rows: int) -> DatasetIndex:
    images = data / "img_align_celeba"
    if (images / "img_align_celeba").is_dir():  # Kaggle's archive nests the folder
        images = images / "img_align_celeba"
    if not images.is_dir():
        raise ClipDebiasError(f"{images}: not found (expected the CelebA image folder)")
    parts, part_key = _celeba_table(data, "list_eval_partition", "the CelebA partition file", ("partition",),
                                    ["partition"], 0, max_rows)
    split_of = {row[part_key]: parse_partition(parts, line, "partition", row["partition"]) for line, row in parts.rows}
    attrs, attr_key = _celeba_table(data, "list_attr_celeba", "the CelebA attribute file",
                                    (CELEBA_TARGET, CELEBA_ATTRIBUTE), None, 1, max_rows)
    records = []
    for line, row in attrs.rows:
        name = row[attr_key]
        if name not in split_of:
            raise ClipDebiasError(f"{parts.path}: no partition for '{name}' (listed in {attrs.path} line {line})")
        if split_of[name] != split:
            continue
        y = (parse_int(attrs, line, CELEBA_TARGET, row[CELEBA_TARGET], (-1, 1)) + 1) // 2
        a = (parse_int(attrs, line, CELEBA_ATTRIBUTE, row[CELEBA_ATTRIBUTE], (-1, 1)) + 1) // 2
        records.append(ImageRecord(image_path(images, attrs, line, attr_key, name, outside), y, 2 * y + a, a, (a,)))
    return DatasetIndex(
        "celeba", data, split, records, list(CELEBA_CLASSES),
        crossed_groups(CELEBA_CLASSES, CELEBA_ATTRIBUTES), CELEBA_ATTRIBUTE, list(CELEBA_ATTRIBUTES),
        attributes=[Attribute(CELEBA_ATTRIBUTE, tuple(CELEBA_ATTRIBUTES))],
    )


def _class_ids(table: Table, classes: list[str] | None) -> tuple[list[int], list[str]]:
    """The class id of every row of a csv-format table, and the class names (see the module docstring)."""
    values = [(line, row["label"]) for line, row in table.rows]
    for line, v in values:
        if not v:
            raise ClipDebiasError(f"{table.where(line, 'label')} is empty (expected a class id or name)")
    if all(v.isascii() and v.isdigit() for _, v in values):
        ids = [int(v) for _, v in values]
        count = max(ids, default=-1) + 1
        if classes is None:
            return ids, [f"class_{i}" for i in range(count)]
        for (line, v), i in zip(values, ids):
            if i >= len(classes):
                raise ClipDebiasError(f"{table.where(line, 'label')} must be below {len(classes)} "
                                      f"(the number of class names given), got '{v}'")
        return ids, list(classes)
    names = list(classes) if classes is not None else sorted({v for _, v in values})
    position = {n: i for i, n in enumerate(names)}
    for line, v in values:
        if v not in position:
            raise ClipDebiasError(f"{table.where(line, 'label')} must be one of the class names "
                                  f"({', '.join(names)}), got '{v}'")
    return [position[v] for _, v in values], names


def _attribute_ids(table: Table, column: str, class_names: list[str]) -> tuple[list[int], tuple[str, ...]]:
    """The value id of every row in an attribute column of a csv-format table, and the value names (see the module
    docstring: integers, class names, or other strings sorted)."""
    values = [(line, row[column]) for line, row in table.rows]
    for line, v in values:
        if not v:
            raise ClipDebiasError(f"{table.where(line, column)} is empty (an attribute column needs a value on every "
                                  "row)")
    if all(v.isascii() and v.isdigit() for _, v in values):
        ids = [int(v) for _, v in values]
        return ids, tuple(str(i) for i in range(max(ids) + 1))
    names = list(class_names) if {v for _, v in values} <= set(class_names) else sorted({v for _, v in values})
    position = {n: i for i, n in enumerate(names)}
    return [position[v] for _, v in values], tuple(names)


def _pair_ids(table: Table, labels: list[int]) -> list[int | None]:
    """The ``pair`` column: an id >= 0 on exactly two rows of one split and one label, or empty."""
    pairs = [parse_int(table, line, "pair", row["pair"]) if row["pair"] else None for line, row in table.rows]
    rows_of: dict[int, list[int]] = {}
    for i, pair in enumerate(pairs):
        if pair is not None:
            rows_of.setdefault(pair, []).append(i)
    for pair, rows in rows_of.items():
        lines = [table.rows[i][0] for i in rows]
        if len(rows) != 2:
            raise ClipDebiasError(f"{table.where(lines[0], 'pair')}: pair {pair} is on {len(rows)} row(s) (lines "
                                  f"{', '.join(map(str, lines[:4]))}); a counterfactual pair is two images")
        split_of = [table.rows[i][1].get("split") for i in rows]
        if split_of[0] != split_of[1] or labels[rows[0]] != labels[rows[1]]:
            what = "split" if split_of[0] != split_of[1] else "label"
            raise ClipDebiasError(f"{table.where(lines[1], 'pair')}: pair {pair} has a different {what} from line "
                                  f"{lines[0]} (the two images of a pair share their split and class)")
    return pairs


def _load_csv(data: Path, split: str, classes: list[str] | None, outside: bool, max_rows: int) -> DatasetIndex:
    path = _require_file(data / "data.csv", "a CSV with columns path,label[,group][,split]") if data.is_dir() else data
    table = read_csv(path, ("path", "label"), max_rows)
    ids, class_names = _class_ids(table, classes)
    has_group, has_split = "group" in table.columns, "split" in table.columns
    groups = [parse_int(table, line, "group", row["group"]) for line, row in table.rows] if has_group else ids
    pairs = _pair_ids(table, ids) if "pair" in table.columns else [None] * len(ids)
    columns = [c for c in table.columns if c not in CSV_COLUMNS]
    parsed = [_attribute_ids(table, c, class_names) for c in columns]
    attributes = [Attribute(c, names) for c, (_, names) in zip(columns, parsed)]
    values = list(zip(*(v for v, _ in parsed))) if parsed else [()] * len(ids)
    records = []
    for (line, row), label, group, pair, attrs in zip(table.rows, ids, groups, pairs, values):
        if has_split and row["split"] not in SPLITS:
            raise ClipDebiasError(f"{table.where(line, 'split')} must be one of {', '.join(SPLITS)}, "
                                  f"got '{row['split']}'")
        if not row["path"]:
            raise ClipDebiasError(f"{table.where(line, 'path')} is empty (expected an image path)")
        image = image_path(path.parent, table, line, "path", row["path"], outside)
        if not has_split or row["split"] == split:
            records.append(ImageRecord(image, label, group, attrs[0] if attrs else None, tuple(attrs), pair))
    group_names = [f"group_{g}" for g in range(max(groups, default=-1) + 1)] if has_group else list(class_names)
    if not has_split:  # train, val and test are the same images: say so, a "test" result here is not held out
        log.warning("warning: %s has no 'split' column: split '%s' is every row of the file (so is every other "
                    "split)", path, split)
    first = attributes[0] if attributes else None
    return DatasetIndex("csv", path.parent, split, records, class_names, group_names,
                        first.name if first else None, list(first.values) if first else [],
                        group_source="csv column" if has_group else "labels", attributes=attributes)


def _load_fairface(data: Path, split: str, target: str, protected: str | None, outside: bool,
                   max_rows: int) -> DatasetIndex:
    if target not in FAIRFACE_VALUES:
        raise ClipDebiasError(f"--target {target}: expected one of {', '.join(FAIRFACE_VALUES)} (a FairFace column)")
    others = [c for c in ("gender", "race", "age") if c != target]  # the default protected attribute first
    protected = protected or others[0]
    if protected not in others:
        raise ClipDebiasError(f"--protected {protected}: expected one of {', '.join(others)} (a FairFace column other "
                              f"than the target {target})")
    columns = [protected, *(c for c in others if c != protected)]
    name = FAIRFACE_FILES[split]
    path = _require_file(data / name, f"FairFace's {split} labels with columns file, age, gender, race")
    if split == "test":
        log.warning("warning: FairFace publishes no test split: split 'test' reads %s, the validation labels", name)
    table = read_csv(path, ("file", *FAIRFACE_VALUES), max_rows)

    def value_id(line: int, row: dict[str, str], column: str) -> int:
        allowed = FAIRFACE_VALUES[column]
        if row[column] not in allowed:
            raise ClipDebiasError(f"{table.where(line, column)} must be one of {', '.join(allowed)}, "
                                  f"got '{row[column]}'")
        return allowed.index(row[column])

    width = len(FAIRFACE_VALUES[protected])
    records = []
    for line, row in table.rows:
        y = value_id(line, row, target)
        attrs = tuple(value_id(line, row, c) for c in columns)
        records.append(ImageRecord(image_path(data, table, line, "file", row["file"], outside), y,
                                   y * width + attrs[0], attrs[0], attrs))
    classes = list(FAIRFACE_VALUES[target])
    return DatasetIndex("fairface", data, split, records, classes,
                        crossed_groups(classes, list(FAIRFACE_VALUES[protected])), protected,
                        list(FAIRFACE_VALUES[protected]),
                        attributes=[Attribute(c, FAIRFACE_VALUES[c]) for c in columns])
