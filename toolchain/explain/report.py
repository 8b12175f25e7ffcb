"""``clip-debias report DIR``: one static HTML page gathering whatever the other stages left in DIR.

Sections (each skipped with a note when its file is absent): located heads (``plan.json`` + ``plan.png``, rendered
from the plan when missing), head descriptions (``descriptions.json``), per-group accuracy before/after
(``compare.json``: rows {method, accuracy, worst_group_accuracy, groups {name: {n, accuracy}}}, or {"rows": [...]}
as ``evaluate --json`` writes; rendered to ``compare.png``), latency (a verify ``report.json``), discovered keywords
(``keywords.json``), and every other PNG (heat maps). No network assets: inline CSS, images by relative path.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.explain import ROLES, _entry_head

REPORT_NAME = "report.html"
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1.05rem}table{border-collapse:collapse;margin:.6rem 0}
td,th{border:1px solid #ddd;padding:.25rem .55rem;font-size:.9rem}th{background:#f4f4f4;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}.note{color:#777;font-style:italic}
img{max-width:100%;border:1px solid #eee;margin:.4rem 0}.gallery{display:flex;flex-wrap:wrap;gap:1rem}
.gallery figure{margin:0;max-width:48%}figcaption{font-size:.8rem;color:#555}.spurious{color:#b22}
.salient{color:#26a}
"""


@dataclass
class Page:
    """HTML being assembled, and the files it references (relative to the report folder)."""

    root: Path
    parts: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)

    def add(self, text: str) -> None:
        self.parts.append(text)

    def note(self, text: str) -> None:
        self.add(f'<p class="note">{html.escape(text)}</p>')

    def image(self, path: Path, caption: str = "") -> str:
        rel = path.relative_to(self.root).as_posix()
        self.used.add(rel)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        return f'<figure><img src="{quote(rel)}" alt="{html.escape(caption or rel)}">{cap}</figure>'


def esc(value: Any) -> str:
    return html.escape(str(value))


def pct(value: Any) -> str:
    return f"{100 * float(value):.2f}%" if isinstance(value, (int, float)) else "-"


def table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """An HTML table; cells are already-escaped strings; columns in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


MAX_FIGURES = 60


def files(root: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` in ``root`` and its direct subfolders (not deeper: DIR may hold a dataset),
    shallowest first, then by name."""
    hits = [p for p in (*root.glob(pattern), *root.glob(f"*/{pattern}")) if p.is_file()]
    return sorted(hits, key=lambda p: (len(p.parts), str(p)))


def find(root: Path, name: str) -> Path | None:
    """``root/name``, else ``name`` in a direct subfolder (first by name), else None."""
    hits = files(root, name)
    return hits[0] if hits else None


def load_json(path: Path | None) -> Any:
    """Parsed JSON, or None when the file is absent or unreadable (the section is skipped with a note)."""
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def json_section(page: Page, title: str, name: str, key: str, kind: type, missing: str
                 ) -> tuple[dict[str, Any], Any] | None:
    """Open a section: its heading, then (the JSON object of file ``name``, its field ``key``) when that field is a
    ``kind``; else a note ``missing`` and None (the section ends there)."""
    page.add(f"<h2>{title}</h2>")
    path = find(page.root, name)
    data = load_json(path)
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, kind):
        page.note(missing if path is None else unusable(path, f"an object with a '{key}' {kind.__name__}"))
        return None
    return data, value


def unusable(path: Path, expected: str) -> str:
    """The note for a file that is there but cannot be shown."""
    return f"{path.name}: unreadable or not the expected content ({expected}); section skipped"


# ---- sections ---------------------------------------------------------------------------------------------------

def section_plan(page: Page) -> None:
    page.add("<h2>Located heads</h2>")
    plan_path = find(page.root, "plan.json")
    plan = load_json(plan_path)
    png = find(page.root, "plan.png")
    if png is None and isinstance(plan, dict) and plan_path is not None:
        png = _render_plan(plan_path, plan_path.parent / "plan.png")
    if png is not None:
        page.add(page.image(png, "n(W) - n(C) over (layer, head); S = spurious, + = salient"))
    if not isinstance(plan, dict):
        page.note("no plan.json (run 'clip-debias locate')" if plan_path is None else
                  unusable(plan_path, "a plan written by 'clip-debias locate'"))
        return
    rows = []
    for role in ROLES:
        for entry in plan.get(role, []) or []:
            head = _entry_head(entry)
            if head is None:
                continue
            score = entry.get("score") if isinstance(entry, dict) else None
            nw = entry.get("n_wrong") if isinstance(entry, dict) else None
            nc = entry.get("n_correct") if isinstance(entry, dict) else None
            rows.append([f'<span class="{role}">{role}</span>', esc(head[0]), esc(head[1]),
                         *(f"{v:.3f}" if isinstance(v, (int, float)) else "-" for v in (nw, nc, score))])
    meta = [f"{k} {esc(plan[k])}" for k in ("dataset", "split", "n", "threshold", "minority_group_names")
            if k in plan]
    if meta:
        page.add(f"<p>{'; '.join(meta)}</p>")
    page.add(table(["role", "layer", "head", "n(W)", "n(C)", "score"], rows, {1, 2, 3, 4, 5}) if rows
             else '<p class="note">the plan lists no heads</p>')


def _render_plan(plan_path: Path, out: Path) -> Path | None:
    """plan.png from a full locate plan (``toolchain.locate.heatmap``); None when the plan cannot be read that way."""
    try:
        from clip_debias.toolchain.locate.heatmap import save_heatmap
        from clip_debias.toolchain.locate.ltc import LocatePlan

        return save_heatmap(LocatePlan.load(plan_path), out)
    except Exception:  # a partial or foreign plan: the table is still shown
        return None


def section_descriptions(page: Page) -> None:
    found = json_section(page, "Head descriptions (TextSpan)", "descriptions.json", "heads", list,
                         "no descriptions.json (run 'clip-debias explain')")
    if found is None:
        return
    data, heads = found
    if data.get("pool"):
        page.add(f"<p>pool {esc(data['pool'])} ({esc(data.get('pool_size', '?'))} descriptions)</p>")
    for h in heads:
        role = h.get("role")
        tag = f' <span class="{esc(role)}">({esc(role)})</span>' if role else ""
        page.add(f"<h3>layer {esc(h.get('layer'))}, head {esc(h.get('head'))}{tag}</h3>")
        rows = [[esc(i + 1), esc(e.get("text", "")), pct(e.get("variance"))]
                for i, e in enumerate(h.get("entries", []))]
        page.add(f"<p>rank {esc(h.get('rank', '?'))}; together {pct(h.get('explained'))} of the head's variance</p>")
        page.add(table(["#", "description", "variance"], rows, {0, 2}))


def compare_rows(data: Any) -> list[dict[str, Any]]:
    """The method rows of a compare.json (a list, or {"rows": [...]})."""
    rows = data.get("rows") if isinstance(data, dict) else data
    return [r for r in rows if isinstance(r, dict) and "method" in r] if isinstance(rows, list) else []


def render_compare(rows: list[dict[str, Any]], out: Path) -> Path:
    """Grouped bar chart: per-group accuracy (and overall / worst group) for each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = list(dict.fromkeys(g for r in rows for g in (r.get("groups") or {})))
    labels = ["average", "worst group"] + groups
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(labels) + 2), 3.6))
    x = np.arange(len(labels))
    for i, r in enumerate(rows):
        g = r.get("groups") or {}
        vals = [r.get("accuracy"), r.get("worst_group_accuracy")] + [(g.get(n) or {}).get("accuracy") for n in groups]
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, [100 * v if isinstance(v, (int, float)) else 0 for v in vals],
               width, label=str(r["method"]))
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("per-group accuracy", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def section_compare(page: Page) -> None:
    page.add("<h2>Accuracy before / after</h2>")
    path = find(page.root, "compare.json")
    rows = compare_rows(load_json(path))
    if not rows:
        page.note("no compare.json (run 'clip-debias evaluate --compare ... --json DIR/compare.json')" if path is None
                  else unusable(path, "method rows {method, accuracy, worst_group_accuracy, groups}"))
        return
    page.add(page.image(render_compare(rows, path.parent / "compare.png"), "accuracy per group and method"))
    groups = list(dict.fromkeys(g for r in rows for g in (r.get("groups") or {})))
    body = []
    for r in rows:
        g = r.get("groups") or {}
        cells = [f"{pct((g.get(n) or {}).get('accuracy'))} (n={esc((g.get(n) or {}).get('n', '-'))})" if n in g
                 else "-" for n in groups]
        body.append([esc(r["method"]), pct(r.get("accuracy")), pct(r.get("worst_group_accuracy")), *cells])
    page.add(table(["method", "average", "worst group", *map(esc, groups)], body, set(range(1, 3 + len(groups)))))


def section_latency(page: Page) -> None:
    found = json_section(page, "Latency (verify)", "report.json", "latency_ms", dict,
                         "no verify report.json with latency_ms (run 'clip-debias verify --json DIR/report.json')")
    if found is None:
        return
    data, lat = found
    fmt = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
    thr = data.get("throughput_per_s")
    page.add(table(["p50 ms", "p95 ms", "p99 ms", "throughput / s"],
                   [[fmt(lat.get("p50")), fmt(lat.get("p95")), fmt(lat.get("p99")), fmt(thr)]], {0, 1, 2, 3}))
    extra = [f"{k} {esc(data[k])}" for k in ("artifact", "dataset", "split", "n", "batch_size") if data.get(k)]
    if "accuracy" in data:
        extra.append(f"accuracy {pct(data['accuracy'])}, worst group {pct(data.get('worst_group_accuracy'))}")
    if isinstance(data.get("backend"), dict) and data["backend"]:
        extra.append("backend " + esc(", ".join(f"{k}={v}" for k, v in data["backend"].items())))
    if extra:
        page.add(f"<p>{'; '.join(extra)}</p>")


def section_keywords(page: Page) -> None:
    found = json_section(page, "Discovered keywords (B2T)", "keywords.json", "classes", list,
                         "no keywords.json (run 'clip-debias discover')")
    if found is None:
        return
    _, classes = found
    for c in classes:
        page.add(f"<h3>{esc(c.get('class_name'))}: {esc(c.get('n_wrong'))} misclassified, "
                 f"{esc(c.get('n_correct'))} correct</h3>")
        if c.get("note"):
            page.note(c["note"])
        rows = [[esc(i + 1), esc(k.get("keyword")), f"{k.get('score', 0):.2f}", f"{k.get('cos_wrong', 0):.2f}",
                 f"{k.get('cos_correct', 0):.2f}"] for i, k in enumerate(c.get("keywords", []))]
        if rows:
            page.add(table(["#", "keyword", "score", "100 cos (wrong)", "100 cos (correct)"], rows, {0, 2, 3, 4}))


def section_figures(page: Page) -> None:
    page.add("<h2>Heat maps and other figures</h2>")
    pngs = [p for p in files(page.root, "*.png") if p.relative_to(page.root).as_posix() not in page.used]
    if not pngs:
        page.note("no other PNG in the folder (make heat maps with 'clip-debias explain-image --out DIR/NAME.png')")
        return
    if len(pngs) > MAX_FIGURES:
        page.note(f"showing the first {MAX_FIGURES} of {len(pngs)} PNGs")
        pngs = pngs[:MAX_FIGURES]
    page.add('<div class="gallery">' + "".join(page.image(p, p.relative_to(page.root).as_posix()) for p in pngs)
             + "</div>")


SECTIONS = (section_plan, section_descriptions, section_compare, section_latency, section_keywords, section_figures)


def build_report(root: str | Path, out: str | Path | None = None, title: str = "clip-debias report") -> Path:
    """Write ``root/report.html`` (or ``out``, which must lie in ``root`` so relative image paths resolve)."""
    root = Path(root)
    if not root.is_dir():
        raise ClipDebiasError(f"{root}: not a folder (expected the folder holding plan.json, descriptions.json, ...)")
    out = Path(out) if out is not None else root / REPORT_NAME
    if out.resolve().parent != root.resolve():
        raise ClipDebiasError(f"{out}: the report must be written inside {root} (images are linked relatively)")
    page = Page(root)
    page.add(f"<h1>{esc(title)}</h1><p>folder {esc(root.resolve().name)}</p>")
    for section in SECTIONS:
        section(page)
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
           f"<style>{CSS}</style></head><body>\n" + "\n".join(page.parts) + "\n</body></html>\n")
    out.write_text(doc, encoding="utf-8")
    return out
