"""What every backend shares: the ``Backend`` protocol, the model a backend opens (``ModelSource``), its errors.

A backend maps a validated float32 batch [N, 3, H, W] to ``(logits [N, C], embedding [N, D])`` float32 and is safe to
call from several threads at once. It opens a ``ModelSource``: one model file plus the input/output specs its graph
must have -- from an artifact's manifest (``ModelSource.listed``) or given directly, which is how the export gates
run graphs that have no manifest yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from clip_debias.runtime.device_input import DeviceBatch
from clip_debias.runtime.errors import ClipDebiasError
from clip_debias.runtime.manifest import Manifest, ModelFile, TensorSpec

OUTPUTS = ("logits", "embedding")


class BackendError(ClipDebiasError):
    """The requested backend/device/precision cannot be provided on this machine (missing package, no GPU...)."""


@dataclass(frozen=True)
class ModelSource:
    """One model file and the graph contract it must meet: ``inputs`` (the image) and ``outputs`` (``OUTPUTS``).

    ``precision`` is the file's (fp32 | fp16 | int8); a backend may compute at another (OpenVINO bf16 reads the fp32
    graph). ``listed_as`` is the path the manifest lists it under ('' for a graph outside an artifact)."""

    path: Path
    precision: str
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    listed_as: str = ""

    @classmethod
    def listed(cls, root: Path, manifest: Manifest, mf: ModelFile) -> "ModelSource":
        """The artifact file ``mf`` of ``manifest`` (artifact directory ``root``)."""
        return cls(Path(root) / mf.path, mf.precision, list(manifest.inputs), list(manifest.outputs), mf.path)

    @property
    def file(self) -> str:
        """How ``info()`` names the file: its manifest path, or its file name."""
        return self.listed_as or self.path.name

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    def output_dims(self) -> dict[str, list[int]]:
        """``OUTPUTS`` name -> trailing (non-batch) dims, as fixed ints."""
        dims = {t.name: [int(d) for d in t.shape[1:]] for t in self.outputs}
        return {n: dims[n] for n in OUTPUTS}


class Backend(Protocol):
    name: str  # the selection table's key: "onnxruntime" | "tensorrt" | "openvino"
    device: str  # "cpu" | "cuda" (what actually runs, after any allowed fallback)
    precision: str  # what it computes in (fp32 | fp16 | int8 | bf16)
    source: ModelSource

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [N, 3, H, W] (validated, C-contiguous) -> (logits [N, C], embedding [N, D]) float32."""
        ...

    def run_device(self, batch: DeviceBatch) -> tuple[np.ndarray, np.ndarray]:
        """A CUDA-resident float32 [N, 3, H, W] batch (shape/dtype checked) -> outputs copied to the host."""
        ...

    def info(self) -> dict[str, Any]:
        """What runs: backend, device, precision, file, providers/options."""
        ...


def what_runs(b: Backend) -> dict[str, Any]:
    """The part of ``Backend.info`` every backend has."""
    return {"backend": b.name, "device": b.device, "precision": b.precision, "file": b.source.file}


def host_only(name: str) -> BackendError:
    """The error of ``run_device`` on a backend that takes host (numpy) batches only."""
    return BackendError(f"device-resident input is supported by the onnxruntime backend on CUDA; pass a numpy array "
                        f"to the {name} backend")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def image_by_image(run: Callable[[np.ndarray], Sequence[np.ndarray]], batch: np.ndarray) -> list[np.ndarray]:
    """``run`` on each image [1, 3, H, W] of ``batch``, outputs concatenated along the batch axis. For int8 graphs:
    dynamic quantization takes one scale per activation tensor, so in a batch one image's range would move every
    other image's result; image by image each result depends on that image alone (at the same CPU cost: the GEMMs
    already have N tokens rows per image)."""
    if len(batch) == 1:
        return list(run(batch))
    outs = [run(batch[i : i + 1]) for i in range(len(batch))]
    return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]
