"""Search over an image index and retrieval skew (issue 29): exact search equals a float64 brute-force ranking,
FAISS flat equals exact, the digest check, MaxSkew@k / MinSkew@k / NDKL@k against a float64 transcription."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clip_debias.runtime.errors import InputError
from clip_debias.runtime.retrieval_skew import retrieval_skew
from clip_debias.runtime.search import IndexRecord, exact_top_k, load_index, write_index

DIGEST = "sha256:" + "ab" * 32


def unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class FakeClassifier:
    """Stands for a runtime.Classifier: a digest and a text tower mapping each query to a fixed unit vector."""

    def __init__(self, digest, table):
        self.digest, self.table = digest, table

    def encode_text(self, texts, ensemble=False):
        return np.stack([self.table[t] for t in texts])


def brute_force(emb, q, k):
    """float64 ranking of every row, ties by row number."""
    s = (emb.astype(np.float64) * q.astype(np.float64)).sum(axis=1)
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))[:k]
    return order, s[order]


@pytest.fixture
def index(tmp_path):
    rng = np.random.default_rng(0)
    emb = unit(rng, 500, 16)
    emb[7] = emb[3]  # an exact tie
    emb[11] = emb[3]
    ids = [f"img{i:04d}.png" for i in range(500)]
    attrs = {"place": ["land" if i % 3 else "water" for i in range(500)]}
    write_index(tmp_path / "idx", emb, IndexRecord(DIGEST, 16, ids, attrs), with_faiss=_has_faiss())
    return load_index(tmp_path / "idx"), emb


def _has_faiss():
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def test_exact_search_equals_float64_brute_force(index):
    idx, emb = index
    rng = np.random.default_rng(1)
    queries = np.concatenate([unit(rng, 8, 16), emb[3:4]])  # the last ties rows 3, 7, 11 at the top
    for k in (1, 5, 20, 500, 900):
        rows, scores = exact_top_k(idx.embeddings, queries, k)
        for j, q in enumerate(queries):
            want_rows, want_scores = brute_force(emb, q, k)
            assert rows[j].tolist() == want_rows
            np.testing.assert_array_equal(scores[j], want_scores)
    assert exact_top_k(idx.embeddings, emb[3:4], 3)[0][0].tolist() == [3, 7, 11]


def test_faiss_flat_equals_exact(index):
    pytest.importorskip("faiss")
    idx, emb = index
    assert idx.record.faiss == "faiss.index"
    queries = np.concatenate([unit(np.random.default_rng(2), 16, 16), emb[3:4]])
    for k in (1, 10, 50):
        exact = idx.search_embeddings(queries, k, "numpy")
        fast = idx.search_embeddings(queries, k, "faiss")
        np.testing.assert_array_equal(exact[0], fast[0])
        np.testing.assert_array_equal(exact[1], fast[1])


def test_search_refuses_another_artifact(index):
    idx, emb = index
    table = {"a bird": emb[5]}
    hits = idx.search(FakeClassifier(DIGEST, table), ["a bird"], k=3)
    assert hits[0][0].id == "img0005.png" and hits[0][0].row == 5 and math.isclose(hits[0][0].score, 1.0,
                                                                                   rel_tol=1e-6)
    with pytest.raises(InputError, match="built with artifact"):
        idx.search(FakeClassifier("sha256:" + "cd" * 32, table), ["a bird"])
    with pytest.raises(InputError, match="without its digest"):
        idx.search(FakeClassifier(None, table), ["a bird"])


def test_index_checks(tmp_path):
    from clip_debias.runtime.errors import ArtifactError

    with pytest.raises(ArtifactError, match="not a search index"):
        load_index(tmp_path)
    with pytest.raises(InputError, match="distinct"):
        write_index(tmp_path / "x", np.zeros((2, 4), np.float32), IndexRecord(DIGEST, 4, ["a", "a"]))


# ---- retrieval skew against a float64 transcription ---------------------------------------------------------------

def transcribed(scores, ids, v, k, desired):
    """Geyik et al.'s definitions, written out: top-i composition with tied rows sharing the remaining places."""
    s = np.asarray(scores, np.float64)

    def comp(i):
        kth = sorted(s, reverse=True)[i - 1]
        above = [r for r in range(len(s)) if s[r] > kth]
        tied = [r for r in range(len(s)) if s[r] == kth]
        p = [0.0] * v
        for r in above:
            p[ids[r]] += 1.0
        for r in tied:
            p[ids[r]] += (i - len(above)) / len(tied)
        return [x / i for x in p]

    top = comp(k)
    skews = [math.log(top[a] / desired[a]) if top[a] > 0 else -math.inf for a in range(v) if desired[a] > 0]
    z = sum(1 / math.log2(i + 1) for i in range(1, k + 1))
    ndkl = sum((1 / math.log2(i + 1)) * sum(p * math.log(p / d) for p, d in zip(comp(i), desired) if p > 0)
               for i in range(1, k + 1)) / z
    return max(skews), min(skews), ndkl, abs(max(top) - 1.0) < 1e-12


def test_retrieval_skew_matches_transcription():
    rng = np.random.default_rng(3)
    n, q, v = 60, 5, 3
    scores = np.round(rng.standard_normal((n, q)), 1)  # rounded: many ties at the k-th score
    ids = np.arange(n) % 3
    ids[:6] = 1  # uneven shares
    scores[:, 4] = np.where(ids == 0, 5.0, -5.0)  # query 4: its top 18 all value 0 -> one value at k <= 18
    desired = np.tile(np.bincount(ids, minlength=v) / n, (q, 1))
    desired[1] = [0.5, 0.25, 0.25]
    report = retrieval_skew(scores, ids, ["a", "b", "c"], [f"q{j}" for j in range(q)], ks=(1, 7, 18, 100),
                            desired=desired)
    assert [r.k for r in report.at_k] == [1, 7, 18, 60]
    for at in report.at_k:
        for j, row in enumerate(at.queries):
            mx, mn, ndkl, one = transcribed(scores[:, j], ids, v, at.k, desired[j])
            assert row.max_skew == pytest.approx(mx, abs=1e-12)
            assert (row.min_skew is None) == (mn == -math.inf)
            if row.min_skew is not None:
                assert row.min_skew == pytest.approx(mn, abs=1e-12)
            assert row.ndkl == pytest.approx(ndkl, abs=1e-12)
            assert row.one_value == one
        assert at.mean_max_skew == pytest.approx(np.mean([r.max_skew for r in at.queries]))
        assert at.one_value_share == pytest.approx(np.mean([r.one_value for r in at.queries]))
    assert report.at(18).queries[4].one_value and report.at(18).queries[4].max_value == "a"


def test_retrieval_skew_ties_independent_of_row_order():
    rng = np.random.default_rng(4)
    scores = np.round(rng.standard_normal((40, 3)), 0)
    ids = rng.integers(0, 2, 40)
    perm = rng.permutation(40)
    a = retrieval_skew(scores, ids, ["x", "y"], ["q0", "q1", "q2"], ks=(5,))
    b = retrieval_skew(scores[perm], ids[perm], ["x", "y"], ["q0", "q1", "q2"], ks=(5,))
    assert [r.ndkl for r in a.at_k[0].queries] == pytest.approx([r.ndkl for r in b.at_k[0].queries], abs=1e-12)
    assert [r.max_skew for r in a.at_k[0].queries] == pytest.approx([r.max_skew for r in b.at_k[0].queries],
                                                                    abs=1e-12)


def test_query_files_are_bounded_and_malformed_ones_are_one_line(tmp_path, monkeypatch):
    """A query file a user controls: malformed JSON / YAML, non-UTF-8, too many queries or bytes -> one InputError
    line, never a traceback (the count and size limits apply before any text is embedded)."""
    import pytest

    from clip_debias.runtime import retrieval_skew as rs
    from clip_debias.runtime.errors import InputError

    cases = {"bad.json": b'{"a photo of a doctor": ', "bad.yaml": b"a: [1, 2\n", "latin.txt": b"caf\xe9\n"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=r"not valid JSON|not valid YAML|not UTF-8"):
            rs.read_queries(tmp_path / name)
    (tmp_path / "many.txt").write_text("\n".join(f"query {i}" for i in range(11)))
    monkeypatch.setattr(rs, "MAX_QUERIES", 10)
    with pytest.raises(InputError, match="11 queries, over the limit of 10"):
        rs.read_queries(tmp_path / "many.txt")
    monkeypatch.setattr(rs, "MAX_QUERY_FILE_BYTES", 8)
    with pytest.raises(InputError, match="over the query-file limit of 8"):
        rs.read_queries(tmp_path / "many.txt")
