"""Text-to-image search over an index of debiased image embeddings (torch-free; FAISS optional).

An index is a directory (``clip-debias index``, ``build_index``)::

    INDEX/
      index.json        format, the artifact digest, D, row count, ids, per-row attributes, the FAISS file if any
      embeddings.npy    float32 [N, D], unit-norm rows: ``Classifier.encode_image`` of each image
      faiss.index       optional: a FAISS ``IndexFlatIP`` of the same rows (``faiss-cpu``, the [search] extra)

Ranking: score(q, row) = <q, e_row> (cosine: both unit-norm), highest first, ties by row number. Exact search
(``SearchIndex.search``): a float32 pass over all rows selects every row within the float32 rounding bound of the
k-th score (``D * 2^-23``: |fl(<q, e>) - <q, e>| <= D u ||q|| ||e|| for unit vectors), those candidates are scored
again in float64 (``(e * q).sum()`` row by row: a BLAS GEMV may round identical rows differently) and the top k
taken -- the float64 ranking of all rows, at the cost of one float32 GEMV. With a
FAISS file (``engine="faiss"``) FAISS proposes the 2k + 16 best rows, rescored the same way: the same results as exact
search unless more than k + 16 rows tie within float32 rounding of the k-th score.

An index refuses a query from an artifact whose digest is not the one it was built with (the embeddings of another
model, or of another correction, are not comparable).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clip_debias.runtime.errors import ArtifactError, InputError

INDEX_FORMAT = 1
INDEX_JSON, EMBEDDINGS_NPY, FAISS_FILE = "index.json", "embeddings.npy", "faiss.index"
INDEX_KIND = "index"  # runtime.ownership.FOLDER_KINDS
ENGINES = ("numpy", "faiss")
FAISS_EXTRA = 16  # candidates FAISS returns beyond 2k (rescored in float64)


@dataclass
class Hit:
    """One search result: the row's id, its cosine score (float64) and row number."""

    id: str
    score: float
    row: int


@dataclass
class IndexRecord:
    """index.json."""

    artifact_digest: str
    dim: int
    ids: list[str]
    attributes: dict[str, list[str]] = field(default_factory=dict)  # column -> value of every row
    source: str = ""  # what was indexed (folder, dataset split)
    source_artifact: str = ""  # the artifact's path at build time ('clip-debias search' loads it by default)
    faiss: str | None = None
    format: int = INDEX_FORMAT


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise InputError("FAISS is not installed: pip install 'clip-debias[search]' (faiss-cpu), or search with "
                         "the default numpy engine") from None
    return faiss


def exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int,
                candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers [M, k'] and float64 scores [M, k'] (k' = min(k, N)) of the k best rows per query, ranked by the
    float64 score, ties by row number (module docstring). ``candidates`` [M, c]: rescore only those rows (FAISS)."""
    n, d = embeddings.shape
    k = min(int(k), n)
    q32 = np.ascontiguousarray(queries, dtype=np.float32)
    q64 = queries.astype(np.float64)
    eps = 2.0 * d * 2.0 ** -23  # twice the float32 dot-product rounding bound for unit vectors
    rows_out, scores_out = [], []
    for i in range(len(q32)):
        if candidates is None:
            s32 = embeddings @ q32[i]
            kth = np.partition(s32, n - k)[n - k]
            cand = np.flatnonzero(s32 >= kth - eps)
        else:
            cand = np.unique(candidates[i][candidates[i] >= 0])
        s64 = (embeddings[cand].astype(np.float64) * q64[i]).sum(axis=1)  # row by row alike (a BLAS GEMV is not)
        order = np.lexsort((cand, -s64))[:k]
        rows_out.append(cand[order])
        scores_out.append(s64[order])
    return np.stack(rows_out), np.stack(scores_out)


class SearchIndex:
    """A loaded index (``load_index``)."""

    def __init__(self, root: Path, record: IndexRecord, embeddings: np.ndarray) -> None:
        self.root, self.record, self.embeddings = root, record, embeddings
        self._faiss: Any = None

    def __len__(self) -> int:
        return len(self.record.ids)

    def check_artifact(self, classifier: Any) -> None:
        """Refuse (one ``InputError`` line) a classifier whose artifact digest is not the index's."""
        digest = getattr(classifier, "digest", None)
        if digest is None:
            raise InputError(f"{self.root}: the artifact was loaded without its digest (check_sha256=False); the "
                             "index needs it to check the artifact is the one it was built with")
        if digest != self.record.artifact_digest:
            raise InputError(f"{self.root}: built with artifact {self.record.artifact_digest}, the query comes from "
                             f"{digest} (another model or correction: its embeddings do not compare); rebuild the "
                             "index with this artifact")

    def search_embeddings(self, queries: np.ndarray, k: int = 20, engine: str = "numpy"
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Unit-norm query embeddings [M, D] -> (row numbers, float64 scores), each [M, min(k, N)]."""
        q = np.asarray(queries)
        if q.ndim != 2 or q.shape[1] != self.record.dim:
            raise InputError(f"queries have shape {list(q.shape)}; expected [M, {self.record.dim}]")
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        if engine not in ENGINES:
            raise InputError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
        if engine == "numpy":
            return exact_top_k(self.embeddings, q, k)
        _, cand = self.faiss_index().search(np.ascontiguousarray(q, dtype=np.float32),
                                            min(len(self), 2 * int(k) + FAISS_EXTRA))
        return exact_top_k(self.embeddings, q, k, candidates=cand)

    def search(self, classifier: Any, queries: Sequence[str], k: int = 20, engine: str = "numpy",
               ensemble: bool = False) -> list[list[Hit]]:
        """Text queries -> the k best rows of each (``Hit`` list, best first), embedded by ``classifier``'s text
        tower (its artifact must be the index's)."""
        self.check_artifact(classifier)
        rows, scores = self.search_embeddings(classifier.encode_text(queries, ensemble=ensemble), k, engine)
        ids = self.record.ids
        return [[Hit(ids[int(r)], float(s), int(r)) for r, s in zip(rr, ss)] for rr, ss in zip(rows, scores)]

    def faiss_index(self) -> Any:
        """The FAISS index of the rows: the index's file when it has one, else built in memory (flat, exact)."""
        if self._faiss is None:
            faiss = import_faiss()
            if self.record.faiss is not None:
                self._faiss = faiss.read_index(str(self.root / self.record.faiss))
            else:
                self._faiss = faiss_flat(self.embeddings)
        return self._faiss


def faiss_flat(embeddings: np.ndarray) -> Any:
    """A FAISS ``IndexFlatIP`` (exact inner product) holding ``embeddings``."""
    faiss = import_faiss()
    index = faiss.IndexFlatIP(int(embeddings.shape[1]))
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return index


def write_index(out: str | Path, embeddings: np.ndarray, record: IndexRecord, with_faiss: bool = False) -> Path:
    """Write INDEX atomically (``runtime.atomic_output.staged_directory``, kind ``index``): embeddings.npy,
    faiss.index when asked, index.json last."""
    from clip_debias.runtime.atomic_output import staged_directory

    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape != (len(record.ids), record.dim):
        raise InputError(f"embeddings shape {list(emb.shape)} does not match {len(record.ids)} ids x {record.dim}")
    if len(set(record.ids)) != len(record.ids):
        raise InputError("index ids must be distinct")
    with staged_directory(out, INDEX_KIND, complete=INDEX_JSON) as tmp:
        np.save(tmp / EMBEDDINGS_NPY, emb)
        if with_faiss:
            import_faiss().write_index(faiss_flat(emb), str(tmp / FAISS_FILE))
            record.faiss = FAISS_FILE
        (tmp / INDEX_JSON).write_text(json.dumps(record.__dict__) + "\n")
    return Path(out)


def load_index(path: str | Path) -> SearchIndex:
    """Open INDEX (one ``ArtifactError`` line when it is not one); embeddings memory-mapped."""
    root = Path(path)
    meta = root / INDEX_JSON
    if not meta.is_file():
        raise ArtifactError(f"{root}: not a search index ({INDEX_JSON} missing; write one with 'clip-debias index')")
    try:
        data = json.loads(meta.read_text())
        record = IndexRecord(**data)
    except (ValueError, TypeError) as e:
        raise ArtifactError(f"{meta}: not an index record ({str(e).splitlines()[0][:160]})") from None
    if record.format != INDEX_FORMAT:
        raise ArtifactError(f"{meta}: format {record.format}, expected {INDEX_FORMAT}")
    try:
        emb = np.load(root / EMBEDDINGS_NPY, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{root / EMBEDDINGS_NPY}: cannot read ({e})") from None
    if emb.dtype != np.float32 or emb.shape != (len(record.ids), record.dim):
        raise ArtifactError(f"{root / EMBEDDINGS_NPY}: {emb.dtype} {list(emb.shape)}, expected float32 "
                            f"[{len(record.ids)}, {record.dim}]")
    for column, values in record.attributes.items():
        if len(values) != len(record.ids):
            raise ArtifactError(f"{meta}: attribute '{column}' has {len(values)} values for {len(record.ids)} rows")
    return SearchIndex(root, record, emb)


def build_index(classifier: Any, images: Sequence[Any], ids: Sequence[str], out: str | Path,
                attributes: dict[str, list[str]] | None = None, source: str = "", with_faiss: bool = False,
                batch_size: int = 32, progress: Any = None) -> Path:
    """Embed ``images`` (paths / PIL images) with ``classifier.encode_image`` in batches and write the index
    ``out`` with ``ids`` (one per image), per-row ``attributes`` and the classifier's artifact digest and path.
    ``progress(n)`` is called after each batch of n images."""
    if len(images) != len(ids):
        raise InputError(f"{len(images)} images but {len(ids)} ids")
    if not len(images):
        raise InputError("no images to index")
    if classifier.digest is None:
        raise InputError("the artifact was loaded without its digest (check_sha256=False); an index records it")
    parts = []
    for i in range(0, len(images), batch_size):
        batch = list(images[i:i + batch_size])
        parts.append(classifier.encode_image(batch, batch_size))
        if progress is not None:
            progress(len(batch))
    emb = np.concatenate(parts)
    record = IndexRecord(artifact_digest=classifier.digest, dim=int(emb.shape[1]), ids=[str(i) for i in ids],
                         attributes={k: [str(v) for v in vals] for k, vals in (attributes or {}).items()},
                         source=source, source_artifact=str(Path(classifier.root).absolute()))
    return write_index(out, emb, record, with_faiss)
