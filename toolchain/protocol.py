"""Protocols: which data each step of locate -> correct -> evaluate uses.

``default`` (deployable): locate on any labelled split (val in the README), ablation means from a calibration split
that is never the test split, salient projection with ``--renorm stepwise`` and accept directions from unit-norm text
embeddings. Nothing of the evaluated split reaches the model.

``reference`` (the published LTC pipeline as its authors' code runs it; arXiv 2505.17425): TextSpan-convention terms
of every layer; locate on the *train* split with the true group labels and the dataset's default minority groups
(``minority_groups`` in its shipped defaults, e.g. Waterbirds [1, 2]); ablation means taken over the *evaluated split
itself*; RoboShot's accept step renormalizing after each basis vector (stepwise); accept directions from differences
of *unnormalized* text embeddings. Its ablation means are transductive: a model built so has seen the test images'
mean head terms, so its test accuracy is not a deployable model's. It exists to reproduce the published numbers.

One step the reference does not take and both protocols do: the edited embedding is divided by its norm before the
classifier head (one positive factor per image: zero-shot predictions are unchanged; logits stay on CLIP's cosine
scale, which the PerceptionCLIP head needs).
"""

from __future__ import annotations

from typing import Any

from clip_debias.toolchain.choices import Protocol
from clip_debias.toolchain.errors import ClipDebiasError

PROTOCOLS = Protocol.values()
TRANSDUCTIVE_NOTE = ("TRANSDUCTIVE: the reference protocol takes the ablation means from the evaluated split itself; "
                     "not a deployable model (use the default protocol to ship)")


def check_protocol(name: str, option: str = "--protocol") -> str:
    """``name`` if it is a protocol, else one clear line."""
    return Protocol.parse(name, option)


def require_reference_cache(cache: Any, role: str) -> None:
    """Refuse a cache the reference protocol cannot use: not TextSpan terms, or not every layer of the tower."""
    where = cache.where()
    if cache.convention != "textspan":
        raise ClipDebiasError(f"{where}: --protocol reference needs TextSpan-convention terms, the {role} cache holds "
                              f"'{cache.convention}' terms (decompose with --convention textspan)")
    if not cache.all_layers:
        got = f"layers {cache.layers} of {cache.tower_layers}" if cache.tower_layers else f"layers {cache.layers} " \
              "of a tower whose layer count the cache does not record"
        raise ClipDebiasError(f"{where}: --protocol reference scores every layer's heads, the {role} cache holds "
                              f"{got} (decompose with --layers all)")


def reference_minority(dataset: str, known: list[int] | None, given: list[int] | None) -> list[int]:
    """The minority groups of the reference protocol: the dataset's shipped defaults; ``given`` (--minority-groups)
    only stands in for a dataset without defaults, and must equal them otherwise."""
    if known:
        if given and sorted(set(given)) != sorted(known):
            raise ClipDebiasError(f"--minority-groups {','.join(map(str, given))}: --protocol reference uses the "
                                  f"dataset's default minority groups {known} ({dataset})")
        return list(known)
    if not given:
        raise ClipDebiasError(f"--protocol reference: dataset '{dataset}' has no default minority groups; name them "
                              "with --minority-groups")
    return sorted(set(given))
