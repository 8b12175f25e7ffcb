"""Save matplotlib figures as PNGs that say they are ours (``runtime.ownership``: the PNG ``Software`` text chunk),
atomically, never over a file clip-debias did not write (unless ``force``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clip_debias.runtime.atomic_output import atomic_file, check_file_target
from clip_debias.runtime.ownership import png_text_starting, register_file_kind

PNG_SOFTWARE = "clip-debias"  # the PNG 'Software' text chunk of every figure we write starts with this
register_file_kind("figure", "a PNG figure written by clip-debias", png_text_starting("Software", PNG_SOFTWARE))


def check_figure_target(path: str | Path, force: bool = False) -> Path:
    """``path`` if a figure may be written there (absent, a figure of ours, or ``force``); else one error line."""
    return check_file_target(path, "figure", force)


def save_figure(fig: Any, path: str | Path, command: str, dpi: int = 110, force: bool = False) -> Path:
    """``fig.savefig`` as PNG to ``path`` (temp file + rename) with ``Software: clip-debias COMMAND``; closes it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_file(path, "figure", force) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": f"{PNG_SOFTWARE} {command}"})
    finally:
        plt.close(fig)
    return Path(path)
