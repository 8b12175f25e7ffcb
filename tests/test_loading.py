"""Loading weights: local files in open_clip and OpenAI layouts, and one clear line for each bad input."""

from __future__ import annotations

import pytest
import torch

from clip_debias.toolchain.errors import ClipDebiasError
from clip_debias.toolchain.models.loading import load_clip, sha256_file


def _same_weights(a, b) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


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


def test_weights_for_another_model(tmp_path, tiny_clip):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    with pytest.raises(ClipDebiasError, match="do not fit --model clipdebias-tiny-ls"):
        load_clip("clipdebias-tiny-ls", weights=path)


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
    base = ["decompose", "--model", "clipdebias-tiny", "--dataset", "waterbirds", "--data", str(tmp_path),
            "--out", str(tmp_path / "x.safetensors")]
    _one_error_line(_cli(base + ["--device", "gpu"]), "--device gpu: expected cpu, cuda or cuda:N")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _one_error_line(_cli(base + ["--device", "cuda"]), "--device cuda: no CUDA device is visible to torch")
    with pytest.raises(ClipDebiasError, match="--device cuda:1: no CUDA device"):
        check_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ClipDebiasError, match=r"--device cuda:1: torch sees 1 CUDA device"):
        check_device("cuda:1")


def test_random_weights_warn_on_stderr(capsys):
    from clip_debias.toolchain.cli.options import load_model
    from clip_debias.toolchain.lab import LAB_WEIGHTS

    load_model("clipdebias-tiny", None, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: --model clipdebias-tiny has no --pretrained or --weights")
    assert "RANDOM weights" in err[0]
    load_model("clipdebias-lab", None, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RANDOM" in err[0] and LAB_WEIGHTS.name in err[0]
    load_model("clipdebias-lab", None, LAB_WEIGHTS)
    assert capsys.readouterr().err == ""
