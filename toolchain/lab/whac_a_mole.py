"""The Whac-A-Mole table on two-shortcut lab data (``clip-debias lab report --whac-a-mole``): does a correction that
mitigates one shortcut amplify the other (Li et al., CVPR 2023)?

Five methods on the lab model, each evaluated on the test split of DATA (balanced over the 8 groups class x place x
object), with the Whac-A-Mole numbers of ``runtime.metrics.shortcut_gaps`` (I.D. accuracy weighted by the train
correlation p_agree that DATA/lab.json records, BG / CoObj / BG+CoObj gaps, worst of the 8 groups) via
``runtime.metric_inputs`` and ``toolchain.evaluate.bias_of`` -- the numbers ``verify`` and ``evaluate`` compute:

- ``zero-shot``: the plain CLIP classifier ("a photo of a {class}.");
- ``LTC``: the default protocol as ``clip-debias demo`` runs it: heads located on val (every layer; minority groups
  from the train split's group counts), the spurious ones mean-ablated with val means, the salient ones projected
  (RoboShot accept step, stepwise renorm; the shipped Waterbirds attribute pairs), zero-shot head (``build``'s
  defaults);
- ``PerceptionCLIP``: no edits, the PerceptionCLIP head with contexts for BOTH spurious attributes
  (``lab/prompts-lab2.yaml``: place x object, 4 contexts);
- ``LLE``: no edits, the Last Layer Ensemble head (``correct.lle``) trained on the train split's frozen embeddings
  with the authors' UrbanCars defaults (``correct.lle_fit``: heads original, background swap, co-object swap with
  their cross-redraw; lr 1e-3 constant, 300 epochs, the epoch of the best val worst-of-8; ``LleSettings`` selects
  the others);
- ``LTC + LLE``: the LTC edits, then the LLE head trained on the LTC-corrected embeddings.

For each LLE row, ``routing`` says where the shift classifier sends the test images of each agreement cell (class x
background agrees x co-object agrees): the mean softmax weight p_k of each head k and the cell's accuracy.

Logits come from the cached terms of the test split through the same edit and head functions the baked model uses
(``EditSet.apply``, the heads' ``forward``; baked == cached is tested in tests/test_correct.py). The test split is
touched by evaluation only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clip_debias.runtime.metric_tables import GAP_TITLES
from clip_debias.runtime.metrics import GAP_NAMES
from clip_debias.toolchain.lab import LAB_DIR

LAB2_PROMPTS = LAB_DIR / "prompts-lab2.yaml"  # PerceptionCLIP contexts of both spurious attributes
METHODS = ("zero-shot", "LTC", "PerceptionCLIP", "LLE", "LTC + LLE")
TABLE_COLUMNS = ("I.D. acc", *(GAP_TITLES[n] for n in GAP_NAMES), "worst of 8")


@dataclass
class LleSettings:
    """How the two LLE rows train their heads (``correct.lle_fit.LleOptions``' fields of the same names)."""

    augment: tuple[str, ...] = ("auto",)
    copies: int = 1
    epochs: int | None = None  # None: the schedule's
    seed: int = 0
    schedule: str = "urbancars"
    redraw: str = "cross"
    shift_init: str = "random"
    progress: bool = True


@dataclass
class WhacAMole:
    """The rows (``evaluate.MethodResult``, with their bias metrics), the plan the LTC rows used, the LLE heads'
    training records and the findings (``amplified``)."""

    rows: list[Any]
    plan: dict[str, Any]
    lle_training: dict[str, dict[str, Any]] = field(default_factory=dict)
    routing: dict[str, "Routing"] = field(default_factory=dict)

    def findings(self) -> list[str]:
        """``amplified(self.rows)``."""
        return amplified(self.rows)


@dataclass
class RoutingCell:
    """One agreement cell of the test split: its class, whether the background / co-object agree with it, its size,
    the mean shift weight per head (softmax(W_d e + b_d) averaged over the cell's images) and the cell's accuracy."""

    label: str
    bg_agrees: bool
    obj_agrees: bool
    n: int
    weights: list[float]
    accuracy: float

    def name(self) -> str:
        word = {True: "agrees", False: "disagrees"}
        return f"{self.label}, bg {word[self.bg_agrees]}, obj {word[self.obj_agrees]}"


@dataclass
class Routing:
    """Where an LLE head's shift classifier sends each agreement cell (``routing_of``)."""

    shifts: list[str]
    cells: list[RoutingCell]


def routing_of(head: Any, e: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, inputs: Any) -> Routing:
    """``head``'s shift weights on the embeddings ``e`` [N, D] per cell (class y, background id == y, co-object id ==
    y) of the test split (``inputs.shortcuts``: the two class-aligned attribute columns), with the accuracy of
    ``logits`` there; empty cells left out."""
    background, co_object = inputs.shortcuts
    bg, obj = torch.as_tensor(background.ids).long(), torch.as_tensor(co_object.ids).long()
    with torch.no_grad():
        p = head.shift_probabilities(e)
    correct = (logits.argmax(-1) == labels).float()
    cells = []
    for y, name in enumerate(inputs.class_names):
        for b_agrees in (True, False):
            for o_agrees in (True, False):
                m = (labels == y) & ((bg == y) == b_agrees) & ((obj == y) == o_agrees)
                if m.any():
                    cells.append(RoutingCell(name, b_agrees, o_agrees, int(m.sum()), p[m].mean(0).tolist(),
                                             float(correct[m].mean())))
    return Routing(list(head.shifts), cells)


def amplified(rows: list[Any]) -> list[str]:
    """One line per method that narrowed one shortcut's gap (BG or CoObj) against zero-shot's while it widened the
    other's (the gaps are negative when a cue that disagrees costs accuracy: 'widened' = more negative)."""
    base = next(r for r in rows if r.method == "zero-shot").bias.shortcut_gaps.gaps
    out = []
    for r in rows:
        if r.method == "zero-shot":
            continue
        gaps = r.bias.shortcut_gaps.gaps
        delta = {n: gaps[n] - base[n] for n in ("bg", "coobj")}
        for better, worse in (("bg", "coobj"), ("coobj", "bg")):
            if delta[better] > 0 > delta[worse]:
                out.append(f"{r.method} narrowed the {GAP_TITLES[better]} ({100 * base[better]:+.1f} -> "
                           f"{100 * gaps[better]:+.1f} pts) and widened the {GAP_TITLES[worse]} "
                           f"({100 * base[worse]:+.1f} -> {100 * gaps[worse]:+.1f} pts)")
    return out


def _lle_options(data: Path, settings: LleSettings) -> Any:
    from clip_debias.toolchain.correct.lle_fit import LleOptions

    return LleOptions(data=data, augment=settings.augment, copies=settings.copies, epochs=settings.epochs,
                      seed=settings.seed, schedule=settings.schedule, redraw=settings.redraw,
                      shift_init=settings.shift_init, progress=settings.progress).keep_images()  # both rows: one draw


def whac_a_mole(data: str | Path, clip: Any, settings: LleSettings | None = None, batch_size: int = 64,
                progress: bool = True, say: Any = None) -> WhacAMole:
    """The five rows on ``data``'s test split (module docstring) for ``clip`` (a ``LoadedClip`` of the lab model).
    ``data`` must be two-shortcut lab data with masks (``lab make-data --shortcuts background,object``)."""
    from dataclasses import replace

    from clip_debias.runtime.datasets import load_index
    from clip_debias.runtime.metric_inputs import metric_inputs
    from clip_debias.toolchain.correct.build import BuildOptions, build_classifier, make_edits, make_head
    from clip_debias.toolchain.decompose.run import decompose_dataset
    from clip_debias.toolchain.errors import ClipDebiasError
    from clip_debias.toolchain.evaluate import MethodResult, bias_of, report_of
    from clip_debias.toolchain.locate.groups import minority_from_counts
    from clip_debias.toolchain.locate.ltc import locate_cache
    from clip_debias.toolchain.prompts.defaults import attribute_pairs_for, contexts_for

    say = say or (lambda *a, **k: None)
    data = Path(data)
    settings = settings or LleSettings()
    lle = _lle_options(data, settings)
    test_index = load_index("waterbirds", data, "test")
    inputs = metric_inputs(test_index)
    if inputs.shortcuts is None:
        raise ClipDebiasError(f"{data}: the Whac-A-Mole table needs two-shortcut lab data ("
                              f"{inputs.missing.get('shortcut_gaps', 'no shortcut attributes')}; make it with "
                              "'clip-debias lab make-data --shortcuts background,object')")
    lle.resolve_augmentations()  # refuses types without masks before any work

    layers = list(range(clip.tower.layers))
    say(f"decompose val and test (every layer: {len(layers)})")
    torch.manual_seed(0)
    caches = {split: decompose_dataset(clip, load_index("waterbirds", data, split), layers, batch_size=batch_size,
                                       progress=progress) for split in ("val", "test")}
    train = lle.index("train")
    labels = torch.tensor([r.label for r in train.records])
    groups = torch.tensor([r.group for r in train.records])
    minority = minority_from_counts(labels, groups, list(train.group_names), "train split")
    say("locate on val (default protocol: minority groups from the train split's counts)")
    plan = locate_cache(caches["val"], clip, minority_groups=minority.groups)
    pairs = attribute_pairs_for("defaults", "waterbirds")
    contexts = contexts_for(str(LAB2_PROMPTS), "waterbirds")
    ltc = BuildOptions(attribute_pairs=pairs)  # build's defaults: ablate + project, stepwise, zero-shot head
    edits = make_edits(plan, caches["val"], clip, ltc)
    test = caches["test"]
    plain, corrected = test.embeddings(), edits.apply(test)
    templates = list(plan.templates)
    zeroshot = make_head(clip, plan.class_names, templates, ltc)
    perception = make_head(clip, plan.class_names, templates, replace(ltc, classifier="perception", contexts=contexts))
    trained: dict[str, Any] = {}
    for name, base in (("LLE", replace(ltc, ablate=False, project=False)), ("LTC + LLE", ltc)):
        say(f"{name}: train the heads on the train split's frozen embeddings (choice on val)")
        trained[name] = build_classifier(plan, caches["val"], clip, replace(base, classifier="lle", lle=lle)).head
    ltc_edits = (f"ablate {edits.ablated} (val means), project {edits.salient} (rank "
                 f"{0 if edits.basis is None else edits.basis.shape[0]}, {edits.renorm})")
    def lle_edits(name: str) -> str:
        t = trained[name].training_record
        c = t["chosen"]
        return (f"LLE heads {', '.join(trained[name].shifts)} ({t['schedule']['name']} schedule, redraw "
                f"{t['redraw']}, shift init {t['shift_init']}; lr {c['lr']}, wd {c['weight_decay']}, epoch "
                f"{c['epoch']}: val worst group {100 * c['val_worst_group']:.1f} %)")

    methods = (("zero-shot", "none", zeroshot, plain), ("LTC", ltc_edits, zeroshot, corrected),
               ("PerceptionCLIP", f"contexts {', '.join(contexts.contexts)}", perception, plain),
               ("LLE", lle_edits("LLE"), trained["LLE"], plain),
               ("LTC + LLE", f"{ltc_edits}; {lle_edits('LTC + LLE')}", trained["LTC + LLE"], corrected))
    y, g = test.labels.long(), test.groups.long()
    rows = []
    with torch.no_grad():
        for name, what, head, e in methods:
            logits = head(e).float()
            rows.append(MethodResult(name, what, report_of(logits, y, g, test.group_names), logits,
                                     bias_of(logits, y, inputs)))
    routing = {name: routing_of(head, e, r.logits, y, inputs) for (name, _, head, e), r in zip(methods, rows)
               if name in trained}
    return WhacAMole(rows, plan.summary(), {k: h.training_record for k, h in trained.items()}, routing)


def table_cells(rows: list[Any]) -> list[list[str]]:
    """[method, I.D. acc, BG gap, CoObj gap, BG+CoObj gap, worst of 8, avg acc] per row, formatted by
    ``runtime.metric_tables.summary`` (the worst group named)."""
    from clip_debias.runtime.metric_tables import pct, summary

    out = []
    for r in rows:
        s = summary(r.bias)
        worst = r.bias.shortcut_gaps.worst_group
        out.append([r.method, *(s[c] for c in TABLE_COLUMNS[:-1]), f"{s[TABLE_COLUMNS[-1]]} ({worst})",
                    pct(r.report.accuracy)])
    return out


def print_table(result: WhacAMole, console: Any) -> None:
    """The table, the findings, and where the numbers come from."""
    from clip_debias.runtime.tables import table

    g = result.rows[0].bias.shortcut_gaps
    t = table(["method", *TABLE_COLUMNS, "avg acc"], right=set(range(1, len(TABLE_COLUMNS) + 2)),
              title=f"Whac-A-Mole on the lab's test split (p_agree {g.p_agree} from {g.p_agree_from})")
    for cells in table_cells(result.rows):
        t.add_row(*cells)
    console.print(t)
    for line in result.findings() or ["no method narrowed one shortcut's gap while widening the other's"]:
        console.print(line, markup=False, highlight=False)
    for r in result.rows:
        console.print(f"  {r.method}: {r.edits}", markup=False, highlight=False, style="dim")
    for method, routing in result.routing.items():
        t = table(["test cell", "n", *routing.shifts, "acc"], right=set(range(1, len(routing.shifts) + 3)),
                  title=f"{method}: mean shift weight per head (where the shift classifier sends each cell)")
        for c in routing.cells:
            t.add_row(c.name(), str(c.n), *(f"{w:.2f}" for w in c.weights), f"{100 * c.accuracy:.1f}")
        console.print(t)
