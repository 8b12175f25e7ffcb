"""Explain: TextSpan on constructed data, exact token heat maps, B2T scores, the pool, the report page, CLI smoke."""

from __future__ import annotations

import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clip_debias.toolchain.decompose.contributions import Decomposer
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.explain import plan_heads, select_heads
from clip_debias.toolchain.explain.b2t import (ClassKeywords, KeywordScore, attribute_prompts, keyword_scores,
                                               rank_class, zero_shot_predictions)
from clip_debias.toolchain.explain.pool import POOL_FILE, VOCAB_FILE, generate_pool, generate_vocab, load_pool
from clip_debias.toolchain.explain.report import build_report
from clip_debias.toolchain.decompose.terms import HeadTerms
from clip_debias.toolchain.explain.textspan import auto_rank, explain_heads, textspan
from clip_debias.toolchain.explain.tokens import token_terms
from clip_debias.toolchain.models.loading import ModelIdentity
from clip_debias.toolchain.models.tower import ExplicitViT
from plan_fixtures import small_cache as _small_cache, write_plan


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


# ---- TextSpan ---------------------------------------------------------------------------------------------------

def _constructed_head(seed: int = 0, n: int = 400, d: int = 32, m: int = 300, noise: float = 0.01):
    """Head terms = sum_k s_k z_k t_{known_k} + noise, with z ~ N(0, 1): the known pool texts explain variance
    s_k^2 (before overlap), largest first."""
    g = torch.Generator().manual_seed(seed)
    texts = _unit(torch.randn(m, d, generator=g))
    known, scales = [17, 203, 5, 88], [4.0, 2.5, 1.5, 1.0]
    terms = sum(s * torch.randn(n, 1, generator=g) * texts[i] for i, s in zip(known, scales))
    return terms + noise * torch.randn(n, d, generator=g) + 0.3, texts, known  # + a constant offset (centred away)


@pytest.mark.parametrize("rank", [None, 8, 32])
def test_textspan_returns_known_directions_in_order(rank):
    terms, texts, known = _constructed_head()
    chosen, shares, r, total = textspan(terms, texts, k=6, rank=rank)
    assert chosen[:4] == known
    assert shares[:4] == sorted(shares[:4], reverse=True)
    assert sum(shares[:4]) > 0.99 and sum(shares) <= 1 + 1e-9
    c = terms.double() - terms.double().mean(0)
    assert total == pytest.approx(float((c ** 2).sum(1).mean()))
    assert r == (rank or 4)  # auto rank: 4 directions hold > 99% of the variance


def test_textspan_directions_are_removed():
    """After k picks no chosen text is picked again and the shares equal the variance along orthonormal directions."""
    terms, texts, _ = _constructed_head(seed=1, noise=0.2)
    chosen, shares, _, total = textspan(terms, texts, k=10, rank=32)
    assert len(set(chosen)) == len(chosen) == 10
    c = terms.double() - terms.double().mean(0)
    t = _unit(texts.double()) - _unit(texts.double()).mean(0)
    basis = torch.zeros(0, 32, dtype=torch.float64)
    for i, share in zip(chosen, shares):  # Gram-Schmidt of the chosen (centred) texts reproduces each share
        u = t[i] - basis.T @ (basis @ t[i])
        u = u / u.norm()
        assert float(((c @ u) ** 2).mean()) / total == pytest.approx(share, rel=1e-6, abs=1e-12)
        basis = torch.cat([basis, u[None]])


def test_auto_rank_and_errors():
    assert auto_rank(torch.tensor([10.0, 2.0, 0.1])) == 2 and auto_rank(torch.tensor([10.0, 0.5, 0.1])) == 1
    assert auto_rank(torch.tensor([1.0, 0.0])) == 1
    with pytest.raises(ClipDebiasError, match="same D"):
        textspan(torch.randn(5, 4), torch.randn(3, 5), k=1)


def test_explain_heads_maps_absolute_layers():
    terms, texts, known = _constructed_head()
    heads = torch.zeros(400, 2, 3, 32)
    heads[:, 1, 2] = terms
    spans = explain_heads(HeadTerms(heads), [6, 7], [(7, 2)], [f"t{i}" for i in range(300)], texts, k=2,
                          roles={(7, 2): "spurious"})
    assert [e.text for e in spans[0].entries] == [f"t{known[0]}", f"t{known[1]}"] and spans[0].role == "spurious"
    with pytest.raises(ClipDebiasError, match=r"\[5, 0\] is not in the cache"):
        explain_heads(HeadTerms(heads), [6, 7], [(5, 0)], ["a"], texts[:1], k=1)


def test_require_cached_heads_names_the_cache():
    from clip_debias.toolchain.explain.textspan import require_cached_heads

    require_cached_heads([6, 7], 3, [(6, 0), (7, 2)], "val.safetensors")
    with pytest.raises(ClipDebiasError) as e:
        require_cached_heads([6, 7], 3, [(6, 0), (5, 1), (7, 3)], "val.safetensors")
    assert str(e.value) == ("val.safetensors: heads [[5, 1], [7, 3]] are not in the cache (layers [6, 7], 3 heads "
                            "each); pick cached heads or decompose with --layers covering them")


def test_pool_embedding_cache(tmp_path, tiny_clip):
    from clip_debias.toolchain.explain.textspan import cached_pool_embeddings

    path = tmp_path / "pool.safetensors"
    first = cached_pool_embeddings(tiny_clip, ["a dog.", "a cat."], path)
    assert torch.allclose(first.norm(dim=-1), torch.ones(2), atol=1e-5)
    mtime = path.stat().st_mtime_ns
    assert torch.equal(cached_pool_embeddings(tiny_clip, ["a dog.", "a cat."], path), first)
    assert path.stat().st_mtime_ns == mtime  # reused, not rewritten
    assert cached_pool_embeddings(tiny_clip, ["a dog.", "a cat.", "a cow."], path).shape[0] == 3  # other texts


# ---- token heat maps --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("convention", ["textspan", "centred"])
def test_token_terms_sum_to_head_terms(tiny_clip, convention):
    torch.manual_seed(3)
    tower = ExplicitViT.from_open_clip(tiny_clip.model.visual)
    x = torch.randn(3, 3, 32, 32)
    heads = [(3, 1), (1, 2), (3, 3), (2, 0)]
    tt = token_terms(tower, x, heads, convention)
    assert tt.terms.shape == (3, 4, 17, 32) and tt.grid == (4, 4)
    hc = Decomposer(tower, [1, 2, 3], convention)(x)
    ref = torch.stack([hc.heads[:, [1, 2, 3].index(l), h] for l, h in heads], dim=1)
    assert (tt.head_terms() - ref).abs().max().item() <= 1e-5
    assert torch.allclose(tt.attention.sum(-1), torch.ones(3, 4), atol=1e-6)
    t = _unit(torch.randn(32))
    s = tt.along(t)
    assert torch.allclose(s.sum(-1), (ref @ t).sum(-1), atol=1e-5)
    assert torch.allclose(tt.patch_map(t).flatten(1), s[:, 1:])


# ---- B2T ----------------------------------------------------------------------------------------------------------

def test_b2t_scores_match_numpy_reference():
    rng = np.random.default_rng(0)
    e, t = rng.normal(size=(12, 8)), rng.normal(size=(5, 8))
    wrong = np.array([1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
    en = e / np.linalg.norm(e, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    ref = np.array([100 * (en[wrong] @ tn[k]).mean() - 100 * (en[~wrong] @ tn[k]).mean() for k in range(5)])
    score, cw, cc = keyword_scores(torch.tensor(e), torch.tensor(t), torch.tensor(wrong))
    np.testing.assert_allclose(score.numpy(), ref, atol=1e-10)
    np.testing.assert_allclose((cw - cc).numpy(), ref, atol=1e-10)
    ranked = rank_class("c", torch.tensor(e), torch.tensor(wrong), list("abcde"), torch.tensor(t), top=3)
    assert [k.keyword for k in ranked.keywords] == [list("abcde")[i] for i in np.argsort(-ref)[:3]]
    assert ranked.n_wrong == 4 and ranked.n_correct == 8
    assert "need both" in rank_class("c", torch.tensor(e), torch.ones(12, dtype=torch.bool), ["a"], torch.tensor(t[:1]),
                                     1).note


def test_zero_shot_and_attribute_prompts(tmp_path):
    from clip_debias.toolchain.prompts.defaults import attribute_prompts_for

    e = _unit(torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, -0.2]]))
    assert zero_shot_predictions(e, torch.eye(2)).tolist() == [0, 1, 0]
    res = [ClassKeywords("landbird", 3, 5, [KeywordScore("water", 5.0, 1, 0), KeywordScore("lake", 4.0, 1, 0)]),
           ClassKeywords("waterbird", 2, 6, [KeywordScore("water", 3.0, 1, 0), KeywordScore("forest", 2.0, 1, 0)])]
    prompts = attribute_prompts(res, ["landbird", "waterbird"])
    assert list(prompts) == ["water", "forest"]
    assert prompts["forest"] == ["a photo of a landbird, forest.", "a photo of a waterbird, forest."]
    from clip_debias.toolchain.explain.jobs import write_attribute_prompts

    path = write_attribute_prompts(tmp_path / "attribute_prompts.yaml", prompts)
    names, rows = attribute_prompts_for(str(path), None)  # what locate --attribute-prompts reads
    assert names == ["water", "forest"] and len(rows[0]) == 2


# ---- pool and head selection ------------------------------------------------------------------------------------

def test_pool_is_generated_and_shipped():
    pool = generate_pool()
    assert 3000 <= len(pool) <= 8000 and len(set(pool)) == len(pool)
    assert load_pool() == pool  # the shipped file is the generator's output
    assert "a photo taken on water." in pool and "image of a forest." in pool
    assert load_pool(VOCAB_FILE) == generate_vocab() and "water" in generate_vocab()
    assert POOL_FILE.read_text().startswith("# generated")


def test_select_heads(tmp_path):
    plan = write_plan(tmp_path / "plan.json", [[3, 1], [2, 0]], [[3, 2]])
    assert plan_heads(plan) == {(3, 1): "spurious", (2, 0): "spurious", (3, 2): "salient"}
    assert select_heads(str(plan), None, 4, 4, [3])[0] == [(3, 1), (2, 0), (3, 2)]
    assert select_heads("3:1,2:0", None, 4, 4, [3]) == ([(3, 1), (2, 0)], {})
    assert select_heads(None, "1", 4, 2, [0])[0] == [(3, 0), (3, 1)]  # --layers N: the last N
    assert select_heads(None, "1,", 4, 2, [0])[0] == [(1, 0), (1, 1)]  # a list: absolute indices
    assert select_heads(None, None, 4, 2, [1])[0] == [(1, 0), (1, 1)]
    with pytest.raises(ClipDebiasError, match="LAYER:HEAD"):
        select_heads("3-1", None, 4, 4, [3])
    with pytest.raises(ClipDebiasError, match="out of range"):
        select_heads("4:0", None, 4, 4, [3])
    raw = json.loads(plan.read_text())
    raw["spurious"][0]["head"] = ["x", 1]
    plan.write_text(json.dumps(raw))
    with pytest.raises(ClipDebiasError) as e:  # the plan's own reader (LocatePlan), not a looser one
        plan_heads(plan)
    assert str(e.value) == f"{plan}: field 'spurious[0].head[0]': expected an integer, got the string \"x\""


# ---- report -----------------------------------------------------------------------------------------------------

class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def _report_dir(root: Path) -> Path:
    """A folder with one file of each kind the report reads, written from the writers' own models."""
    from clip_debias.runtime.metrics import AccuracyReport, GroupAccuracy
    from clip_debias.runtime.verify import VerifyReport
    from clip_debias.toolchain.evaluate import compare_file
    from clip_debias.toolchain.explain.files import Descriptions, HeadDescription, Keywords, class_keywords_record
    from clip_debias.toolchain.explain.textspan import SpanEntry

    root.mkdir()
    Image.new("RGB", (20, 10), (200, 30, 30)).save(root / "plan.png")
    (root / "maps").mkdir()
    Image.new("RGB", (16, 16), (30, 30, 200)).save(root / "maps" / "heat map 11_3.png")
    write_plan(root / "plan.json", [[3, 1]], [[3, 2]])
    identity = ModelIdentity("clipdebias-tiny").to_dict()
    Descriptions(cache="val.safetensors", dataset="csv", split="val", n=24, model=identity, pool="shipped:pool.txt",
                 pool_size=3, per_head=1, rank="auto", heads=[HeadDescription(
                     3, 1, 4, 2.0, [SpanEntry("a photo taken on <water>", 0.5, 0)], "spurious", 0.5)],
                 ).save(root / "descriptions.json")
    rows = [(m, AccuracyReport(a, w, "g1", {"g0": GroupAccuracy(10, a + 0.05), "g1": GroupAccuracy(4, w)}))
            for m, a, w in (("zero-shot", 0.8, 0.4), ("ltc", 0.85, 0.7))]
    (root / "compare.json").write_text(compare_file(rows).to_json())
    (root / "report.json").write_text(VerifyReport(
        accuracy=0.9, worst_group_accuracy=0.8, worst_group="g1", groups={"g1": {"n": 4, "accuracy": 0.8}},
        latency_ms={"p50": 1.5, "p95": 2.0, "p99": 3.1, "mean": 1.6}, throughput_per_s=640.0, thresholds={},
        passed=True).to_json())
    keywords = ClassKeywords("landbird", 3, 9, [KeywordScore("ocean", 4.2, 20.0, 15.8)])
    Keywords(source="val.safetensors", dataset="csv", n=12, model=identity, candidates="shipped:vocab.txt",
             classes=[class_keywords_record(keywords)]).save(root / "keywords.json")
    return root


def _check_page(page: Path) -> str:
    text = page.read_text()
    parser = _Refs()
    parser.feed(text)
    assert parser.refs, "the page references no file"
    for ref in parser.refs:
        assert not ref.startswith(("http://", "https://", "//")), ref
        assert (page.parent / unquote(ref)).is_file(), ref
    assert "http://" not in text and "https://" not in text
    return text


def test_report_page(tmp_path):
    page = build_report(_report_dir(tmp_path / "r"))
    text = _check_page(page)
    for needle in ("plan.png", "compare.png", "maps/heat%20map%2011_3.png", "&lt;water&gt;", "ocean", "640.00",
                   "zero-shot", "spurious"):
        assert needle in text, needle
    assert (tmp_path / "r" / "compare.png").is_file()
    empty = build_report(tmp_path / "r" / "maps").read_text()  # only a PNG there: the other sections say so
    assert "no descriptions.json" in empty and "no compare.json" in empty and "heat%20map" in empty
    assert "section skipped" not in text  # every file was read by its model


def test_report_escapes_title_headers_and_cells_once(tmp_path):
    """Every text that reaches the page is escaped exactly once: the title, a table header (a group name) and its
    cells (a method name); no markup of ours is escaped."""
    root = _report_dir(tmp_path / "r")
    bad = "<script>alert('x')</script>"
    data = json.loads((root / "compare.json").read_text())
    data["rows"][0]["method"] = f"zero-shot {bad}"
    for row in data["rows"]:
        row["groups"]["<b>g0</b> & co"] = row["groups"].pop("g0")
    (root / "compare.json").write_text(json.dumps(data))
    text = build_report(root, title=f"Report {bad}").read_text()
    assert "<script>" not in text and "<b>g0" not in text and "&amp;amp;" not in text and "&amp;lt;" not in text
    escaped = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    assert f"<title>Report {escaped}</title>" in text and f"<h1>Report {escaped}</h1>" in text
    assert f"<td>zero-shot {escaped}</td>" in text and "<th>&lt;b&gt;g0&lt;/b&gt; &amp; co</th>" in text
    assert '<span class="spurious">spurious</span>' in text  # our own markup stays markup


@pytest.mark.parametrize("name,edit,field", [
    ("plan.json", lambda d: d["spurious"][0].update(head=[3]), "spurious[0].head"),
    ("descriptions.json", lambda d: d["heads"][0]["entries"][0].pop("variance"), "heads[0].entries[0].variance"),
    ("compare.json", lambda d: d["rows"][1].update(accuracy="high"), "rows[1].accuracy"),
    ("report.json", lambda d: d["latency_ms"].update(p95=None), "latency_ms.p95"),
    ("keywords.json", lambda d: d["classes"][0].update(extra=1), "classes[0].extra"),
])
def test_report_notes_a_malformed_file_with_its_field(tmp_path, name, edit, field):
    """A malformed file is read by its model: its section says, in one line, which file and field, and the rest of
    the page is still written."""
    root = _report_dir(tmp_path / "r")
    data = json.loads((root / name).read_text())
    edit(data)
    (root / name).write_text(json.dumps(data))
    text = build_report(root).read_text()
    assert f"{root / name}: field &#x27;{field}&#x27;:" in text and text.count("section skipped") == 1


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="no /usr/bin/chromium")
def test_report_renders_headless(tmp_path):
    page = build_report(_report_dir(tmp_path / "r"))
    res = subprocess.run(["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu",
                          "--disable-background-networking", "--dump-dom", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "Head descriptions" in res.stdout


# ---- CLI smoke ----------------------------------------------------------------------------------------------------

def test_cli_explain_and_report(tmp_path, tiny_clip):
    from clip_debias.toolchain.cli.app import app

    cache = _small_cache(tmp_path / "val.safetensors", tiny_clip.identity)
    pool = tmp_path / "pool.txt"
    pool.write_text("\n".join(load_pool()[::200]) + "\n")
    plan = write_plan(tmp_path / "plan.json", [[3, 1]], [[2, 0]], identity=tiny_clip.identity.to_dict())
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(app, ["explain", str(cache), "--model", "clipdebias-tiny", "--random-weights",
                              "--heads", str(plan),
                              "--pool", str(pool), "--per-head", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "descriptions.json").read_text())
    assert [(h["layer"], h["head"], h["role"]) for h in doc["heads"]] == [(3, 1, "spurious"), (2, 0, "salient")]
    assert all(len(h["entries"]) == 4 and 0 < h["explained"] <= 1 + 1e-9 for h in doc["heads"])
    assert doc["pool_size"] == len(load_pool()[::200]) and (out / "descriptions.md").is_file()
    res = runner.invoke(app, ["explain", str(cache), "--model", "clipdebias-tiny", "--random-weights",
                              "--layers", "3,", "--pool", str(pool),
                              "--per-head", "4", "--rank", "5", "--out", str(out)])  # reuses the pool embeddings
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "descriptions.json").read_text())
    assert [(h["layer"], h["head"], h["rank"]) for h in doc["heads"]] == [(3, h, 5) for h in range(4)]

    img = tmp_path / "bird.png"
    Image.new("RGB", (40, 36), (40, 120, 200)).save(img)
    res = runner.invoke(app, ["explain-image", str(img), "--model", "clipdebias-tiny", "--random-weights",
                              "--text", "a bird on water",
                              "--vs", "a bird on land", "--heads", "3:1,2:0", "--out", str(out / "heat.png")])
    assert res.exit_code == 0, res.output
    assert Image.open(out / "heat.png").size[0] > 100

    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    text = _check_page(out / "report.html")
    assert "heat.png" in text and "layer 3, head 1" in text


def test_cli_discover_on_cache(tmp_path, tiny_clip):
    from clip_debias.toolchain.cli.app import app

    cache = _small_cache(tmp_path / "val.safetensors", tiny_clip.identity)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("water\nforest\nsky\ngrass\nsand\n")
    res = CliRunner().invoke(app, ["discover", str(cache), "--model", "clipdebias-tiny", "--random-weights",
                                   "--vocab", str(vocab),
                                   "--classes", "landbird,waterbird", "--top", "3", "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "d" / "keywords.json").read_text())
    assert [c["class_name"] for c in doc["classes"]] == ["landbird", "waterbird"]
    for c in doc["classes"]:
        assert len(c["keywords"]) == 3 or c["note"]


def test_cli_discover_captions(tmp_path, tiny_clip):
    """csv dataset with a captions column: candidates are YAKE keywords of the misclassified images' captions."""
    pytest.importorskip("yake")
    from clip_debias.toolchain.cli.app import app

    root = tmp_path / "data"
    root.mkdir()
    caps = ["a gull flying over ocean waves", "a sparrow in a green forest", "a duck on a blue lake"]
    rows = ["path,label,caption"]
    for i in range(12):
        Image.new("RGB", (36, 36), (20 * i, 255 - 20 * i, (70 * i) % 255)).save(root / f"im{i}.png")
        rows.append(f"im{i}.png,{i % 2},{caps[i % 3]}")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    res = CliRunner().invoke(app, ["discover", str(root), "--model", "clipdebias-tiny", "--random-weights",
                                   "--split", "val", "--captions-column",
                                   "caption", "--top", "4", "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "d" / "keywords.json").read_text())
    words = {k["keyword"] for c in doc["classes"] for k in c["keywords"]}
    vocabulary = " ".join(caps)
    assert doc["candidates"] == "captions:caption" and all(w in vocabulary for w in words)


def _failed_with(res, text: str) -> bool:
    """A ClipDebiasError, raised or printed as one 'error:' line (whichever way the app reports it)."""
    said = res.output + (str(res.exception) if isinstance(res.exception, ClipDebiasError) else "")
    return res.exit_code != 0 and text in said and "Traceback" not in res.output


def test_cli_errors(tmp_path):
    from clip_debias.toolchain.cli.app import app

    assert _failed_with(CliRunner().invoke(app, ["report", str(tmp_path / "missing")]), "not a folder")
    res = CliRunner().invoke(app, ["explain", str(tmp_path / "none.safetensors"), "--model", "clipdebias-tiny",
                                   "--random-weights", "--out", str(tmp_path / "o")])
    assert _failed_with(res, "none.safetensors")
    res = CliRunner().invoke(app, ["explain-image", str(tmp_path / "x.png"), "--model", "clipdebias-tiny",
                                   "--random-weights", "--text",
                                   "a", "--heads", "9:0", "--out", str(tmp_path / "o.png")])
    assert _failed_with(res, "out of range")
    res = CliRunner().invoke(app, ["explain-image", str(tmp_path / "x.png"), "--model", "clipdebias-tiny",
                                   "--random-weights", "--text",
                                   " ", "--out", str(tmp_path / "o.png")])
    assert _failed_with(res, "--text: empty")


@pytest.mark.parametrize("choice", [["--heads", "1:0"], ["--heads", "plan.json"], ["--layers", "0,"]])
def test_cli_explain_checks_heads_before_encoding_or_writing(tmp_path, tiny_clip, monkeypatch, choice):
    """A head the cache does not hold fails with one line naming the cache, before the pool is encoded or any file
    is written (the pool has thousands of descriptions: minutes on a ViT-B)."""
    from clip_debias.toolchain.cli.app import app
    from clip_debias.toolchain.explain import textspan

    def no_encoding(*args, **kwargs):
        raise AssertionError("the pool was encoded before the heads were checked")

    monkeypatch.setattr(textspan, "encode_pool", no_encoding)
    cache = _small_cache(tmp_path / "val.safetensors", tiny_clip.identity)  # layers [2, 3]
    write_plan(tmp_path / "plan.json", [[3, 1]], [[1, 0]], layers=(1, 2, 3))
    if choice[1] == "plan.json":
        choice = ["--heads", str(tmp_path / "plan.json")]
    out = tmp_path / "ex2"
    res = CliRunner().invoke(app, ["explain", str(cache), "--model", "clipdebias-tiny", "--random-weights",
                                   *choice, "--out", str(out)])
    heads = "heads [[0, 0], [0, 1], [0, 2], [0, 3]] are" if choice[0] == "--layers" else "head [1, 0] is"
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert lines == [f"error: {cache}: {heads} not in the cache (layers [2, 3], 4 heads each); pick cached heads or "
                     "decompose with --layers covering them"]
    assert not out.exists()
