"""Exact decomposition: both conventions sum to open_clip's normalized embedding; TextSpan's convention equals a
float64 transcription of its formula; layer selection; the streamed cache; CLI."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clip_debias.toolchain.decompose.cache import DecompositionCache, load_cache, save_cache
from clip_debias.toolchain.decompose.contributions import Decomposer
from clip_debias.toolchain.decompose.layers import resolve_layers
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.loading import load_clip
from clip_debias.toolchain.models.tower import ExplicitViT

TOL = 1e-5  # the bound; observed ~2e-7 on unit-norm embeddings


def _sum_identity(clip, layers, convention="textspan", batch=4) -> float:
    torch.manual_seed(2)
    tower = ExplicitViT.from_open_clip(clip.model.visual)
    x = torch.randn(batch, 3, *tower.cfg.image_size)
    hc = Decomposer(tower, layers, convention)(x)
    with torch.no_grad():
        ref = clip.model.encode_image(x, normalize=True)
    assert hc.heads.shape == (batch, len(layers), tower.cfg.heads, tower.cfg.embed_dim)
    assert (hc.embeddings - ref).abs().max() <= TOL
    return (hc.embedding() - ref).abs().max().item()


@pytest.mark.parametrize("convention", ["textspan", "centred"])
@pytest.mark.parametrize("layers", [[3], [2, 3], [0, 1, 2, 3], [0, 2]])
def test_sum_identity_tiny(tiny_clip, layers, convention):
    assert _sum_identity(tiny_clip, layers, convention) <= TOL


@pytest.mark.parametrize("convention", ["textspan", "centred"])
def test_sum_identity_layerscale(convention):
    torch.manual_seed(0)
    assert _sum_identity(load_clip("clipdebias-tiny-ls", random_weights=True), [1, 2], convention) <= TOL


@pytest.mark.parametrize("convention", ["textspan", "centred"])
def test_sum_identity_vitb32(vitb32_clip, convention):
    assert _sum_identity(vitb32_clip, list(range(12)), convention, batch=2) <= TOL


@pytest.mark.slow
def test_sum_identity_vitb16():
    torch.manual_seed(0)
    assert _sum_identity(load_clip("ViT-B-16", random_weights=True), list(range(12)), batch=2) <= TOL


# ---- TextSpan's convention against a float64 transcription of its formula ---------------------------------------

def _randomize_biases_and_norms(visual: torch.nn.Module, seed: int = 3) -> None:
    """Random non-zero biases and LayerNorm weights (open_clip initializes biases to 0 and LayerNorm weights to 1,
    which would make the bias and centring shares vanish), in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in visual.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            elif ("ln_" in name or "norm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g))


def textspan_transcription(visual: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """(heads [B, L, H, D], other terms [B, L+1, D], y / ||y|| [B, D]) in float64, written from TextSpan's formula
    on open_clip's own modules: x = sum of 2L+1 residual terms (embedding, L attention outputs, L MLP outputs),
    mu = mean_i x_i, sigma = sqrt(var(x) + eps), g/beta = ln_post weight/bias, P = proj, z = ||ln_post(x) @ P||;
    head (l, h): a = (attention-weighted values at the CLS query) @ W_o[:, h-slice]^T + b_o / H, its term
    ((g (a - mu / ((2L+1) H))) / sigma + beta / ((2L+1) H)) @ P / z; embedding and MLP terms m:
    ((g (m - mu / (2L+1))) / sigma + beta / (2L+1)) @ P / z."""
    v = copy.deepcopy(visual).double().eval()
    blocks = list(v.transformer.resblocks)
    n_layers, heads, width = len(blocks), blocks[0].attn.num_heads, v.conv1.out_channels
    dh = width // heads
    with torch.no_grad():
        t = v._embeds(images.double())  # [B, N, W], after ln_pre
        residual = [t[:, 0]]  # the embedding term
        head_out = []
        for blk in blocks:
            attn = blk.attn
            q, k, val = (blk.ln_1(t) @ attn.in_proj_weight.T + attn.in_proj_bias).chunk(3, dim=-1)
            split = lambda m: m.reshape(m.shape[0], m.shape[1], heads, dh).transpose(1, 2)  # noqa: E731
            q, k, val = split(q), split(k), split(val)  # [B, H, N, Dh]
            weights = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)  # [B, H, 1, N]
            o = (weights @ val)[:, :, 0]  # [B, H, Dh]
            wo = attn.out_proj.weight.reshape(width, heads, dh)  # W_o[:, h*Dh:(h+1)*Dh] = wo[:, h]
            a = torch.einsum("bhk,whk->bhw", o, wo) + attn.out_proj.bias / heads  # [B, H, W]
            head_out.append(a)
            t = t + blk.ls_1(blk.attention(q_x=blk.ln_1(t)))
            mlp = blk.ls_2(blk.mlp(blk.ln_2(t)))
            residual.append(mlp[:, 0])
            t = t + mlp
        x = t[:, 0]
        a_all = torch.stack(head_out, dim=1)  # [B, L, H, W]
        assert (a_all.sum(dim=(1, 2)) + torch.stack(residual, 1).sum(1) - x).abs().max() < 1e-9  # 2L+1 terms
        mu = x.mean(dim=-1)
        sigma = torch.sqrt(x.var(dim=-1, unbiased=False) + v.ln_post.eps)
        g, beta, proj = v.ln_post.weight, v.ln_post.bias, v.proj
        y = v.ln_post(x) @ proj
        z = y.norm(dim=-1)
        s = 2 * n_layers + 1
        c_heads = ((g * (a_all - mu[:, None, None, None] / (s * heads))) / sigma[:, None, None, None]
                   + beta / (s * heads)) @ proj / z[:, None, None, None]
        m = torch.stack(residual, dim=1)  # [B, L+1, W]
        c_other = ((g * (m - mu[:, None, None] / s)) / sigma[:, None, None] + beta / s) @ proj / z[:, None, None]
    return c_heads, c_other, y / z[:, None]


def test_textspan_terms_equal_a_float64_transcription(vitb32_clip):
    clip = copy.deepcopy(vitb32_clip)
    _randomize_biases_and_norms(clip.model.visual)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    want_heads, want_other, want_e = textspan_transcription(clip.model.visual, x)
    assert (want_heads.sum(dim=(1, 2)) + want_other.sum(dim=1) - want_e).abs().max() < 1e-12
    # the shares are not trivially zero: they move single heads
    bias_share = clip.model.visual.transformer.resblocks[0].attn.out_proj.bias.abs().max()
    assert bias_share > 0.1 and (clip.model.visual.ln_post.weight - 1).abs().max() > 0.1

    tower = ExplicitViT.from_open_clip(clip.model.visual)
    got = Decomposer(tower, list(range(12)), "textspan")(x)
    assert (got.heads.double() - want_heads).abs().max() <= TOL
    assert (got.rest.double() - want_other.sum(dim=1)).abs().max() <= TOL
    with torch.no_grad():
        ref = clip.model.encode_image(x, normalize=True)
    assert (got.embedding() - ref).abs().max() <= TOL
    # a subset of layers: the same head terms, the rest term takes the others
    part = Decomposer(tower, [3, 11], "textspan")(x)
    assert (part.heads.double() - want_heads[:, [3, 11]]).abs().max() <= TOL
    assert (part.embedding() - ref).abs().max() <= TOL
    # the centred convention gives other single heads (it is not TextSpan's)
    centred = Decomposer(tower, list(range(12)), "centred")(x)
    assert (centred.heads.double() - want_heads).abs().max() > 1e-3


def test_centred_head_terms_are_direct_contributions(tiny_clip):
    """centred: removing one head's output (without its bias share) from the CLS residual stream changes
    ln_post(x) @ proj by exactly its term when the LayerNorm statistics are held fixed."""
    tower = ExplicitViT.from_open_clip(tiny_clip.model.visual)
    x = torch.randn(2, 3, 32, 32)
    hc = Decomposer(tower, [3], "centred")(x)
    tr = tower.trace(x, [3])
    blk = tower.blocks[3]
    o = tr.head_out[3][:, 1]  # head 1, [B, Dh]
    r = o @ blk.attn.out.weight[:, 16:32].T  # residual-space term of head 1
    sigma = tower.ln_post_sigma(tr.cls_final)
    folded = ((r - r.mean(-1, keepdim=True)) / sigma[:, None] * tower.ln_post.weight) @ tower.proj
    expected = folded / tr.pooled.norm(dim=-1, keepdim=True)
    assert torch.allclose(hc.heads[:, 0, 1], expected.detach(), atol=1e-6)


def test_layer_spec_has_one_meaning():
    assert resolve_layers(None, 12) == resolve_layers("all", 12) == list(range(12))
    assert resolve_layers("4", 12) == resolve_layers(4, 12) == [8, 9, 10, 11]  # N = the last N
    assert resolve_layers("1", 12) == [11]
    assert resolve_layers("10,11", 12) == [10, 11]  # a list: absolute indices
    assert resolve_layers("11,", 12) == resolve_layers("11..11", 12) == [11]  # one layer
    assert resolve_layers("0,8..10", 12) == [0, 8, 9, 10]
    for bad, match in (("13", "expected 1..12"), ("0", "expected 1..12"), ("3,12", "12 is out of range"),
                       ("-1,", "-1 is out of range"), ("x", "expected all, N"), ("5..3", "out of range"),
                       (",", "no layer given")):
        with pytest.raises(ClipDebiasError, match=match):
            resolve_layers(bad, 12)


def _csv_fixture(root, n=6):
    root.mkdir()
    rows = ["path,label,group,split"]
    for i in range(n):
        Image.new("RGB", (40 + i, 36), (30 * i, 100, 200 - 20 * i)).save(root / f"im{i}.png")
        rows.append(f"im{i}.png,{i % 2},{i % 3},{'train' if i < 4 else 'test'}")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root


def test_cli_decompose_defaults_to_every_layer_and_textspan(tmp_path, tiny_clip):
    from clip_debias.toolchain.cli.app import app

    data = _csv_fixture(tmp_path / "data")
    out = tmp_path / "train.safetensors"
    res = CliRunner().invoke(app, ["decompose", "--model", "clipdebias-tiny", "--random-weights", "--dataset", "csv",
                                   "--data", str(data), "--split", "train", "--out", str(out), "--batch-size", "3"])
    assert res.exit_code == 0, res.output
    cache = load_cache(out)
    assert cache.heads.shape == (4, 4, 4, 32) and cache.layers == [0, 1, 2, 3] and cache.all_layers
    assert cache.convention == "textspan" and cache.tower_layers == 4
    assert cache.labels.tolist() == [0, 1, 0, 1] and cache.groups.tolist() == [0, 1, 2, 0]
    assert cache.split == "train" and cache.dataset == "csv" and cache.identity.name == "clipdebias-tiny"
    assert torch.allclose(cache.embeddings().norm(dim=-1), torch.ones(4), atol=1e-5)
    assert (cache.heads.sum() + cache.rest - cache.embeddings()).abs().max() <= TOL
    assert (cache.head_means() - cache.heads.tensor().double().mean(dim=0)).abs().max() <= 1e-6
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["layers"]) == [0, 1, 2, 3] and meta["convention"] == "textspan"
    assert "2L+1" in meta["convention_formula"] and meta["format"] == "2"
    res = CliRunner().invoke(app, ["decompose", "--model", "clipdebias-tiny", "--random-weights", "--dataset", "csv",
                                   "--data", str(data), "--split", "train", "--out", str(tmp_path / "c.safetensors"),
                                   "--layers", "2", "--convention", "centred"])
    assert res.exit_code == 0, res.output
    last2 = load_cache(tmp_path / "c.safetensors")
    assert last2.layers == [2, 3] and last2.convention == "centred" and not last2.all_layers
    # an existing cache of ours is replaced (both formats' recogniser); a file of anything else is refused
    res = CliRunner().invoke(app, ["decompose", "--model", "clipdebias-tiny", "--random-weights", "--dataset", "csv",
                                   "--data", str(data), "--split", "train", "--out", str(tmp_path / "c.safetensors"),
                                   "--layers", "1"])
    assert res.exit_code == 0 and load_cache(tmp_path / "c.safetensors").layers == [3], res.output
    (tmp_path / "notes.safetensors").write_text("my notes")
    res = CliRunner().invoke(app, ["decompose", "--model", "clipdebias-tiny", "--random-weights", "--dataset", "csv",
                                   "--data", str(data), "--split", "train", "--out",
                                   str(tmp_path / "notes.safetensors")])
    assert res.exit_code == 2 and (tmp_path / "notes.safetensors").read_text() == "my notes"
    for args, message in ((["--layers", "9"], "--layers 9: the last 9 layers requested, the tower has 4"),
                          (["--convention", "paper"], "clip-debias decompose: Invalid value for '--convention': "
                                                      "'paper' is not one of 'textspan', 'centred'"),
                          (["--terms-dtype", "int8"], "clip-debias decompose: Invalid value for '--terms-dtype': "
                                                      "'int8' is not one of 'fp32', 'fp16'")):
        res = CliRunner().invoke(app, ["decompose", "--model", "clipdebias-tiny", "--random-weights", "--dataset",
                                       "csv", "--data", str(data), "--split", "train", "--out",
                                       str(tmp_path / "x.safetensors"), *args])
        assert res.exit_code == 2 and f"error: {message}" in res.output, res.output
    assert not (tmp_path / "x.safetensors").exists()


def _random_cache(identity, n=37, layers=(1, 3), heads=4, d=32, seed=0) -> DecompositionCache:
    g = torch.Generator().manual_seed(seed)
    return DecompositionCache(heads=torch.randn(n, len(layers), heads, d, generator=g), rest=torch.randn(n, d),
                              labels=torch.arange(n) % 2, groups=torch.arange(n) % 4, layers=list(layers),
                              identity=identity, dataset="csv", split="val", class_names=["a", "b"],
                              group_names=["g0", "g1", "g2", "g3"], attributes=(torch.arange(n) // 2) % 2,
                              attribute_names=["x", "y"], paths=[f"p{i}" for i in range(n)], convention="centred",
                              tower_layers=4)


def test_cache_roundtrip_reads_in_pieces(tmp_path, tiny_clip, monkeypatch):
    from clip_debias.toolchain.decompose import terms as terms_module

    c = _random_cache(tiny_clip.identity)
    save_cache(tmp_path / "c.safetensors", c)
    back = load_cache(tmp_path / "c.safetensors")
    assert not back.heads.in_memory and back.heads.shape == c.heads.shape
    full = c.heads.tensor()
    assert torch.equal(back.heads.tensor(), full) and back.paths == c.paths
    assert back.attributes.tolist() == c.attributes.tolist() and back.convention == "centred"
    assert back.layers == [1, 3] and back.tower_layers == 4 and not back.all_layers
    monkeypatch.setattr(terms_module, "CHUNK_BYTES", 5 * back.heads.row_bytes())  # chunks of 5 rows
    assert [start for start, _ in back.heads.chunks()] == list(range(0, 37, 5))
    assert torch.equal(torch.cat([chunk for _, chunk in back.heads.chunks()]), full)
    assert torch.equal(back.head_terms([(3, 2), (1, 0)]), full[:, [1, 0], [2, 0]])
    assert torch.equal(back.embeddings(), c.embeddings())
    assert torch.allclose(back.head_means(), full.double().mean(dim=0), atol=1e-12)
    assert not list(tmp_path.glob(".*tmp*"))
    half = save_cache(tmp_path / "h.safetensors", c, terms_dtype=torch.float16)
    back16 = load_cache(half)
    assert back16.heads.dtype == torch.float16 and back16.heads.row_bytes() == 2 * 4 * 32 * 2
    assert (back16.heads.tensor() - full).abs().max() <= 4e-3 * full.abs().max()
    assert torch.allclose(back16.head_means(), full.double().mean(dim=0), atol=1e-12)  # means before rounding


def test_cache_errors(tmp_path, tiny_clip):
    with pytest.raises(ClipDebiasError, match="not found"):
        load_cache(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ClipDebiasError, match="junk.safetensors: not a safetensors"):
        load_cache(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    old = {"heads": torch.zeros(2, 1, 4, 32), "rest": torch.zeros(2, 32), "labels": torch.zeros(2, dtype=torch.long),
           "groups": torch.zeros(2, dtype=torch.long)}
    save_file(old, str(tmp_path / "old.safetensors"), metadata={"layers": "[3]", "convention": "textspan: ..."})
    with pytest.raises(ClipDebiasError, match="old.safetensors: field 'format': is null, expected \"2\" \\(a cache of "
                                              "an earlier clip-debias: decompose again\\)"):
        load_cache(tmp_path / "old.safetensors")


def test_writer_leaves_no_file_on_error(tmp_path, tiny_clip):
    from clip_debias.toolchain.decompose.cache import CacheWriter

    with pytest.raises(RuntimeError):
        with CacheWriter(tmp_path / "w.safetensors", layers=[0], shape=(1, 4, 32), identity=tiny_clip.identity,
                         dataset="csv", split="val", class_names=["a"], group_names=["g"], attribute_names=[],
                         convention="textspan", tower_layers=4, max_rows=3, max_paths=["a", "b", "c"]) as w:
            w.add(torch.zeros(2, 1, 4, 32), torch.zeros(2, 32), torch.zeros(2, 32), torch.zeros(2), torch.zeros(2),
                  None, ["a", "b"])
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_writer_header_larger_than_reserved(tmp_path, tiny_clip):
    """Paths longer than those announced: the terms are moved after the larger header, the file stays valid."""
    from clip_debias.toolchain.decompose.cache import CacheWriter

    w = CacheWriter(tmp_path / "w.safetensors", layers=[0], shape=(1, 4, 32), identity=tiny_clip.identity,
                    dataset="csv", split="val", class_names=["a"], group_names=["g"], attribute_names=[],
                    convention="textspan", tower_layers=4, max_rows=2, max_paths=["a", "b"])
    heads = torch.randn(2, 1, 4, 32)
    w.add(heads, torch.zeros(2, 32), torch.ones(2, 32), torch.zeros(2), torch.zeros(2), None, ["x" * 5000] * 2)
    w.close()
    back = load_cache(tmp_path / "w.safetensors")
    assert torch.equal(back.heads.tensor(), heads) and back.paths == ["x" * 5000] * 2


def test_cli_bad_input_is_one_line(tmp_path):
    """Expected errors: exit code 2 and a single 'error: ...' line naming the file, no traceback."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "clip_debias.toolchain.cli.app", "decompose", "--model",
                          "clipdebias-tiny", "--random-weights", "--dataset", "waterbirds", "--data", str(tmp_path),
                          "--split", "train", "--out", str(tmp_path / "x.safetensors")],
                         capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "metadata.csv" in lines[0]
    assert not (tmp_path / "x.safetensors").exists()


def test_toolchain_command_without_torch_says_which_extra(tmp_path):
    """On the torch-free base install a toolchain command fails with one line naming the extra to install."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['clip-debias', 'decompose', '--model', 'x', "
            f"'--dataset', 'csv', '--data', {str(tmp_path)!r}, '--split', 'train', '--out', "
            f"{str(tmp_path / 'x.safetensors')!r}]; "
            "from clip_debias.toolchain.cli.app import main; main()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "pip install 'clip-debias[toolchain]'" in lines[0] and "'torch'" in lines[0]


def test_cache_keeps_what_the_bias_metrics_read(tmp_path, tiny_clip):
    """Decomposing a csv with pair and attribute columns stores every attribute, the pair ids and the protected
    attribute for the rows read (an unreadable image skipped); the cache's metric source equals the index's."""
    import numpy as np

    from clip_debias.runtime.datasets import load_index
    from clip_debias.runtime.metric_inputs import source_of_index
    from clip_debias.toolchain.decompose.run import decompose_dataset

    lines = ["path,label,pair,gender,bg", "a.png,0,3,f,0", "b.png,0,3,m,1", "c.png,1,,m,1", "d.png,1,5,f,0",
             "e.png,1,5,m,0"]
    for i, line in enumerate(lines[1:]):
        Image.new("RGB", (40, 36), (30 * i, 20, 90)).save(tmp_path / line.split(",")[0])
    (tmp_path / "c.png").write_bytes(b"unreadable")
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    index = load_index("csv", tmp_path, "test", protected="bg")
    from clip_debias.runtime.limits import MaxSkipped

    cache = decompose_dataset(tiny_clip, index, [3], skip_bad=True, progress=False, max_skipped=MaxSkipped.parse("1"))
    save_cache(tmp_path / "c.safetensors", cache)
    back = load_cache(tmp_path / "c.safetensors")
    assert back.attribute_columns == ["gender", "bg"] and back.attribute_values == [["f", "m"], ["0", "1"]]
    assert back.attribute_table.tolist() == [[0, 0], [1, 1], [0, 0], [1, 0]] and back.pairs.tolist() == [3, 3, 5, 5]
    assert back.protected == "bg" and back.train_correlation is None
    full, got = source_of_index(index), back.metric_source()
    keep = [0, 1, 3, 4]
    assert got.protected == full.protected and np.array_equal(got.pairs, full.pairs[keep])
    for a, b in zip(got.attributes, full.attributes):
        assert a.name == b.name and a.names == b.names and np.array_equal(a.ids, b.ids[keep])
