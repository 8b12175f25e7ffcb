"""clip_debias.runtime.atomic_output / ownership: a folder is ours by its marker (kind, format, command, the sha256 of
every file), never by a file name; a command replaces only an untouched folder of ours of the same kind and deletes
only the files it listed; single files are ours by their own format; stale staging of a killed run is cleaned up and
said; the old output survives a failure; outputs get the umask's permissions."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from clip_debias.runtime.atomic_output import (atomic_file, check_file_target, claim_directory, staged_directory,
                                               write_atomic)
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.ownership import (FOLDER_KINDS, MARKER_NAME, SKIPPED_HEADER, file_is_ours, host_id,
                                           new_marker, read_marker, set_command)

KIND = "artifact"


def write_ours(out: Path, text: str, kind: str = KIND) -> Path:
    with staged_directory(out, kind, complete="data.txt") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x.bin").write_bytes(b"x")
        (tmp / "data.txt").write_text(text)
    return out


def litter(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a folder): 'byte-identical afterwards'."""
    return {p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def notices(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="clip_debias.output")
    return caplog


# ---- folders --------------------------------------------------------------------------------------------------------
def test_writes_and_replaces_our_own_output(tmp_path: Path) -> None:
    set_command(["export", "onnx", "m", "--out", "out"])
    out = write_ours(tmp_path / "out", "one")
    marker = read_marker(out)
    assert marker is not None and marker.kind == KIND and marker.state == "complete" and marker.format == 1
    assert marker.command == "clip-debias export onnx m --out out" and marker.pid == os.getpid()
    assert set(marker.files) == {"data.txt", "sub/x.bin"}  # every file but the marker, with its sha256
    write_ours(out, "two")
    assert (out / "data.txt").read_text() == "two" and (out / "sub" / "x.bin").is_file()
    assert litter(tmp_path) == []


def test_empty_directory_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    assert (write_ours(tmp_path / "out", "x") / MARKER_NAME).is_file()


@pytest.mark.parametrize("kind", sorted(FOLDER_KINDS))
def test_project_folder_with_our_file_name_refused_byte_identical(tmp_path: Path, kind: str) -> None:
    """The issue's case: a project folder holding the file name an output of that kind used to be recognised by
    (manifest.json, config.json, lab.json, config.pbtxt, ...) and a src/ folder is not replaced."""
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "main.py").write_text("print(1)")
    legacy = FOLDER_KINDS[kind][1]
    if legacy:
        (proj / legacy).write_text('{"name": "proj"}')
    before = snapshot(tmp_path)
    with pytest.raises(ClipDebiasError, match=f"has no {MARKER_NAME}: not {FOLDER_KINDS[kind][0]}; refusing") as e:
        write_ours(proj, "x", kind)
    one_line(e)
    assert snapshot(tmp_path) == before


def test_our_folder_with_a_user_file_is_not_replaced(tmp_path: Path) -> None:
    out = write_ours(tmp_path / "out", "one")
    (out / "sub" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(ClipDebiasError, match=r"holds sub/notes.txt, which clip-debias did not write; refusing") as e:
        write_ours(out, "two")
    one_line(e)
    assert snapshot(tmp_path) == before


def test_our_folder_with_a_changed_file_is_not_replaced(tmp_path: Path) -> None:
    out = write_ours(tmp_path / "out", "one")
    (out / "data.txt").write_text("edited by the user")
    before = snapshot(tmp_path)
    with pytest.raises(ClipDebiasError, match=r"data.txt: changed since clip-debias wrote it; refusing to replace"):
        write_ours(out, "two")
    assert snapshot(tmp_path) == before


def test_other_kind_and_damaged_marker_refused(tmp_path: Path) -> None:
    out = write_ours(tmp_path / "out", "one", kind="model")
    before = snapshot(tmp_path)
    with pytest.raises(ClipDebiasError, match="is a model directory written by 'clip-debias build', not "
                                              "an artifact"):
        write_ours(out, "two", kind=KIND)
    marker = out / MARKER_NAME
    marker.write_text(marker.read_text().replace('"model"', '"artifact"'))  # a hand-edited kind: check sum differs
    before = snapshot(tmp_path)
    with pytest.raises(ClipDebiasError, match="is damaged .*its check sum differs"):
        write_ours(out, "two", kind=KIND)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("rel", [".", "..", "sub/.."])
def test_cwd_and_its_parents_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rel: str) -> None:
    work = write_ours(tmp_path / "work", "x")  # even a directory of ours
    (work / "sub2").mkdir()
    monkeypatch.chdir(work / "sub2" if rel == "sub/.." else work)
    before = snapshot(tmp_path)
    with pytest.raises(ClipDebiasError, match="is the current directory or one of its parents; refusing"):
        write_ours(Path(rel if rel != "sub/.." else "../sub2/.."), "y")
    assert snapshot(tmp_path) == before


def test_output_that_is_a_file_a_link_or_under_a_file_refused(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("keep")
    with pytest.raises(ClipDebiasError, match="afile: exists and is not a directory"):
        write_ours(f, "x")
    target = write_ours(tmp_path / "real", "x")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(ClipDebiasError, match="link: exists and is not a directory"):
        write_ours(tmp_path / "link", "y")
    for t in (f / "out", f / "a" / "b"):
        with pytest.raises(ClipDebiasError, match=r"afile: is a file, not a directory \(cannot write .* under it\)"):
            write_ours(t, "x")
        with pytest.raises(ClipDebiasError, match="afile: is a file, not a directory"):
            write_atomic(t, "x", "locate-plan")
    assert f.read_text() == "keep" and litter(tmp_path) == []


def test_failure_mid_write_keeps_old_output(tmp_path: Path) -> None:
    out = write_ours(tmp_path / "out", "old")
    with pytest.raises(RuntimeError, match="crash"):
        with staged_directory(out, KIND, complete="data.txt") as tmp:
            (tmp / "data.txt").write_text("half")
            raise RuntimeError("crash")
    with pytest.raises(ClipDebiasError, match="finished without writing data.txt; nothing was replaced"):
        with staged_directory(out, KIND, complete="data.txt") as tmp:
            (tmp / "other.txt").write_text("no completion file")
    assert (out / "data.txt").read_text() == "old" and litter(tmp_path) == []


def test_a_file_appearing_during_the_run_is_kept(tmp_path: Path, notices: pytest.LogCaptureFixture) -> None:
    """A user file that appears in the old output while the new one is written: the pre-swap check refuses."""
    out = write_ours(tmp_path / "out", "old")
    with pytest.raises(ClipDebiasError, match="holds late.txt, which clip-debias did not write"):
        with staged_directory(out, KIND, complete="data.txt") as tmp:
            (tmp / "data.txt").write_text("new")
            (out / "late.txt").write_text("mine")
    assert (out / "late.txt").read_text() == "mine" and (out / "data.txt").read_text() == "old"
    assert litter(tmp_path) == []


def test_umask_permissions(tmp_path: Path, umask_027: None) -> None:
    out = write_ours(tmp_path / "out", "x")
    assert mode(out) == mode(out / "sub") == 0o750
    assert mode(out / "data.txt") == mode(out / "sub" / "x.bin") == mode(out / MARKER_NAME) == 0o640
    f = write_atomic(tmp_path / "f.json", "{}", "locate-plan")
    assert mode(f) == 0o640
    os.umask(0o002)
    write_ours(out, "y")
    assert mode(out) == 0o775 and mode(out / "data.txt") == 0o664


# ---- stale staging of a killed run ----------------------------------------------------------------------------------
def _stage(out: Path, role: str, pid: int, marker_kind: str | None, state: str = "staging") -> Path:
    d = out.with_name(f".{out.name}.{role}-{host_id()}-{pid}-0123abcd")
    d.mkdir()
    (d / "part.bin").write_bytes(b"partial")
    if marker_kind is not None:
        files = None if state == "staging" else {"part.bin": __import__("hashlib").sha256(b"partial").hexdigest()}
        new_marker(marker_kind, files, state=state).write(d)
    return d


def test_stale_staging_folder_removed_and_said(tmp_path: Path, notices: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "art"
    stale = _stage(out, "tmp", dead_pid(), KIND)
    foreign = _stage(out, "tmp", dead_pid(), None)  # our name pattern but no marker: not ours, left alone
    other = _stage(out, "tmp", dead_pid(), "model")  # a marker of another kind: left alone
    alive = _stage(out, "tmp", os.getppid(), KIND)  # its writer still runs: left alone
    write_ours(out, "x")
    assert not stale.exists() and foreign.exists() and other.exists() and alive.exists()
    assert any(f"removed {stale}, the staging folder of a killed run" in r.message for r in notices.records)
    assert any("is being written by a running process" in r.message for r in notices.records)


def test_set_aside_output_restored_when_target_missing(tmp_path: Path, notices: pytest.LogCaptureFixture) -> None:
    """Killed between moving the old output aside and renaming the new one in: the next run puts it back first."""
    out = tmp_path / "art"
    old = _stage(out, "old", dead_pid(), KIND, state="complete")
    with pytest.raises(RuntimeError):
        with staged_directory(out, KIND):
            raise RuntimeError("this run fails too")
    assert (out / "part.bin").read_bytes() == b"partial" and not old.exists()
    assert any("restored" in r.message for r in notices.records)


def test_stale_partial_file_removed(tmp_path: Path, notices: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "plan.json"
    partial = tmp_path / f".plan.json.tmp-{host_id()}-{dead_pid()}-0123abcd"
    partial.write_text("{")
    write_atomic(path, "{}", "locate-plan")
    assert not partial.exists() and any("a partial file left by a killed run" in r.message for r in notices.records)


# ---- in place (the demo) ------------------------------------------------------------------------------------------
def test_claim_directory(tmp_path: Path) -> None:
    d = claim_directory(tmp_path / "demo", "demo")
    assert read_marker(d).kind == "demo" and read_marker(d).files is None
    (d / "x.txt").write_text("mine")
    assert claim_directory(d, "demo") == d  # ours: reused, nothing removed
    assert (d / "x.txt").read_text() == "mine"
    user = tmp_path / "user"
    user.mkdir()
    (user / "plan.json").write_text("{}")
    before = snapshot(tmp_path)
    with pytest.raises(ClipDebiasError, match="user: exists, is not empty and has no clip-debias-output.json: not a "
                                              "demo folder"):
        claim_directory(user, "demo")
    with pytest.raises(ClipDebiasError, match="refusing to replace it as a whole"):
        write_ours(d, "x", kind="demo")
    assert snapshot(tmp_path) == before


# ---- single files -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, ours", [
    ("locate-plan", json.dumps({"spurious": [], "salient": [], "n_wrong_grid": [], "n_correct_grid": [],
                                "threshold": 0.1})),
    ("verify-report", json.dumps({"report": "clip-debias verify"})),
    ("compare-file", json.dumps({"rows": [{"method": "zero-shot", "accuracy": 1, "worst_group_accuracy": 1}]})),
    ("report-html", '<!DOCTYPE html>\n<html><head><meta name="generator" content="clip-debias report">'),
    ("skipped-list", SKIPPED_HEADER + "\na.png\tfile not found\n"),
])
def test_single_file_replaced_only_when_ours(tmp_path: Path, kind: str, ours: str) -> None:
    mine = tmp_path / "mine.txt"
    mine.write_text("my notes")
    with pytest.raises(ClipDebiasError, match="mine.txt: exists and is not .*; refusing to overwrite it .*--force") \
            as e:
        write_atomic(mine, ours, kind)
    one_line(e)
    assert mine.read_text() == "my notes" and litter(tmp_path) == []
    write_atomic(mine, ours, kind, force=True)  # --force: replaced
    assert file_is_ours(mine, kind)
    write_atomic(mine, ours, kind)  # ours now: replaced without --force
    assert mine.read_text() == ours


def test_decomposition_cache_and_figure_are_recognised(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clip_debias.toolchain.figures import save_figure

    fig, ax = plt.subplots()
    png = save_figure(fig, tmp_path / "a.png", "locate")
    assert file_is_ours(png, "figure")
    fig, ax = plt.subplots()
    fig.savefig(tmp_path / "b.png")  # matplotlib's own Software text: not ours
    assert not file_is_ours(tmp_path / "b.png", "figure")
    with pytest.raises(ClipDebiasError, match="b.png: exists and is not a PNG figure written by clip-debias"):
        check_file_target(tmp_path / "b.png", "figure")


def test_atomic_file(tmp_path: Path) -> None:
    path = write_atomic(tmp_path / "new" / "r.json", "{}", "verify-report", force=True)
    with pytest.raises(RuntimeError):
        with atomic_file(path, "verify-report", force=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert path.read_text() == "{}" and litter(path.parent) == []
    with pytest.raises(ClipDebiasError, match="new: is a directory \\(expected a file path\\)"):
        write_atomic(tmp_path / "new", "x", "verify-report")


def test_file_kinds_are_declared_by_their_writers() -> None:
    """Each single-file kind is declared by the module ``FILE_KIND_WRITERS`` names (importing it registers it, with
    that name); ownership asks for no other kind."""
    import importlib

    from clip_debias.runtime.ownership import FILE_KIND_WRITERS, FILE_KINDS, file_kind

    for kind, module in FILE_KIND_WRITERS.items():
        importlib.import_module(module)
        assert FILE_KINDS[kind].name == kind and file_kind(kind) is FILE_KINDS[kind], kind
    assert set(FILE_KINDS) == set(FILE_KIND_WRITERS)
    with pytest.raises(ValueError, match="unknown file kind 'notes'"):
        file_kind("notes")


def test_runtime_kinds_need_no_toolchain(tmp_path: Path) -> None:
    """With only the runtime imported, a runtime-written kind (verify's report) is recognised without importing the
    toolchain; a PNG's text chunk is read with Pillow (``PngInfo``)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    report = tmp_path / "r.json"
    report.write_text(json.dumps({"report": "clip-debias verify"}))
    for software, ours in (("clip-debias report", True), ("matplotlib", False)):
        info = PngInfo()
        info.add_text("Software", software)
        Image.new("RGB", (4, 4)).save(tmp_path / f"{ours}.png", pnginfo=info)
    code = ("import sys; from pathlib import Path; from clip_debias.runtime.ownership import file_is_ours, png_text; "
            f"d = Path({str(tmp_path)!r}); "
            "print(file_is_ours(d / 'r.json', 'verify-report'), png_text(d / 'True.png', 'Software'), "
            "png_text(d / 'r.json', 'Software'), any(m.startswith('clip_debias.toolchain') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "clip-debias", "report", "None", "False"]
    assert file_is_ours(tmp_path / "True.png", "figure") and not file_is_ours(tmp_path / "False.png", "figure")
