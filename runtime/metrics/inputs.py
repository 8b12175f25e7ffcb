"""What the metrics beyond accuracy know about the rows (``BiasInputs``; built from data by
``runtime.metric_inputs``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clip_debias.runtime.metrics.base import AttributeColumn
from clip_debias.runtime.metrics.shortcut_gaps import DEFAULT_P_AGREE
from clip_debias.runtime.metrics.skew import DEFAULT_SKEW_K


@dataclass
class BiasInputs:
    """What the metrics beyond accuracy need to know about the rows, each None when the data lacks it
    (``missing[section]`` then says why): the ``protected`` attribute (skew, parity; counterfactual pairs must
    differ in it), the two ``shortcuts`` (background-like, co-object-like) with their train correlations
    ``p_agree`` (background) and ``p_agree_object`` (None: the same) and where they come from, the ``pairs`` ids [N]
    (-1: not in a pair), the ``skew_k`` values and the text ``queries`` of the retrieval skew
    (``runtime.metrics.retrieval_skew.RetrievalQueries``; None: no ``--queries``)."""

    class_names: list[str]
    protected: AttributeColumn | None = None
    shortcuts: tuple[AttributeColumn, AttributeColumn] | None = None
    pairs: np.ndarray | None = None
    p_agree: float = DEFAULT_P_AGREE
    p_agree_from: str = ""
    skew_k: tuple[int, ...] = DEFAULT_SKEW_K
    missing: dict[str, str] = field(default_factory=dict)
    p_agree_object: float | None = None
    queries: Any = None

    def rows(self, keep: np.ndarray) -> "BiasInputs":
        """The same inputs restricted to the rows where ``keep`` [N] bool is True."""
        def cut(a: AttributeColumn | None) -> AttributeColumn | None:
            return None if a is None else AttributeColumn(a.name, np.asarray(a.ids)[keep], a.names)

        shortcuts = None if self.shortcuts is None else (cut(self.shortcuts[0]), cut(self.shortcuts[1]))
        return BiasInputs(self.class_names, cut(self.protected), shortcuts,  # type: ignore[arg-type]
                          None if self.pairs is None else np.asarray(self.pairs)[keep], self.p_agree,
                          self.p_agree_from, self.skew_k, dict(self.missing), self.p_agree_object, self.queries)
