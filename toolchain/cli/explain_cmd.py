"""``clip-debias explain | explain-image | discover | report``: describe heads with text (TextSpan), show where in an
image they look (token heat maps), find words for the failures (B2T) and gather everything in one HTML page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from clip_debias.toolchain.cli.options import BatchOpt, DeviceOpt, ModelOpt, PretrainedOpt, SplitOpt, WeightsOpt, load_model

HeadsOpt = Annotated[Optional[str], typer.Option(
    "--heads", help="plan.json (its spurious + salient heads) or LAYER:HEAD,... e.g. 11:3,11:5 (absolute layers).")]
POOL_CACHE = "pool_embeddings.safetensors"
LayersOpt = Annotated[Optional[str], typer.Option(
    "--layers", help="Every head of these absolute layers, e.g. 10,11 (negative counts from the end).")]


def explain(
    cache: Annotated[Path, typer.Argument(help="Decomposition cache (.safetensors) whose head terms are described.")],
    model: ModelOpt,
    out: Annotated[Path, typer.Option(
        "--out", help="Output folder: descriptions.json, descriptions.md (and the pool's text embeddings, reused).")],
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
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
    from clip_debias.toolchain.decompose.cache import load_cache
    from clip_debias.toolchain.explain import check_heads_or_layers, heads_option, select_heads
    from clip_debias.toolchain.explain.pool import POOL_FILE, load_pool
    from clip_debias.toolchain.explain.textspan import (cached_pool_embeddings, descriptions_markdown, explain_heads,
                                            require_cached_heads)

    terms = load_cache(cache)
    check_heads_or_layers(heads, layers)
    if heads:  # the requested heads must be cached: checked before loading the model, encoding or writing anything
        require_cached_heads(terms.layers, terms.heads.shape[2], heads_option(heads)[0], str(cache))
    clip = load_model(model, pretrained, weights, device)
    _same_backbone(terms.identity, clip.identity, f"cache {cache}")
    n_layers = len(clip.model.visual.transformer.resblocks)
    chosen, roles = select_heads(heads, layers, n_layers, terms.heads.shape[2], terms.layers)
    require_cached_heads(terms.layers, terms.heads.shape[2], chosen, str(cache))  # --layers: before the pool too
    texts = load_pool(pool)
    typer.echo(f"pool: {len(texts)} descriptions (text embeddings cached in {out / POOL_CACHE})")
    text_emb = cached_pool_embeddings(clip, texts, out / POOL_CACHE)
    spans = explain_heads(terms.heads, terms.layers, chosen, texts, text_emb, per_head, rank, roles)
    doc = {"cache": str(cache), "dataset": terms.dataset, "split": terms.split, "n": len(terms),
           "model": clip.identity.to_dict(), "pool": str(pool) if pool else f"shipped:{POOL_FILE.name}",
           "pool_size": len(texts), "per_head": per_head, "rank": rank or "auto",
           "heads": [s.to_dict() for s in spans]}
    (out / "descriptions.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    (out / "descriptions.md").write_text(descriptions_markdown(spans, f"TextSpan descriptions: {terms.dataset}/"
                                                                      f"{terms.split}, {clip.identity.describe()}"),
                                         encoding="utf-8")
    for s in spans:
        top = "; ".join(f"{e.text} ({100 * e.variance:.1f}%)" for e in s.entries[:3])
        typer.echo(f"  L{s.layer}H{s.head}{' ' + s.role if s.role else ''}: {top}")
    typer.echo(f"wrote {out / 'descriptions.json'} and {out / 'descriptions.md'} ({len(spans)} heads)")


def explain_image(
    image: Annotated[Path, typer.Argument(help="Image file.")],
    model: ModelOpt,
    text: Annotated[str, typer.Option("--text", help="Text whose direction the token terms are projected on.")],
    out: Annotated[Path, typer.Option("--out", help="Output PNG.")],
    vs: Annotated[Optional[str], typer.Option("--vs", help="Contrast text: use E(text) - E(vs).")] = None,
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
    heads: HeadsOpt = None,
    layers: LayersOpt = None,
) -> None:
    """Heat map of the per-patch direct contributions of heads (default: every head of the last layer) along a text
    direction; the patch terms plus the CLS token's term sum exactly to the heads' CLS terms."""
    from clip_debias.toolchain.errors import ClipDebiasError
    from clip_debias.toolchain.explain import select_heads
    from clip_debias.toolchain.explain.tokens import explain_image as run

    for option, value in (("--text", text), ("--vs", vs)):
        if value is not None and not value.strip():
            raise ClipDebiasError(f"{option}: empty; expected a text such as 'a photo of water'")
    clip = load_model(model, pretrained, weights)
    n_layers = len(clip.model.visual.transformer.resblocks)
    n_heads = clip.model.visual.transformer.resblocks[0].attn.num_heads
    chosen, _ = select_heads(heads, layers, n_layers, n_heads, [n_layers - 1])
    path, total, cls_share = run(clip, image, chosen, text, vs, out)
    typer.echo(f"wrote {path}: {len(chosen)} head(s), sum over tokens {total:+.5f} (CLS token {cls_share:+.5f})")


def discover(
    source: Annotated[Path, typer.Argument(help="Decomposition cache (.safetensors) or dataset (see --dataset).")],
    model: ModelOpt,
    out: Annotated[Path, typer.Option("--out", help="Output folder: keywords.json, attribute_prompts.yaml.")],
    pretrained: PretrainedOpt = None,
    weights: WeightsOpt = None,
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
) -> None:
    """B2T: per class, score(a) = mean 100 cos(image, 'a photo of a {a}.') over misclassified images minus the same
    over correctly classified ones; rank keywords and suggest attribute prompts for 'locate --attribute-prompts'."""
    from clip_debias.toolchain.correct.defaults import classes_for, templates_for
    from clip_debias.toolchain.explain.b2t import attribute_prompts, discover as run, keywords_json
    from clip_debias.toolchain.explain.pool import load_vocab

    clip = load_model(model, pretrained, weights, device)
    images, captions = _discover_input(source, dataset, split, captions_column, clip, batch_size, device)
    names = classes_for(classes, images.dataset) or images.class_names
    results = run(images, clip, names, templates_for(templates, images.dataset), top,
                  vocab=None if captions is not None else load_vocab(vocab), captions=captions)
    _print_keywords(results)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"source": str(source), "dataset": images.dataset, "n": len(images.labels),
             "model": clip.identity.to_dict(), "candidates": "captions:" + captions_column if captions_column
             else str(vocab or "shipped:vocab.txt")}
    (out / "keywords.json").write_text(json.dumps(keywords_json(results, extra), indent=2), encoding="utf-8")
    written = [out / "keywords.json"]
    prompts = attribute_prompts(results, names)
    if len(prompts) >= 2:
        written.append(_write_attribute_prompts(out / "attribute_prompts.yaml", prompts))
    else:
        typer.echo("fewer than two distinct top keywords: no attribute_prompts.yaml suggested")
    typer.echo("wrote " + " and ".join(str(p) for p in written))


def report(
    folder: Annotated[Path, typer.Argument(help="Folder with plan.json/png, descriptions.json, compare.json, "
                                                "report.json, keywords.json, heat-map PNGs (any subset).")],
    title: Annotated[str, typer.Option("--title", help="Page title.")] = "clip-debias report",
) -> None:
    """Write FOLDER/report.html: one static page (inline CSS, images by relative path, no network assets)."""
    from clip_debias.toolchain.explain.report import build_report

    typer.echo(f"wrote {build_report(folder, title=title)}")


# ---- helpers ----------------------------------------------------------------------------------------------------

def _same_backbone(cache_identity, model_identity, what: str) -> None:
    from clip_debias.toolchain.locate.ltc import require_same_backbone

    require_same_backbone(model_identity, cache_identity, what)


def _discover_input(source: Path, dataset: str | None, split: str, captions_column: str | None, clip, batch_size: int,
                    device: str):
    """(ImageSet, captions or None) from a cache file or a dataset."""
    from clip_debias.toolchain.errors import ClipDebiasError
    from clip_debias.toolchain.explain.b2t import ImageSet, embed_index, read_captions

    if source.suffix == ".safetensors":
        from clip_debias.toolchain.decompose.cache import load_cache

        if captions_column:
            raise ClipDebiasError("--captions-column needs a csv dataset as input, not a cache")
        cache = load_cache(source)
        _same_backbone(cache.identity, clip.identity, f"cache {source}")
        return ImageSet(cache.embeddings().float(), cache.labels, cache.paths, cache.class_names, cache.dataset), None
    from clip_debias.toolchain.datasets import load_index

    if dataset is None:
        if source.suffix == ".csv" or (source / "data.csv").is_file():
            dataset = "csv"
        else:
            raise ClipDebiasError(f"{source}: not a .safetensors cache; for a dataset pass --dataset "
                                  "waterbirds|celeba|csv")
    if captions_column and dataset != "csv":
        raise ClipDebiasError(f"--captions-column needs a csv dataset, got --dataset {dataset}")
    index = load_index(dataset, source, split)
    images = embed_index(clip, index, batch_size, device)
    return images, read_captions(source, captions_column) if captions_column else None


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


def _write_attribute_prompts(path: Path, prompts: dict[str, list[str]]) -> Path:
    import yaml

    header = ("# Suggested by 'clip-debias discover' (B2T): one attribute value per top keyword, "
              "prompts averaged over\n"
              "# the classes. Review, reorder to the dataset's attribute order, then: locate --attribute-prompts "
              f"{path.name}\n")
    path.write_text(header + yaml.safe_dump({"attribute_prompts": prompts}, sort_keys=False, allow_unicode=True),
                    encoding="utf-8")
    return path


def register(app: typer.Typer) -> None:
    app.command("explain")(explain)
    app.command("explain-image")(explain_image)
    app.command("discover")(discover)
    app.command("report")(report)
