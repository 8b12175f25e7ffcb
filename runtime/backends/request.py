"""What ``runtime.load`` asks of a backend (``BackendRequest``) and how a backend gets its model file from the
artifact: ``model_source`` looks the file up in the manifest and hashes it -- the one place where a model file is
integrity-checked before a backend opens it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clip_debias.runtime.backends.base import ModelSource
from clip_debias.runtime.errors import ArtifactError
from clip_debias.runtime.manifest import MANIFEST_NAME, Manifest, ModelFile

PERFORMANCE_HINTS = ("latency", "throughput")


@dataclass(frozen=True)
class BackendOptions:
    """How the chosen backend opens its model file.

    intra_op_threads:  CPU threads of ONNX Runtime / OpenVINO (None: the library's default, one per core)
    use_ort_optimized: ONNX Runtime on the CPU: prefer the listed ``onnx-ort`` fp32 graph (``model.ort.onnx``)
    check_sha256:      hash the chosen model file against the manifest before opening it
    cuda_graph:        ONNX Runtime CUDA graphs, one captured per batch size (backend onnxruntime or auto, device
                       cuda; see ``runtime.captured_graphs``)
    stop_spinning:     ONNX Runtime: idle intra-op threads stop spinning when a run returns (for benchmarks that take
                       turns with torch; a service keeps the default, which lowers back-to-back latency)
    performance_hint:  OpenVINO: "latency" (one stream, all threads on one request) | "throughput" (several streams)
    """

    intra_op_threads: int | None = None
    use_ort_optimized: bool = True
    check_sha256: bool = True
    cuda_graph: bool = False
    stop_spinning: bool = False
    performance_hint: str = "latency"


@dataclass(frozen=True)
class BackendRequest:
    """One ``select_backend`` call: the artifact at ``root`` and what was asked for."""

    root: Path
    manifest: Manifest
    backend: str  # as asked (may be "auto")
    device: str  # as asked: auto | cpu | cuda
    precision: str
    options: BackendOptions

    def listed(self, kind: str, precision: str) -> ModelFile:
        """The manifest's ``kind`` file of ``precision``, or one ``ArtifactError`` line listing what there is."""
        mf = self.manifest.file(kind, precision)
        if mf is None:
            have = ", ".join(f"{f.path} ({f.kind}, {f.precision})" for f in self.manifest.files)
            raise ArtifactError(f"{self.root / MANIFEST_NAME}: no {kind} {precision} model listed in 'files' "
                                f"(has: {have})")
        return mf


def model_source(req: BackendRequest, kind: str, precision: str) -> ModelSource:
    """The artifact's ``kind`` file of ``precision`` as a ``ModelSource``, its sha256 checked against the manifest
    when ``options.check_sha256`` (the integrity hook every backend goes through)."""
    mf = req.listed(kind, precision)
    if req.options.check_sha256:
        req.manifest.check_files(req.root, verify=[mf])
    return ModelSource.listed(req.root, req.manifest, mf)
