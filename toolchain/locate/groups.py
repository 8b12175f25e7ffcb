"""Groups for locating: minority groups from counts, from zero-shot accuracy or from the user; predicted groups.

Minority groups S are the groups whose spurious attribute disagrees with its majority correlation to the class:
per class, every group of that class except its majority group. The majority group is read from

- ``counts`` (default): the group of the class with the most images in the split. On a split that is balanced within
  classes (Waterbirds val/test: 467 vs 466 landbirds) counts cannot tell the correlation: if no class has a group
  holding at least ``MIN_RATIO`` x the images of each other group of the class, the shipped dataset's known minority
  groups are used (``minority_groups`` in ``waterbirds.yaml``/``celeba.yaml``, read off their train splits; source
  ``defaults``), and for any other dataset this raises — locate on the train split, name the groups
  (``--minority-groups``) or use ``predictions``;
- ``predictions``: the group of the class on which zero-shot CLIP is most accurate (a biased model is right where
  the spurious attribute agrees with the class) — a heuristic for balanced splits;
- ``user``: group ids given explicitly.

Predicted groups (no group labels): attribute a_hat = argmax_a cos(e, t_a) over attribute prompt directions t [A, D],
group = A * y + a_hat (= 2y + a for a binary attribute), y the true label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clip_debias.toolchain.errors import ClipDebiasError

MIN_RATIO = 1.5


@dataclass
class MinorityChoice:
    """The minority groups used, their names, how they were derived (``source``) and a one-line ``note``."""

    groups: list[int]
    names: list[str]
    source: str
    note: str


def group_names_of(group_names: list[str], ids: list[int]) -> list[str]:
    return [group_names[g] if 0 <= g < len(group_names) else str(g) for g in ids]


def class_of_groups(labels: torch.Tensor, groups: torch.Tensor) -> dict[int, int]:
    """{group id: its class} over the groups present; a group holding several classes is refused."""
    out: dict[int, int] = {}
    for g in groups.unique().tolist():
        ys = labels[groups == g].unique().tolist()
        if len(ys) != 1:
            raise ClipDebiasError(f"group {g} holds images of classes {ys}: minority groups need groups within one "
                                  "class; pass --minority-groups or predicted groups (--attribute-prompts)")
        out[int(g)] = int(ys[0])
    return out


def _per_class(labels: torch.Tensor, groups: torch.Tensor) -> dict[int, list[int]]:
    """{class: [its groups]} in ascending id order."""
    by_class: dict[int, list[int]] = {}
    for g, y in sorted(class_of_groups(labels, groups).items()):
        by_class.setdefault(y, []).append(g)
    return by_class


def _minority_given_majority(by_class: dict[int, list[int]], majority: dict[int, int]) -> list[int]:
    return sorted(g for y, gs in by_class.items() for g in gs if g != majority[y])


def minority_from_counts(labels: torch.Tensor, groups: torch.Tensor, group_names: list[str],
                         where: str = "cache", min_ratio: float = MIN_RATIO,
                         known: list[int] | None = None) -> MinorityChoice:
    """Per class, the most frequent group is the majority; the other groups of the class are the minority. When the
    counts are balanced, the ``known`` minority groups of a shipped dataset (its train-split correlation) are used
    if given, else this raises."""
    by_class = _per_class(labels, groups)
    counts = {g: int((groups == g).sum()) for gs in by_class.values() for g in gs}
    majority = {y: max(gs, key=lambda g: (counts[g], -g)) for y, gs in by_class.items()}
    decisive = [y for y, gs in by_class.items() if len(gs) > 1 and all(
        counts[majority[y]] >= min_ratio * counts[g] for g in gs if g != majority[y])]
    table = "; ".join(", ".join(f"{group_names_of(group_names, [g])[0]} {counts[g]}" for g in gs)
                      for gs in by_class.values())
    if all(len(gs) == 1 for gs in by_class.values()):
        raise ClipDebiasError(f"{where}: every class has a single group ({table}), so there are no minority groups; "
                              "predict groups with --attribute-prompts or name them with --minority-groups")
    if not decisive and known:
        choice = minority_from_user(known, groups, group_names, "the dataset's default minority groups (its shipped "
                                    "defaults, used because the group counts are balanced within classes)", where)
        return MinorityChoice(choice.groups, choice.names, "defaults",
                              f"group counts balanced within classes ({table}); "
                              "the dataset's known train-split minority groups (shipped defaults)")
    if not decisive:
        raise ClipDebiasError(
            f"{where}: group counts are balanced within every class ({table}), so they cannot tell the majority "
            f"correlation; locate on a train-split cache, pass --minority-groups, or --minority-from predictions")
    ids = _minority_given_majority(by_class, majority)
    return MinorityChoice(ids, group_names_of(group_names, ids), "counts",
                          f"per class, all but the most frequent group ({table})")


def minority_from_predictions(labels: torch.Tensor, groups: torch.Tensor, predictions: torch.Tensor,
                              group_names: list[str]) -> MinorityChoice:
    """Per class, the group with the highest zero-shot accuracy is the majority; the others are the minority."""
    by_class = _per_class(labels, groups)
    acc = {g: float((predictions[groups == g] == labels[groups == g]).float().mean())
           for gs in by_class.values() for g in gs}
    majority = {y: max(gs, key=lambda g: (acc[g], -g)) for y, gs in by_class.items()}
    ids = _minority_given_majority(by_class, majority)
    if not ids:
        raise ClipDebiasError("every class has a single group, so there are no minority groups; predict groups with "
                              "--attribute-prompts or name them with --minority-groups")
    table = ", ".join(f"{group_names_of(group_names, [g])[0]} {acc[g]:.3f}" for g in sorted(acc))
    return MinorityChoice(ids, group_names_of(group_names, ids), "predictions",
                          f"per class, all but the group with the best zero-shot accuracy ({table})")


def minority_from_user(ids: list[int], groups: torch.Tensor, group_names: list[str],
                       given_by: str = "--minority-groups", where: str = "the split") -> MinorityChoice:
    """Groups named explicitly (``given_by`` says by whom, in errors: the option, or the dataset's defaults); each
    must have images in the split (``where``)."""
    if not ids:
        raise ClipDebiasError(f"{given_by}: no group id given")
    present = sorted(int(g) for g in groups.unique().tolist())
    missing = sorted({g for g in ids if g not in present})
    if missing:
        def named(gs: list[int]) -> str:
            names = group_names_of(group_names, gs)
            return ", ".join(f"{g} ({n})" if n != str(g) else str(g) for g, n in zip(gs, names))

        raise ClipDebiasError(f"{where}: {given_by} include group(s) {named(missing)}, which have no image there "
                              f"(groups with images: {named(present)})")
    ids = sorted(set(ids))
    return MinorityChoice(ids, group_names_of(group_names, ids), "user", f"named by {given_by}")


def predict_attributes(embeddings: torch.Tensor, attribute_text: torch.Tensor) -> torch.Tensor:
    """a_hat [N] = argmax_a cos(e_n, t_a); embeddings [N, D] unit norm, attribute_text [A, D] unit norm."""
    return (embeddings.float() @ attribute_text.float().T).argmax(dim=-1)


def predicted_groups(embeddings: torch.Tensor, labels: torch.Tensor, attribute_text: torch.Tensor,
                     class_names: list[str], attribute_names: list[str]) -> tuple[torch.Tensor, list[str]]:
    """(groups [N] = A * y + a_hat, names ``class/attribute`` for every id)."""
    a = attribute_text.shape[0]
    groups = labels.long() * a + predict_attributes(embeddings, attribute_text)
    return groups, [f"{c}/{v}" for c in class_names for v in attribute_names]
