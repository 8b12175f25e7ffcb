"""What the attention pool's MLP term weighs in the embedding of the shipped MAP-pooled lab model
(``clipdebias-lab-map``): the one readout term LTC never edits (``toolchain.decompose.pooled``).

On the lab data's ``--split`` (make it with recipe-lab-map.json's make-data command): per image, with y the unnormalized
embedding and m the pool's MLP term mapped to the embedding (``PooledTrace.mlp``, part of ``rest``):

- norm share ||m|| / ||y|| (median, p10, p90, mean);
- the share of y along m's direction: <m, y> / ||y||^2 (what m adds to the embedding's length);
- the zero-shot logit margin (true class minus the other, on unit embeddings) with and without m's part of it: how
  much of the class decision the MLP term carries (mean over images, average and worst-group accuracy, and the
  fraction of images whose prediction m alone flips).

    python benchmarks/lab_map_terms.py --data lab-data [--split test]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from clip_debias.runtime.datasets import load_index
    from clip_debias.toolchain.datasets.loader import iter_batches
    from clip_debias.toolchain.lab import LABMAP_MODEL
    from clip_debias.toolchain.lab.data import CLASS_NAMES
    from clip_debias.toolchain.models.loading import load_clip
    from clip_debias.toolchain.prompts.text import class_text_matrix

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=100)
    args = ap.parse_args()
    clip = load_clip(LABMAP_MODEL)
    pooled = clip.tower.pooled()
    index = load_index("waterbirds", args.data, args.split)
    text = class_text_matrix(clip, list(CLASS_NAMES)).float()  # [C, D] unit rows
    share, along, margin, margin_wo, labels = [], [], [], [], []
    with torch.no_grad():
        for batch in iter_batches(index, clip.preprocess, batch_size=args.batch_size, progress=False):
            y_true = batch.labels
            tr = pooled.trace(batch.images, [])
            y, m = tr.pooled.double(), tr.mlp.double()
            share.append((m.norm(dim=-1) / y.norm(dim=-1)).numpy())
            along.append(((m * y).sum(-1) / (y * y).sum(-1)).numpy())
            logits = (y / y.norm(dim=-1, keepdim=True)) @ text.double().T
            logits_wo = ((y - m) / y.norm(dim=-1, keepdim=True)) @ text.double().T  # y's norm kept: m's part removed
            sign = torch.where(torch.as_tensor(y_true) == 1, 1.0, -1.0).double()
            margin.append((sign * (logits[:, 1] - logits[:, 0])).numpy())
            margin_wo.append((sign * (logits_wo[:, 1] - logits_wo[:, 0])).numpy())
            labels.append(np.asarray(batch.groups))
    share, along = np.concatenate(share), np.concatenate(along)
    margin, margin_wo, groups = np.concatenate(margin), np.concatenate(margin_wo), np.concatenate(labels)
    worst = lambda mg: float(min((mg[groups == g] > 0).mean() for g in np.unique(groups)))  # noqa: E731
    doc = {"model": LABMAP_MODEL, "weights_sha256": clip.identity.weights_sha256, "split": args.split,
           "images": int(len(share)),
           "mlp_norm_share": {"median": float(np.median(share)), "p10": float(np.percentile(share, 10)),
                              "p90": float(np.percentile(share, 90)), "mean": float(share.mean())},
           "mlp_share_along_embedding": {"median": float(np.median(along)), "mean": float(along.mean())},
           "zero_shot_margin": {"mean": float(margin.mean()), "mean_without_mlp_term": float(margin_wo.mean()),
                                "accuracy": float((margin > 0).mean()),
                                "accuracy_without_mlp_term": float((margin_wo > 0).mean()),
                                "worst_group_accuracy": worst(margin),
                                "worst_group_accuracy_without_mlp_term": worst(margin_wo),
                                "predictions_flipped_by_removing_it": float(((margin > 0) != (margin_wo > 0)).mean())}}
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
