"""``clip-debias report DIR``: one static HTML page gathering whatever the other stages left in DIR.

Sections (each skipped with a note when its file is absent, or malformed: the note is the reader's one line naming
the file and the field): located heads (``plan.json``, a ``LocatePlan``, + ``plan.png``, rendered from the plan when
missing), head descriptions (``descriptions.json``, ``explain.files.Descriptions``), per-group accuracy before/after
(``compare.json`` as ``evaluate --json`` writes it, ``evaluate.CompareFile``; rendered to ``compare.png``; with
the bias metrics of each row when it holds them), latency and bias metrics with their gates (verify's
``report.json``, ``VerifyReportFile``), discovered keywords (``keywords.json``, ``explain.files.Keywords``), the
dataset-bias audit (``audit.json``, ``audit.files.AuditFile``, with its ``accuracy.png`` and ``heads.png``), and every
other PNG (heat maps). The bias tables are ``runtime.metric_tables``' (the numbers verify and evaluate printed, not
recomputed). No network assets: inline CSS, images by relative path.
The page, plan.png and compare.png replace existing files only when clip-debias wrote them (``runtime.ownership``:
the page's generator meta tag, the PNGs' ``Software`` text), or with ``force``.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from pydantic.dataclasses import dataclass as format_dataclass

from clip_debias.runtime.atomic_output import check_file_target, write_atomic
from clip_debias.runtime.metric_tables import not_computed_lines, summary, tables
from clip_debias.runtime.ownership import file_is_ours, register_file_kind, text_starting
from clip_debias.runtime.schema import FORMAT, read_model
from clip_debias.runtime.verify import VerifyReport
from clip_debias.toolchain.audit.figures import ACCURACY_PNG, HEADS_PNG, accuracy_rows
from clip_debias.toolchain.audit.files import AUDIT_JSON, AuditFile
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.evaluate import CompareFile, CompareRow
from clip_debias.toolchain.explain.files import Descriptions, Keywords
from clip_debias.toolchain.locate.heatmap import save_heatmap
from clip_debias.toolchain.locate.ltc import LocatePlan

REPORT_NAME = "report.html"
HTML_GENERATOR = '<meta name="generator" content="clip-debias'  # in the head of every page we write
register_file_kind("report-html", "report.html written by 'clip-debias report'",
                   text_starting(HTML_GENERATOR, contains=True))
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
    force: bool = False  # replace figures clip-debias did not write
    read: dict[Path, Any] = field(default_factory=dict)  # files read so far (None: malformed), read once

    def add(self, text: str) -> None:
        self.parts.append(text)

    def note(self, text: str) -> None:
        self.add(f'<p class="note">{html.escape(text)}</p>')

    def image(self, path: Path, caption: str = "") -> str:
        rel = path.relative_to(self.root).as_posix()
        self.used.add(rel)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        return f'<figure><img src="{quote(rel)}" alt="{html.escape(caption or rel)}">{cap}</figure>'


class Html(str):
    """A fragment of HTML this module built, its text escaped already: ``esc`` and ``table`` pass it as it is."""


def esc(value: Any) -> Html:
    """``value`` as HTML text: escaped (``html.escape``: & < > " '), unless it is ``Html`` already."""
    return value if isinstance(value, Html) else Html(html.escape(str(value)))


def pct(value: Any) -> str:
    return f"{100 * float(value):.2f}%" if isinstance(value, (int, float)) else "-"


def table(header: list[Any], rows: list[list[Any]], numeric: set[int] = frozenset()) -> Html:
    """An HTML table; every header and cell is escaped (``esc``: ``Html`` cells pass as they are); columns in
    ``numeric`` are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{esc(c)}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return Html(f"<table><tr>{head}</tr>{body}</table>")


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


@format_dataclass(config=FORMAT)
class VerifyReportFile(VerifyReport):
    """verify's ``report.json``, read back as the ``VerifyReport`` that wrote it (every field checked)."""


def read_verify_report(path: str | Path) -> VerifyReportFile:
    return read_model(VerifyReportFile, path, "a report written by 'clip-debias verify --json'")


def load_section(page: Page, title: str, name: str, read: Callable[[Path], Any], missing: str) -> Any:
    """Open a section: its heading, then the file ``name`` read by ``read`` (a model's reader; once per page: a
    second section of the same file reuses it); None, after a note, when the file is absent (``missing``) or
    malformed (the reader's one line, in the first section that read it)."""
    page.add(f"<h2>{esc(title)}</h2>")
    path = find(page.root, name)
    if path is None:
        page.note(missing)
        return None
    if path in page.read:
        if page.read[path] is None:
            page.note(f"{path}: not usable (see above)")
        return page.read[path]
    try:
        page.read[path] = read(path)
    except ClipDebiasError as e:
        page.read[path] = None
        page.note(f"{e}; section skipped")
    return page.read[path]


# ---- sections ---------------------------------------------------------------------------------------------------

def section_plan(page: Page) -> None:
    plan = load_section(page, "Located heads", "plan.json", LocatePlan.load, "no plan.json (run 'clip-debias locate')")
    if plan is None:
        return
    pairs = plan.method == "pairs"
    png = find(page.root, "plan.png") or save_heatmap(plan, Path(plan.source).parent / "plan.png", page.force)
    page.add(page.image(png, ("n_P" if pairs else "n(W) - n(C)")
                        + " over (layer, head); S = spurious, + = salient"))
    values = (lambda s: (s.n_wrong, s.pair_change)) if pairs else (lambda s: (s.n_wrong, s.n_correct, s.score))
    rows = [[Html(f'<span class="{role}">{role}</span>'), s.head[0], s.head[1], *(f"{v:.3f}" for v in values(s))]
            for role, entries in (("spurious", plan.spurious), ("salient", plan.salient)) for s in entries]
    where = (esc(plan.minority_note) if pairs else
             f"minority groups {esc(', '.join(plan.minority_group_names))}")
    page.add(f"<p>dataset {esc(plan.dataset)}; split {esc(plan.split)}; n {esc(plan.n)}; threshold "
             f"{plan.threshold:.4f}; {where}</p>")
    header = ["role", "layer", "head", *(("n_P", "mean |d(x) - d(x')|") if pairs else ("n(W)", "n(C)", "score"))]
    page.add(table(header, rows, set(range(1, len(header)))) if rows
             else '<p class="note">the plan lists no heads</p>')


def section_descriptions(page: Page) -> None:
    doc = load_section(page, "Head descriptions (TextSpan)", "descriptions.json", Descriptions.load,
                       "no descriptions.json (run 'clip-debias explain')")
    if doc is None:
        return
    page.add(f"<p>pool {esc(doc.pool)} ({esc(doc.pool_size)} descriptions)</p>")
    for h in doc.heads:
        tag = f' <span class="{esc(h.role)}">({esc(h.role)})</span>' if h.role else ""
        page.add(f"<h3>layer {esc(h.layer)}, head {esc(h.head)}{tag}</h3>")
        rows = [[esc(i + 1), esc(e.text), pct(e.variance)] for i, e in enumerate(h.entries)]
        page.add(f"<p>rank {esc(h.rank)}; together {pct(h.explained)} of the head's variance</p>")
        page.add(table(["#", "description", "variance"], rows, {0, 2}))


def render_compare(rows: list[CompareRow], out: Path, force: bool = False) -> Path:
    """Per-column panels of every method's accuracy, coloured by method family (``toolchain.figures``)."""
    from clip_debias.toolchain.figures import save_compare_figure

    return save_compare_figure(rows, out, "report", force=force)


def section_compare(page: Page) -> None:
    doc = load_section(page, "Accuracy before / after", "compare.json", CompareFile.load,
                       "no compare.json (run 'clip-debias evaluate --compare ... --json DIR/compare.json')")
    if doc is None:
        return
    if not doc.rows:
        page.note("compare.json holds no rows")
        return
    png = find(page.root, "compare.json").parent / "compare.png"
    if page.force or not png.exists() or file_is_ours(png, "figure"):
        page.add(page.image(render_compare(doc.rows, png, page.force), "accuracy per group and method"))
    else:
        page.note(f"{png.name}: a file clip-debias did not write has that name; the chart was not drawn "
                  "(--force replaces it)")
    groups = list(dict.fromkeys(g for r in doc.rows for g in r.groups))
    body = [[esc(r.method), pct(r.accuracy), pct(r.worst_group_accuracy),
             *(f"{pct(r.groups[n].accuracy)} (n={r.groups[n].n})" if n in r.groups else "-" for n in groups)]
            for r in doc.rows]
    page.add(table(["method", "average", "worst group", *groups], body, set(range(1, 3 + len(groups)))))
    summaries = [(r.method, summary(r)) for r in doc.rows]
    columns = list(dict.fromkeys(c for _, row in summaries for c in row))
    if columns:
        page.add("<h3>Bias metrics per method</h3>")
        page.add(table(["method", *columns], [[m, *(row.get(c, "-") for c in columns)] for m, row in summaries],
                       set(range(1, 1 + len(columns)))))
        for line in not_computed_lines(doc.rows[0]):
            page.note(line)


def section_latency(page: Page) -> None:
    r = load_section(page, "Latency (verify)", "report.json", read_verify_report,
                     "no verify report.json (run 'clip-debias verify --json DIR/report.json')")
    if r is None:
        return
    lat = r.latency_ms
    fmt = lambda v: f"{v:.2f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
    page.add(table(["p50 ms", "p95 ms", "p99 ms", "throughput / s"],
                   [[fmt(lat.get("p50")), fmt(lat.get("p95")), fmt(lat.get("p99")), fmt(r.throughput_per_s)]],
                   {0, 1, 2, 3}))
    extra = [f"{k} {esc(getattr(r, k))}" for k in ("artifact", "dataset", "split", "n", "batch_size") if getattr(r, k)]
    extra.append(f"accuracy {pct(r.accuracy)}, worst group {pct(r.worst_group_accuracy)}")
    if r.backend:
        extra.append("backend " + esc(", ".join(f"{k}={v}" for k, v in r.backend.items())))
    page.add(f"<p>{'; '.join(extra)}</p>")
    turns = latency_in_turns(page.root)
    if turns:
        first = next(iter(turns))
        page.add(f"<p>Artifacts compared: model time per call on one batch of {esc(turns[first].get('batch_size'))} "
                 f"images, the artifacts taking turns call by call ({esc(turns[first].get('rounds'))} rounds; "
                 "demo.json). Ratio: the median of the per-round ratios.</p>")
        page.add(table(["artifact", "median ms", "p10-p90 ms", f"ratio to {first}"],
                       [[name, fmt(t.get("median")), f"{fmt(t.get('p10'))}-{fmt(t.get('p90'))}",
                         fmt(t.get("median_ratio", 1.0))] for name, t in turns.items()], {1, 2, 3}))


def latency_in_turns(root: Path) -> dict[str, dict[str, Any]]:
    """The demo's side-by-side latency (``demo.json``'s ``latency``: artifact -> median / p10 / p90 / ratio, the
    artifacts timed in turns), or {} when the folder holds none. Two artifacts are compared only from such timings,
    never from two verify runs made one after the other."""
    path = find(root, "demo.json")
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    turns = doc.get("latency") if isinstance(doc, dict) else None
    return turns if isinstance(turns, dict) and all(isinstance(v, dict) for v in turns.values()) else {}


def section_bias(page: Page) -> None:
    r = load_section(page, "Bias metrics (verify)", "report.json", read_verify_report,
                     "no verify report.json (run 'clip-debias verify --json DIR/report.json')")
    if r is None:
        return
    if r.protected:
        page.add(f"<p>protected attribute: {esc(r.protected)}</p>")
    for t in tables(r):
        page.add(f"<h3>{esc(t.title)}</h3>")
        page.add(table(list(t.header), [list(row) for row in t.rows],
                       set(range(1, len(t.header)))))
        for line in t.notes:
            page.note(line)
    for line in not_computed_lines(r):
        page.note(line)
    if r.thresholds:
        rows = [[esc(name), esc(t.threshold), esc("-" if t.value is None else f"{t.value:.4g}"),
                 "PASS" if t.passed else f"{t.decision or 'FAIL'} {t.reason}"] for name, t in r.thresholds.items()]
        page.add("<h3>Gates</h3>" + table(["threshold", "limit", "measured", "result"], rows, {1, 2}))


def section_keywords(page: Page) -> None:
    doc = load_section(page, "Discovered keywords (B2T)", "keywords.json", Keywords.load,
                       "no keywords.json (run 'clip-debias discover')")
    if doc is None:
        return
    for c in doc.classes:
        page.add(f"<h3>{esc(c.class_name)}: {esc(c.n_wrong)} misclassified, {esc(c.n_correct)} correct</h3>")
        if c.note:
            page.note(c.note)
        rows = [[esc(i + 1), esc(k.keyword), f"{k.score:.2f}", f"{k.cos_wrong:.2f}", f"{k.cos_correct:.2f}"]
                for i, k in enumerate(c.keywords)]
        if rows:
            page.add(table(["#", "keyword", "score", "100 cos (wrong)", "100 cos (correct)"], rows, {0, 2, 3, 4}))


def section_audit(page: Page) -> None:
    doc = load_section(page, "Dataset-bias audit", AUDIT_JSON, AuditFile.load,
                       f"no {AUDIT_JSON} (run 'clip-debias audit SOURCE SOURCE ... --out DIR/audit')")
    if doc is None:
        return
    folder = find(page.root, AUDIT_JSON).parent  # type: ignore[union-attr]
    e = doc.embedding
    page.add(f"<p>sources {esc(', '.join(f'{s.name} ({s.size} images)' for s in doc.sources))}; "
             f"{esc(doc.per_source)} audited per source, {esc(e.n_val // len(doc.sources))} per source held out, "
             f"{esc(len(doc.seeds))} seeds; chance {pct(e.chance)}</p>")
    for w in doc.warnings:
        page.add(f'<p class="spurious"><b>warning:</b> {esc(w)}</p>')
    spread = lambda a: f"{pct(a.mean)} ± {100 * a.std:.1f}" if a is not None else "not run"  # noqa: E731
    rows = [[esc(label), f"{pct(m)} ± {100 * s:.1f}"] for label, m, s in accuracy_rows(doc)]
    rows += [[esc(c.name), "no change at this input size: not run"] for c in doc.corruptions if c.noop]
    page.add(table(["features", "validation accuracy (mean ± std over seeds)"], rows, {1}))
    c = doc.control
    page.add(f"<p>control: '{esc(c.source)}' in {esc(c.parts)} random parts of {esc(c.per_part)}: "
             f"{spread(c.accuracy)}, {'at chance' if c.at_chance else '<b>not at chance</b>'} (limit "
             f"{pct(c.limit)})</p>")
    if doc.gate is not None:
        page.add(f"<p>--max-accuracy {pct(doc.gate.max_accuracy)}: {'PASS' if doc.gate.passed else '<b>FAIL</b>'}</p>")
    names = [esc(s.name) for s in doc.sources]
    page.add("<h3>confusion (rows: source, columns: predicted; summed over seeds)</h3>"
             + table(["", *names], [[n, *r] for n, r in zip(names, e.confusion)],
                     set(range(1, len(names) + 1))))
    for name, caption in ((ACCURACY_PNG, "validation accuracy per feature, chance dashed"),
                          (HEADS_PNG, "each head's term alone: validation accuracy over (layer, head)")):
        if (folder / name).is_file():
            page.add(page.image(folder / name, caption))
    top = [[esc(i + 1), esc(h.layer), esc(h.head), f"{pct(h.accuracy)} ± {100 * h.std:.1f}"]
           for i, h in enumerate(doc.heads.ranking[:10])]
    page.add("<h3>heads that carry the source</h3>"
             + table(["#", "layer", "head", "accuracy alone"], top, {0, 1, 2, 3}))


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


SECTIONS = (section_plan, section_descriptions, section_compare, section_latency, section_bias, section_keywords,
            section_audit, section_figures)


def build_report(root: str | Path, out: str | Path | None = None, title: str = "clip-debias report",
                 force: bool = False) -> Path:
    """Write ``root/report.html`` (or ``out``, which must lie in ``root`` so relative image paths resolve); an
    existing page (and figure) is replaced only when clip-debias wrote it, or with ``force``."""
    root = Path(root)
    if not root.is_dir():
        raise ClipDebiasError(f"{root}: not a folder (expected the folder holding plan.json, descriptions.json, ...)")
    out = Path(out) if out is not None else root / REPORT_NAME
    if out.resolve().parent != root.resolve():
        raise ClipDebiasError(f"{out}: the report must be written inside {root} (images are linked relatively)")
    check_file_target(out, "report-html", force)  # before drawing anything
    page = Page(root, force=force)
    page.add(f"<h1>{esc(title)}</h1><p>folder {esc(root.resolve().name)}</p>")
    for section in SECTIONS:
        section(page)
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{HTML_GENERATOR} report">'
           f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(page.parts)
           + "\n</body></html>\n")
    write_atomic(out, doc, "report-html", force)
    return out
