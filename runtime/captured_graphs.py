"""ONNX Runtime CUDA graphs: persistent IO bindings, one captured graph per batch size.

A CUDA graph replays the kernels recorded at capture with the device addresses recorded at capture, so a session
created with the CUDA provider option ``enable_cuda_graph=1`` must be run through an IO binding whose input and
output buffers never move. ``CapturedGraphs`` keeps, for each batch size n it has seen (up to ``max_graphs``):

    input  OrtValue [n, 3, H, W] float32 and outputs logits [n, C], embedding [n, D], allocated once on the device,
    one IOBinding that binds them, and a graph id g (run option ``gpu_graph_id``; onnxruntime >= 1.18 keeps one
    captured graph per id).

A call copies the batch into the input buffer (``OrtValue.update_inplace``: host -> device, or device -> device for
a DLPack-capable device tensor), replays graph g (onnxruntime captures it on the first runs of that id) and copies
both outputs back to the host. Buffers are shared by every caller of a batch size, so calls hold one lock. A batch
size beyond ``max_graphs`` gets None back and runs uncaptured (``gpu_graph_id=-1``) with its own binding, under the
same lock (``OrtBackend``).

The class is written for CUDA but is device-agnostic: on the CPU provider the same bindings run without capture,
which is how the tests check it (CI has no GPU). On an H100 (``benchmarks/gpu_bench.py``) captured and uncaptured
logits were identical, and ViT-B/16 fused fp16 at batch 1 went from 3.2 to 0.93 ms.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

GPU_GRAPH_ID = "gpu_graph_id"  # onnxruntime run config key
UNCAPTURED = -1  # gpu_graph_id value that skips capture and replay for one run
MAX_GRAPHS = 8


def run_options(graph_id: int) -> Any:
    """``onnxruntime.RunOptions`` selecting captured graph ``graph_id`` (-1: run without capture)."""
    import onnxruntime as ort

    ro = ort.RunOptions()
    ro.add_run_config_entry(GPU_GRAPH_ID, str(int(graph_id)))
    return ro


@dataclass
class _Slot:
    """The fixed buffers of one batch size and the binding that holds them."""

    graph_id: int
    image: Any  # OrtValue [n, 3, H, W]
    outputs: list[Any]  # OrtValues, in ``output_dims`` order
    binding: Any  # onnxruntime IOBinding
    options: Any  # RunOptions with gpu_graph_id


class CapturedGraphs:
    """Per-batch-size persistent IO bindings on one onnxruntime session (see the module docstring).

    ``output_dims``: name -> trailing dims of that output (logits: [C], embedding: [D]); the batch dim is n."""

    def __init__(self, session: Any, input_name: str, output_dims: dict[str, list[int]], device: str = "cuda",
                 device_id: int = 0, max_graphs: int = MAX_GRAPHS) -> None:
        self.session, self.input_name, self.output_dims = session, input_name, dict(output_dims)
        self.device, self.device_id, self.max_graphs = device, device_id, max_graphs
        self._slots: dict[int, _Slot] = {}
        self.lock = threading.Lock()  # also held by the owner's uncaptured runs on this session

    @property
    def batch_sizes(self) -> list[int]:
        """Batch sizes that own a captured graph, in the order they were first seen."""
        return list(self._slots)

    def _value(self, shape: list[int]) -> Any:
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, self.device, self.device_id)

    def _slot(self, n: int, image_shape: tuple[int, ...]) -> _Slot:
        slot = self._slots.get(n)
        if slot is None:
            image = self._value([n, *image_shape[1:]])
            outputs = [self._value([n, *dims]) for dims in self.output_dims.values()]
            binding = self.session.io_binding()
            binding.bind_ortvalue_input(self.input_name, image)
            for name, value in zip(self.output_dims, outputs):
                binding.bind_ortvalue_output(name, value)
            graph_id = len(self._slots)
            slot = self._slots[n] = _Slot(graph_id, image, outputs, binding, run_options(graph_id))
        return slot

    def can_capture(self, n: int) -> bool:
        return n in self._slots or len(self._slots) < self.max_graphs

    def run(self, batch: Any) -> list[np.ndarray] | None:
        """``batch``: float32 numpy [n, 3, H, W], or an OrtValue of that shape (copied device to device). Returns
        host arrays in ``output_dims`` order, or None when n is a new batch size and ``max_graphs`` are taken (the
        caller runs it uncaptured)."""
        shape = tuple(batch.shape() if callable(getattr(batch, "shape", None)) else batch.shape)
        n = int(shape[0])
        with self.lock:
            if not self.can_capture(n):
                return None
            slot = self._slot(n, shape)
            slot.image.update_inplace(batch)
            self.session.run_with_iobinding(slot.binding, slot.options)
            # copied while the lock is held: on the CPU provider ``numpy()`` is a view of the shared buffer
            return [np.array(v.numpy(), copy=True) for v in slot.outputs]
