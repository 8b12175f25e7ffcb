"""Write an artifact directory atomically.

Protocol (``staged_artifact``): make ``ARTIFACT.tmp-XXXX`` beside the target, let the caller write the model files
into it, hash them, write ``manifest.json`` LAST, then rename the temp dir onto ``ARTIFACT`` (an existing artifact is
first renamed aside to ``ARTIFACT.old-XXXX`` and removed after the swap). On any failure the temp dir is removed, so
an interrupted export never leaves a directory that loads: a temp dir holds no manifest until every model file is
complete, and the target name only ever points at a finished artifact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from runtime.errors import ArtifactError, ClipDebiasError
from runtime.manifest import MANIFEST_NAME, Manifest, ModelFile, sha256_file

# file name -> (kind, precision) as listed in the manifest (see runtime/manifest.py)
ONNX_FP32 = "model.onnx"
ONNX_FP16 = "model.fp16.onnx"
ONNX_INT8 = "model.int8.onnx"
ONNX_ORT = "model.ort.onnx"
TRT_PLAN = "model.plan"
TRT_SIDECAR = "model.plan.json"


def model_file(artifact_dir: str | Path, name: str, kind: str, precision: str) -> ModelFile:
    """A manifest ``files`` entry for ``artifact_dir/name`` with its sha256."""
    path = Path(artifact_dir) / name
    if not path.is_file():
        raise ClipDebiasError(f"{path}: missing (expected the exported {kind} {precision} model file)")
    return ModelFile(path=name, sha256=sha256_file(path), kind=kind, precision=precision)


def write_manifest(artifact_dir: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` (the last file of an export; its presence marks the artifact complete)."""
    path = Path(artifact_dir) / MANIFEST_NAME
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, path)
    return path


def verify_files(artifact_dir: str | Path, manifest: Manifest) -> None:
    """Every listed model file exists and has its recorded sha256, else ``ArtifactError`` naming the file."""
    for f in manifest.files:
        path = Path(artifact_dir) / f.path
        if not path.is_file():
            raise ArtifactError(f"{path}: listed in {MANIFEST_NAME} but missing")
        if sha256_file(path) != f.sha256:
            raise ArtifactError(f"{path}: sha256 differs from {MANIFEST_NAME} (file changed after export)")


@contextmanager
def staged_artifact(out: str | Path) -> Iterator[Path]:
    """Yield a fresh temp dir ``OUT.tmp-XXXX`` beside ``out``; on normal exit it must hold ``manifest.json`` and is
    renamed onto ``out`` (replacing an existing artifact); on any exception it is removed and ``out`` is untouched."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not out.is_dir():
        raise ClipDebiasError(f"{out}: exists and is not a directory (expected an artifact directory path)")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ClipDebiasError(f"{out}: exists, is not empty and has no {MANIFEST_NAME}; refusing to replace a "
                              "directory that is not an artifact")
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the artifact is meant to be shipped and read by services
        yield tmp
        if not (tmp / MANIFEST_NAME).is_file():
            raise ClipDebiasError(f"{tmp}: export finished without writing {MANIFEST_NAME}")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` onto ``out``; an existing ``out`` is moved aside first (rename is atomic per directory entry)."""
    old: Path | None = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
        os.rmdir(old)
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)  # put the previous artifact back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def copy_artifact_files(src: str | Path, dst: str | Path, manifest: Manifest, skip: tuple[str, ...] = ()) -> None:
    """Copy the model files listed in ``manifest`` (and sidecars that exist) from ``src`` into ``dst``."""
    src, dst = Path(src), Path(dst)
    names = [f.path for f in manifest.files] + [TRT_SIDECAR]
    for name in names:
        if name in skip or not (src / name).is_file():
            continue
        try:
            os.link(src / name, dst / name)  # same filesystem: no copy; the originals are never written in place
        except OSError:
            shutil.copy2(src / name, dst / name)
