"""Correct: a ``LocatePlan`` + a calibration cache + options -> the edits, the classifier head, the baked model.

Edits (``EditSet``):
- spurious heads (``ablate``): mean ablation, mu_{l,h} = mean over the CALIBRATION split of c_{l,h} [A, D] (the
  cache's stored per-head means); the calibration split is the one given (default in the CLI: the split used to
  locate) and may be a test split only with ``allow_test_calibration`` (then recorded in the model's ``spec.plan``),
  or under ``protocol="reference"``, whose ablation means come from the evaluated split itself (transductive, also
  recorded);
- salient heads (``project``): RoboShot accept step with u = orthonormal_basis(v) [K, D], v_k = E_T(p+_k) - E_T(p-_k)
  over the attribute pairs, from unit-norm text embeddings (``pair_embeddings="unit"``, default) or unnormalized
  ones (``"raw"``, the reference); ``renorm`` stepwise (the reference; default), keep or unit-once
  (``toolchain.correct.edits``).
Terms, means and the baked model all use the plan's decomposition convention (``toolchain.decompose.conventions``).
The same ``EditSet`` runs on cached terms (``EditSet.apply``, used by ``evaluate --compare``) and is baked into a
``DebiasedClassifier`` (``build_classifier``): both call ``toolchain.correct.edits.corrected_embedding``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from clip_debias.toolchain.choices import HeadName, PairEmbeddings
from clip_debias.toolchain.correct.classifier import ClassifierSpec, DebiasedClassifier, PreprocessRecord
from clip_debias.toolchain.correct.edits import corrected_embedding, orthonormal_basis
from clip_debias.toolchain.correct.heads import HEAD_KINDS
from clip_debias.toolchain.decompose.cache import DecompositionCache
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.locate.ltc import LocatePlan, check_plan_heads, require_layers, require_same_backbone
from clip_debias.toolchain.models.adapter import TowerAdapter
from clip_debias.toolchain.models.loading import LoadedClip
from clip_debias.toolchain.prompts.files import ContextSpec
from clip_debias.toolchain.prompts.text import DEFAULT_TEMPLATES
from clip_debias.toolchain.protocol import policy

PAIR_EMBEDDINGS = PairEmbeddings.values()


@dataclass
class BuildOptions:
    """How to correct. ``attribute_pairs`` (p+, p-) are needed only when projecting salient heads; ``contexts`` only
    for the perception classifier. ``templates`` default to the plan's."""

    ablate: bool = True
    project: bool = True
    classifier: str = "zeroshot"
    contexts: ContextSpec | None = None
    attribute_pairs: list[tuple[str, str]] | None = None
    tau: float = 1.0
    z_from: str = "joint"
    renorm: str = "stepwise"
    pair_embeddings: str | None = None  # unit | raw; None: the protocol's (default: unit, reference: raw)
    allow_test_calibration: bool = False
    templates: list[str] | None = None
    protocol: str = "default"
    lle: Any = None  # lle_fit.LleOptions: the LLE head's training data and settings (--classifier lle)

    def resolved(self) -> "BuildOptions":
        """These options with the protocol's choices filled in; refuses a choice the reference protocol does not
        make (one line naming the option)."""
        from dataclasses import replace

        rules = policy(self.protocol)
        return replace(self, renorm=rules.resolve_renorm(self.renorm),
                       pair_embeddings=rules.resolve_pair_embeddings(self.pair_embeddings))


@dataclass
class EditSet:
    """Heads to mean-ablate with their calibration means [A, D]; heads to project with the basis [K, D]."""

    ablated: list[tuple[int, int]] = field(default_factory=list)
    means: torch.Tensor | None = None
    salient: list[tuple[int, int]] = field(default_factory=list)
    basis: torch.Tensor | None = None
    renorm: str = "stepwise"

    @classmethod
    def of_model(cls, model: DebiasedClassifier) -> "EditSet":
        """The edits baked into a built model (its ablation means and basis), to apply to cached terms."""
        return cls(ablated=[(int(l), int(h)) for l, h in model.spec.ablated],
                   means=model.ablation_means.detach().float().cpu(),
                   salient=[(int(l), int(h)) for l, h in model.spec.salient],
                   basis=model.basis.detach().float().cpu(), renorm=model.renorm)

    def apply(self, cache: DecompositionCache, images: Sequence[int] | None = None) -> torch.Tensor:
        """Corrected unit-norm embeddings [N, D] from the cached terms (same math as the baked model); reads only the
        edited heads' terms (of the rows ``images`` only, when given: [len(images), D])."""
        require_layers(cache.layers, self.ablated + self.salient, f"cache {cache.dataset}/{cache.split}")
        terms = cache.head_terms(self.ablated + self.salient, images)  # [N, A + S, D]
        emb = cache.embeddings()
        if images is not None:
            emb = emb[torch.as_tensor(list(images), dtype=torch.long)]
        a = len(self.ablated)
        return corrected_embedding(emb, terms[:, :a], self.means, terms[:, a:], self.basis,
                                   self.renorm)  # type: ignore[arg-type]


# ---- checks -----------------------------------------------------------------------------------------------------

def check_plan(plan: LocatePlan, clip: LoadedClip, cfg: TowerAdapter, where: str | None = None) -> None:
    """Refuse a plan from another backbone, with heads outside the tower's layers x heads grid, or with a head listed
    twice or both spurious and salient. Lines start with ``where`` (default: the plan's file, else 'plan')."""
    where = where or plan.where()
    require_same_backbone(clip.identity, plan.model_identity, where)
    for role, entries in (("spurious", plan.spurious), ("salient", plan.salient)):
        for i, s in enumerate(entries):
            l, h = s.head
            if not (0 <= l < cfg.layers and 0 <= h < cfg.heads):
                raise ClipDebiasError(f"{where}: field '{role}[{i}].head': head [{l}, {h}] is out of range for "
                                      f"{clip.identity.describe()} ({cfg.layers} layers x {cfg.heads} heads)")
    check_plan_heads(plan, where)


def require_convention(plan: LocatePlan, cache: DecompositionCache, what: str) -> None:
    """Refuse a cache whose terms follow another decomposition convention than the plan's."""
    if cache.convention != plan.convention:
        raise ClipDebiasError(f"{what} holds '{cache.convention}' terms, the plan was located on '{plan.convention}' "
                              f"terms (decompose with --convention {plan.convention})")


def check_calibration(calibration: DecompositionCache, clip: LoadedClip, heads: list[tuple[int, int]],
                      allow_test: bool) -> None:
    """Same backbone, layers covering the ablated heads, and no test split unless explicitly allowed."""
    what = f"calibration cache {calibration.dataset}/{calibration.split}"
    require_same_backbone(clip.identity, calibration.identity, what)
    require_layers(calibration.layers, heads, what)
    if calibration.split == "test" and not allow_test:
        raise ClipDebiasError(f"{what}: calibrating on the test split leaks test data into the model; use the split "
                              "you located on, or pass --allow-test-calibration to do it knowingly")


# ---- pieces -----------------------------------------------------------------------------------------------------

def ablation_means(calibration: DecompositionCache, heads: list[tuple[int, int]]) -> torch.Tensor:
    """mu [A, D]: mean of each head's term over the calibration split (float64 accumulation, stored in the cache)."""
    means = calibration.head_means()
    return torch.stack([means[r, h] for r, h in calibration.positions(heads)]).float() if heads else \
        torch.zeros(0, means.shape[-1])


@torch.no_grad()
def projection_basis(clip: LoadedClip, pairs: list[tuple[str, str]], pair_embeddings: str = "unit") -> torch.Tensor:
    """u [K, D] = orthonormal_basis(v), v_k = E_T(p+_k) - E_T(p-_k) with unit-norm text embeddings (``unit``) or
    unnormalized ones (``raw``, the reference's)."""
    unit = pair_embeddings == "unit"
    pos = clip.encode_text([p for p, _ in pairs], normalize=unit).float()
    neg = clip.encode_text([n for _, n in pairs], normalize=unit).float()
    return orthonormal_basis(pos - neg)


def make_edits(plan: LocatePlan, calibration: DecompositionCache | None, clip: LoadedClip, options: BuildOptions, *,
               pairs_hint: str = "--attribute-pairs FILE, or --no-project",
               calibration_hint: str = "--calibration CACHE, or --no-ablate") -> EditSet:
    """The ``EditSet`` for ``options`` (ablate and/or project), checked against the calibration cache. The hints are
    the options that supply missing pairs or calibration on the calling command (defaults: ``build``'s). Under
    ``protocol="reference"`` the plan must be located so too, and ``calibration`` is the evaluated split itself."""
    options = options.resolved()
    rules = policy(options.protocol)
    rules.check_plan(plan)
    edits = EditSet(renorm=options.renorm)
    if options.ablate and plan.spurious:
        if calibration is None:
            raise ClipDebiasError(f"mean ablation of the plan's {len(plan.spurious)} spurious head(s) needs a "
                                  f"calibration cache ({calibration_hint})")
        require_convention(plan, calibration, f"calibration cache {calibration.dataset}/{calibration.split}")
        check_calibration(calibration, clip, plan.spurious_heads(),
                          options.allow_test_calibration or rules.transductive)
        edits.ablated, edits.means = plan.spurious_heads(), ablation_means(calibration, plan.spurious_heads())
    if options.project and plan.salient:
        if not options.attribute_pairs:
            raise ClipDebiasError(f"the plan has {len(plan.salient)} salient head(s) to project but no attribute pairs "
                                  f"were given ({pairs_hint})")
        edits.salient = plan.salient_heads()
        edits.basis = projection_basis(clip, options.attribute_pairs, options.pair_embeddings or "unit")
    return edits


def make_head(clip: LoadedClip, class_names: list[str], templates: list[str], options: BuildOptions) -> nn.Module:
    """The head of kind ``options.classifier`` (``correct.heads.HEAD_KINDS``): zero-shot (T [C, D] from
    ``templates``) or PerceptionCLIP (``options.contexts``)."""
    return HEAD_KINDS[HeadName.parse(options.classifier, "--classifier")].make(clip, class_names, templates, options)


def build_classifier(plan: LocatePlan, calibration: DecompositionCache | None, clip: LoadedClip,
                     options: BuildOptions | None = None) -> DebiasedClassifier:
    """The ``DebiasedClassifier`` with the plan's edits and the chosen head baked in; ``spec.plan`` records the plan
    summary, the calibration split (and whether it is a test split), the attribute pairs and the options. A head kind
    with a ``fit`` step (LLE) is trained last, on the embeddings of the model with the edits baked in."""
    options = (options or BuildOptions()).resolved()
    check_plan(plan, clip, clip.tower)
    tower = clip.tower.classifier_tower(clip.identity.name, "build")
    edits = make_edits(plan, calibration, clip, options)
    head = make_head(clip, plan.class_names, list(options.templates or plan.templates or DEFAULT_TEMPLATES), options)
    opts = {k: v for k, v in asdict(options).items() if k not in ("contexts", "attribute_pairs", "lle")}
    rules = policy(options.protocol)
    provenance = {
        **plan.summary(),
        "calibration": ({"dataset": calibration.dataset, "split": calibration.split, "n": len(calibration)}
                        if calibration is not None and edits.ablated else None),
        "test_calibration": bool(calibration is not None and edits.ablated and calibration.split == "test"),
        "transductive": bool(rules.transductive and edits.ablated),
        "attribute_pairs": [list(p) for p in options.attribute_pairs or []] if edits.salient else [],
        "options": opts,
    }
    if provenance["transductive"]:
        provenance["note"] = rules.note
    spec = ClassifierSpec(
        tower=tower.cfg.to_dict(), identity=clip.identity.to_dict(), class_names=list(plan.class_names),
        group_names=list(calibration.group_names if calibration is not None else []),
        preprocess=PreprocessRecord.of(clip.preprocess_cfg),
        ablated=[list(h) for h in edits.ablated], salient=[list(h) for h in edits.salient],
        basis_rank=int(edits.basis.shape[0]) if edits.basis is not None else 0, renorm=edits.renorm,
        convention=plan.convention, plan=provenance,
    )
    model = DebiasedClassifier(tower, head, spec, edits.means, edits.basis).eval()
    fit = HEAD_KINDS[options.classifier].fit
    if fit is not None:  # a head trained on this model's own embeddings (LLE)
        model.head = fit(model, options)
    return model
