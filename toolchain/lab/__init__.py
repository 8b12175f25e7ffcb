"""The bias lab: a synthetic Waterbirds-style data set with a planted background shortcut (``data``), and a tiny
open_clip CLIP (config ``clipdebias-lab``) trained on it (``train``). The shipped weights and the recipe that
reproduces them live beside this file (``weights/clipdebias-lab.safetensors``, ``recipe.json``)."""

from pathlib import Path

LAB_DIR = Path(__file__).parent
LAB_WEIGHTS = LAB_DIR / "weights" / "clipdebias-lab.safetensors"
LAB_RECIPE = LAB_DIR / "recipe.json"
LAB_MODEL = "clipdebias-lab"

__all__ = ["LAB_DIR", "LAB_WEIGHTS", "LAB_RECIPE", "LAB_MODEL"]
