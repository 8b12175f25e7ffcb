"""``clip-debias explain | explain-image | discover | report``: describe heads with text (TextSpan), show where in an
image they look (token heat maps), find words for the failures (B2T) and gather everything in one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS
from clip_debias.toolchain.cli.options import (AllowOutsideRootOpt, BatchOpt, ConventionOpt, DeviceOpt, ForceOpt,
                                               LayersOpt, MaxPixelsOpt, ModelOpt, PretrainedOpt, RandomWeightsOpt,
                                               SplitOpt, WeightsOpt, load_model)

HeadsOpt = Annotated[Optional[str], typer.Option(
    "--heads", help="plan.json (its spurious + salient heads) or LAYER:HEAD,... e.g. 11:3,11:5 (absolute layers).")]


def explain(
    cache: Annotated[Path, typer.Argument(help="Decomposition cache (.safetensors) whose head terms are described.")],
    model: ModelOpt,
    out: Annotated[Path, typer.Option(
        "--out", help="Output folder: descriptions.json, descriptions.md (and the pool's text embeddings, reused); "
                      "replaced only when it is an explain folder of ours.")],
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    heads: HeadsOpt = None,
    layers: LayersOpt = None,
    pool: Annotated[Optional[Path], typer.Option(
        "--pool", help="Description pool, one per line (default: the shipped general pool).")] = None,
    per_head: Annotated[int, typer.Option("--per-head", min=1, help="Descriptions per head.")] = 10,
    rank: Annotated[int, typer.Option(
        "--rank", min=0, help="Rank of each head's output space; 0 = keep 99% of its variance.")] = 0,
    device: DeviceOpt = "cpu",
) -> None:
    """TextSpan: per head, greedily pick the descriptions whose directions (projected on the head's output space)
    explain the most variance of its terms over the cache's images, removing each from terms and pool."""
    from clip_debias.toolchain.explain.jobs import describe_heads, span_lines

    done = describe_heads(cache, lambda: load_model(model, pretrained, weights, device, random_weights=random_weights),
                          out, heads=heads, layers=layers, pool=pool, per_head=per_head, rank=rank, log=typer.echo)
    for line in span_lines(done.doc):
        typer.echo(line)
    typer.echo(f"wrote {' and '.join(map(str, done.files))} ({len(done.doc.heads)} heads)")


def explain_image(
    image: Annotated[Path, typer.Argument(help="Image file.")],
    model: ModelOpt,
    text: Annotated[str, typer.Option("--text", help="Text whose direction the token terms are projected on.")],
    out: Annotated[Path, typer.Option("--out", help="Output PNG.")],
    vs: Annotated[Optional[str], typer.Option("--vs", help="Contrast text: use E(text) - E(vs).")] = None,
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    heads: HeadsOpt = None,
    layers: LayersOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    force: ForceOpt = False,
    convention: ConventionOpt = "textspan",
) -> None:
    """Heat map of the per-patch direct contributions of heads (default: every head of the last layer) along a text
    direction; the patch terms plus the CLS token's term sum exactly to the heads' CLS terms."""
    from clip_debias.toolchain.errors import ClipDebiasError
    from clip_debias.toolchain.explain import select_heads
    from clip_debias.toolchain.explain.tokens import explain_image as run
    from clip_debias.toolchain.figures import check_figure_target

    from clip_debias.toolchain.decompose.conventions import check_convention

    check_convention(convention)
    for option, value in (("--text", text), ("--vs", vs)):
        if value is not None and not value.strip():
            raise ClipDebiasError(f"{option}: empty; expected a text such as 'a photo of water'")
    check_figure_target(out, force)  # before any work
    clip = load_model(model, pretrained, weights, random_weights=random_weights)
    n_layers = len(clip.model.visual.transformer.resblocks)
    n_heads = clip.model.visual.transformer.resblocks[0].attn.num_heads
    chosen, _ = select_heads(heads, layers, n_layers, n_heads, [n_layers - 1])
    path, total, cls_share = run(clip, image, chosen, text, vs, out, convention=convention, force=force,
                                 max_pixels=max_pixels)
    typer.echo(f"wrote {path}: {len(chosen)} head(s), sum over tokens {total:+.5f} (CLS token {cls_share:+.5f})")


def discover(
    source: Annotated[Path, typer.Argument(help="Decomposition cache (.safetensors) or dataset (see --dataset).")],
    model: ModelOpt,
    out: Annotated[Path, typer.Option(
        "--out", help="Output folder: keywords.json, attribute_prompts.yaml; replaced only when it is a discover "
                      "folder of ours.")],
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    classes: Annotated[Optional[str], typer.Option(
        "--classes", help="Comma-separated class names for the prompts (default: dataset defaults, else the data's).")
    ] = None,
    dataset: Annotated[Optional[str], typer.Option(
        "--dataset", help="Dataset input: waterbirds | celeba | csv (default csv for a .csv or folder with data.csv).")
    ] = None,
    split: SplitOpt = "val",
    templates: Annotated[Optional[Path], typer.Option(
        "--templates", help="Zero-shot template file (default: the dataset's, else 'a photo of a {}.').")] = None,
    vocab: Annotated[Optional[Path], typer.Option(
        "--vocab", help="Keyword vocabulary, one per line (default: the shipped word list).")] = None,
    captions_column: Annotated[Optional[str], typer.Option(
        "--captions-column", help="csv datasets: column of captions; keywords from misclassified captions (YAKE).")
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Keywords kept per class.")] = 20,
    batch_size: BatchOpt = 32,
    device: DeviceOpt = "cpu",
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    allow_outside_root: AllowOutsideRootOpt = False,
) -> None:
    """B2T: per class, score(a) = mean 100 cos(image, 'a photo of a {a}.') over misclassified images minus the same
    over correctly classified ones; rank keywords and suggest attribute prompts for 'locate --attribute-prompts'."""
    from clip_debias.toolchain.explain.jobs import ATTRIBUTE_PROMPTS_YAML, discover_keywords

    results, done = discover_keywords(
        source, lambda: load_model(model, pretrained, weights, device, random_weights=random_weights), out,
        classes=classes, dataset=dataset, split=split, templates=templates, vocab=vocab,
        captions_column=captions_column, top=top, batch_size=batch_size, device=device, max_pixels=max_pixels,
        allow_outside_root=allow_outside_root)
    _print_keywords(results)
    if not any(f.name == ATTRIBUTE_PROMPTS_YAML for f in done.files):
        typer.echo(f"fewer than two distinct top keywords: no {ATTRIBUTE_PROMPTS_YAML} suggested")
    typer.echo("wrote " + " and ".join(str(p) for p in done.files))


def report(
    folder: Annotated[Path, typer.Argument(help="Folder with plan.json/png, descriptions.json, compare.json, "
                                                "report.json, keywords.json, heat-map PNGs (any subset).")],
    title: Annotated[str, typer.Option("--title", help="Page title.")] = "clip-debias report",
    force: Annotated[bool, typer.Option(
        "--force", help="Replace report.html, plan.png and compare.png even when clip-debias did not write them.")]
    = False,
) -> None:
    """Write FOLDER/report.html: one static page (inline CSS, images by relative path, no network assets)."""
    from clip_debias.toolchain.explain.report import build_report

    typer.echo(f"wrote {build_report(folder, title=title, force=force)}")


# ---- printing -------------------------------------------------------------------------------------------------

def _print_keywords(results) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for r in results:
        table = Table(title=f"{r.class_name}: {r.n_wrong} misclassified / {r.n_correct} correct", title_justify="left")
        for col in ("#", "keyword", "score", "100 cos wrong", "100 cos correct"):
            table.add_column(col, justify="left" if col == "keyword" else "right")
        for i, k in enumerate(r.keywords):
            table.add_row(str(i + 1), k.keyword, f"{k.score:+.2f}", f"{k.cos_wrong:.2f}", f"{k.cos_correct:.2f}")
        console.print(table if r.keywords else f"{r.class_name}: {r.note}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("explain")(explain)
    app.command("explain-image")(explain_image)
    app.command("discover")(discover)
    app.command("report")(report)
