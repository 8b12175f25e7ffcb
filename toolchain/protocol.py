"""Protocols: which data each step of locate -> correct -> evaluate uses, as one policy object per protocol.

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

Every step asks the ``ProtocolPolicy`` of its ``--protocol`` (``policy(name)``) instead of comparing the name: a new
protocol is one ``Protocol`` member (``toolchain.choices``) plus one ``ProtocolPolicy`` entry in ``POLICIES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clip_debias.toolchain.choices import PairEmbeddings, Protocol, Renorm
from clip_debias.toolchain.errors import ClipDebiasError

PROTOCOLS = Protocol.values()
TRANSDUCTIVE_NOTE = ("TRANSDUCTIVE: the reference protocol takes the ablation means from the evaluated split itself; "
                     "not a deployable model (use the default protocol to ship)")


@dataclass(frozen=True)
class ProtocolPolicy:
    """The answers of one protocol to the questions locate, correct and evaluate ask.

    locate: ``locate_split`` (the only split it locates on; None: any labelled split), ``fixed_locate`` (true group
    labels, the dataset's default minority groups, every head over the threshold: no --attribute-prompts,
    --minority-from, --max-spurious/--max-salient), ``whole_tower_textspan`` (its caches hold TextSpan terms of every
    layer). correct/evaluate: ``transductive`` (ablation means from the evaluated split itself, not a calibration
    split), ``renorm`` (the only --renorm it takes; None: any), ``pair_embeddings`` (the accept directions' text
    normalisation, and whether another is refused: ``pair_embeddings_fixed``)."""

    name: Protocol
    locate_split: str | None = None
    fixed_locate: bool = False
    whole_tower_textspan: bool = False
    transductive: bool = False
    renorm: Renorm | None = None
    pair_embeddings: PairEmbeddings = PairEmbeddings.UNIT
    pair_embeddings_fixed: bool = False

    @property
    def option(self) -> str:
        """How errors name it: ``--protocol NAME``."""
        return f"--protocol {self.name}"

    @property
    def note(self) -> str | None:
        """The warning a model or table built under this protocol carries (None: a deployable one)."""
        return TRANSDUCTIVE_NOTE if self.transductive else None

    # ---- locate ----------------------------------------------------------------------------------------------------
    def check_cache(self, cache: Any, role: str) -> None:
        """Refuse a cache this protocol cannot use (``whole_tower_textspan``: not TextSpan terms, or not every layer
        of the tower)."""
        if not self.whole_tower_textspan:
            return
        where = cache.where()
        if cache.convention != "textspan":
            raise ClipDebiasError(f"{where}: {self.option} needs TextSpan-convention terms, the {role} cache holds "
                                  f"'{cache.convention}' terms (decompose with --convention textspan)")
        if not cache.all_layers:
            got = f"layers {cache.layers} of {cache.tower_layers}" if cache.tower_layers else \
                f"layers {cache.layers} of a tower whose layer count the cache does not record"
            raise ClipDebiasError(f"{where}: {self.option} scores every layer's heads, the {role} cache holds "
                                  f"{got} (decompose with --layers all)")

    def check_locate(self, cache: Any, given: dict[str, bool], known: list[int] | None,
                     minority_groups: list[int] | None) -> list[int] | None:
        """Check a locate on ``cache`` with the options ``given`` ({option: whether given}); returns the minority
        groups this protocol fixes (``fixed_locate``: the dataset's defaults, see ``minority``), else
        ``minority_groups`` as given."""
        self.check_cache(cache, "located")
        if self.locate_split is not None and cache.split != self.locate_split:
            raise ClipDebiasError(f"{cache.where()}: {self.option} locates on the {self.locate_split} split, this "
                                  f"cache is '{cache.split}' (decompose --split {self.locate_split})")
        if not self.fixed_locate:
            return minority_groups
        for option, was_given in given.items():
            if was_given:
                raise ClipDebiasError(f"{option}: not part of {self.option} (true group labels, the dataset's "
                                      "default minority groups, every head over the threshold)")
        return self.minority(cache.dataset, known, minority_groups)

    def minority(self, dataset: str, known: list[int] | None, given: list[int] | None) -> list[int]:
        """``fixed_locate``'s minority groups: the dataset's shipped defaults; ``given`` (--minority-groups) only
        stands in for a dataset without defaults, and must equal them otherwise."""
        if known:
            if given and sorted(set(given)) != sorted(known):
                raise ClipDebiasError(f"--minority-groups {','.join(map(str, given))}: {self.option} uses the "
                                      f"dataset's default minority groups {known} ({dataset})")
            return list(known)
        if not given:
            raise ClipDebiasError(f"{self.option}: dataset '{dataset}' has no default minority groups; name them "
                                  "with --minority-groups")
        return sorted(set(given))

    # ---- correct / evaluate ----------------------------------------------------------------------------------------
    def check_plan(self, plan: Any) -> None:
        """A ``fixed_locate`` protocol builds only from a plan located under it."""
        if self.fixed_locate and plan.protocol != self.name:
            raise ClipDebiasError(f"{plan.where()} was located with the {plan.protocol} protocol; {self.option} "
                                  f"needs a plan located with 'locate {self.option}'")

    def resolve_renorm(self, renorm: str) -> str:
        """``renorm`` if this protocol takes it, else one line."""
        Renorm.parse(renorm, "--renorm")
        if self.renorm is not None and renorm != self.renorm:
            raise ClipDebiasError(f"--renorm {renorm}: {self.option} renormalizes {self.renorm}")
        return renorm

    def resolve_pair_embeddings(self, value: str | None) -> str:
        """``value`` (None: this protocol's) if this protocol takes it, else one line."""
        if value is None:
            return str(self.pair_embeddings)
        PairEmbeddings.parse(value, "--pair-embeddings")
        if self.pair_embeddings_fixed and value != self.pair_embeddings:
            norm = "unnormalized" if self.pair_embeddings == PairEmbeddings.RAW else "unit-norm"
            raise ClipDebiasError(f"--pair-embeddings {value}: {self.option} takes the accept directions from {norm} "
                                  f"text embeddings ({self.pair_embeddings})")
        return value

    def means_from(self, evaluated: Any, calibration: Any) -> Any:
        """The cache the ablation means come from: the evaluated split itself when ``transductive``, else
        ``calibration``."""
        return evaluated if self.transductive else calibration


POLICIES: dict[Protocol, ProtocolPolicy] = {p.name: p for p in (
    ProtocolPolicy(Protocol.DEFAULT),
    ProtocolPolicy(Protocol.REFERENCE, locate_split="train", fixed_locate=True, whole_tower_textspan=True,
                   transductive=True, renorm=Renorm.STEPWISE, pair_embeddings=PairEmbeddings.RAW,
                   pair_embeddings_fixed=True),
)}


def policy(name: str, option: str = "--protocol") -> ProtocolPolicy:
    """The policy of protocol ``name``, else one clear line naming ``option``."""
    return POLICIES[Protocol.parse(name, option)]
