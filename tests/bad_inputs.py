"""Bad input files for the limit and no-traceback tests: decompression bombs (small files declaring huge sub-images,
built with Pillow and then given a larger size in their headers) and broken files of every kind a split can list."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image


def png_declaring(width: int, height: int) -> bytes:
    """A valid 64 x 64 PNG whose header (IHDR, CRC updated) says ``width`` x ``height``: a bomb from its header."""
    buf = io.BytesIO()
    Image.new("L", (64, 64)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return bytes(data)


def ico_with_png(width: int, height: int) -> bytes:
    """An ICO of one entry whose directory says 256 x 256 (size byte 0) and whose PNG says ``width`` x ``height``."""
    png = png_declaring(width, height)
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


def ico_real(side: int) -> bytes:
    """A real ICO whose one entry is a ``side`` x ``side`` PNG (Pillow writes the directory's size byte as 0 above
    255: the directory cannot say the size, only the PNG can)."""
    png = io.BytesIO()
    Image.new("RGBA", (side, side), (200, 30, 30, 255)).save(png, "PNG")
    data = png.getvalue()
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(data), 22) + data


def tiff_big_second_page(width: int, height: int) -> bytes:
    """A two-page TIFF: a 32 x 32 first page, a second page whose tags say ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.new("L", (32, 32)).save(buf, "TIFF", save_all=True, append_images=[Image.new("L", (77, 99))])
    data = buf.getvalue()
    for tag, small, big in ((256, 77, width), (257, 99, height)):
        old = struct.pack("<HHII", tag, 4, 1, small)  # Pillow writes ImageWidth / ImageLength as one LONG
        assert data.count(old) == 1, tag
        data = data.replace(old, struct.pack("<HHII", tag, 4, 1, big))
    return data


def webp_animation(width: int, height: int) -> bytes:
    """A two-frame animated WebP of 32 x 32 frames on a canvas (VP8X chunk) of ``width`` x ``height``."""
    buf = io.BytesIO()
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"VP8X"
    data[24:27] = (width - 1).to_bytes(3, "little")
    data[27:30] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def truncated_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()[:60]


def palette_png_with_transparency() -> bytes:
    """A P-mode PNG with a tRNS chunk (PIL warns when converting it to RGB)."""
    im = Image.new("P", (24, 24), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=b"\x00\xff")
    return buf.getvalue()


BAD_IMAGES = {  # file name -> bytes: each one is refused in one line when a split lists it
    "text.png": b"not an image at all\n",
    "empty.png": b"",
    "truncated.png": truncated_png(),
    "bomb.png": png_declaring(13000, 13000),
    "ico_bomb.ico": ico_with_png(8000, 8000),
    "tiff_bomb.tif": tiff_big_second_page(9000, 9000),
    "webp_bomb.webp": webp_animation(8000, 8000),
}


def write_waterbirds_listing(root: Path, files: list[str], *, extra_header: str = "") -> Path:
    """A Waterbirds-format ``metadata.csv`` in ``root`` listing ``files`` in the test split (groups in turn)."""
    lines = ["img_filename,y,split,place" + extra_header]
    lines += [f"{name},{(i // 2) % 2},2,{i % 2}" for i, name in enumerate(files)]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root
