"""The bias lab as an open-vocabulary model (issue 29): retrieval skew of the lab's bird queries over an index of the
test split (protected attribute = the background, ``place``), zero-shot vs the corrections, and the accuracy of
labels given at request time in wordings the head was not built with.

    python benchmarks/lab_retrieval.py --data LAB_DATA --out /tmp/lab-retrieval

LAB_DATA: lab data (``clip-debias lab make-data``; the shipped recipe's arguments for the docs' table; made here
with the quick sizes when the folder has no metadata.csv). The demo's protocol (``toolchain.demo``): the shipped lab
model decomposes val; LTC locates on val (minority groups from train's counts); each variant is built (ablation means
from val), exported with its text tower (``export_onnx(..., text_clip=)``) and run by the torch-free runtime: the
test split is indexed (``runtime.search.build_index``: the debiased image embeddings), the lab-birds queries
(``runtime/queries/lab-birds.txt``) ranked over it and their MaxSkew@10 / @50 and NDKL@50 computed by
``runtime.retrieval_skew``; ``classify(images, labels=...)`` gives the open-vocabulary accuracy. The demo's shipped
choice (chosen on val by ``demo.choose_variant``) is named. Results: printed, and ``OUT/lab-retrieval.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

WORDINGS = {  # label sets given at request time; the first is the one the heads were built with
    "landbird / waterbird (built-in)": ["landbird", "waterbird"],
    "land bird / water bird": ["land bird", "water bird"],
    "landbirds / waterbirds": ["landbirds", "waterbirds"],
    "bird of the land / bird of the water": ["bird of the land", "bird of the water"],
}
ROWS = ("zero-shot", "ablate", "ablate + project, stepwise renorm", "ablate + project, keep norm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="Lab data folder (made with --quick sizes if "
                                                                 "empty).")
    parser.add_argument("--out", type=Path, required=True, help="A new folder (or one this script wrote).")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import numpy as np
    import torch

    from clip_debias import runtime
    from clip_debias.exporters.onnx_export import export_onnx
    from clip_debias.runtime.datasets import load_index
    from clip_debias.runtime.retrieval_skew import index_retrieval_skew, read_queries
    from clip_debias.runtime.search import build_index, load_index as load_search_index
    from clip_debias.toolchain.correct.build import BuildOptions, build_classifier
    from clip_debias.toolchain.correct.classifier import plain_classifier
    from clip_debias.toolchain.decompose.run import decompose_dataset
    from clip_debias.toolchain.demo import VARIANTS, choose_variant, compare_rows, lab_data_args
    from clip_debias.toolchain.lab import LAB_MODEL, LAB_WEIGHTS
    from clip_debias.toolchain.lab.data import make_lab_data
    from clip_debias.toolchain.locate.groups import minority_from_counts
    from clip_debias.toolchain.locate.ltc import locate_cache
    from clip_debias.toolchain.models.loading import load_clip
    from clip_debias.toolchain.prompts.defaults import attribute_pairs_for, contexts_for

    out, data = args.out, args.data
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not (data / "metadata.csv").is_file():
        make_lab_data(data, **lab_data_args(True))
    torch.manual_seed(0)
    clip = load_clip(LAB_MODEL, weights=LAB_WEIGHTS)
    layers = list(range(clip.tower.layers))
    train = load_index("waterbirds", data, "train")
    val = decompose_dataset(clip, load_index("waterbirds", data, "val"), layers, batch_size=args.batch_size,
                            progress=False, out=out / "val.safetensors")
    minority = minority_from_counts(torch.tensor([r.label for r in train.records]),
                                    torch.tensor([r.group for r in train.records]), train.group_names, "train split")
    plan = locate_cache(val, clip, minority_groups=minority.groups)
    contexts, pairs = contexts_for("defaults", "waterbirds"), attribute_pairs_for("defaults", "waterbirds")
    chosen = choose_variant(compare_rows(val, plan, val, clip, contexts, pairs))
    test = load_index("waterbirds", data, "test")
    paths = [r.path for r in test.records]
    labels = np.asarray([r.label for r in test.records])
    groups = np.asarray([r.group for r in test.records])
    places = [test.attribute_names[r.attribute] for r in test.records]
    queries, _ = read_queries("lab-birds")
    rows = []
    for name in ROWS:
        model = (plain_classifier(clip, plan.class_names) if name == "zero-shot" else
                 build_classifier(plan, val, clip, BuildOptions(contexts=contexts, attribute_pairs=pairs,
                                                                **VARIANTS[name])))
        art = export_onnx(model, out / f"artifact-{len(rows)}", ort_optimize=False, text_clip=clip)
        clf = runtime.load(art, device="cpu")
        index = load_search_index(build_index(clf, paths, [str(p) for p in paths], out / f"index-{len(rows)}",
                                              {"place": places}, batch_size=args.batch_size))
        skew = index_retrieval_skew(index, clf.encode_text(queries), queries, "place", ks=(10, 50))
        accuracy = {}
        for wording, labs in WORDINGS.items():
            logits = clf.text.logits(np.asarray(index.embeddings), labs)  # the same as classify(images, labels=labs)
            hit = logits.argmax(axis=1) == labels
            accuracy[wording] = {"avg": float(hit.mean()),
                                 "worst_group": float(min(hit[groups == g].mean() for g in np.unique(groups)))}
        rows.append({"method": name + (" (the demo's choice)" if name == chosen else ""),
                     "max_skew@10": skew.at(10).mean_max_skew, "max_skew@50": skew.at(50).mean_max_skew,
                     "max_max_skew@50": skew.at(50).max_max_skew, "ndkl@50": skew.at(50).mean_ndkl,
                     "one_value@10": skew.at(10).one_value_share, "accuracy": accuracy})
        print(json.dumps(rows[-1]), flush=True)
    result = {"data": str(data), "n_test": len(paths), "queries": queries, "chosen_by_demo": chosen,
              "ltc_plan": {"spurious": plan.spurious_heads(), "salient": plan.salient_heads()}, "rows": rows,
              "seconds": round(time.perf_counter() - t0, 1)}
    (out / "lab-retrieval.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| method | MaxSkew@10 | MaxSkew@50 | NDKL@50 | top-10 one place | " + " | ".join(WORDINGS) + " |")
    print("|---" * (5 + len(WORDINGS)) + "|")
    for r in rows:
        acc = " | ".join(f"{100 * a['avg']:.1f} / {100 * a['worst_group']:.1f}" for a in r["accuracy"].values())
        print(f"| {r['method']} | {r['max_skew@10']:.3f} | {r['max_skew@50']:.3f} | {r['ndkl@50']:.3f} | "
              f"{100 * r['one_value@10']:.0f}% | {acc} |")
    if chosen not in ROWS:
        edits = VARIANTS[chosen].get("ablate") or VARIANTS[chosen].get("project")
        print(f"the demo's choice, {chosen}, " + ("edits the image tower: not in this table" if edits else
                                                   "leaves the image tower as zero-shot's: same index, same skew"))
    print(f"chosen by the demo on val: {chosen}; wrote {out / 'lab-retrieval.json'} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
