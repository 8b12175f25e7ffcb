"""Heat map of n(W) - n(C) (a pairs plan: n_P) over the (layer, head) grid of a ``LocatePlan`` (matplotlib, Agg
backend)."""

from __future__ import annotations

from pathlib import Path

from clip_debias.toolchain.locate.ltc import LocatePlan


MARKER_KEY = ("S = spurious head (n(W) - n(C) > 1/K: mean-ablated by build)\n"
              "+ = salient head (n(C) - n(W) > 1/K: projected by build)")
MARKER_KEY_PAIRS = "S = spurious head (n_P > 1/K: mean-ablated by build)"


def save_heatmap(plan: LocatePlan, path: str | Path, force: bool = False) -> Path:
    """Write a PNG: rows = the cache's absolute layers, columns = heads, colour = n(W) - n(C) (red: spurious side,
    blue: salient side); located spurious heads are marked "S", salient "+". An existing ``path`` is replaced only
    when it is a figure of ours, or with ``force`` (``toolchain.figures``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clip_debias.toolchain.figures import check_figure_target, save_figure

    path = check_figure_target(path, force)
    diff = plan.diff_grid().numpy()
    lim = max(float(abs(diff).max()), plan.threshold, 1e-6)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * plan.n_heads + 2), max(2.5, 0.4 * len(plan.layers) + 1.5)))
    im = ax.imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    row = {layer: i for i, layer in enumerate(plan.layers)}
    for mark, heads in (("S", plan.spurious_heads()), ("+", plan.salient_heads())):
        for layer, head in heads:
            dark = abs(diff[row[layer], head]) > lim / 2
            ax.text(head, row[layer], mark, ha="center", va="center", fontsize=10, fontweight="bold",
                    color="white" if dark else "black")
    ax.set_xticks(range(plan.n_heads))
    ax.set_yticks(range(len(plan.layers)), [str(l) for l in plan.layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    pairs = plan.method == "pairs"
    what = "n_P (pairs whose largest margin change is here)" if pairs else "n(W) - n(C)"
    ax.set_title(f"{what}, {plan.dataset}/{plan.split}, threshold 1/K = {plan.threshold:.3f}", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.text(0.5, 0.01, MARKER_KEY_PAIRS if pairs else MARKER_KEY, ha="center", va="bottom", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.09 if pairs else 0.13, 1, 1))
    return save_figure(fig, path, "locate", dpi=120, force=force)
