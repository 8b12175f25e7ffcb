"""runtime.integrity: runtime.load checks every file of an artifact (a one-byte change anywhere is refused), and the
artifact digest pins the exact artifact (expected_digest / verify --expect-digest)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clip_debias import runtime
from clip_debias.runtime.errors import ArtifactError, InputError
from clip_debias.runtime.integrity import digest_of, parse_digest, verify_artifact
from clip_debias.runtime.ownership import MARKER_NAME
from runtime_fixtures import build_artifact, build_waterbirds


@pytest.fixture(scope="module")
def exported(tiny_clip, tmp_path_factory) -> tuple[Path, str]:
    """A real export (fp32 + fp16, with its output marker) and the digest export reported."""
    from clip_debias.exporters.onnx_export import export_onnx_report
    from clip_debias.toolchain.correct.classifier import plain_classifier

    model = plain_classifier(tiny_clip, ["a", "b", "c"], ["g0", "g1"])
    report = export_onnx_report(model, tmp_path_factory.mktemp("i") / "art", precision="both", ort_optimize=False)
    return Path(report.artifact), report.digest


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_export_digest_is_the_load_digest(exported: tuple[Path, str]) -> None:
    art, digest = exported
    assert digest.startswith("sha256:") and len(digest) == 71
    assert runtime.load(art, device="cpu").digest == digest == verify_artifact(art)[1]
    assert sorted(p.name for p in art.iterdir()) == sorted([MARKER_NAME, "manifest.json", "model.onnx",
                                                            "model.fp16.onnx"])


@pytest.mark.parametrize("name", ["manifest.json", "model.onnx", "model.fp16.onnx", MARKER_NAME])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_one_byte_change_in_any_file_refused_on_load(exported: tuple[Path, str], tmp_path: Path, name: str,
                                                      precision: str) -> None:
    """Every file is checked, not only the one the backend opens (the issue: model.onnx changed while
    model.ort.onnx ran)."""
    art = copy(exported[0], tmp_path / "art")
    flip_byte(art / name)
    with pytest.raises(ArtifactError) as e:
        runtime.load(art, device="cpu", precision=precision)
    assert "\n" not in str(e.value) and str(art) in str(e.value)


@pytest.mark.parametrize("edit", ["swap class names", "normalization mean"])
def test_manifest_edits_refused_and_change_the_digest(exported: tuple[Path, str], tmp_path: Path, edit: str) -> None:
    art = copy(exported[0], tmp_path / "art")
    m = json.loads((art / "manifest.json").read_text())
    if edit == "swap class names":
        m["class_names"] = m["class_names"][::-1]
    else:
        m["preprocessing"]["mean"][0] += 0.1
    (art / "manifest.json").write_text(json.dumps(m, indent=2))
    with pytest.raises(ArtifactError, match="manifest.json: sha256 .* does not match its output marker"):
        runtime.load(art, device="cpu")
    (art / MARKER_NAME).unlink()  # an attacker who also drops the marker: loads, but the digest is not the pinned one
    clf = runtime.load(art, device="cpu")
    assert clf.digest != exported[1]
    with pytest.raises(ArtifactError, match="artifact digest sha256:[0-9a-f]{64} differs from the expected"):
        runtime.load(art, device="cpu", expected_digest=exported[1])


def test_expected_digest_pins_the_artifact(exported: tuple[Path, str]) -> None:
    art, digest = exported
    assert runtime.load(art, device="cpu", expected_digest=digest).digest == digest
    assert runtime.load(art, device="cpu", expected_digest=digest.upper()[len("SHA256:"):]).digest == digest
    other = "sha256:" + "0" * 64
    with pytest.raises(ArtifactError, match=f"differs from the expected {other}"):
        runtime.load(art, device="cpu", expected_digest=other)
    with pytest.raises(InputError, match="expected_digest 'abc': expected sha256:<64 hex digits>"):
        runtime.load(art, device="cpu", expected_digest="abc")


def test_digest_definition() -> None:
    """sha256 over the header line and 'PATH\\0SHA\\n' per file in path order (written out here)."""
    import hashlib

    files = {"model.onnx": "b" * 64, "manifest.json": "a" * 64}
    text = b"clip-debias artifact digest v1\n" + f"manifest.json\0{'a' * 64}\nmodel.onnx\0{'b' * 64}\n".encode()
    assert digest_of(files) == "sha256:" + hashlib.sha256(text).hexdigest()
    assert parse_digest(" SHA256:" + "AB" * 32) == "sha256:" + "ab" * 32


def test_legacy_artifact_without_marker_loads_and_is_checked(tmp_path: Path) -> None:
    """An artifact written before markers existed: its model files are checked, its manifest is covered by the
    digest."""
    fx = build_artifact(tmp_path / "legacy", fp16=True, ort_optimized=True)
    clf = runtime.load(fx.path, device="cpu")
    assert clf.info()["file"] == "model.ort.onnx" and clf.digest is not None
    flip_byte(fx.path / "model.onnx")  # not the file the CPU backend runs
    with pytest.raises(ArtifactError, match="model.onnx: sha256 .* does not match manifest.json"):
        runtime.load(fx.path, device="cpu")
    assert runtime.load(fx.path, device="cpu", check_sha256=False).digest is None


def test_verify_pins_and_reports_the_digest(exported: tuple[Path, str], tmp_path: Path) -> None:
    from clip_debias.runtime.verify import verify
    from clip_debias.toolchain.cli.app import app

    fx = build_artifact(tmp_path / "a", fp16=False)
    build_waterbirds(tmp_path / "wb")
    digest = runtime.load(fx.path, device="cpu").digest
    r = verify(fx.path, "waterbirds", tmp_path / "wb", progress=False, expected_digest=digest)
    assert r.artifact_digest == digest and json.loads(r.to_json())["artifact_digest"] == digest
    base = ["verify", str(fx.path), "--dataset", "waterbirds", "--data", str(tmp_path / "wb"), "--split", "test",
            "--no-progress"]
    ok = CliRunner().invoke(app, [*base, "--expect-digest", digest])
    assert ok.exit_code == 0 and f"artifact digest {digest}" in ok.output
    bad = CliRunner().invoke(app, [*base, "--expect-digest", exported[1]])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "differs from the expected" in bad.output
    malformed = CliRunner().invoke(app, [*base, "--expect-digest", "deadbeef"])
    assert malformed.exit_code == 2 and "--expect-digest 'deadbeef': expected sha256:" in malformed.output
