"""**Retrieval skew** (``retrieval_skew``, JSON ``metrics.retrieval_skew``): the split's rows as an image index --
each row's (debiased) image embedding, from the same model calls as its logits -- ranked for each text query of
``--queries`` by the cosine with the query's text embedding (``Classifier.encode_text``), and MaxSkew@k / MinSkew@k /
NDKL@k of the protected attribute over the top k, per query and over the queries, for each ``--skew-k`` value
(``runtime.retrieval_skew``: its formulas, ties and k capped at N; the same numbers ``clip-debias search --queries``
gives over an index of the same rows).

Gate ``max_retrieval_skew``: a **point** gate, like ``max_skew`` (a log ratio of ranked shares: no interval is
claimed) on the largest over k of the mean over queries of MaxSkew@k -- ``search --max-retrieval-skew``'s statistic.
INCONCLUSIVE when a value of the protected attribute has fewer than ``--min-group-size`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from clip_debias.runtime.metrics.evidence import Decision, Direction, point_decision
from clip_debias.runtime.metrics.spec import GateContext, GateSpec, MetricData, MetricFamily, ThresholdResult, judged
from clip_debias.runtime.metrics.text import TextTable, log_ratio, pct
from clip_debias.runtime.retrieval_skew import RetrievalSkewReport, embedding_retrieval_skew, worst_k


@dataclass
class RetrievalQueries:
    """The text queries of the retrieval skew: ``texts``, where they come from (``source``), the neutral
    distribution of the queries that give one (``desired``: query -> {value: share}) and their unit-norm text
    ``embeddings`` [Q, D] (None until the artifact has embedded them)."""

    texts: list[str]
    source: str
    desired: dict[str, dict[str, float]] | None = None
    embeddings: np.ndarray | None = None


def _compute(data: MetricData) -> RetrievalSkewReport | None:
    i, q = data.inputs, data.inputs.queries
    if q is None or q.embeddings is None or data.embeddings is None or i.protected is None:
        return None
    ids = np.asarray(i.protected.ids).reshape(-1)
    if np.unique(ids).size < 2:
        return None
    column = [i.protected.names[v] for v in ids]
    return embedding_retrieval_skew(data.embeddings, column, q.embeddings, q.texts, i.protected.name, i.skew_k,
                                    q.desired)


def _unavailable(data: MetricData) -> str | None:
    i = data.inputs
    if i.queries is None:
        return None
    if data.embeddings is None or i.queries.embeddings is None:
        return "the run returned no image or query embeddings (the retrieval skew runs with --engine local)"
    if i.protected is None:
        return i.missing.get("skew", "no protected attribute")
    return (f"the protected attribute '{i.protected.name}' has {np.unique(np.asarray(i.protected.ids)).size} value(s) "
            f"among the {len(data.labels)} images counted (a skew compares at least two)")


def _gate(r: RetrievalSkewReport, limit: float, ctx: GateContext) -> dict[str, ThresholdResult]:
    worst = worst_k(r)
    counts = {v: int(round(share * r.n)) for v, share in r.shares.items() if share > 0}
    small = [f"{r.attribute}={v} ({n})" for v, n in counts.items() if n < ctx.evidence.min_group_size]
    decision, reason = point_decision(worst.mean_max_skew, limit, Direction.AT_MOST), ""
    if small:
        decision = Decision.INCONCLUSIVE
        reason = (f"{', '.join(small[:6])}{' ...' if len(small) > 6 else ''}: under --min-group-size "
                  f"{ctx.evidence.min_group_size} images")
    over = {"statistic": "max over k of the mean over queries of MaxSkew@k", "attribute": r.attribute,
            "values": counts, "k": [a.k for a in r.at_k], "images": r.n, "queries": len(worst.queries),
            "worst_k": worst.k}
    return {"max_retrieval_skew": judged(limit, worst.mean_max_skew, decision, over, reason,
                                         n=min(counts.values()))}


def _num(x: float | None) -> str:
    return "-inf" if x is None else log_ratio(x)


def retrieval_skew_tables(r: Any) -> list[TextTable]:
    """One row per k: MaxSkew mean / max, MinSkew mean / min, NDKL mean / max over the queries, one-value share."""
    rows = [[str(a.k), _num(a.mean_max_skew), _num(a.max_max_skew), _num(a.mean_min_skew), _num(a.min_min_skew),
             f"{a.mean_ndkl:.3f}", f"{a.max_ndkl:.3f}", pct(a.one_value_share)] for a in r.at_k]
    t = TextTable(f"retrieval skew of '{r.attribute}' ({r.n} images, {len(r.at_k[0].queries)} queries)",
                  ["k", "MaxSkew mean", "MaxSkew max", "MinSkew mean", "MinSkew min", "NDKL mean", "NDKL max",
                   "one value"], rows)
    shares = ", ".join(f"{v} {pct(x)}" for v, x in r.shares.items())
    t.notes.append(f"shares in the split: {shares}; {r.ties}")
    return [t]


def _over(o: dict[str, Any]) -> str:
    return f"'{o['attribute']}', {o['queries']} queries, k {','.join(map(str, o['k']))}, {o['images']} images" \
        if o else ""


FAMILY = MetricFamily(
    name="retrieval_skew", needs=("protected", "queries", "embeddings"), compute=_compute, unavailable=_unavailable,
    order=35, section_type=RetrievalSkewReport, tables=retrieval_skew_tables,
    summary=lambda r: {f"retrieval MaxSkew@{a.k}": f"{a.mean_max_skew:.3f}" for a in r.at_k},
    gates=(GateSpec("max_retrieval_skew", "--max-retrieval-skew", "LN_RATIO",
                    "With --queries FILE: the largest over --skew-k of the mean over queries of MaxSkew@k (ln ratio) "
                    "of the protected attribute, the split's images ranked for each query (a point gate).",
                    Direction.AT_MOST, "mean MaxSkew@k <= ", _gate, fmt=log_ratio, over_text=_over, upper=None,
                    evidence=False, bound_hint="must be >= 0 (MaxSkew is a log ratio, >= 0)"),),
)
