"""Dataset indexes (torch-free): which image files belong to a split, with label, group and spurious attribute.

Formats:
- ``waterbirds``: ``metadata.csv`` with ``img_filename, y, split, place``; split 0/1/2 = train/val/test;
  group = 2*y + place; classes (landbird, waterbird); attribute = place (land, water).
- ``celeba``: ``img_align_celeba/``, ``list_attr_celeba`` (.txt or .csv), ``list_eval_partition`` (.txt or .csv);
  target ``Blond_Hair``, attribute ``Male``, -1/1 -> 0/1, group = 2*y + a.
- ``csv``: a CSV with ``path,label[,group][,split]`` (paths relative to the CSV's folder).

Implementation: see ``load_index``. Images are not opened here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test")
FORMATS = ("waterbirds", "celeba", "csv")


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: int
    group: int
    attribute: int | None = None


@dataclass
class DatasetIndex:
    """One split of one dataset. ``group_names[g]`` names group id g; ``attribute_names`` the spurious values."""

    dataset: str
    root: Path
    split: str
    records: list[ImageRecord]
    class_names: list[str]
    group_names: list[str]
    attribute_name: str | None = None
    attribute_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)
