"""The bias lab: synthetic Waterbirds-style data with planted shortcuts (``data``: the background, optionally a
co-occurring object; ``draw``, ``groups``, ``signature``), and tiny open_clip CLIPs trained on it (``train``):
``clipdebias-lab`` (one shortcut: the background) and ``clipdebias-lab2`` (two: the background and the object). The
shipped weights and the recipes that reproduce them live beside this file (``weights/``, ``recipe.json``,
``recipe-lab2.json``)."""

from pathlib import Path

from clip_debias.toolchain.models.shipped import shipped_weights

LAB_DIR = Path(__file__).parent
LAB_MODEL = "clipdebias-lab"
LAB_WEIGHTS = shipped_weights(LAB_MODEL)  # one registry of shipped weights: models/shipped.py
LAB_RECIPE = LAB_DIR / "recipe.json"
LAB2_MODEL = "clipdebias-lab2"
LAB2_WEIGHTS = shipped_weights(LAB2_MODEL)
LAB2_RECIPE = LAB_DIR / "recipe-lab2.json"

__all__ = ["LAB_DIR", "LAB_WEIGHTS", "LAB_RECIPE", "LAB_MODEL", "LAB2_WEIGHTS", "LAB2_RECIPE", "LAB2_MODEL"]
