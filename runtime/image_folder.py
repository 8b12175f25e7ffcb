"""A folder of images, walked once and bounded: the one lister behind ``clip-debias index IMAGES`` and an audit's
folder source.

``folder_images(root, max_images)``: every file below ``root`` (recursive, symlinked folders not followed) whose
suffix is one of ``IMAGE_SUFFIXES`` (case-insensitive), sorted by path; folders clip-debias wrote (they hold its output
marker: an audit's figures, a report) are left out. The walk counts as it goes and stops with one line once it passes
``max_images`` (default ``DEFAULT_MAX_ROWS``, the limit a dataset's metadata file has), before any image is opened.
"""

from __future__ import annotations

import os
from pathlib import Path

from clip_debias.runtime.errors import InputError
from clip_debias.runtime.limits import DEFAULT_MAX_ROWS
from clip_debias.runtime.ownership import MARKER_NAME

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def folder_images(root: str | Path, max_images: int = DEFAULT_MAX_ROWS) -> list[Path]:
    """The image files below ``root`` (see the module docstring); ``InputError`` past ``max_images`` files."""
    root = Path(root)
    files: list[Path] = []
    for d, subdirs, names in os.walk(root):
        subdirs[:] = sorted(s for s in subdirs if not (Path(d) / s / MARKER_NAME).is_file())
        for f in names:
            if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(d, f)):
                files.append(Path(d) / f)
                if len(files) > max_images:
                    raise InputError(f"{root}: more than {max_images:,} image files below it (--max-rows "
                                     f"{max_images}); index a subfolder, or raise --max-rows")
    return sorted(files)
