"""The bias lab's fairness numbers in the README: counterfactual flip rate, MaxSkew@k and EO / DP gaps (protected
attribute = the background, ``place``) for zero-shot, the LTC default, PerceptionCLIP and the shipped artifact, and
``locate --from-pairs`` heads beside LTC's.

    python benchmarks/lab_bias.py --out /tmp/lab-bias [--quick]

The demo's protocol (``toolchain.demo``) on lab data made with ``--counterfactual`` (the test split is pairs of one
bird drawn twice, identical but for the background; train and val as the shipped recipe's): the shipped lab model
decomposes train, val and test; LTC locates on val (minority groups from train's counts); the methods are compared on
test (``evaluate --compare``'s rows: cached terms, torch); the correction the demo ships is chosen on val, built,
exported and verified on test with the torch-free runtime. ``locate --from-pairs`` runs on the test pairs. Every
number comes from ``runtime.metrics`` (the rows' logits; verify's for the artifact). Results: printed, and
``OUT/lab-bias.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="A new folder (or one this script wrote).")
    parser.add_argument("--quick", action="store_true", help="400 train, 240 val, 240 test images.")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import torch

    from clip_debias.exporters.onnx_export import export_onnx
    from clip_debias.runtime.datasets import load_index
    from clip_debias.runtime.metric_tables import summary
    from clip_debias.runtime.verify import Thresholds, verify
    from clip_debias.toolchain.correct.build import BuildOptions, build_classifier
    from clip_debias.toolchain.decompose.run import decompose_dataset
    from clip_debias.toolchain.demo import VARIANTS, choose_variant, compare_rows, lab_data_args
    from clip_debias.toolchain.lab import LAB_MODEL, LAB_WEIGHTS
    from clip_debias.toolchain.lab.data import make_lab_data
    from clip_debias.toolchain.locate.groups import minority_from_counts
    from clip_debias.toolchain.locate.ltc import locate_cache
    from clip_debias.toolchain.locate.pairs import locate_pairs
    from clip_debias.toolchain.models.loading import load_clip
    from clip_debias.toolchain.prompts.defaults import attribute_pairs_for, contexts_for

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = out / "data"
    make_args = lab_data_args(args.quick)
    if not (data / "metadata.csv").is_file():
        make_lab_data(data, counterfactual=True, **make_args)
    torch.manual_seed(0)
    clip = load_clip(LAB_MODEL, weights=LAB_WEIGHTS)
    layers = list(range(clip.tower.layers))
    caches = {split: decompose_dataset(clip, load_index("waterbirds", data, split), layers,
                                       batch_size=args.batch_size, progress=False,
                                       out=out / f"{split}.safetensors")
              for split in ("train", "val", "test")}
    train = caches["train"]
    minority = minority_from_counts(train.labels, train.groups, train.group_names, "train split")
    plan = locate_cache(caches["val"], clip, minority_groups=minority.groups)
    pairs_plan = locate_pairs(caches["test"], clip)
    contexts, attribute_pairs = contexts_for("defaults", "waterbirds"), attribute_pairs_for("defaults", "waterbirds")
    rows = {split: compare_rows(caches[split], plan, caches["val"], clip, contexts, attribute_pairs)
            for split in ("val", "test")}
    chosen = choose_variant(rows["val"])
    model = build_classifier(plan, caches["val"], clip,
                             BuildOptions(contexts=contexts, attribute_pairs=attribute_pairs, **VARIANTS[chosen]))
    model_dir, artifact = out / "model", out / "artifact"
    model.save(model_dir)
    export_onnx(model_dir, artifact)
    report = verify(artifact, "waterbirds", data, "test", batch_size=args.batch_size, thresholds=Thresholds(),
                    progress=False)

    table = [{"method": r.method, "accuracy": r.report.accuracy, "worst_group": r.report.worst_group_accuracy,
              **summary(r.bias)} for r in rows["test"]]
    table.append({"method": f"shipped artifact ({chosen}), verify", "accuracy": report.accuracy,
                  "worst_group": report.worst_group_accuracy, **summary(report)})
    result = {
        "data": {"dir": str(data), "counterfactual": True, **make_args},
        "test_rows": table,
        "ltc_plan": plan.summary(),
        "pairs_plan": {"spurious": [{"head": s.head, "n_P": s.score, "mean_abs_margin_change": s.pair_change}
                                    for s in pairs_plan.spurious],
                       "k": pairs_plan.k, "threshold": pairs_plan.threshold, "n_pairs": pairs_plan.n_pairs,
                       "ranking": _ranking(pairs_plan)},
        "flip_by_class": {r.method: {c: s.__dict__ for c, s in r.bias.counterfactual.classes.items()}
                          for r in rows["test"] if r.bias and r.bias.counterfactual},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "lab-bias.json").write_text(json.dumps(result, indent=2) + "\n")
    columns = list(dict.fromkeys(k for row in table for k in row))
    print("| " + " | ".join(_escape(c) for c in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in table:
        print("| " + " | ".join(_escape(_cell(row.get(c, "-"))) for c in columns) + " |")
    print(f"LTC (val): spurious {plan.spurious_heads()}, salient {plan.salient_heads()}")
    print(f"from pairs (test, {pairs_plan.n_pairs} pairs): spurious "
          + ", ".join(f"{tuple(s.head)} n_P {s.score:.3f}" for s in pairs_plan.spurious)
          + f" (K={pairs_plan.k}, 1/K={pairs_plan.threshold:.3f})")
    top = result["pairs_plan"]["ranking"][:6]
    print("mean |d(x) - d(x')| ranking (top 6): " + ", ".join(f"{h} {v:.4f}" for h, v in top))
    print(f"wrote {out / 'lab-bias.json'} ({result['seconds']} s)")


def _ranking(plan) -> list[tuple[list[int], float]]:  # noqa: ANN001 (a pairs LocatePlan)
    """Every head by its mean pair change, largest first."""
    cells = [([plan.layers[i], j], v) for i, row in enumerate(plan.pair_change_grid) for j, v in enumerate(row)]
    return sorted(cells, key=lambda c: -c[1])


def _escape(text: str) -> str:
    """A markdown table cell: its pipes escaped (``mean |dP(y)|``)."""
    return text.replace("|", "\\|")


def _cell(value: object) -> str:
    return f"{100 * value:.1f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
