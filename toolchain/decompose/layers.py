"""``--layers``: one syntax for every command that takes it (decompose, explain, explain-image).

    all        every layer (decompose's default)
    N          the last N layers (a bare integer: 4 = the last 4)
    i,j,...    these layers, absolute indices (0 = the first block); an item may be a range a..b (inclusive); a single
               layer is written with a trailing comma (11,) or as a range (11..11)
"""

from __future__ import annotations

from clip_debias.toolchain.errors import ClipDebiasError

LAYERS_HELP = ("all | N (the last N layers) | i,j,... absolute indices, 0 = first block, ranges a..b; one layer: 11, "
               "(trailing comma)")


def resolve_layers(spec: str | int | None, n_layers: int, option: str = "--layers") -> list[int]:
    """Sorted absolute layer indices of a tower with ``n_layers`` blocks for ``spec`` (see module doc); None = all."""
    text = "all" if spec is None else str(spec).strip()
    if text == "all":
        return list(range(n_layers))
    if text.isdigit():
        last = int(text)
        if not 1 <= last <= n_layers:
            raise ClipDebiasError(f"{option} {text}: the last {last} layers requested, the tower has {n_layers} "
                                  f"(expected 1..{n_layers}, or 'all')")
        return list(range(n_layers - last, n_layers))
    chosen: set[int] = set()
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        lo, sep, hi = item.partition("..")
        try:
            first, last = int(lo), int(hi if sep else lo)
        except ValueError:
            raise ClipDebiasError(f"{option} {text!r}: expected all, N (the last N layers) or comma-separated layer "
                                  "indices / ranges a..b, e.g. 10,11 or 8..11") from None
        if first > last or first < 0 or last >= n_layers:
            raise ClipDebiasError(f"{option} {text!r}: {item} is out of range for a tower of {n_layers} layers "
                                  f"(0..{n_layers - 1})")
        chosen.update(range(first, last + 1))
    if not chosen:
        raise ClipDebiasError(f"{option} {text!r}: no layer given")
    return sorted(chosen)
