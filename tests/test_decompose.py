"""Exact decomposition: heads.sum + rest == open_clip's normalized embedding; layer selection; cache; CLI."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clip_debias.toolchain.decompose.cache import load_cache, save_cache
from clip_debias.toolchain.decompose.contributions import Decomposer, resolve_layers
from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.loading import load_clip
from clip_debias.toolchain.models.tower import ExplicitViT

TOL = 1e-5  # the bound; observed ~2e-7 on unit-norm embeddings


def _sum_identity(clip, layers, batch=4) -> float:
    torch.manual_seed(2)
    tower = ExplicitViT.from_open_clip(clip.model.visual)
    x = torch.randn(batch, 3, *tower.cfg.image_size)
    hc = Decomposer(tower, layers)(x)
    with torch.no_grad():
        ref = clip.model.encode_image(x, normalize=True)
    assert hc.heads.shape == (batch, len(layers), tower.cfg.heads, tower.cfg.embed_dim)
    return (hc.embedding() - ref).abs().max().item()


@pytest.mark.parametrize("layers", [[3], [2, 3], [0, 1, 2, 3], [0, 2]])
def test_sum_identity_tiny(tiny_clip, layers):
    assert _sum_identity(tiny_clip, layers) <= TOL


def test_sum_identity_layerscale():
    torch.manual_seed(0)
    assert _sum_identity(load_clip("clipdebias-tiny-ls", random_weights=True), [1, 2]) <= TOL


def test_sum_identity_vitb32(vitb32_clip):
    assert _sum_identity(vitb32_clip, resolve_layers(12, last=4), batch=2) <= TOL


@pytest.mark.slow
def test_sum_identity_vitb16():
    torch.manual_seed(0)
    assert _sum_identity(load_clip("ViT-B-16", random_weights=True), resolve_layers(12, last=4), batch=2) <= TOL


def test_head_terms_are_direct_contributions(tiny_clip):
    """Removing one head's output from the CLS residual stream changes ln_post(x)@proj by exactly its term, when
    the LayerNorm statistics are held fixed (the convention: sigma is the sample's own)."""
    tower = ExplicitViT.from_open_clip(tiny_clip.model.visual)
    x = torch.randn(2, 3, 32, 32)
    hc = Decomposer(tower, [3])(x)
    tr = tower.trace(x, [3])
    blk = tower.blocks[3]
    o = tr.head_out[3][:, 1]  # head 1, [B, Dh]
    r = o @ blk.attn.out.weight[:, 16:32].T  # residual-space term of head 1
    sigma = tower.ln_post_sigma(tr.cls_final)
    folded = ((r - r.mean(-1, keepdim=True)) / sigma[:, None] * tower.ln_post.weight) @ tower.proj
    expected = folded / tr.pooled.norm(dim=-1, keepdim=True)
    assert torch.allclose(hc.heads[:, 0, 1], expected.detach(), atol=1e-6)


def test_resolve_layers():
    assert resolve_layers(12) == [8, 9, 10, 11]
    assert resolve_layers(12, last=1) == [11]
    assert resolve_layers(12, layers=[-1, 0, 5]) == [0, 5, 11]
    with pytest.raises(ClipDebiasError, match="out of range"):
        resolve_layers(4, layers=[4])
    with pytest.raises(ClipDebiasError, match="expected 1..4"):
        resolve_layers(4, last=5)


def _csv_fixture(root, n=6):
    root.mkdir()
    rows = ["path,label,group,split"]
    for i in range(n):
        Image.new("RGB", (40 + i, 36), (30 * i, 100, 200 - 20 * i)).save(root / f"im{i}.png")
        rows.append(f"im{i}.png,{i % 2},{i % 3},{'train' if i < 4 else 'test'}")
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root


def test_cli_decompose_writes_cache(tmp_path, tiny_clip):
    from clip_debias.toolchain.cli.app import app

    data = _csv_fixture(tmp_path / "data")
    out = tmp_path / "train.safetensors"
    res = CliRunner().invoke(app, ["decompose", "--model", "clipdebias-tiny", "--random-weights",
                                   "--dataset", "csv", "--data", str(data),
                                   "--split", "train", "--out", str(out), "--layers", "2", "--batch-size", "3"])
    assert res.exit_code == 0, res.output
    cache = load_cache(out)
    assert cache.heads.shape == (4, 2, 4, 32) and cache.layers == [2, 3]
    assert cache.labels.tolist() == [0, 1, 0, 1] and cache.groups.tolist() == [0, 1, 2, 0]
    assert cache.split == "train" and cache.dataset == "csv" and cache.identity.name == "clipdebias-tiny"
    assert torch.allclose(cache.embeddings().norm(dim=-1), torch.ones(4), atol=1e-5)
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["layers"]) == [2, 3] and "textspan" in meta["convention"]


def test_cache_roundtrip_and_errors(tmp_path, tiny_clip):
    from clip_debias.toolchain.decompose.cache import DecompositionCache

    c = DecompositionCache(heads=torch.randn(3, 1, 4, 32), rest=torch.randn(3, 32), labels=torch.tensor([0, 1, 0]),
                           groups=torch.tensor([0, 3, 1]), layers=[3], identity=tiny_clip.identity, dataset="csv",
                           split="val", class_names=["a", "b"], group_names=["g0", "g1", "g2", "g3"],
                           attributes=torch.tensor([0, 1, 1]), attribute_names=["x", "y"], paths=["p0", "p1", "p2"])
    save_cache(tmp_path / "c.safetensors", c)
    back = load_cache(tmp_path / "c.safetensors")
    assert torch.equal(back.heads, c.heads) and back.paths == c.paths and back.attributes.tolist() == [0, 1, 1]
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ClipDebiasError, match="not found"):
        load_cache(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ClipDebiasError, match="junk.safetensors: not a safetensors"):
        load_cache(tmp_path / "junk.safetensors")


def test_cli_bad_input_is_one_line(tmp_path):
    """Expected errors: exit code 2 and a single 'error: ...' line naming the file, no traceback."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "clip_debias.toolchain.cli.app", "decompose", "--model",
                          "clipdebias-tiny", "--random-weights", "--dataset", "waterbirds", "--data", str(tmp_path),
                          "--out", str(tmp_path / "x.safetensors")],
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
            f"'--dataset', 'csv', '--data', {str(tmp_path)!r}, '--out', {str(tmp_path / 'x.safetensors')!r}]; "
            "from clip_debias.toolchain.cli.app import main; main()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "pip install 'clip-debias[toolchain]'" in lines[0] and "'torch'" in lines[0]
