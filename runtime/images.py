"""The one image-file loader of clip-debias: the runtime (``Preprocessor``, ``verify``) and the toolchain (datasets,
explain-image) both decode through ``load_image``.

Rules:

- **Pixel limit**: the size is read from the file's header first; an image of more than ``max_pixels`` pixels
  (default ``DEFAULT_MAX_PIXELS`` = 50 million, e.g. 7071 x 7071) is refused before it is decoded (a 13000 x 13000
  PNG is 531 KB on disk and 737 MB decoded). The limit applies to **every sub-image a container holds**, each read
  from its header by Pillow's own parsers before anything is decoded (``check_frames``): every entry of an ICO
  (``IcoImagePlugin.IcoFile``, looked at before ``Image.open``, which decodes the largest entry; an entry's PNG may
  be far larger than the ICO directory says), every size of an ICNS (``icns.getimage``, PNG entries unloaded),
  every page / frame of the formats whose ``seek`` reads a header only (TIFF pages, MPO frames, PSD layers, DCX
  pages). Animated GIF / PNG / WebP frames are drawn inside the canvas (WebP and APNG: the format requires it and
  Pillow refuses a frame outside; GIF: Pillow grows the canvas to the first frame when it opens the file), so the
  canvas size checked first bounds them; only the first frame is ever decoded. PIL's own guard
  (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 M: a ``DecompressionBombWarning``, an error above twice that) stays in
  force on top, and a warning that a ``-W error`` run turns into an exception is one ``ImageError`` line too.
- **Bit depth**: every image comes out with 8-bit samples. 16-bit grayscale (PIL modes ``I;16``, ``I;16L``,
  ``I;16B``, ``I;16N``, and a 16-bit PNG opened as ``I``) becomes ``L`` with ``v8 = v16 >> 8`` (the high byte),
  the rule PIL itself applies when it decodes 16-bit RGB / RGBA PNGs (RGB48 / RGBA64) to ``RGB`` / ``RGBA``. An
  8-bit image widened the usual way (``v16 = 257 v8``) comes back exactly. Samples whose range is not defined (32-bit
  integer ``I`` from other formats, float ``F``, signed ``I;16S``...) are refused: converting them would saturate or
  guess. Everything else (``1``, ``L``, ``P``, ``RGB``, ``RGBA``, ``CMYK``, ...) is returned as decoded; the
  preprocessing converts it to RGB.
- No EXIF rotation (open_clip applies none).

Every refusal is an ``ImageError`` (an ``InputError``): ``"PATH: cannot read image (REASON)"``, one line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import IcoImagePlugin, Image, UnidentifiedImageError

from clip_debias.runtime.errors import InputError
from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
HEADER_SEEK_FORMATS = ("TIFF", "MPO", "PSD", "DCX")  # formats whose seek(i) reads frame i's header, decodes nothing
ICO_MAGIC = b"\x00\x00\x01\x00"  # the first 4 bytes of an ICO file (Pillow's IcoImagePlugin checks the same)
EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "LA", "La", "PA")


class ImageError(InputError):
    """An image file that cannot be used; ``reason`` is the message without the path."""

    def __init__(self, path: str | os.PathLike[str] | None, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: cannot read image ({reason})" if path is not None else f"image: {reason}")


def _reason(e: Exception) -> str:
    """Why PIL could not read a file, short and without the path."""
    if isinstance(e, FileNotFoundError):
        return "file not found"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    if isinstance(e, UnidentifiedImageError):
        return "not an image PIL can identify"
    message = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


def to_8bit(image: Image.Image, path: str | os.PathLike[str] | None = None) -> Image.Image:
    """``image`` with 8-bit samples by the rules of the module docstring (a 16-bit one converted, an undefined range
    refused with ``ImageError``)."""
    mode = image.mode
    if mode in EIGHT_BIT_MODES:
        return image
    sixteen = mode in SIXTEEN_BIT_MODES or (mode == "I" and image.format == "PNG")  # PNG "I" is 16-bit grayscale
    if not sixteen:
        raise ImageError(path, f"mode {mode} samples have no defined 8-bit scale; save it as an 8- or 16-bit image")
    a = np.asarray(image)
    if mode == "I":
        a = np.clip(a, 0, 65535)
    return Image.fromarray((a.astype(np.uint32) >> 8).astype(np.uint8), mode="L")


def check_pixels(width: int, height: int, max_pixels: int | None, path: str | os.PathLike[str] | None = None) -> None:
    """Refuse an image over ``max_pixels`` (None: no limit of ours) with ``ImageError``."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(path, f"{width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
                               "(--max-pixels / max_pixels)")


def _check_sizes(sizes: list[tuple[int, int]], max_pixels: int | None, what: str,
                 path: str | os.PathLike[str] | BinaryIO | None) -> None:
    """Refuse the first of ``sizes`` (the sub-images of one file) over ``max_pixels``, naming which one it is."""
    if max_pixels is None:
        return
    for k, (width, height) in enumerate(sizes):
        if width * height > max_pixels:
            where = f"{what} {k + 1} of {len(sizes)}: " if what != "image" else ""
            reason = f"{where}{width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} " \
                     "(--max-pixels / max_pixels)"
            raise ImageError(path, reason)  # type: ignore[arg-type]


def check_ico(fp: BinaryIO, max_pixels: int | None, path: str | os.PathLike[str] | BinaryIO | None = None) -> None:
    """Refuse an ICO file (``fp`` at its start; left there) with an entry over ``max_pixels``, from the entries'
    headers (``IcoFile.frame`` opens a PNG entry without decoding it); a file that is not an ICO is left alone."""
    start = fp.tell()
    if fp.read(4) != ICO_MAGIC:
        fp.seek(start)
        return
    fp.seek(start)
    ico = IcoImagePlugin.IcoFile(fp)
    try:
        _check_sizes([ico.frame(i).size for i in range(len(ico.entry))], max_pixels, "entry", path)
    finally:
        fp.seek(start)


def check_frames(im: Image.Image, max_pixels: int | None,
                 path: str | os.PathLike[str] | BinaryIO | None = None) -> None:
    """Refuse an opened, not yet decoded image with a sub-image over ``max_pixels``: its own size, each ICNS size,
    each page / frame of a ``HEADER_SEEK_FORMATS`` file (left on frame 0). See the module docstring."""
    _check_sizes([im.size], max_pixels, "image", path)
    if im.format == "ICNS":
        sizes = [im.icns.getimage(size).size for size in im.info["sizes"]]  # type: ignore[attr-defined]
        _check_sizes(sizes, max_pixels, "size", path)
    frames = getattr(im, "n_frames", 1)
    if im.format in HEADER_SEEK_FORMATS and frames > 1:
        sizes = []
        for i in range(frames):
            im.seek(i)
            sizes.append(im.size)
        im.seek(0)
        _check_sizes(sizes, max_pixels, "frame", path)


@contextmanager
def _opened(path: str | os.PathLike[str] | BinaryIO) -> Iterator[BinaryIO]:
    """``path`` as a binary file object (a given one is not closed)."""
    if hasattr(path, "read"):
        yield path  # type: ignore[misc]
        return
    with open(Path(path), "rb") as f:  # type: ignore[arg-type]
        yield f


@contextmanager
def open_image(path: str | os.PathLike[str] | BinaryIO,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Iterator[Image.Image]:
    """The image at ``path`` opened, every sub-image's size checked (``check_ico``, ``check_frames``), not decoded;
    whatever goes wrong in the block or before it that PIL raises is one ``ImageError`` line. ``path`` may also be a
    binary file object (an image received by a server): messages then name it by its ``str``."""
    try:
        with _opened(path) as fp:
            check_ico(fp, max_pixels, path)
            with Image.open(fp) as im:
                check_frames(im, max_pixels, path)
                yield im
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, Warning) as e:
        # SyntaxError: PIL's bad headers; Warning: e.g. DecompressionBombWarning in a ``-W error`` run
        raise ImageError(path, _reason(e)) from None


def load_image(path: str | os.PathLike[str] | BinaryIO, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """``open_image``, fully decode and bring to 8-bit samples (see the module docstring)."""
    with open_image(path, max_pixels) as im:
        im.load()
        return to_8bit(im, path)
