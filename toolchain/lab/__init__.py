"""The bias lab: a synthetic Waterbirds-style data set with a planted background shortcut (``data``), and a tiny
open_clip CLIP (config ``clipdebias-lab``) trained on it (``train``). The shipped weights and the recipe that
reproduces them live beside this file (``weights/clipdebias-lab.safetensors``, ``recipe.json``)."""

from pathlib import Path

from clip_debias.toolchain.models.shipped import shipped_weights

LAB_DIR = Path(__file__).parent
LAB_MODEL = "clipdebias-lab"
LAB_WEIGHTS = shipped_weights(LAB_MODEL)  # one registry of shipped weights: models/shipped.py
LAB_RECIPE = LAB_DIR / "recipe.json"

__all__ = ["LAB_DIR", "LAB_WEIGHTS", "LAB_RECIPE", "LAB_MODEL"]
