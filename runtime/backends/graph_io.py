"""A model graph's inputs and outputs against the specs it must meet (the manifest's, or the exporter's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from clip_debias.runtime.errors import ArtifactError
from clip_debias.runtime.manifest import MANIFEST_NAME, TensorSpec

# dtype spellings of onnxruntime ("tensor(float)"), OpenVINO ("f32") and the manifest ("float32", "fp32", ...)
_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "float": "float32", "fp32": "float32", "f32": "float32",
           "half": "float16", "fp16": "float16", "f16": "float16", "double": "float64", "f64": "float64",
           "i64": "int64", "i32": "int32"}

Graph = list[tuple[str, str, list[Any]]]  # (name, dtype, shape) per tensor; dims: int, or str/None/-1 for dynamic


def norm_dtype(dtype: str) -> str:
    """Any backend's or the manifest's dtype name -> the numpy name (float32, float16, ...)."""
    d = str(dtype).lower()
    return _DTYPES.get(d, d)


def check_graph_io(file: Path, kind: str, specs: Sequence[TensorSpec], graph: Graph) -> None:
    """``graph``: (name, dtype, shape) of the model's inputs or outputs (``kind``: "inputs" | "outputs").
    Names must be the same sets; dtypes equal; a fixed spec dim must equal the graph dim, a named (dynamic) spec dim
    must not be fixed in the graph. Raises a one-line ``ArtifactError``."""
    got = {name: (dtype, shape) for name, dtype, shape in graph}
    want = {t.name: t for t in specs}
    if set(got) != set(want):
        raise ArtifactError(
            f"{file}: graph {kind} {sorted(got)} do not match {MANIFEST_NAME} field '{kind}' {sorted(want)}"
        )
    for name, spec in want.items():
        dtype, shape = got[name]
        if norm_dtype(dtype) != norm_dtype(spec.dtype):
            raise ArtifactError(
                f"{file}: graph {kind[:-1]} '{name}' has dtype {norm_dtype(dtype)}, {MANIFEST_NAME} says {spec.dtype}"
            )
        if len(shape) != len(spec.shape):
            raise ArtifactError(
                f"{file}: graph {kind[:-1]} '{name}' has shape {shape}, {MANIFEST_NAME} says {spec.shape}"
            )
        for g, m in zip(shape, spec.shape):
            g_fixed = isinstance(g, int) and g >= 0
            if (isinstance(m, int) and g_fixed and g != m) or (isinstance(m, str) and g_fixed):
                raise ArtifactError(
                    f"{file}: graph {kind[:-1]} '{name}' has shape {shape}, {MANIFEST_NAME} says {spec.shape}"
                )


def check_io(file: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], graph_inputs: Graph,
             graph_outputs: Graph) -> None:
    """``check_graph_io`` on both sides."""
    check_graph_io(file, "inputs", inputs, graph_inputs)
    check_graph_io(file, "outputs", outputs, graph_outputs)
