"""Locate: score attention heads on minority groups (``ltc``), derive groups (``groups``), draw the grid
(``heatmap``)."""

from clip_debias.toolchain.locate.ltc import HeadScore, LocatePlan, locate_cache, locate_terms, select_heads

__all__ = ["HeadScore", "LocatePlan", "locate_cache", "locate_terms", "select_heads"]
