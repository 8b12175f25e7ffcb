"""Save matplotlib figures as PNGs that say they are ours (``runtime.ownership``: the PNG ``Software`` text chunk),
atomically, never over a file clip-debias did not write (unless ``force``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clip_debias.runtime.atomic_output import atomic_file, check_file_target
from clip_debias.runtime.ownership import png_text_starting, register_file_kind

PNG_SOFTWARE = "clip-debias"  # the PNG 'Software' text chunk of every figure we write starts with this
register_file_kind("figure", "a PNG figure written by clip-debias", png_text_starting("Software", PNG_SOFTWARE))


def check_figure_target(path: str | Path, force: bool = False) -> Path:
    """``path`` if a figure may be written there (absent, a figure of ours, or ``force``); else one error line."""
    return check_file_target(path, "figure", force)


def save_figure(fig: Any, path: str | Path, command: str, dpi: int = 110, force: bool = False) -> Path:
    """``fig.savefig`` as PNG to ``path`` (temp file + rename) with ``Software: clip-debias COMMAND``; closes it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_file(path, "figure", force) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": f"{PNG_SOFTWARE} {command}"})
    finally:
        plt.close(fig)
    return Path(path)


# ---- the methods side by side (report's compare.png) -------------------------------------------------------------

FAMILIES = (  # (family, colours of its variants in order of appearance): one hue per family
    ("zero-shot", ("#7f7f7f",)),
    ("LTC edits (ablate / ablate + project)", ("#08519c", "#3182bd", "#6baed6", "#9ecae1")),
    ("PerceptionCLIP", ("#238b45",)),
    ("LTC edits + PerceptionCLIP", ("#6a51a3", "#807dba", "#9e9ac8")),
    ("other", ("#d94801", "#fd8d3c", "#fdae6b", "#8c6d31", "#bd9e39")),
)
SPLIT_TAGS = (" [reference protocol]", " [reference]", " [val]", " [test]")


def method_family(method: str) -> str:
    """The family of a compare row's method name (``evaluate.row_names``; a trailing split / protocol tag ignored)."""
    base = method
    for tag in SPLIT_TAGS:
        base = base.replace(tag, "")
    if base == "zero-shot":
        return "zero-shot"
    if base.startswith("ablate"):
        return "LTC edits + PerceptionCLIP" if "PerceptionCLIP" in base else "LTC edits (ablate / ablate + project)"
    return "PerceptionCLIP" if base == "PerceptionCLIP" else "other"


def save_compare_figure(rows: list[Any], path: str | Path, command: str, force: bool = False) -> Path:
    """One panel per column (average, worst group, then each group), the methods as horizontal bars on a shared
    axis named once on the left: a method's colour is its family's hue (``FAMILIES``; variants darker to lighter),
    reference-protocol rows hatched; the family key sits under the panels, never over a bar. ``rows``: objects with
    ``method``, ``accuracy``, ``worst_group_accuracy`` and ``groups`` {name: .accuracy} (fractions; None or a
    missing group: no bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    groups = list(dict.fromkeys(g for r in rows for g in r.groups))
    columns = ["average", "worst group", *groups]
    used: dict[str, int] = {}
    colours = []
    for r in rows:
        family = method_family(r.method)
        palette = dict(FAMILIES)[family]
        key = f"{family}|{r.method.split(' [')[0]}"
        if key not in used:
            used[key] = sum(k.startswith(family + "|") for k in used)
        colours.append(palette[used[key] % len(palette)])
    fig, axes = plt.subplots(1, len(columns), sharey=True, layout="constrained",
                             figsize=(2.0 + 1.6 * len(columns), 0.32 * len(rows) + 1.6))
    axes = list(axes) if len(columns) > 1 else [axes]
    y = list(range(len(rows)))[::-1]
    for ax, column in zip(axes, columns):
        vals = [r.accuracy if column == "average" else r.worst_group_accuracy if column == "worst group"
                else (r.groups[column].accuracy if column in r.groups else None) for r in rows]
        for yi, v, c, r in zip(y, vals, colours, rows):
            if v is not None:
                ax.barh(yi, 100 * v, color=c, hatch="//" if "reference" in r.method else None, edgecolor="white",
                        linewidth=0.5)
                ax.text(100 * v + 1, yi, f"{100 * v:.0f}", va="center", fontsize=6)
        ax.set_xlim(0, 112)
        ax.set_xticks([0, 50, 100])
        ax.set_title(column, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", linewidth=0.3)
    axes[0].set_yticks(y, [r.method for r in rows], fontsize=7)
    handles = [Patch(color=dict(FAMILIES)[f][0], label=f) for f in dict.fromkeys(method_family(r.method) for r in rows)]
    if any("reference" in r.method for r in rows):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="reference protocol"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(3, len(handles)), fontsize=7, frameon=False)
    fig.suptitle("accuracy (%) of each method: the average, the worst group, each group", fontsize=9)
    return save_figure(fig, path, command, force=force)
