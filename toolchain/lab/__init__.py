"""The bias lab: synthetic Waterbirds-style data with planted shortcuts (``data``: the background, optionally a
co-occurring object; ``draw``, ``groups``, ``signature``), and tiny open_clip CLIPs trained on it (``train``):
``clipdebias-lab`` (one shortcut: the background), ``clipdebias-lab-map`` (the same data and recipe, SigLIP's layout:
timm ViT, attention-pool readout, sigmoid loss) and ``clipdebias-lab2`` (two: the background and the object). The
shipped weights and the recipes that reproduce them live beside this file (``weights/``, ``recipe.json``,
``recipe-lab-map.json``, ``recipe-lab2.json``)."""

from pathlib import Path

from clip_debias.toolchain.models.shipped import shipped_weights

LAB_DIR = Path(__file__).parent
LAB_MODEL = "clipdebias-lab"
LAB_WEIGHTS = shipped_weights(LAB_MODEL)  # one registry of shipped weights: models/shipped.py
LAB_RECIPE = LAB_DIR / "recipe.json"
LABMAP_MODEL = "clipdebias-lab-map"
LABMAP_WEIGHTS = shipped_weights(LABMAP_MODEL)
LABMAP_RECIPE = LAB_DIR / "recipe-lab-map.json"
LAB2_MODEL = "clipdebias-lab2"
LAB2_WEIGHTS = shipped_weights(LAB2_MODEL)
LAB2_RECIPE = LAB_DIR / "recipe-lab2.json"

# the single-shortcut lab models (the same data, recipe.json's make-data): model name -> its recipe
ONE_SHORTCUT_RECIPES = {LAB_MODEL: LAB_RECIPE, LABMAP_MODEL: LABMAP_RECIPE}

__all__ = ["LAB_DIR", "LAB_WEIGHTS", "LAB_RECIPE", "LAB_MODEL", "LABMAP_MODEL", "LABMAP_WEIGHTS", "LABMAP_RECIPE",
           "ONE_SHORTCUT_RECIPES", "LAB2_WEIGHTS", "LAB2_RECIPE", "LAB2_MODEL"]
