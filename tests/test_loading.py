"""Loading weights: local files in open_clip and OpenAI layouts, and one clear line for each bad input."""

from __future__ import annotations

import pytest
import torch

from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.loading import load_clip, sha256_file


def _same_weights(a, b) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty weights cache folder of this test's own."""
    from clip_debias.toolchain.models.checkpoint import CACHE_ENV

    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


@pytest.mark.parametrize("layout", ["open_clip_pt", "wrapped_ddp", "safetensors"])
def test_local_weights_roundtrip(tmp_path, tiny_clip, layout):
    sd = tiny_clip.model.state_dict()
    if layout == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif layout == "wrapped_ddp":  # training checkpoints: {"state_dict": {"module.<key>": ...}}
        path = tmp_path / "epoch_1.pt"
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        path = tmp_path / "w.pt"
        torch.save(sd, path)
    loaded = load_clip("clipdebias-tiny", weights=path)
    assert _same_weights(loaded, tiny_clip)
    assert loaded.identity.weights_sha256 == sha256_file(path) and loaded.identity.pretrained is None
    # built without random init, then assigned: what the state dict does not hold (the text tower's causal mask, a
    # non-persistent buffer) is still built right, so both encoders compute the same
    texts, images = ["a photo of a bird.", "water"], torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(texts), tiny_clip.encode_text(texts))
        assert torch.equal(loaded.model.encode_image(images), tiny_clip.model.encode_image(images))


def test_openai_layout_extra_keys(tmp_path, tiny_clip):
    """OpenAI's state dicts carry input_resolution/context_length/vocab_size entries; they are dropped."""
    sd = dict(tiny_clip.model.state_dict())
    sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(16), vocab_size=torch.tensor(49408))
    path = tmp_path / "openai.pt"
    torch.save(sd, path)
    assert _same_weights(load_clip("clipdebias-tiny", weights=path), tiny_clip)


def test_missing_weights_file(tmp_path):
    with pytest.raises(ClipDebiasError, match="weights file not found"):
        load_clip("clipdebias-tiny", weights=tmp_path / "nope.pt")


def test_corrupt_weights_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipDebiasError, match="bad.pt: cannot read weights"):
        load_clip("clipdebias-tiny", weights=bad)


def test_weights_for_another_model(tmp_path, tiny_clip, fresh_cache):
    """Refused in one line, and no weights-cache entry is left behind for the refused file."""
    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    with pytest.raises(ClipDebiasError, match="do not fit --model clipdebias-tiny-ls"):
        load_clip("clipdebias-tiny-ls", weights=path)
    assert not fresh_cache.exists()


def test_unknown_model_name():
    with pytest.raises(ClipDebiasError, match="--model ViT-Q-99: unknown"):
        load_clip("ViT-Q-99")


def test_unknown_pretrained_tag_says_use_weights():
    with pytest.raises(ClipDebiasError, match="--weights FILE"):
        load_clip("clipdebias-tiny", pretrained="laion2b_s34b_b88k")


def test_pretrained_and_weights_exclusive(tmp_path):
    with pytest.raises(ClipDebiasError, match="exclusive"):
        load_clip("clipdebias-tiny", pretrained="x", weights=tmp_path / "w.pt")


def test_weights_of_another_shape_are_one_line(tmp_path, tiny_clip):
    """Same keys, other shapes (a checkpoint of another width): one line naming the file, the model and a tensor."""
    sd = dict(tiny_clip.model.state_dict())
    sd["ln_final.weight"] = torch.ones(7)
    path = tmp_path / "wide.pt"
    torch.save(sd, path)
    with pytest.raises(ClipDebiasError) as e:
        load_clip("clipdebias-tiny", weights=path)
    msg = str(e.value)
    assert "wide.pt" in msg and "--model clipdebias-tiny" in msg and "\n" not in msg
    assert f"ln_final.weight: [7] in the file, [{sd['positional_embedding'].shape[1]}] in the model" in msg


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from clip_debias.toolchain.cli.app import app

    return CliRunner().invoke(app, args)


def _one_error_line(res, *needles: str) -> str:
    """The single 'error: ...' line of a CLI run that failed with exit code 2 (no traceback)."""
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def test_device_is_checked(tmp_path, monkeypatch):
    from clip_debias.toolchain.cli.options import check_device

    assert check_device("cpu") == "cpu"
    base = ["decompose", "--model", "clipdebias-tiny", "--random-weights",
            "--dataset", "waterbirds", "--data", str(tmp_path), "--split", "train",
            "--out", str(tmp_path / "x.safetensors")]
    _one_error_line(_cli(base + ["--device", "gpu"]), "--device gpu: expected cpu, cuda, cuda:N or auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _one_error_line(_cli(base + ["--device", "cuda"]), "--device cuda: no CUDA device is visible to torch")
    with pytest.raises(ClipDebiasError, match="--device cuda:1: no CUDA device"):
        check_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ClipDebiasError, match=r"--device cuda:1: torch sees 1 CUDA device"):
        check_device("cuda:1")


def test_random_weights_only_when_asked(tmp_path, capsys):
    """A model without shipped weights and without --pretrained/--weights is refused in one line that says what to
    pass; --random-weights gives a random model and one warning line; it excludes the other sources."""
    from clip_debias.toolchain.cli.options import load_model

    _one_error_line(_cli(["explain-image", str(tmp_path / "x.png"), "--model", "clipdebias-tiny", "--text", "a",
                          "--out", str(tmp_path / "h.png")]),
                    "--model clipdebias-tiny has no shipped weights", "--pretrained TAG", "--weights FILE",
                    "--random-weights", "shipped: clipdebias-lab")
    with pytest.raises(ClipDebiasError, match="--random-weights for a random-weight model"):
        load_clip("ViT-B-32")
    clip = load_model("clipdebias-tiny", None, None, random_weights=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: --random-weights: --model clipdebias-tiny has RANDOM weights (results mean nothing)"]
    assert clip.identity.describe() == "clipdebias-tiny (random init)"
    for other in ({"pretrained": "laion2b_s34b_b88k"}, {"weights": tmp_path / "w.pt"}):
        with pytest.raises(ClipDebiasError, match="--random-weights and --(pretrained|weights) are exclusive"):
            load_clip("clipdebias-tiny", random_weights=True, **other)
    with pytest.raises(ClipDebiasError,
                       match=r"--pretrained shipped: no weights are shipped for --model clipdebias-tiny \(shipped: "):
        load_clip("clipdebias-tiny", pretrained="shipped")


def test_shipped_weights_by_name(capsys):
    """--model clipdebias-lab alone, --pretrained shipped and --weights FILE-of-the-shipped-weights are one model with
    one identity (so caches and plans made either way match); --random-weights still gives a random lab model."""
    from clip_debias.toolchain.cli.options import load_model
    from clip_debias.toolchain.lab import LAB_WEIGHTS

    by_name = load_model("clipdebias-lab", None, None)
    assert capsys.readouterr().err == ""
    assert by_name.identity.weights_sha256 == sha256_file(LAB_WEIGHTS)
    assert by_name.identity.weights_file == LAB_WEIGHTS.name
    for other in (load_clip("clipdebias-lab", pretrained="shipped"), load_clip("clipdebias-lab", weights=LAB_WEIGHTS)):
        assert other.identity == by_name.identity and _same_weights(other, by_name)
    rand = load_clip("clipdebias-lab", random_weights=True)
    assert rand.identity.weights_sha256 is None and not _same_weights(rand, by_name)


def test_shipped_registry_is_complete():
    """Every shipped weights file exists, belongs to a registered model config, is installed (package-data) and fits
    its model: a new lab model is one SHIPPED_WEIGHTS entry plus its config and file."""
    import fnmatch
    import tomllib
    from pathlib import Path

    import open_clip

    from clip_debias.toolchain.models.loading import register_configs
    from clip_debias.toolchain.models.shipped import SHIPPED_WEIGHTS, TOOLCHAIN_DIR

    register_configs()
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["clip_debias.toolchain"]
    assert SHIPPED_WEIGHTS
    for name, rel in SHIPPED_WEIGHTS.items():
        assert name in open_clip.list_models() and (TOOLCHAIN_DIR / rel).is_file()
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), (rel, patterns)
        assert load_clip(name).identity.weights_file == Path(rel).name


# ---- weights cache -------------------------------------------------------------------------------------------------
def _entries(cache) -> list[str]:
    return sorted(p.name for p in cache.iterdir())


def test_pt_is_converted_once_into_the_cache(tmp_path, tiny_clip, fresh_cache):
    """A .pt is read in full once and cached as <sha256>.safetensors; the next read is the entry (same tensors, same
    identity); a changed file has another hash and never meets the old entry."""
    from clip_debias.toolchain.models.checkpoint import read_checkpoint

    path = tmp_path / "w.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    sha = sha256_file(path)
    first = read_checkpoint(path)
    assert not first.from_cache and not fresh_cache.exists()  # written once the weights are known to fit
    first.remember()
    assert _entries(fresh_cache) == [f"{sha}.safetensors"]
    again = read_checkpoint(path)
    assert again.from_cache and again.sha256 == sha
    assert again.state_dict.keys() == first.state_dict.keys()
    assert all(torch.equal(again.state_dict[k], v) for k, v in first.state_dict.items())
    loaded = load_clip("clipdebias-tiny", weights=path)
    assert _same_weights(loaded, tiny_clip) and loaded.identity.weights_sha256 == sha

    changed = {k: v + 1 if v.is_floating_point() else v for k, v in tiny_clip.model.state_dict().items()}
    torch.save(changed, path)  # same name, new content
    assert sha256_file(path) != sha
    reloaded = load_clip("clipdebias-tiny", weights=path)
    key = "visual.proj"
    assert torch.equal(reloaded.model.state_dict()[key], changed[key])
    assert f"{sha256_file(path)}.safetensors" in _entries(fresh_cache)


def test_cache_entry_of_another_file_is_not_trusted(tmp_path, tiny_clip, fresh_cache):
    """An entry whose recorded source hash is not the file's (renamed by hand) is ignored and rewritten; a file in its
    place that is not an entry of ours is ignored and left as it is."""
    from clip_debias.toolchain.models.checkpoint import read_checkpoint

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(tiny_clip.model.state_dict(), a)
    torch.save({k: v * 2 for k, v in tiny_clip.model.state_dict().items()}, b)
    read_checkpoint(a).remember()
    entry_b = fresh_cache / f"{sha256_file(b)}.safetensors"
    (fresh_cache / f"{sha256_file(a)}.safetensors").replace(entry_b)  # a's tensors under b's name
    got = read_checkpoint(b)
    assert not got.from_cache
    assert torch.equal(got.state_dict["visual.proj"], 2 * tiny_clip.model.state_dict()["visual.proj"])
    got.remember()
    assert read_checkpoint(b).from_cache
    entry_b.write_bytes(b"garbage")  # not an entry of ours: neither used nor overwritten (one warning)
    damaged = read_checkpoint(b)
    assert not damaged.from_cache
    damaged.remember()
    assert entry_b.read_bytes() == b"garbage" and not read_checkpoint(b).from_cache


def test_unwritable_cache_still_loads(tmp_path, tiny_clip, monkeypatch, caplog):
    from clip_debias.toolchain.models.checkpoint import CACHE_ENV

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    path = tmp_path / "w.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    with caplog.at_level("WARNING", logger="clip_debias.weights"):
        assert _same_weights(load_clip("clipdebias-tiny", weights=path), tiny_clip)
    assert len(caplog.records) == 1 and "could not cache" in caplog.records[0].getMessage()
    assert blocker.read_text() == "x"


def test_openai_torchscript_archive(tmp_path, tiny_clip, fresh_cache):
    """OpenAI's released .pt files are TorchScript archives (open_clip's reader refuses them): read with torch.jit,
    OpenAI's extra entries dropped, fp16 tensors loaded into the fp32 model, then cached like any .pt."""
    from clip_debias.toolchain.models.checkpoint import read_checkpoint, save_torchscript_state_dict

    sd = {k: v.half() if v.is_floating_point() else v for k, v in tiny_clip.model.state_dict().items()}
    sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(16), vocab_size=torch.tensor(49408))
    path = save_torchscript_state_dict(sd, tmp_path / "ViT-tiny.pt")
    loaded = load_clip("clipdebias-tiny", weights=path)
    own = loaded.model.state_dict()
    assert all(own[k].dtype == torch.float32 and torch.equal(own[k], sd[k].float()) for k in own)
    assert read_checkpoint(path).from_cache


def test_loaded_weights_do_not_write_back(tmp_path, tiny_clip):
    """A model loaded from a safetensors file holds its tensors memory-mapped (no copy): changing them in place must
    not change the file (the mapping is private)."""
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_clip.model.state_dict().items()}, str(path))
    sha = sha256_file(path)
    loaded = load_clip("clipdebias-tiny", weights=path)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(1)
    assert sha256_file(path) == sha
