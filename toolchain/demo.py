"""The README's main job, offline: the shipped bias-lab model on freshly generated lab data, through every stage.

make-data -> decompose (train, val, test; every layer, TextSpan convention) -> locate (default protocol: val, minority
groups from the train split's group counts; reference protocol: train) -> the methods side by side on test under both
protocols -> choose the correction on val (default protocol) -> build -> export ONNX (debiased and plain zero-shot)
-> verify both on test -> probe each head's terms for the background.

Hyper-parameters (which correction ships) are chosen on val only; under the default protocol test is touched by
evaluation alone. The reference protocol's rows (``toolchain.protocol``) take their ablation means from test itself:
transductive, shown for comparison with the published pipeline, never shipped.

``out`` is a demo folder of ours (``runtime.atomic_output.claim_directory``): a non-empty folder without the demo's
marker is refused before step 1. Inside it every file is written as the command that owns its kind writes it (an
existing one replaced only when clip-debias wrote it), and every sub-folder as an output folder of its kind.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from clip_debias.runtime.datasets import load_index
from clip_debias.runtime.ownership import json_object_with, register_file_kind
from clip_debias.toolchain.decompose.cache import DecompositionCache
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.lab import LAB_DIR, LAB_MODEL, ONE_SHORTCUT_RECIPES
from clip_debias.toolchain.select import Criterion
RECIPE = LAB_DIR / "recipe.json"
LAB_POOL = LAB_DIR / "pool.txt"  # descriptions in the lab text tower's vocabulary, for explain
LAB_VOCAB = LAB_DIR / "vocab.txt"  # background and object words, for discover

MAX_AVG_DROP = 0.02  # a shipped correction may cost at most 2 points of average accuracy on val
CRITERION = Criterion(max_average_drop=MAX_AVG_DROP)  # what the demo ships: toolchain.select's choice on val
REFERENCE = " [reference protocol]"  # suffix of the reference protocol's rows in compare.json
register_file_kind("demo-summary", "demo.json written by 'clip-debias demo'",
                   json_object_with({"chosen", "val_rows", "test_rows", "verify"}))


@dataclass
class DemoSummary:
    """What the demo measured; saved as ``demo.json`` (and ``compare.json`` for ``clip-debias report``)."""

    data: dict[str, Any]
    plan: dict[str, Any]
    chosen: str
    val_rows: list[dict[str, Any]]
    test_rows: list[dict[str, Any]]
    verify: dict[str, dict[str, Any]]
    probe: list[dict[str, Any]]
    reference_plan: dict[str, Any] = field(default_factory=dict)
    reference_test_rows: list[dict[str, Any]] = field(default_factory=list)  # transductive: never shipped
    seconds: dict[str, float] = field(default_factory=dict)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # artifact -> side_by_side's ms statistics
    reused: dict[str, Any] = field(default_factory=dict)  # what a rerun took from the folder instead of redoing
    model: str = LAB_MODEL  # the shipped lab model the demo ran


def lab_data_args(quick: bool, recipe_file: Path = RECIPE) -> dict[str, Any]:
    """The make-data arguments of a shipped recipe (``recipe_file``, the lab model's by default; smaller val/test for
    ``quick``)."""
    args: dict[str, Any] = {}
    if recipe_file.is_file():
        recipe = json.loads(recipe_file.read_text())
        args = dict(recipe.get("make_data", {}).get("args", recipe.get("make_data_args", {})))
    args.pop("out", None)
    if quick:
        args.update(n_train=400, n_val=240, n_test=240)
    return args


def prepare_lab_data(data: Path, args: dict[str, Any], fresh: bool, say: Any) -> bool:
    """Step 1: lab data made with ``args`` in ``data``. Reused (True) when ``data`` already holds data made with the
    same parameters and not ``fresh``; else made (anew), saying why. ``say`` prints a line."""
    from clip_debias.toolchain.lab.data import made_with, make_lab_data

    if not fresh and made_with(data, **args):
        say(f"[bold]1/8 make-data[/bold]: reusing the lab data in {data} (made with the same parameters; --fresh "
            "makes it anew)")
        return True
    why = ("" if not data.exists() else " (--fresh)" if fresh else
           " (replacing the data there: it was made with other parameters)")
    say(f"[bold]1/8 make-data[/bold] -> {data}{why} {args}")
    make_lab_data(data, overwrite=True, **args)
    return False


LATENCY_ROUNDS = 20  # calls of each artifact, taken in turns (exporters.timing.side_by_side)


def reusable_cache(path: Path, clip: Any, index: Any, layers: list[int]) -> DecompositionCache | None:
    """The decomposition cache at ``path`` when it holds what ``decompose_dataset(clip, index, layers)`` would
    write: the same weights (sha256), the same images in the same order (paths), layers and convention (the
    default); None otherwise (absent, unreadable, or any of these different)."""
    from clip_debias.toolchain.decompose.cache import load_cache
    from clip_debias.toolchain.decompose.conventions import DEFAULT_CONVENTION

    if not path.is_file():
        return None
    try:
        cache = load_cache(path)
    except Exception:  # unreadable or of an older format: decomposed anew
        return None
    same = (cache.identity.same_backbone(clip.identity) and list(cache.layers) == list(layers)
            and cache.convention == DEFAULT_CONVENTION and (cache.dataset, cache.split) == (index.dataset, index.split)
            and list(cache.paths) == [str(r.path) for r in index.records])
    return cache if same else None


def latency_side_by_side(artifacts: dict[str, Path], index: Any, batch_size: int,
                         rounds: int = LATENCY_ROUNDS) -> dict[str, dict[str, float]]:
    """Each artifact's model time on the same batch (the first ``batch_size`` images of ``index``), the artifacts
    taking turns call by call (``exporters.timing.side_by_side``): median and p10-p90 spread in ms, and the median
    per-round ratio to the first artifact; plus ``batch_size``."""
    import functools

    import numpy as np

    from clip_debias.exporters.timing import side_by_side
    from clip_debias.runtime.classifier import load

    models = {name: load(path, backend="onnxruntime", device="cpu") for name, path in artifacts.items()}
    first = next(iter(models.values()))
    batch = first.check_batch(np.stack([first.preprocess(r.path) for r in index.records[:batch_size]]))
    out = side_by_side({name: functools.partial(m.backend.run, batch) for name, m in models.items()}, rounds)
    return {name: {**stats, "batch_size": len(batch)} for name, stats in out.items()}


def demo_weights(model: str) -> Path:
    """The shipped weights of ``model``, one of the single-shortcut lab models (``ONE_SHORTCUT_RECIPES``: each made
    on the same lab data); one line otherwise."""
    from clip_debias.toolchain.models.shipped import shipped_weights

    weights = shipped_weights(model) if model in ONE_SHORTCUT_RECIPES else None
    if weights is None:
        raise ClipDebiasError(f"--model {model}: the demo runs a shipped one-shortcut lab model "
                              f"({', '.join(ONE_SHORTCUT_RECIPES)})")
    if not weights.is_file():
        raise ClipDebiasError(f"--model {model}: its shipped weights {weights} are missing from this installation")
    return weights


def run_demo(out: Path, quick: bool = False, batch_size: int = 64, console: Any = None,
             fresh: bool = False, model: str = LAB_MODEL) -> DemoSummary:
    """Run the whole pipeline on the shipped lab model ``model`` (``clipdebias-lab``, or ``clipdebias-lab-map``:
    the same data, MAP readout) into ``out`` and return the summary (also printed when ``console`` is given). Lab
    data already in ``out/data`` made with the same parameters is reused (said so), unless ``fresh``; data made with
    other parameters (e.g. an earlier ``quick`` run) is made anew."""
    from clip_debias.exporters.onnx_export import export_onnx
    from clip_debias.runtime.verify import Thresholds, verify
    from clip_debias.toolchain.correct.classifier import plain_classifier
    from clip_debias.toolchain.prompts.defaults import attribute_pairs_for, contexts_for
    from clip_debias.toolchain.decompose.run import decompose_dataset
    from clip_debias.toolchain.evaluate import compare_file
    from clip_debias.toolchain.locate.groups import minority_from_counts
    from clip_debias.toolchain.locate.heatmap import save_heatmap
    from clip_debias.toolchain.locate.ltc import locate_cache
    from clip_debias.toolchain.locate.probe import attribute_probe, margin_shifts
    from clip_debias.toolchain.models.loading import load_clip
    from clip_debias.toolchain.select import build_selection, candidate_rows, select_correction

    from clip_debias.runtime.atomic_output import claim_directory, write_atomic

    say = console.print if console is not None else (lambda *a, **k: None)
    weights = demo_weights(model)
    out = claim_directory(out, "demo")  # before step 1: a folder that is not a demo of ours is refused
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t0
        times[name] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()

    data = out / "data"
    args = lab_data_args(quick, ONE_SHORTCUT_RECIPES[model])
    data_reused = prepare_lab_data(data, args, fresh, say)
    lap("make_data")

    torch.manual_seed(0)
    clip = load_clip(model, weights=weights)
    layers = list(range(clip.tower.layers))
    caches: dict[str, DecompositionCache] = {}
    reused: list[str] = []
    for split in ("train", "val", "test"):
        index, path = load_index("waterbirds", data, split), out / f"{split}.safetensors"
        cache = reusable_cache(path, clip, index, layers) if data_reused else None
        if cache is not None:
            reused.append(split)
            say(f"[bold]2/8 decompose[/bold] {split}: reusing {path} (same weights sha256 "
                f"{clip.identity.weights_sha256[:12]}, images, layers and convention; --fresh decomposes anew)")
        else:
            say(f"[bold]2/8 decompose[/bold] {model} ({weights.name}) on {split} (every layer, TextSpan)")
            cache = decompose_dataset(clip, index, layers, batch_size=batch_size, progress=console is not None,
                                      out=path)
        caches[split] = cache
    lap("decompose")

    say("[bold]3/8 locate[/bold] default protocol: on val, minority groups from the train split's group counts; "
        "reference protocol: on train")
    train = caches["train"]
    minority = minority_from_counts(train.labels, train.groups, train.group_names, "train split")
    plan = locate_cache(caches["val"], clip, minority_groups=minority.groups)
    plan.save(out / "plan.json")
    save_heatmap(plan, out / "plan.png")
    reference_plan = locate_cache(train, clip, protocol="reference")
    reference_plan.save(out / "plan-reference.json")
    save_heatmap(reference_plan, out / "plan-reference.png")
    lap("locate")

    say(f"[bold]4/8 select[/bold] the correction on val ({CRITERION.describe()}), build it; the same rows on test "
        "under both protocols")
    given = {"contexts": contexts_for("defaults", "waterbirds"),
             "attribute_pairs": attribute_pairs_for("defaults", "waterbirds")}
    selection = select_correction(caches["val"], plan, caches["val"], clip, criterion=CRITERION, test=caches["test"],
                                  **given)
    rows, chosen = {"val": selection.val, "test": selection.test}, selection.chosen
    reference_rows = candidate_rows(caches["test"], reference_plan, None, clip, protocol="reference", **given)
    build_selection(selection, plan, caches["val"], clip, **given).save(out / "model")
    plain = plain_classifier(clip, plan.class_names, caches["val"].group_names)
    plain.save(out / "model-zeroshot")
    lap("build")

    say("[bold]5/8 export ONNX[/bold] (parity-gated)")
    artifacts = {"debiased": export_onnx(out / "model", out / "artifact"),
                 "zero-shot": export_onnx(out / "model-zeroshot", out / "artifact-zeroshot")}
    lap("export")

    say("[bold]6/8 verify[/bold] both artifacts on test with the torch-free runtime")
    # the zero-shot artifact is verified for its accuracy: the latencies compared are side_by_side's, below
    reports = {name: verify(path, "waterbirds", data, "test", batch_size=batch_size, thresholds=Thresholds(),
                            progress=False, **({} if name == "debiased" else {"latency_batches": 0})).to_dict()
               for name, path in artifacts.items()}
    write_atomic(out / "report.json", json.dumps(reports["debiased"], indent=2), "verify-report")
    latency = latency_side_by_side(artifacts, load_index("waterbirds", data, "test"), batch_size)
    lap("verify")

    say("[bold]7/8 probe[/bold] each head's terms for the background (test split)")
    from clip_debias.toolchain.prompts.text import class_text_matrix

    probe_acc = attribute_probe(caches["val"], caches["test"])  # linear probe: fit on val, score on test
    shifts = margin_shifts(caches["test"], class_text_matrix(clip, plan.class_names),
                           float(clip.model.logit_scale.detach().exp()))
    spurious, salient = set(plan.spurious_heads()), set(plan.salient_heads())
    probe = sorted(({"layer": layers[i], "head": h, "background_shift": round(float(shifts.background[i, h]), 3),
                     "object_shift": round(float(shifts.object[i, h]), 3),
                     "linear_probe_accuracy": round(float(probe_acc[i, h]), 4),
                     "located": "spurious" if (layers[i], h) in spurious else
                     ("salient" if (layers[i], h) in salient else "")}
                    for i in range(shifts.background.shape[0]) for h in range(shifts.background.shape[1])),
                   key=lambda r: -abs(r["background_shift"]))
    lap("probe")

    summary = DemoSummary(
        data={"dir": str(data), **args}, plan=plan.summary(), chosen=chosen,
        val_rows=[r.to_dict() for r in rows["val"]], test_rows=[r.to_dict() for r in rows["test"]],
        verify=reports, probe=probe, reference_plan=reference_plan.summary(),
        reference_test_rows=[r.to_dict() for r in reference_rows], seconds=times, latency=latency,
        reused={"data": data_reused, "caches": reused}, model=model,
    )
    write_atomic(out / "compare.json", compare_file(
        rows["test"] + [replace(r, method=r.method + REFERENCE) for r in reference_rows],
        located={"dataset": plan.dataset, "split": plan.split}).to_json(), "compare-file")

    say("[bold]8/8 explain[/bold] the located heads (TextSpan), discover keywords of the errors (B2T), one HTML report")
    from clip_debias.toolchain.explain.jobs import describe_heads, discover_keywords, span_lines
    from clip_debias.toolchain.explain.report import build_report

    described = describe_heads(out / "val.safetensors", lambda: clip, out / "explain", heads=str(out / "plan.json"),
                               pool=LAB_POOL, per_head=3)
    for line in span_lines(described.doc):
        say(line, markup=False, highlight=False)
    _, discovered = discover_keywords(out / "val.safetensors", lambda: clip, out / "discover", vocab=LAB_VOCAB, top=5)
    for c in discovered.doc.classes:
        say(f"  {c.class_name}: {', '.join(k.keyword for k in c.keywords) or c.note}", markup=False, highlight=False)
    write_atomic(out / "demo.json", json.dumps(asdict(summary), indent=2), "demo-summary")  # read by the report
    build_report(out, title=f"clip-debias demo: bias lab ({model})")
    lap("explain")
    write_atomic(out / "demo.json", json.dumps(asdict(summary), indent=2), "demo-summary")  # with explain's time
    if console is not None:
        print_summary(summary, console)
    return summary


# The table's row names: compare_methods' rows, two of them with what they are (the README's table "What
# `clip-debias demo` measures" has the same rows in the same order; tests/test_demo.py checks).
ROW_LABELS = {"ablate": "ablate (mean-ablate the spurious heads)",
              "ablate + project, stepwise renorm": "ablate + project, stepwise renorm (LTC)"}
VERIFY_ROW = "clip-debias verify on the exported ONNX, shipped = chosen on val ({chosen})"


def result_rows(s: DemoSummary) -> list[tuple[str, str, str]]:
    """(method, default protocol, reference protocol) rows of the test split: average / worst-group accuracy in %,
    then the shipped artifact through ``verify`` with its change from zero-shot."""
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    cell = lambda r: f"{pct(r['accuracy'])} / {pct(r['worst_group_accuracy'])}"  # noqa: E731
    reference = {r["method"]: r for r in s.reference_test_rows}
    rows = []
    for r in s.test_rows:
        default = cell(r) + (f" ({r['worst_group']})" if r["method"] == "zero-shot" else "")
        ref = reference.get(r["method"])
        rows.append((ROW_LABELS.get(r["method"], r["method"]), default, cell(ref) if ref else "-"))
    d, z = s.verify["debiased"], s.verify["zero-shot"]
    delta = lambda key: f"{100 * (d[key] - z[key]):+.1f}"  # noqa: E731
    rows.append((VERIFY_ROW.format(chosen=s.chosen),
                 f"{pct(d['accuracy'])} ({delta('accuracy')}) / {pct(d['worst_group_accuracy'])} "
                 f"({delta('worst_group_accuracy')})", "-"))
    return rows


def latency_table(latency: dict[str, dict[str, float]]) -> Any:
    """The artifacts' model time per call, taken in turns on the same batch (``latency_side_by_side``): median,
    p10-p90 spread, and each one's median per-round ratio to the first."""
    from clip_debias.runtime.tables import table

    first = next(iter(latency))
    one = latency[first]
    t = table(["artifact", "median ms", "p10-p90 ms", f"ratio to {first} (median per round)"], right={1, 2, 3},
              title=f"Model time per call on one batch of {one['batch_size']} test images, the artifacts taking turns "
                    f"call by call ({one['rounds']} rounds; onnxruntime, CPU)")
    for name, r in latency.items():
        t.add_row(name, f"{r['median']:.1f}", f"{r['p10']:.1f}-{r['p90']:.1f}",
                  f"{r['median_ratio']:.2f}" if "median_ratio" in r else "1")
    return t


def print_summary(s: DemoSummary, console: Any) -> None:
    """The before/after table (the README's rows), the located heads with their probe accuracy, and the artifact's
    latency (``runtime.tables``: readable at any width)."""
    from clip_debias.runtime.tables import table

    pct = lambda x: f"{100 * x:5.1f}"  # noqa: E731
    console.print(f"Bias lab ({s.model}), test split (balanced): average / worst-group accuracy, %. Default protocol: "
                  "located on val, ablation means from val. Reference protocol: located on train, ablation means from "
                  "test itself (transductive, never shipped).")
    t = table(["method (test split)", "default protocol", "reference protocol"], right={1, 2})
    for row in result_rows(s):
        t.add_row(*row)
    console.print(t)
    for name, plan in (("default", s.plan), ("reference", s.reference_plan)):
        where = plan.get("located_on", {})
        console.print(f"{name} protocol plan ({where.get('split')}, layers {where.get('layers')}): spurious "
                      f"{plan.get('spurious')}, salient {plan.get('salient')}, K={plan.get('k')}")
    v = table(["artifact", "average acc %", "worst-group acc %"], right={1, 2},
              title="clip-debias verify on the exported ONNX (torch-free runtime, test split)")
    for name, r in s.verify.items():
        v.add_row(name, pct(r["accuracy"]), pct(r["worst_group_accuracy"]))
    console.print(v)
    if s.latency:
        console.print(latency_table(s.latency))
    p = table(["rank", "(layer, head)", "background shift", "object shift", "linear probe acc %", "located as"],
              right={0, 2, 3, 4}, title="Does locate find the background heads? Heads ranked by |background shift| of "
                                        "their class vote (test; logits)")
    for i, r in enumerate(s.probe):
        if i < 6 or r["located"]:
            p.add_row(str(i + 1), f"({r['layer']}, {r['head']})", f"{r['background_shift']:+.2f}",
                      f"{r['object_shift']:+.2f}", pct(r["linear_probe_accuracy"]), r["located"])
    console.print(p)
    console.print(f"timings (s): {s.seconds}")
