"""The one seam between the stages and an image tower: the ``TowerAdapter`` protocol and its registry.

Every stage reaches a tower through ``LoadedClip.tower`` (``tower_of(model.visual)``), never through the tower's own
modules. An adapter states the tower's shape (layers L, heads per layer H, residual width W, embedding dim D), its
readout (how the residual stream becomes the embedding), runs the checks that its decomposition is exact (in its
constructor: one clear line when it is not), and gives the explicit forms the stages use:

* ``explicit()``: an ``ExplicitViT`` (explicit attention, exportable, edits baked in) -- open_clip's own ViT only;
* ``classifier_tower()``: the tower a built classifier holds (``ExplicitViT``, or ``TimmTower`` for timm towers);
* ``pooled()``: a ``PooledTower`` (``models/pooled.py``: per-head outputs at every token and the linear readout with
  fixed statistics) -- the timm towers, whose readout pools many tokens.

Adapters register by the tower's type name (``register_tower``), as timm's ``create_model`` registers architectures;
adding a tower is one adapter module imported in ``ADAPTER_MODULES``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, ClassVar

from torch import nn

from clip_debias.toolchain.errors import ClipDebiasError

if TYPE_CHECKING:
    from clip_debias.toolchain.models.pooled import PooledTower
    from clip_debias.toolchain.models.tower import ExplicitViT

# the modules whose import registers the adapters (each registers its own tower types)
ADAPTER_MODULES = ("clip_debias.toolchain.models.vit_adapter", "clip_debias.toolchain.models.timm_adapter")
TOWERS: dict[str, Callable[[nn.Module], "TowerAdapter"]] = {}


class TowerAdapter(ABC):
    """One image tower as the stages see it. ``visual`` is the loaded model's own module (not a copy)."""

    family: ClassVar[str]  # e.g. "open_clip ViT", "timm ViT / EVA (TimmModel)"
    readout: str  # "class token", "average pool", "attention pool (MAP)"

    def __init__(self, visual: nn.Module):
        self.visual = visual

    @property
    @abstractmethod
    def layers(self) -> int:
        """L, the number of residual attention blocks."""

    @property
    @abstractmethod
    def heads(self) -> int:
        """H, the attention heads per block."""

    @property
    @abstractmethod
    def width(self) -> int:
        """W, the residual stream width."""

    @property
    @abstractmethod
    def embed_dim(self) -> int:
        """D, the image embedding dim."""

    def explicit(self, step: str = "this step") -> "ExplicitViT":
        """A fresh ``ExplicitViT`` holding copies of the tower's weights; towers without one refuse in one line."""
        raise ClipDebiasError(f"{step} needs open_clip's CLS-token ViT in explicit form (a class token's attention "
                              f"over the patches); {self.describe()} has none: {self.no_explicit}")

    @property
    def no_explicit(self) -> str:
        """Why the tower has no ``ExplicitViT`` (the end of ``explicit``'s refusal)."""
        return "it is decomposed, located, built and exported through its own forms"

    def classifier_tower(self, model_name: str, step: str = "this step") -> nn.Module:
        """The tower a built classifier holds (its own copy of the weights; ``forward`` = the unnormalised
        embedding): the ``ExplicitViT`` where there is one, else the adapter's own (timm: ``TimmTower``)."""
        return self.explicit(step)

    def pooled(self) -> "PooledTower":
        """The tower's ``PooledTower`` (per-head outputs at every token, readout constants)."""
        raise ClipDebiasError(f"{self.describe()}: no pooled-readout form")

    @property
    def has_explicit(self) -> bool:
        return type(self).explicit is not TowerAdapter.explicit

    def describe(self) -> str:
        return f"{self.family} ({self.layers} layers x {self.heads} heads, {self.readout} readout)"


def register_tower(*type_names: str) -> Callable[[type[TowerAdapter]], type[TowerAdapter]]:
    """Class decorator: the adapter builds the towers whose ``type(visual).__name__`` is one of ``type_names``."""
    def add(cls: type[TowerAdapter]) -> type[TowerAdapter]:
        for name in type_names:
            TOWERS[name] = cls
        return cls
    return add


def tower_of(visual: nn.Module) -> TowerAdapter:
    """The registered adapter of ``visual``, or one line saying that its type is not supported (and which are)."""
    for module in ADAPTER_MODULES:
        importlib.import_module(module)
    kind = type(visual).__name__
    make = TOWERS.get(kind)
    if make is None or not type(visual).__module__.startswith("open_clip"):
        raise ClipDebiasError(f"image tower {kind} is not supported: clip-debias reads open_clip's "
                              f"{' and '.join(sorted(TOWERS))} towers")
    return make(visual)
