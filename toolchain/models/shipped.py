"""The weights this package ships, by model name: the one registry ``load_clip`` and the CLI read.

A shipped model loads its weights by name (``--model clipdebias-lab``, or explicitly ``--pretrained shipped``);
adding one is one entry here (its open_clip config goes in ``models/configs``, its weights file in the package).
Loaded from here, the weights have the same identity (file sha256) as the same file passed with ``--weights``.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_TAG = "shipped"  # --pretrained shipped
TOOLCHAIN_DIR = Path(__file__).resolve().parent.parent  # the clip_debias.toolchain package folder

# model name -> its weights file, relative to the clip_debias.toolchain package folder (listed in package-data)
SHIPPED_WEIGHTS: dict[str, str] = {
    "clipdebias-lab": "lab/weights/clipdebias-lab.safetensors",
    "clipdebias-lab-map": "lab/weights/clipdebias-lab-map.safetensors",  # MAP readout (lab/recipe-lab-map.json)
    "clipdebias-lab2": "lab/weights/clipdebias-lab2.safetensors",  # two shortcuts (lab/recipe-lab2.json)
}


def shipped_weights(name: str) -> Path | None:
    """The shipped weights file of model ``name``, or None when the package ships none for it."""
    rel = SHIPPED_WEIGHTS.get(name)
    return TOOLCHAIN_DIR / rel if rel is not None else None


def shipped_names() -> str:
    """'a, b' — the models that ship weights, for error messages."""
    return ", ".join(sorted(SHIPPED_WEIGHTS))
