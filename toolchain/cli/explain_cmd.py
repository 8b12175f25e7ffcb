"""``clip-debias explain | explain-image | discover | report``: describe heads with text (TextSpan), show where in an
image they look (token heat maps), find words for the failures (B2T) and gather everything in one HTML page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS
from clip_debias.toolchain.choices import Convention
from clip_debias.toolchain.cli.options import (AllowOutsideRootOpt, BatchOpt, ConventionOpt, DeviceOpt, ForceOpt,
                                               LayersOpt, MaxPixelsOpt, ModelOpt, OptionalDatasetOpt,
                                               OptionalSplitOpt, PretrainedOpt, RandomWeightsOpt, TokenizerOpt,
                                               WeightsOpt, load_model)

HeadsOpt = Annotated[Optional[str], typer.Option(
    "--heads", metavar="PLAN|L:H,...", help="plan.json (its spurious + salient heads) or LAYER:HEAD,... e.g. "
                                            "11:3,11:5 (absolute layers).")]


def explain(
    cache: Annotated[Path, typer.Argument(metavar="CACHE", help="Decomposition cache (.safetensors) whose head terms "
                                                                "are described.")],
    model: ModelOpt,
    out: Annotated[Path, typer.Option(
        "--out", metavar="DIR",
        help="Output folder: descriptions.json, descriptions.md (and the pool's text embeddings, reused); "
             "replaced only when it is an explain folder of ours.")],
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    tokenizer: TokenizerOpt = None,
    heads: HeadsOpt = None,
    layers: LayersOpt = None,
    pool: Annotated[Optional[Path], typer.Option(
        "--pool", metavar="FILE", help="Description pool, one per line (default: the shipped general pool).")] = None,
    per_head: Annotated[int, typer.Option("--per-head", metavar="N", min=1, help="Descriptions per head.")] = 10,
    rank: Annotated[int, typer.Option(
        "--rank", metavar="N", min=0, help="Rank of each head's output space; 0 = keep 99% of its variance.")] = 0,
    device: DeviceOpt = "cpu",
) -> None:
    """TextSpan: per head, greedily pick the descriptions whose directions (projected on the head's output space)
    explain the most variance of its terms over the cache's images, removing each from terms and pool."""
    from clip_debias.toolchain.explain.jobs import describe_heads, span_lines

    done = describe_heads(cache, lambda: load_model(model, pretrained, weights, device, random_weights=random_weights,
                                                    tokenizer=tokenizer),
                          out, heads=heads, layers=layers, pool=pool, per_head=per_head, rank=rank, log=typer.echo)
    for line in span_lines(done.doc):
        typer.echo(line)
    typer.echo(f"wrote {' and '.join(map(str, done.files))} ({len(done.doc.heads)} heads)")


def explain_image(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image file.")],
    model: ModelOpt,
    text: Annotated[str, typer.Option("--text", metavar="TEXT", help="Text whose direction the token terms are "
                                                                     "projected on.")],
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="Output PNG.")],
    vs: Annotated[Optional[str], typer.Option("--vs", metavar="TEXT", help="Contrast text: use E(text) - E(vs).")]
    = None,
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    tokenizer: TokenizerOpt = None,
    heads: HeadsOpt = None,
    layers: LayersOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    force: ForceOpt = False,
    convention: ConventionOpt = Convention.TEXTSPAN,
) -> None:
    """Heat map of the per-patch direct contributions of heads (default: every head of the last layer) along a text
    direction; the patch terms plus the CLS token's term sum exactly to the heads' CLS terms."""
    from clip_debias.toolchain.errors import ClipDebiasError
    from clip_debias.toolchain.explain import select_heads
    from clip_debias.toolchain.explain.tokens import explain_image as run
    from clip_debias.toolchain.figures import check_figure_target

    for option, value in (("--text", text), ("--vs", vs)):
        if value is not None and not value.strip():
            raise ClipDebiasError(f"{option}: empty; expected a text such as 'a photo of water'")
    check_figure_target(out, force)  # before any work
    clip = load_model(model, pretrained, weights, random_weights=random_weights, tokenizer=tokenizer)
    n_layers = clip.tower.layers
    n_heads = clip.tower.heads
    chosen, _ = select_heads(heads, layers, n_layers, n_heads, [n_layers - 1])
    path, total, cls_share = run(clip, image, chosen, text, vs, out, convention=convention, force=force,
                                 max_pixels=max_pixels)
    typer.echo(f"wrote {path}: {len(chosen)} head(s), sum over tokens {total:+.5f} (CLS token {cls_share:+.5f})")


def discover(
    source: Annotated[Path, typer.Argument(metavar="SOURCE", help="Decomposition cache (.safetensors) or dataset "
                                                                  "(see --dataset, --split).")],
    model: ModelOpt,
    out: Annotated[Path, typer.Option(
        "--out", metavar="DIR",
        help="Output folder: keywords.json, attribute_prompts.yaml; replaced only when it is a discover "
             "folder of ours.")],
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    tokenizer: TokenizerOpt = None,
    classes: Annotated[Optional[str], typer.Option(
        "--classes", metavar="NAMES", help="Comma-separated class names for the prompts (default: dataset defaults, "
                                           "else the data's).")] = None,
    dataset: OptionalDatasetOpt = None,
    split: OptionalSplitOpt = None,
    templates: Annotated[Optional[Path], typer.Option(
        "--templates", metavar="FILE", help="Zero-shot template file (default: the dataset's, else 'a photo of a "
                                            "{}.').")] = None,
    vocab: Annotated[Optional[Path], typer.Option(
        "--vocab", metavar="FILE", help="Keyword vocabulary, one per line (default: the shipped word list).")] = None,
    captions_column: Annotated[Optional[str], typer.Option(
        "--captions-column", metavar="NAME", help="csv datasets: column of captions; keywords from misclassified "
                                                  "captions (YAKE).")] = None,
    top: Annotated[int, typer.Option("--top", metavar="N", min=1, help="Keywords kept per class.")] = 20,
    batch_size: BatchOpt = 32,
    device: DeviceOpt = "cpu",
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    allow_outside_root: AllowOutsideRootOpt = False,
) -> None:
    """B2T: per class, score(a) = mean 100 cos(image, 'a photo of a {a}.') over misclassified images minus the same
    over correctly classified ones; rank keywords and suggest attribute prompts for 'locate --attribute-prompts'."""
    from clip_debias.toolchain.explain.jobs import ATTRIBUTE_PROMPTS_YAML, discover_keywords

    results, done = discover_keywords(
        source, lambda: load_model(model, pretrained, weights, device, random_weights=random_weights,
                                   tokenizer=tokenizer), out,
        classes=classes, dataset=dataset, split=split, templates=templates, vocab=vocab,
        captions_column=captions_column, top=top, batch_size=batch_size, device=device, max_pixels=max_pixels,
        allow_outside_root=allow_outside_root)
    _print_keywords(results)
    if not any(f.name == ATTRIBUTE_PROMPTS_YAML for f in done.files):
        typer.echo(f"fewer than two distinct top keywords: no {ATTRIBUTE_PROMPTS_YAML} suggested")
    typer.echo("wrote " + " and ".join(str(p) for p in done.files))


def report(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="Folder with plan.json/png, descriptions.json, "
                                                               "compare.json, report.json, keywords.json, heat-map "
                                                               "PNGs (any subset).")],
    title: Annotated[str, typer.Option("--title", metavar="TEXT", help="Page title.")] = "clip-debias report",
    force: ForceOpt = False,
) -> None:
    """Write DIR/report.html: one static page (inline CSS, images by relative path, no network assets); --force
    replaces report.html, plan.png and compare.png even when clip-debias did not write them."""
    from clip_debias.toolchain.explain.report import build_report

    typer.echo(f"wrote {build_report(folder, title=title, force=force)}")


# ---- printing -------------------------------------------------------------------------------------------------

def _print_keywords(results) -> None:
    from clip_debias.runtime.tables import output_console, table as new_table

    console = output_console()
    for r in results:
        table = new_table(["#", "keyword", "score", "100 cos wrong", "100 cos correct"], right={0, 2, 3, 4},
                          title=f"{r.class_name}: {r.n_wrong} misclassified / {r.n_correct} correct",
                          title_justify="left")
        for i, k in enumerate(r.keywords):
            table.add_row(str(i + 1), k.keyword, f"{k.score:+.2f}", f"{k.cos_wrong:.2f}", f"{k.cos_correct:.2f}")
        console.print(table if r.keywords else f"{r.class_name}: {r.note}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("explain", short_help="Describe heads with text (TextSpan).")(explain)
    app.command("explain-image", short_help="Where in an image heads look, along a text direction.")(explain_image)
    app.command("discover", short_help="Words for the failures (B2T), and attribute prompts for locate.")(discover)
    app.command("report", short_help="One static HTML page of a folder's results.")(report)
