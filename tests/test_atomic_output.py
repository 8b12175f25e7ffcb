"""clip_debias.runtime.atomic_output and its writers: never replace a directory that is not ours, the cwd or a path under a file;
replace our own output atomically; leave the old output on failure; give outputs the umask's permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import pytest
import torch
from typer.testing import CliRunner

from clip_debias.runtime.atomic_output import atomic_file, staged_directory, write_atomic
from clip_debias.runtime.errors import ClipDebiasError

MARK = "marker.json"


def write_ours(out: Path, text: str) -> Path:
    with staged_directory(out, MARK, "a test output") as tmp:
        (tmp / "data.txt").write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.bin").write_bytes(b"x")
        (tmp / MARK).write_text("{}")
    return out


def litter(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("keep me")
    return d


def test_writes_and_replaces_our_own_output(tmp_path: Path) -> None:
    out = write_ours(tmp_path / "out", "one")
    write_ours(out, "two")
    assert (out / "data.txt").read_text() == "two" and (out / "sub" / "x.bin").is_file()
    assert litter(tmp_path) == []


def test_empty_directory_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    assert (write_ours(tmp_path / "out", "x") / MARK).is_file()


def test_foreign_directory_refused_and_untouched(foreign: Path) -> None:
    with pytest.raises(ClipDebiasError, match=r"mine: exists, is not empty and has no marker\.json; refusing") as e:
        write_ours(foreign, "x")
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"] and litter(foreign.parent) == []


@pytest.mark.parametrize("rel", [".", "..", "sub/.."])
def test_cwd_and_its_parents_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rel: str) -> None:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / MARK).write_text("{}")  # even a directory that looks like ours
    (work / "f.txt").write_text("keep")
    monkeypatch.chdir(work)
    with pytest.raises(ClipDebiasError, match="is the current directory or one of its parents; refusing"):
        write_ours(Path(rel), "x")
    assert (work / "f.txt").read_text() == "keep" and litter(work) == litter(tmp_path) == []


def test_output_that_is_a_file_or_under_a_file_refused(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("keep")
    with pytest.raises(ClipDebiasError, match="afile: exists and is not a directory"):
        write_ours(f, "x")
    for target in (f / "out", f / "a" / "b"):
        with pytest.raises(ClipDebiasError, match=r"afile: is a file, not a directory \(cannot write .* under it\)"):
            write_ours(target, "x")
        with pytest.raises(ClipDebiasError, match="afile: is a file, not a directory"):
            write_atomic(target, "x")
    assert f.read_text() == "keep" and litter(tmp_path) == []


def test_failure_mid_write_keeps_old_output(tmp_path: Path) -> None:
    out = write_ours(tmp_path / "out", "old")
    with pytest.raises(RuntimeError, match="crash"):
        with staged_directory(out, MARK, "a test output") as tmp:
            (tmp / "data.txt").write_text("half")
            raise RuntimeError("crash")
    with pytest.raises(ClipDebiasError, match="finished without writing marker.json; nothing was replaced"):
        with staged_directory(out, MARK, "a test output") as tmp:
            (tmp / "data.txt").write_text("no marker")
    assert (out / "data.txt").read_text() == "old" and litter(tmp_path) == []


def test_umask_permissions(tmp_path: Path, umask_027: None) -> None:
    out = write_ours(tmp_path / "out", "x")
    assert mode(out) == mode(out / "sub") == 0o750
    assert mode(out / "data.txt") == mode(out / "sub" / "x.bin") == 0o640
    f = write_atomic(tmp_path / "f.json", "{}")
    assert mode(f) == 0o640
    os.umask(0o002)
    write_ours(out, "y")
    assert mode(out) == 0o775 and mode(out / "data.txt") == 0o664


def test_atomic_file(tmp_path: Path) -> None:
    path = write_atomic(tmp_path / "new" / "r.json", "one")
    write_atomic(path, b"two")
    assert path.read_text() == "two" and mode(path) == 0o666 & ~_umask()
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert path.read_text() == "two" and litter(path.parent) == []
    with pytest.raises(ClipDebiasError, match="new: is a directory \\(expected a file path\\)"):
        write_atomic(tmp_path / "new", "x")


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


# ---- the writers --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tiny_clip):
    from clip_debias.toolchain.correct.classifier import plain_classifier

    return plain_classifier(tiny_clip, ["a", "b", "c"])


@pytest.fixture(scope="module")
def artifact(model, tmp_path_factory) -> Path:
    from clip_debias.exporters.onnx_export import export_onnx

    return export_onnx(model, tmp_path_factory.mktemp("a") / "art", ort_optimize=False)


def test_classifier_save(model, foreign: Path, artifact: Path, tmp_path: Path, umask_027: None) -> None:
    from clip_debias.toolchain.correct.classifier import DebiasedClassifier

    out = model.save(tmp_path / "model")
    model.save(out)  # our own model: replaced
    assert mode(out) == 0o750 and mode(out / "model.safetensors") == 0o640
    assert DebiasedClassifier.load(out).spec.class_names == ["a", "b", "c"]
    before = tree(tmp_path) + tree(artifact)
    for bad, why in ((foreign, "has no config.json; refusing"), (artifact, "has no config.json; refusing"),
                     (foreign / "notes.txt" / "m", "is a file, not a directory")):
        with pytest.raises(ClipDebiasError, match=why):
            model.save(bad)
    assert tree(tmp_path) + tree(artifact) == before
    assert (foreign / "notes.txt").read_text() == "keep me" and (artifact / "model.onnx").is_file()


def test_export_onnx_refusals(model, tmp_path: Path) -> None:
    from clip_debias.exporters.onnx_export import export_onnx

    (tmp_path / "afile").write_text("keep")
    with pytest.raises(ClipDebiasError, match="afile: is a file"):
        export_onnx(model, tmp_path / "afile" / "art", ort_optimize=False)


def test_triton_refusals(artifact: Path, foreign: Path, tmp_path: Path) -> None:
    from clip_debias.exporters.triton import export_triton
    from clip_debias.toolchain.cli.app import app

    with pytest.raises(ClipDebiasError, match="mine: exists, is not empty and has no config.pbtxt; refusing"):
        export_triton(artifact, foreign.parent, name="mine")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    (tmp_path / "afile").write_text("keep")
    res = CliRunner().invoke(app, ["export", "triton", str(artifact), "--repo", str(tmp_path / "afile")])
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0, res.output
    assert "afile: is a file, not a directory" in res.output and "Traceback" not in res.output


def test_decompose_cache_permissions(tiny_clip, tmp_path: Path) -> None:
    from clip_debias.toolchain.decompose.cache import DecompositionCache, load_cache, save_cache

    c = DecompositionCache(heads=torch.zeros(2, 1, 4, 32), rest=torch.zeros(2, 32), labels=torch.tensor([0, 1]),
                           groups=torch.tensor([0, 1]), layers=[3], identity=tiny_clip.identity, dataset="csv",
                           split="val", class_names=["a", "b"], group_names=["g0", "g1"])
    path = save_cache(tmp_path / "c.safetensors", c)
    assert mode(path) == 0o666 & ~_umask() and len(load_cache(path)) == 2
    with pytest.raises(ClipDebiasError, match="c.safetensors: is a file"):
        save_cache(path / "x.safetensors", c)


def test_lab_data_overwrite_refuses_foreign(foreign: Path, tmp_path: Path) -> None:
    from clip_debias.toolchain.lab.data import make_lab_data

    args = dict(n_train=8, n_val=0, n_test=0, workers=1)
    out = make_lab_data(tmp_path / "d", **args)
    make_lab_data(out, overwrite=True, **args)  # our own data set: replaced
    assert (out / "lab.json").is_file() and litter(tmp_path) == []
    with pytest.raises(ClipDebiasError, match="has no lab.json; refusing"):
        make_lab_data(foreign, overwrite=True, **args)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
