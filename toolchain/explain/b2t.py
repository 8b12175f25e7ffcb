"""B2T (Bias-to-Text) keyword discovery: which words describe the images a zero-shot classifier gets wrong.

For class c with images I_c split into misclassified W_c and correctly classified R_c, and keyword a with prompt
embedding t_a = E_T("a photo of a {a}.") (unit norm), e_x the unit-norm image embeddings:

    score_c(a) = mean_{x in W_c} 100 cos(e_x, t_a)  -  mean_{x in R_c} 100 cos(e_x, t_a)

A high score: the keyword is much closer to the failures than to the successes of that class (a bias candidate).
Candidates come from a vocabulary, or (csv datasets with captions) from the captions of the misclassified images
with YAKE. Classes without failures or without successes are skipped (the difference is undefined).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic.dataclasses import dataclass as format_dataclass

from clip_debias.runtime.schema import FORMAT
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.loading import LoadedClip
from clip_debias.toolchain.prompts.text import DEFAULT_TEMPLATE, DEFAULT_TEMPLATES, class_text_matrix

KEYWORD_TEMPLATE = DEFAULT_TEMPLATE  # a keyword is scored as the zero-shot prompt of a class named by it
ATTRIBUTE_TEMPLATE = "a photo of a {cls}, {keyword}."


@format_dataclass(config=FORMAT)
class KeywordScore:
    keyword: str
    score: float
    cos_wrong: float  # mean 100 cos over the misclassified images
    cos_correct: float  # mean 100 cos over the correctly classified images


@format_dataclass(config=FORMAT)
class ClassKeywords:
    """Ranked keywords of one class (best first) with the counts they were measured on."""

    class_name: str
    n_wrong: int
    n_correct: int
    keywords: list[KeywordScore] = field(default_factory=list)
    note: str = ""


def keyword_scores(embeddings: torch.Tensor, keyword_emb: torch.Tensor, wrong: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """embeddings [N, D] (one class's images), keyword_emb [K, D], wrong [N] bool -> (score, cos_wrong, cos_correct),
    each [K]; cosines are taken on unit-normalized rows, times 100."""
    wrong = wrong.bool()
    if not bool(wrong.any()) or bool(wrong.all()):
        raise ClipDebiasError("keyword_scores: needs both misclassified and correctly classified images")
    e = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    t = torch.nn.functional.normalize(keyword_emb.double(), dim=-1)
    cos = 100.0 * e @ t.T  # [N, K]
    cw, cc = cos[wrong].mean(dim=0), cos[~wrong].mean(dim=0)
    return cw - cc, cw, cc


def zero_shot_predictions(embeddings: torch.Tensor, class_text: torch.Tensor) -> torch.Tensor:
    """argmax_c e . t_c [N] for unit-norm image embeddings [N, D] and class text weights [C, D]."""
    return (embeddings.float() @ class_text.float().T).argmax(dim=-1)


def rank_class(name: str, embeddings: torch.Tensor, wrong: torch.Tensor, keywords: list[str],
               keyword_emb: torch.Tensor, top: int) -> ClassKeywords:
    """The ``top`` keywords of one class by score (highest first), or an empty list with a note."""
    n_wrong, n_correct = int(wrong.sum()), int((~wrong).sum())
    out = ClassKeywords(name, n_wrong, n_correct)
    if n_wrong == 0 or n_correct == 0:
        out.note = f"skipped: {n_wrong} misclassified, {n_correct} correct (need both)"
        return out
    if not keywords:
        out.note = "skipped: no candidate keywords"
        return out
    score, cw, cc = keyword_scores(embeddings, keyword_emb, wrong)
    order = torch.argsort(score, descending=True)[:top].tolist()
    out.keywords = [KeywordScore(keywords[i], float(score[i]), float(cw[i]), float(cc[i])) for i in order]
    return out


def yake_keywords(captions: list[str], top: int = 50, max_ngram: int = 2) -> list[str]:
    """Candidate keywords of a set of captions with YAKE (lowest YAKE score = most relevant), lower-cased, unique."""
    try:
        import yake
    except ImportError as e:
        raise ClipDebiasError("--captions-column needs the 'yake' package: pip install 'clip-debias[explain]' "
                              "(or pip install yake)") from e
    text = ". ".join(c.strip().rstrip(".") for c in captions if c and c.strip())
    if not text:
        return []
    extractor = yake.KeywordExtractor(lan="en", n=max_ngram, top=top)
    found = sorted(extractor.extract_keywords(text), key=lambda kv: kv[1])
    return list(dict.fromkeys(k.lower().strip() for k, _ in found if k.strip()))


def attribute_prompts(results: list[ClassKeywords], class_names: list[str], per_class: int = 1) -> dict[str, list[str]]:
    """Suggested ``locate --attribute-prompts`` mapping: one attribute value per discovered keyword (the top
    ``per_class`` distinct keywords of each class, in class order), each with the class-balanced prompts
    "a photo of a {class}, {keyword}." over all classes (averaged by locate, so the value measures the keyword,
    not the class)."""
    values: dict[str, list[str]] = {}
    for r in results:
        fresh = [k.keyword for k in r.keywords if k.keyword not in values][:per_class]
        for kw in fresh:
            values[kw] = [ATTRIBUTE_TEMPLATE.format(cls=c, keyword=kw) for c in class_names]
    return values


# ---- inputs: a decomposition cache or a dataset -----------------------------------------------------------------

@dataclass
class ImageSet:
    """Unit-norm image embeddings [N, D] with labels [N], image paths (row order) and class names."""

    embeddings: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    class_names: list[str]
    dataset: str


@torch.no_grad()
def embed_index(clip: LoadedClip, index: Any, batch_size: int = 32, device: str = "cpu", **reading: Any) -> ImageSet:
    """Encode every image of a ``DatasetIndex`` with ``encode_image(normalize=True)`` (float32 on the CPU)."""
    from clip_debias.toolchain.datasets import iter_batches

    dtype = next(clip.model.parameters()).dtype
    emb, labels, paths = [], [], []
    for batch in iter_batches(index, clip.preprocess, batch_size=batch_size, what="embed", **reading):
        emb.append(clip.model.encode_image(batch.images.to(device=device, dtype=dtype), normalize=True).float().cpu())
        labels.append(batch.labels)
        paths.extend(batch.paths)
    return ImageSet(torch.cat(emb), torch.cat(labels), paths, list(index.class_names), index.dataset)


def read_captions(csv_path: str | Path, column: str) -> dict[str, str]:
    """{image path as the csv loader builds it (CSV folder / path): caption} from a csv dataset's ``column``."""
    from clip_debias.runtime.datasets import read_csv

    csv_path = Path(csv_path)
    if csv_path.is_dir():
        csv_path = csv_path / "data.csv"
    table = read_csv(csv_path, ("path", column))
    return {str(csv_path.parent / row["path"]): row[column] for _, row in table.rows}


def discover(images: ImageSet, clip: LoadedClip, class_names: list[str], templates: list[str] | None, top: int,
             vocab: list[str] | None = None, captions: dict[str, str] | None = None) -> list[ClassKeywords]:
    """B2T over every class: zero-shot predictions with ``templates`` (default ``DEFAULT_TEMPLATES``), then per class
    the ``top`` keywords of the vocabulary, or of the YAKE keywords of its misclassified images' captions."""
    if len(class_names) != len(images.class_names):
        raise ClipDebiasError(f"--classes: {len(class_names)} names given, the data has {len(images.class_names)} "
                              f"classes ({', '.join(images.class_names)})")
    text = class_text_matrix(clip, class_names, templates or DEFAULT_TEMPLATES)
    wrong = zero_shot_predictions(images.embeddings, text.cpu()) != images.labels
    shared = None
    if captions is None:
        words = vocab or []
        shared = (words, _prompt_embeddings(clip, words))
    results = []
    for c, name in enumerate(class_names):
        rows = images.labels == c
        if captions is not None:
            failing = [captions.get(p, "") for p, w, r in zip(images.paths, wrong, rows) if r and w]
            words = yake_keywords(failing)
            words_emb = _prompt_embeddings(clip, words)
        else:
            words, words_emb = shared
        results.append(rank_class(name, images.embeddings[rows], wrong[rows], words, words_emb, top))
    return results


def _prompt_embeddings(clip: LoadedClip, keywords: list[str]) -> torch.Tensor:
    """[K, D] unit-norm embeddings of "a photo of a {keyword}." (batched)."""
    from clip_debias.toolchain.explain.textspan import encode_pool

    return encode_pool(clip, [KEYWORD_TEMPLATE.format(k) for k in keywords])
