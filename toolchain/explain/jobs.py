"""The explain and discover jobs, called by the CLI and the demo: check the inputs (cheap checks before the model
loads and before the pool is encoded), run TextSpan / B2T, write their files (``explain.files``).

``load_clip`` is called once the cheap checks pass (the CLI loads the model there; the demo passes the one it holds);
``log`` receives progress lines. ``out`` is an output folder of its kind (``runtime.atomic_output``): refused before
any work unless it is new, empty or one of ours, written into a staging folder and renamed when complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from clip_debias.runtime.atomic_output import check_directory_target, staged_directory
from clip_debias.runtime.limits import DEFAULT_MAX_PIXELS
from clip_debias.toolchain.decompose.cache import load_cache
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.explain import check_heads_or_layers, heads_option, select_heads
from clip_debias.toolchain.explain.b2t import (ClassKeywords, ImageSet, attribute_prompts, discover, embed_index,
                                               read_captions)
from clip_debias.toolchain.explain.files import (Descriptions, Keywords, class_keywords_record,
                                                 head_description)
from clip_debias.toolchain.explain.pool import POOL_FILE, VOCAB_FILE, load_pool, load_vocab
from clip_debias.toolchain.explain.textspan import (cached_pool_embeddings, descriptions_markdown, explain_heads,
                                                    require_cached_heads)
from clip_debias.toolchain.locate.ltc import require_same_backbone
from clip_debias.toolchain.models.loading import LoadedClip
from clip_debias.toolchain.prompts.defaults import classes_for, prompt_value, templates_for

DESCRIPTIONS_JSON, DESCRIPTIONS_MD = "descriptions.json", "descriptions.md"
KEYWORDS_JSON, ATTRIBUTE_PROMPTS_YAML = "keywords.json", "attribute_prompts.yaml"
POOL_CACHE = "pool_embeddings.safetensors"

Log = Callable[[str], None]


def _quiet(line: str) -> None:
    pass


@dataclass
class Written:
    """What a job wrote: its document and the files."""

    doc: Any  # Descriptions | Keywords
    files: list[Path]


def describe_heads(cache_path: Path, load_clip: Callable[[], Any], out: Path, *, heads: str | None = None,
                   layers: str | None = None, pool: Path | None = None, per_head: int = 10, rank: int = 0,
                   log: Log = _quiet) -> Written:
    """TextSpan on the heads of a cache chosen by ``heads`` (plan.json or L:H,...) or ``layers`` (default: the
    cache's layers), written to ``out/descriptions.json`` and ``.md``; the pool's text embeddings are cached in
    ``out/pool_embeddings.safetensors`` (reused from the previous output). ``rank`` 0 keeps 99% of each head's
    variance."""
    check_directory_target(out, "explain")
    terms = load_cache(cache_path)
    check_heads_or_layers(heads, layers)
    if heads:  # the requested heads must be cached: checked before loading the model, encoding or writing anything
        require_cached_heads(terms.layers, terms.heads.shape[2], heads_option(heads)[0], str(cache_path))
    clip = load_clip()
    require_same_backbone(clip.identity, terms.identity, f"cache {cache_path}")
    n_layers = clip.tower.layers
    chosen, roles = select_heads(heads, layers, n_layers, terms.heads.shape[2], terms.layers)
    require_cached_heads(terms.layers, terms.heads.shape[2], chosen, str(cache_path))  # --layers: before the pool
    texts = load_pool(pool)
    log(f"pool: {len(texts)} descriptions (text embeddings cached in {out / POOL_CACHE})")
    with staged_directory(out, "explain", complete=DESCRIPTIONS_JSON) as tmp:
        text_emb = cached_pool_embeddings(clip, texts, tmp / POOL_CACHE, reuse=out / POOL_CACHE)
        spans = explain_heads(terms.heads, terms.layers, chosen, texts, text_emb, per_head, rank, roles)
        doc = Descriptions(cache=str(cache_path), dataset=terms.dataset, split=terms.split, n=len(terms),
                           model=clip.identity.to_dict(), pool=str(pool) if pool else f"shipped:{POOL_FILE.name}",
                           pool_size=len(texts), per_head=per_head, rank=rank or "auto",
                           heads=[head_description(s) for s in spans])
        (tmp / DESCRIPTIONS_MD).write_text(descriptions_markdown(spans, f"TextSpan descriptions: {terms.dataset}/"
                                                                        f"{terms.split}, {clip.identity.describe()}"),
                                           encoding="utf-8")
        doc.save(tmp / DESCRIPTIONS_JSON)
    return Written(doc, [out / DESCRIPTIONS_JSON, out / DESCRIPTIONS_MD])


def span_lines(doc: Descriptions, top: int = 3) -> list[str]:
    """One line per described head: its top descriptions with their variance shares."""
    return [f"  L{h.layer}H{h.head}{' ' + h.role if h.role else ''}: "
            + "; ".join(f"{e.text} ({100 * e.variance:.1f}%)" for e in h.entries[:top]) for h in doc.heads]


def discover_keywords(source: Path, load_clip: Callable[[], Any], out: Path, *, classes: str | None = None,
                      dataset: str | None = None, split: str | None = None, templates: Path | None = None,
                      vocab: Path | None = None, captions_column: str | None = None, top: int = 20,
                      batch_size: int = 32, device: str = "cpu", max_pixels: int | None = DEFAULT_MAX_PIXELS,
                      allow_outside_root: bool = False) -> tuple[list[ClassKeywords], Written]:
    """B2T on a cache or a dataset split: ranked keywords per class in ``out/keywords.json`` and, when at least two
    distinct top keywords exist, the attribute prompts they suggest in ``out/attribute_prompts.yaml`` (a prompt
    file for ``locate --attribute-prompts``)."""
    check_directory_target(out, "discover")
    clip = load_clip()
    images, captions = discover_input(source, dataset, split, captions_column, clip, batch_size, device,
                                      max_pixels, allow_outside_root)
    names = classes_for(classes, images.dataset) or images.class_names
    results = discover(images, clip, names, templates_for(templates, images.dataset), top,
                       vocab=None if captions is not None else load_vocab(vocab), captions=captions)
    candidates = f"captions:{captions_column}" if captions_column else str(vocab or f"shipped:{VOCAB_FILE.name}")
    doc = Keywords(source=str(source), dataset=images.dataset, n=len(images.labels), model=clip.identity.to_dict(),
                   candidates=candidates, classes=[class_keywords_record(r) for r in results])
    files = [out / KEYWORDS_JSON]
    prompts = attribute_prompts(results, names)
    with staged_directory(out, "discover", complete=KEYWORDS_JSON) as tmp:
        doc.save(tmp / KEYWORDS_JSON)
        if len(prompts) >= 2:
            write_attribute_prompts(tmp / ATTRIBUTE_PROMPTS_YAML, prompts)
            files.append(out / ATTRIBUTE_PROMPTS_YAML)
    return results, Written(doc, files)


def discover_input(source: Path, dataset: str | None, split: str | None, captions_column: str | None, clip: LoadedClip,
                   batch_size: int, device: str, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                   allow_outside_root: bool = False) -> tuple[ImageSet, dict[str, str] | None]:
    """(ImageSet, captions or None) from a cache file (same backbone as ``clip``) or a dataset split (images of at
    most ``max_pixels``; paths outside the data folder only with ``allow_outside_root``)."""
    if source.suffix == ".safetensors":
        if captions_column:
            raise ClipDebiasError("--captions-column needs a csv dataset as input, not a cache")
        cache = load_cache(source)
        require_same_backbone(clip.identity, cache.identity, f"cache {source}")
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
    if split is None:
        raise ClipDebiasError(f"{source}: a dataset input needs --split train|val|test (no default)")
    index = load_index(dataset, source, split, allow_outside_root=allow_outside_root)
    images = embed_index(clip, index, batch_size, device, max_pixels=max_pixels)
    return images, read_captions(source, captions_column) if captions_column else None


def write_attribute_prompts(path: Path, prompts: dict[str, list[str]]) -> Path:
    """A prompt file holding ``attribute_prompts`` (checked against the prompt file model before it is written)."""
    import yaml

    prompt_value("attribute_prompts", prompts, str(path))
    header = ("# Suggested by 'clip-debias discover' (B2T): one attribute value per top keyword, "
              "prompts averaged over\n"
              "# the classes. Review, reorder to the dataset's attribute order, then: locate --attribute-prompts "
              f"{path.name}\n")
    path.write_text(header + yaml.safe_dump({"attribute_prompts": prompts}, sort_keys=False, allow_unicode=True),
                    encoding="utf-8")
    return path
