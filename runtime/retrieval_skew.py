"""Retrieval bias of text queries over an image index (pure numpy): MaxSkew@k, MinSkew@k, NDKL@k, one-value top-k.

For a query q with scores s_q [N] over the index rows (cosine of the query's text embedding with each row's image
embedding) and a protected attribute A with values a (one per row), the top k of the ranking has composition
P_k(a) = share of value a among the top k rows. Ties: rows whose score equals the k-th largest share the remaining
places equally (``runtime.metrics.top_k_weights``: the expected composition under a uniformly random tie order, as
the classification skew of ``runtime.metrics.skew_at_k`` does). D(a) is the desired ("neutral") share of a: by
default its share over the whole index, or given per query (a query file's distribution).

- Skew_a@k(q) = ln(P_k(a) / D(a)) (Geyik et al., KDD 2019); MaxSkew@k(q) = max_a, MinSkew@k(q) = min_a over the
  values with D(a) > 0. A value absent from the top k has Skew = -infinity: listed in ``empty``, MinSkew None.
- NDKL@k(q) = (1 / Z) sum_{i=1..k} KL(P_i || D) / log2(i + 1), Z = sum_{i=1..k} 1 / log2(i + 1),
  KL(P || D) = sum_a P(a) ln(P(a) / D(a)) (0 ln 0 = 0; a value with P(a) > 0 = D(a) makes it +infinity).
- one value: P_k(a) = 1 for some a (the whole top k shows one attribute value).

Over the queries: the mean and max of MaxSkew, the mean and min of MinSkew (None when a query has an empty value),
the mean and max of NDKL, and the share of queries whose top k is one value. Berg et al. (2022) report MaxSkew of
CLIP's retrieval over FairFace's race / gender / age for sets of text queries. k is capped at N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clip_debias.runtime.metrics.skew import top_k_weights

DEFAULT_RETRIEVAL_K = (10, 50)
QUERIES_DIR = Path(__file__).resolve().parent / "queries"
SHIPPED_QUERIES = ("occupations", "adjectives", "lab-birds", "lab-backgrounds")  # QUERIES_DIR/<name>.txt
MAX_QUERY_FILE_BYTES = 16 * 2**20  # a query file larger than this is refused before it is read
MAX_QUERIES = 100_000  # queries in one file at most (each is one text-tower call's worth of work)


@dataclass
class QuerySkew:
    """One query at one k (module docstring). ``top_shares``: P_k of each value."""

    query: str
    max_skew: float
    max_value: str
    min_skew: float | None
    min_value: str
    empty: list[str]
    ndkl: float
    one_value: bool
    top_shares: dict[str, float]


@dataclass
class RetrievalSkewAtK:
    """Every query at one k and the summaries over queries (module docstring)."""

    k: int
    queries: list[QuerySkew]
    mean_max_skew: float
    max_max_skew: float
    mean_min_skew: float | None
    min_min_skew: float | None
    mean_ndkl: float
    max_ndkl: float
    one_value_share: float


@dataclass
class RetrievalSkewReport:
    """MaxSkew@k / MinSkew@k / NDKL@k of attribute ``attribute`` over ``n`` index rows, for each k asked."""

    attribute: str
    n: int
    values: list[str]
    shares: dict[str, float]  # share of each value over the index
    at_k: list[RetrievalSkewAtK]
    ties: str = "rows tied at the k-th score share the remaining places equally"

    def at(self, k: int) -> RetrievalSkewAtK:
        return next(r for r in self.at_k if r.k == min(k, self.n))


def prefix_compositions(scores: np.ndarray, onehot: np.ndarray, k: int) -> np.ndarray:
    """[k, V]: row i-1 = P_i, the composition of the top i (ties as ``top_k_weights``) for i = 1..k. Only rows
    scoring at least the k-th largest can enter any top i <= k, so the work is on those."""
    n = scores.size
    kth = np.partition(scores, n - k)[n - k]
    keep = scores >= kth
    s, oh = scores[keep], onehot[keep]
    return np.stack([top_k_weights(s, i) @ oh / i for i in range(1, k + 1)])


def kl(p: np.ndarray, d: np.ndarray) -> float:
    """KL(P || D) in nats, 0 ln 0 = 0, +inf where P > 0 = D."""
    pos = p > 0
    if np.any(pos & (d <= 0)):
        return math.inf
    return float(np.sum(p[pos] * np.log(p[pos] / d[pos])))


def retrieval_skew(scores: np.ndarray, attribute_ids: Sequence[int], value_names: Sequence[str],
                   queries: Sequence[str], ks: Sequence[int] = DEFAULT_RETRIEVAL_K, attribute: str = "attribute",
                   desired: np.ndarray | None = None) -> RetrievalSkewReport:
    """scores [N, Q] (row x query), ``attribute_ids`` [N] ids into ``value_names``; ``desired`` [Q, V] the neutral
    distribution of each query (rows sum to 1; default every query: the index's shares). ValueError on bad
    shapes, fewer than two values present, k < 1."""
    scores = np.asarray(scores, dtype=np.float64)
    ids = np.asarray(attribute_ids, dtype=np.int64).reshape(-1)
    n, q = scores.shape if scores.ndim == 2 else (0, 0)
    if scores.ndim != 2 or ids.shape[0] != n or q != len(queries) or n == 0:
        raise ValueError("retrieval_skew: scores must be [N, Q] with N attribute ids and Q query names")
    v = len(value_names)
    counts = np.bincount(ids, minlength=v).astype(np.float64)
    if int((counts > 0).sum()) < 2:
        raise ValueError(f"retrieval_skew: attribute '{attribute}' has {int((counts > 0).sum())} value(s) among the "
                         f"{n} rows (a skew compares at least two)")
    if not ks or any(int(k) < 1 for k in ks):
        raise ValueError(f"retrieval_skew: k must be >= 1, got {list(ks)}")
    shares = counts / n
    want = np.tile(shares, (q, 1)) if desired is None else np.asarray(desired, dtype=np.float64)
    if want.shape != (q, v) or np.any(want < 0) or not np.allclose(want.sum(axis=1), 1.0):
        raise ValueError(f"retrieval_skew: desired must be [Q, V] = [{q}, {v}], each row a distribution")
    onehot = (ids[:, None] == np.arange(v)[None, :]).astype(np.float64)
    at_k = []
    for k in sorted({min(int(k), n) for k in ks}):
        discount = 1.0 / np.log2(np.arange(2, k + 2))
        rows = []
        for j, name in enumerate(queries):
            comp = prefix_compositions(scores[:, j], onehot, k)
            top, d = comp[-1], want[j]
            ref = [a for a in range(v) if d[a] > 0]
            ratios = {value_names[a]: top[a] / d[a] for a in ref}
            empty = [a for a, r in ratios.items() if r == 0.0]
            finite = {a: math.log(r) for a, r in ratios.items() if r > 0.0}
            max_value = max(finite, key=finite.__getitem__)
            min_value = empty[0] if empty else min(finite, key=finite.__getitem__)
            ndkl = float(sum(w * kl(p, d) for w, p in zip(discount, comp)) / discount.sum())
            rows.append(QuerySkew(name, finite[max_value], max_value, None if empty else finite[min_value],
                                  min_value, empty, ndkl, bool(np.isclose(top.max(), 1.0, rtol=0, atol=1e-12)),
                                  {value_names[a]: float(top[a]) for a in range(v)}))
        maxes = [r.max_skew for r in rows]
        mins = [r.min_skew for r in rows]
        ndkls = [r.ndkl for r in rows]
        unbounded = any(m is None for m in mins)
        at_k.append(RetrievalSkewAtK(k, rows, float(np.mean(maxes)), float(np.max(maxes)),
                                     None if unbounded else float(np.mean(mins)),  # type: ignore[arg-type]
                                     None if unbounded else float(np.min(mins)),  # type: ignore[arg-type]
                                     float(np.mean(ndkls)), float(np.max(ndkls)),
                                     float(np.mean([r.one_value for r in rows]))))
    return RetrievalSkewReport(attribute, n, list(value_names), {value_names[a]: float(shares[a]) for a in range(v)},
                               at_k)


def index_retrieval_skew(index: object, query_embeddings: np.ndarray, queries: Sequence[str], attribute: str,
                         ks: Sequence[int] = DEFAULT_RETRIEVAL_K,
                         desired: dict[str, dict[str, float]] | None = None) -> RetrievalSkewReport:
    """``embedding_retrieval_skew`` over a ``runtime.search.SearchIndex`` whose rows carry ``attribute``."""
    columns = getattr(index, "record").attributes
    if attribute not in columns:
        raise ValueError(f"the index has no attribute '{attribute}' (has: {', '.join(columns) or 'none'})")
    return embedding_retrieval_skew(getattr(index, "embeddings"), columns[attribute], query_embeddings, queries,
                                    attribute, ks, desired)


def embedding_retrieval_skew(embeddings: np.ndarray, column: Sequence[str], query_embeddings: np.ndarray,
                             queries: Sequence[str], attribute: str, ks: Sequence[int] = DEFAULT_RETRIEVAL_K,
                             desired: dict[str, dict[str, float]] | None = None) -> RetrievalSkewReport:
    """``retrieval_skew`` of unit-norm image ``embeddings`` [N, D] whose rows have the values ``column`` [N] of
    ``attribute``: scores = embeddings @ the unit-norm query embeddings [Q, D] (float64); values in sorted order;
    ``desired``: query -> {value: share} for the queries that give one (the others: the rows' shares). The same
    numbers for an index (``index_retrieval_skew``) and for verify's split (``runtime.metrics.retrieval_skew``)."""
    names = sorted(set(column))
    lookup = {a: i for i, a in enumerate(names)}
    ids = np.asarray([lookup[a] for a in column])
    emb = np.asarray(embeddings, dtype=np.float64)
    scores = emb @ np.asarray(query_embeddings, dtype=np.float64).T
    want = None
    if desired:
        shares = np.bincount(ids, minlength=len(names)) / len(ids)
        want = np.tile(shares, (len(queries), 1))
        for j, query in enumerate(queries):
            if query in desired:
                unknown = sorted(set(desired[query]) - set(names))
                if unknown:
                    raise ValueError(f"query {query!r}: value(s) {unknown} not in attribute '{attribute}' "
                                     f"({', '.join(names)})")
                want[j] = [float(desired[query].get(a, 0.0)) for a in names]
    return retrieval_skew(scores, ids, names, queries, ks, attribute, want)


def worst_k(report: RetrievalSkewReport) -> RetrievalSkewAtK:
    """The k whose mean over queries of MaxSkew@k is the largest (what ``--max-retrieval-skew`` bounds)."""
    return max(report.at_k, key=lambda r: r.mean_max_skew)


def _check_count(path: Path, n: int) -> None:
    from clip_debias.runtime.errors import InputError

    if n > MAX_QUERIES:
        raise InputError(f"{path}: {n:,} queries, over the limit of {MAX_QUERIES:,} in one file")


def read_queries(source: str | Path) -> tuple[list[str], dict[str, dict[str, float]] | None]:
    """A query file -> (queries, desired distributions or None). ``source``: the name of a shipped list
    (``SHIPPED_QUERIES``), a text file (one query per line; blank lines and '#' comments skipped) or a YAML / JSON
    file (``.yaml`` / ``.yml`` / ``.json``) mapping each query to its neutral distribution {value: share} (shares
    summing to 1; an empty mapping: the index's shares). One ``InputError`` line on a problem."""
    from clip_debias.runtime.errors import InputError

    path = QUERIES_DIR / f"{source}.txt" if str(source) in SHIPPED_QUERIES else Path(source)
    if not path.is_file():
        raise InputError(f"--queries {source}: not a file nor a shipped list ({', '.join(SHIPPED_QUERIES)})")
    if path.stat().st_size > MAX_QUERY_FILE_BYTES:
        raise InputError(f"{path}: {path.stat().st_size:,} bytes, over the query-file limit of "
                         f"{MAX_QUERY_FILE_BYTES:,}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.suffix not in (".yaml", ".yml", ".json"):
        queries = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if not queries:
            raise InputError(f"{path}: no queries (one per line)")
        _check_count(path, len(queries))
        return queries, None
    data: Any
    if path.suffix == ".json":
        import json

        try:
            data = json.loads(text)
        except ValueError as e:
            raise InputError(f"{path}: not valid JSON ({e})") from None
    else:
        try:
            import yaml
        except ImportError:
            raise InputError(f"{path}: reading YAML needs pyyaml (pip install pyyaml), or give the file as JSON") \
                from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise InputError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path}: expected a mapping query -> {{value: share}}")
    _check_count(path, len(data))
    desired: dict[str, dict[str, float]] = {}
    for query, dist in data.items():
        if dist in (None, {}):
            continue
        if not isinstance(dist, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in dist.values()) \
                or not math.isclose(sum(dist.values()), 1.0, abs_tol=1e-6):
            raise InputError(f"{path}: query {query!r}: expected {{value: share}} with shares >= 0 summing to 1")
        desired[str(query)] = {str(k): float(v) for k, v in dist.items()}
    return [str(q) for q in data], desired
