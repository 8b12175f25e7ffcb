"""Write an artifact directory atomically.

Protocol (``staged_artifact``, see ``runtime.atomic_output``): make ``.ARTIFACT.tmp-XXXX`` beside the target, let
the caller write the model files into it, hash them, write ``manifest.json`` LAST (``Manifest.save``), then rename
the temp dir onto ``ARTIFACT`` (an existing artifact is first renamed aside to ``.ARTIFACT.old-...`` and the files it
listed are removed after the swap; only an artifact of ours, untouched, is ever replaced: ``runtime.ownership``). On
any failure the temp dir is removed, so
an interrupted export never leaves a directory that loads: a temp dir holds no manifest until every model file is
complete, and the target name only ever points at a finished artifact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import ContextManager

from clip_debias.runtime.atomic_output import staged_directory
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.manifest import MANIFEST_NAME, Manifest, ModelFile, sha256_file

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


def staged_artifact(out: str | Path) -> ContextManager[Path]:
    """A fresh temp dir beside ``out``; on normal exit it must hold ``manifest.json`` and is renamed onto ``out``
    (replacing an artifact of ours, never another directory); on any exception ``out`` is untouched."""
    return staged_directory(out, "artifact", complete=MANIFEST_NAME)


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
