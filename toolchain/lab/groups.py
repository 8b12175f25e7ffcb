"""Which images each split of a lab data set holds: group ids, exact per-group counts, rows and counterfactual pairs.

Attributes: class y (0 landbird, 1 waterbird), place (0 land, 1 water) and, with two shortcuts, the co-occurring
object's kind (0 flower, 1 boat); an attribute *agrees* with the class when its value equals y.

Group ids (as ``runtime.datasets`` reads them back): one shortcut ``g = 2*y + place`` (4 groups); two shortcuts
``g = 4*y + 2*place + object`` (8 groups).

Train: the class is balanced (the larger half to class 0) and each shortcut agrees with the class for a fraction
``correlation`` of the images; with two shortcuts the two agreements are independent: per class, ``round(c * n_y)``
images get the agreeing place, and *within each* of the two place cells ``round(c * cell)`` the agreeing object. The
counts are exact (no sampling): every cell is within one image of ``c^2``, ``c (1 - c)``, ``(1 - c)^2`` of ``n_y``.
Val and test: balanced over the 4 or 8 groups.

Counterfactual test split (``counterfactual``): n_test/2 pairs of images of one bird drawn twice, identical but for
one attribute: with one shortcut every pair swaps the place; with two, half the pairs swap the place and half the
object, each half on its own balanced over the 8 groups. Both images of a pair carry the pair's id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clip_debias.toolchain.lab.draw import SPECIES

SHORTCUTS = ("background", "object")  # the spurious attributes the lab can plant, in column order place, object


@dataclass(frozen=True)
class Row:
    """One image of a split: class ``y``, ``place``, co-object ``kind`` (None: no object), bird ``species``, its
    counterfactual ``pair`` id (None: not a pair) and ``bird``: the index its random streams are drawn from (its row
    index; for a pair, the pair id, shared by both images)."""

    y: int
    place: int
    kind: int | None
    species: int
    pair: int | None
    bird: int

    @property
    def group(self) -> int:
        return group_id(self.y, self.place, self.kind)


def group_id(y: int, place: int, kind: int | None) -> int:
    """``2*y + place`` (one shortcut) or ``4*y + 2*place + kind`` (two)."""
    return 2 * y + place if kind is None else 4 * y + 2 * place + kind


def n_groups(two_shortcuts: bool) -> int:
    return 8 if two_shortcuts else 4


def group_counts(n: int, correlation: float | None) -> list[int]:
    """Exact images per group of the one-shortcut data (group = 2*y + place): balanced when ``correlation`` is None,
    else the class agrees with the background for round(correlation * n) images, classes balanced."""
    if correlation is None:
        return [n // 4 + (1 if g < n % 4 else 0) for g in range(4)]
    agree = int(round(correlation * n))
    minority = n - agree
    return [agree - agree // 2, minority // 2, minority - minority // 2, agree // 2]  # (0,0) (0,1) (1,0) (1,1)


def _half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def cell_counts(n: int, correlation: float | None) -> list[int]:
    """Exact images per group of the two-shortcut data (group = 4*y + 2*place + object): balanced when
    ``correlation`` is None, else independent agreements as in the module docstring."""
    if correlation is None:
        return [n // 8 + (1 if g < n % 8 else 0) for g in range(8)]
    counts = [0] * 8
    for y, n_y in ((0, n - n // 2), (1, n // 2)):
        place_agree = _half_up(correlation * n_y)
        for place_ok, cell in ((True, place_agree), (False, n_y - place_agree)):
            object_agree = _half_up(correlation * cell)
            place = y if place_ok else 1 - y
            counts[group_id(y, place, y)] += object_agree
            counts[group_id(y, place, 1 - y)] += cell - object_agree
    return counts


def _species_of_class() -> list[list[int]]:
    return [[i for i, (c, _) in enumerate(SPECIES) if c == y] for y in (0, 1)]


def split_rows(seed: int, split: int, n: int, correlation: float | None, two_shortcuts: bool,
               counterfactual: bool = False) -> list[Row]:
    """The rows of ``split`` (0/1/2) in a seeded shuffled order; ``correlation`` applies to split 0 only (val and
    test are balanced); ``counterfactual`` makes split 2 of pairs. With one shortcut and no pairs this is the
    generator's historical order (same seed, same rows)."""
    rng = np.random.default_rng([seed, split, 1 << 20])
    per_class = _species_of_class()
    if counterfactual and split == 2:
        return _pair_rows(rng, n, two_shortcuts, per_class)
    c = correlation if split == 0 else None
    counts = cell_counts(n, c) if two_shortcuts else group_counts(n, c)
    groups = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    rows = []
    for i, g in enumerate(groups.tolist()):
        y, rest = divmod(g, len(counts) // 2)
        place, kind = (rest // 2, rest % 2) if two_shortcuts else (rest, None)
        rows.append(Row(y, place, kind, int(rng.choice(per_class[y])), None, i))
    return rows


def _pair_rows(rng: np.random.Generator, n: int, two_shortcuts: bool, per_class: list[list[int]]) -> list[Row]:
    """n/2 counterfactual pairs (see the module docstring), shuffled; in each pair the image whose swapped attribute
    is 0 comes first."""
    if two_shortcuts:
        m = n // 16
        specs = ([("place", y, kind) for y in (0, 1) for kind in (0, 1)] * m
                 + [("object", y, place) for y in (0, 1) for place in (0, 1)] * m)
    else:
        specs = [("place", y, None) for y in (0, 1)] * (n // 4)
    rows: list[Row] = []
    for pair, k in enumerate(rng.permutation(len(specs)).tolist()):
        swap, y, fixed = specs[k]
        species = int(rng.choice(per_class[y]))
        for value in (0, 1):
            place, kind = (value, fixed) if swap == "place" else (fixed, value)
            rows.append(Row(y, place, kind, species, pair, pair))
    return rows
