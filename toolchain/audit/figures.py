"""The audit's figures (matplotlib, Agg; written by ``toolchain.figures``: PNGs tagged as ours, atomically):
``heads.png``, the [L, H] grid of each head's accuracy alone, and ``accuracy.png``, every audited row against chance."""

from __future__ import annotations

from pathlib import Path

from clip_debias.toolchain.audit.files import AuditFile
from clip_debias.toolchain.figures import save_figure

HEADS_PNG, ACCURACY_PNG = "heads.png", "accuracy.png"


def save_heads_png(doc: AuditFile, path: str | Path, top: int = 5) -> Path:
    """Rows = the audited layers, columns = heads, colour = validation accuracy of the head alone (from chance, white,
    to 1, dark red); the ``top`` heads carry their rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = doc.heads
    acc = np.array(grid.mean)
    chance = doc.chance
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * grid.n_heads + 2), max(2.5, 0.4 * len(grid.layers) + 1.5)))
    im = ax.imshow(acc, cmap="Reds", vmin=chance, vmax=1.0, aspect="auto")
    row = {layer: i for i, layer in enumerate(grid.layers)}
    for rank, h in enumerate(grid.ranking[:top], 1):
        dark = acc[row[h.layer], h.head] > chance + (1 - chance) / 2
        ax.text(h.head, row[h.layer], str(rank), ha="center", va="center", fontsize=9, fontweight="bold",
                color="white" if dark else "black")
    ax.set_xticks(range(grid.n_heads))
    ax.set_yticks(range(len(grid.layers)), [str(l) for l in grid.layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    names = " vs ".join(s.name for s in doc.sources)
    ax.set_title(f"which source, from one head's term: {names}\nvalidation accuracy (chance {100 * chance:.1f}%), "
                 f"top {min(top, len(grid.ranking))} numbered", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return save_figure(fig, path, "audit", dpi=120)


def accuracy_rows(doc: AuditFile) -> list[tuple[str, float, float]]:
    """(label, mean, std) of every audited row, in the order the figure and the report show them."""
    rows = [("embedding", doc.embedding.mean, doc.embedding.std)]
    if doc.corrected is not None:
        rows.append(("corrected embedding", doc.corrected.mean, doc.corrected.std))
    rows.append((f"control ({doc.control.source} in {doc.control.parts} random parts)", doc.control.accuracy.mean,
                 doc.control.accuracy.std))
    for c in doc.corruptions:
        for label, acc in (("", c.embedding), (", corrected", c.corrected)):
            if acc is not None:
                rows.append((f"{c.name}{label}", acc.mean, acc.std))
    return rows


def save_accuracy_png(doc: AuditFile, path: str | Path) -> Path:
    """Horizontal bars: mean validation accuracy with its standard deviation over seeds; chance (dashed) and the
    --max-accuracy gate (red) as vertical lines, their key under the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = accuracy_rows(doc)
    fig, ax = plt.subplots(figsize=(7.0, 0.35 * len(rows) + 1.8), layout="constrained")
    y = list(range(len(rows)))[::-1]
    ax.barh(y, [100 * m for _, m, _ in rows], xerr=[100 * s for _, _, s in rows], color="#7a9cc6", capsize=3)
    ax.set_yticks(y, [label for label, _, _ in rows], fontsize=8)
    ax.axvline(100 * doc.chance, color="black", linestyle="--", linewidth=1, label=f"chance {100 * doc.chance:.1f}%")
    if doc.gate is not None:
        ax.axvline(100 * doc.gate.max_accuracy, color="#b22", linewidth=1,
                   label=f"--max-accuracy {100 * doc.gate.max_accuracy:.1f}%")
    ax.set_xlim(0, 100)
    ax.set_xlabel("validation accuracy (%), mean and std over seeds")
    fig.legend(fontsize=7, loc="outside lower center", ncol=2, frameon=False)  # under the axes: never over a bar
    ax.set_title("which source an image came from: " + " vs ".join(s.name for s in doc.sources), fontsize=8)
    return save_figure(fig, path, "audit", dpi=110)
