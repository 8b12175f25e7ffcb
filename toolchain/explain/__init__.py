"""Explain: TextSpan head descriptions, token heat maps, B2T keyword discovery and the static HTML report.

This module holds what the explain commands share: choosing heads from ``--heads`` (a ``plan.json`` or
``L:H,L:H``) or ``--layers``. Heads are always absolute ``(layer, head)`` pairs (0 = first block). ``jobs`` runs
explain and discover (for the CLI and the demo), ``files`` holds the models of the files they write.
"""

from __future__ import annotations

from pathlib import Path

from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.locate.ltc import LocatePlan


def plan_heads(path: str | Path) -> dict[tuple[int, int], str]:
    """{(layer, head): role} of a plan's ``spurious`` then ``salient`` heads, in plan order (``LocatePlan.load``:
    a malformed plan is one line naming the file and the field)."""
    return LocatePlan.load(path).roles()


def parse_head_list(value: str) -> list[tuple[int, int]]:
    """'11:3,11:5' -> [(11, 3), (11, 5)]."""
    heads = []
    for part in (p.strip() for p in value.split(",") if p.strip()):
        layer, sep, head = part.partition(":")
        try:
            heads.append((int(layer), int(head)))
        except ValueError:
            raise ClipDebiasError(f"--heads: '{part}' is not LAYER:HEAD (e.g. 11:3), nor a plan.json") from None
        if not sep:
            raise ClipDebiasError(f"--heads: '{part}' is not LAYER:HEAD (e.g. 11:3)")
    return heads


def heads_option(heads: str) -> tuple[list[tuple[int, int]], dict[tuple[int, int], str]]:
    """(heads, roles) of ``--heads plan.json | L:H,...`` alone (no model needed; roles only from a plan)."""
    if heads.endswith(".json") or Path(heads).is_file():
        roles = plan_heads(heads)
        if not roles:
            raise ClipDebiasError(f"{heads}: the plan lists no spurious or salient heads")
        return list(roles), roles
    return parse_head_list(heads), {}


def check_heads_or_layers(heads: str | None, layers: str | None) -> None:
    """``--heads`` and ``--layers`` are exclusive (one line); commands check it before loading anything."""
    if heads and layers:
        raise ClipDebiasError("--heads and --layers are exclusive: give one")


def select_heads(heads: str | None, layers: str | None, n_layers: int, n_heads: int,
                 default_layers: list[int]) -> tuple[list[tuple[int, int]], dict[tuple[int, int], str]]:
    """(heads, roles) from ``--heads plan.json | L:H,...`` or ``--layers`` (``toolchain.decompose.layers``: all, N =
    the last N, or absolute indices), else every head of ``default_layers``. Roles come from a plan (empty
    otherwise)."""
    from clip_debias.toolchain.decompose.layers import resolve_layers

    check_heads_or_layers(heads, layers)
    roles: dict[tuple[int, int], str] = {}
    if heads:
        chosen, roles = heads_option(heads)
    else:
        picked = resolve_layers(layers, n_layers) if layers else default_layers
        chosen = [(l, h) for l in picked for h in range(n_heads)]
    bad = [h for h in chosen if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads)]
    if bad:
        raise ClipDebiasError(f"heads {bad} out of range ({n_layers} layers x {n_heads} heads)")
    return list(dict.fromkeys(chosen)), roles
