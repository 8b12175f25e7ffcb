"""The planted signatures' ground truth, measured: can a linear probe tell two lab sets apart?

Sets (``lab make-data``, test split only, balanced): A = seed 0, B = seed 1 (two independent draws of one recipe: the
control), and for each ``--signature`` S: B_S = seed 1 rendered with S (same images as B but for S). Pairs probed:
A vs B (must be at chance) and A vs B_S (independent draws plus the signature: must be separable). Features: the lab
model's unit image embeddings (``--model``/``--weights``, default the shipped clipdebias-lab), and the three per-image
channel means of the raw pixels. Probe: L2-regularized logistic regression (Newton steps, lambda = 1 on standardized
features), ``--folds``-fold held-out accuracy (mean and standard deviation over folds); chance is 0.5.

    python benchmarks/lab_signature_probe.py --n 1000 --signature colour-cast:4 --signature jpeg:30
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from clip_debias.toolchain.lab import LAB_MODEL, LAB_WEIGHTS
from clip_debias.toolchain.lab.data import make_lab_data
from clip_debias.toolchain.lab.train import _normalizer, load_split
from clip_debias.toolchain.models.loading import load_clip


def logistic_fit(x: np.ndarray, y: np.ndarray, lam: float = 1.0, steps: int = 25) -> np.ndarray:
    """Weights [D + 1] (last: bias) of the L2-regularized logistic regression of y in {0, 1} on x [N, D] (Newton)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    reg = lam * np.eye(xb.shape[1])
    reg[-1, -1] = 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-xb @ w))
        grad = xb.T @ (p - y) + reg @ w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + reg
        w -= np.linalg.solve(hess, grad)
    return w


def probe_accuracy(a: np.ndarray, b: np.ndarray, folds: int, seed: int = 0) -> tuple[float, float]:
    """Held-out accuracy (mean, std over ``folds`` folds) of telling rows of ``a`` (label 0) from ``b`` (label 1)."""
    x = np.vstack([a, b]).astype(np.float64)
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    order = np.random.default_rng(seed).permutation(len(y))
    accs = []
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-8
        w = logistic_fit((x[train] - mu) / sd, y[train])
        xt = np.hstack([(x[test] - mu) / sd, np.ones((len(test), 1))])
        accs.append(float(((xt @ w > 0) == (y[test] == 1)).mean()))
    return float(np.mean(accs)), float(np.std(accs))


@torch.no_grad()
def features(model, data: Path) -> dict[str, np.ndarray]:
    """{'embedding': [N, D] unit image embeddings, 'channel means': [N, 3] raw pixel means} of the test split."""
    split = load_split(data, "test")
    mean, std = _normalizer(model)
    emb = []
    for i in range(0, len(split.y), 256):
        x = split.images[i:i + 256].float().div(255).sub(mean).div(std)
        emb.append(model.encode_image(x, normalize=True))
    return {"embedding": torch.cat(emb).numpy(), "channel means": split.images.float().mean((2, 3)).numpy()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="images per set (a multiple of 8)")
    ap.add_argument("--signature", action="append", default=[], help="e.g. colour-cast:4, jpeg:30 (repeatable)")
    ap.add_argument("--shortcuts", default="background")
    ap.add_argument("--model", default=LAB_MODEL)
    ap.add_argument("--weights", type=Path, default=LAB_WEIGHTS)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=Path("build/signature-probe"))
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args()
    common = dict(n_train=0, n_val=0, n_test=args.n, workers=2, shortcuts=args.shortcuts, overwrite=True)
    sets = {"A (seed 0)": make_lab_data(args.workdir / "a", seed=0, **common),
            "B (seed 1)": make_lab_data(args.workdir / "b", seed=1, **common)}
    for s in args.signature:
        sets[f"B {s}"] = make_lab_data(args.workdir / f"b-{s.replace(':', '-')}", seed=1, signature=s, **common)
    model = load_clip(args.model, weights=args.weights).model.eval()
    feats = {name: features(model, path) for name, path in sets.items()}
    results = []
    for name in list(sets)[1:]:
        for kind in ("embedding", "channel means"):
            acc, sd = probe_accuracy(feats["A (seed 0)"][kind], feats[name][kind], args.folds)
            results.append({"pair": f"A (seed 0) vs {name}", "features": kind, "accuracy": acc, "std": sd})
            print(f"{results[-1]['pair']:32s} {kind:14s} held-out accuracy {acc:.3f} +- {sd:.3f} (chance 0.5)")
    if args.out:
        args.out.write_text(json.dumps({"n_per_set": args.n, "folds": args.folds, "model": args.model,
                                        "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
