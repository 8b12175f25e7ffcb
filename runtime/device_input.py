"""Device-resident input batches, passed to a CUDA session by IO binding with no host round trip.

Accepted by ``Classifier.predict_logits`` / ``run`` besides numpy arrays:

- an ``onnxruntime.OrtValue`` (on ``cuda``: bound as is; on ``cpu``: read as numpy and validated like an array);
- any object exposing ``__cuda_array_interface__`` (a torch CUDA tensor, a CuPy array, ...): its data pointer is
  bound directly. Nothing is imported to read it, so the runtime stays torch-free.

A device batch must already be float32 [N, 3, H, W] and C-contiguous (no cast or copy happens on the device), and
the caller must have finished writing it (e.g. ``torch.cuda.current_stream().synchronize()``): the runtime cannot
see the producer's stream. Its values are not scanned for NaN/Inf (that would need a device-to-host copy);
non-finite *outputs* are refused instead, naming the batch items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from clip_debias.runtime.errors import InputError

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


@dataclass(frozen=True)
class DeviceBatch:
    """A view of a device-resident batch: what IO binding needs, plus the object that owns the memory."""

    shape: tuple[int, ...]
    dtype: str  # numpy dtype name
    device: str  # "cpu" | "cuda"
    device_id: int
    pointer: int  # device data pointer (0 for an OrtValue, which is bound as a value)
    source: Any  # the OrtValue / array object (kept alive for the duration of the call)

    @property
    def is_ortvalue(self) -> bool:
        return self.pointer == 0


def _c_contiguous(shape: tuple[int, ...], strides: tuple[int, ...] | None, itemsize: int) -> bool:
    if strides is None:
        return True
    expected, step = [], itemsize
    for n in reversed(shape):
        expected.append(step)
        step *= n
    return all(s == e for s, e, n in zip(strides, reversed(expected), shape) if n > 1)


def as_device_batch(x: Any) -> DeviceBatch | None:
    """``DeviceBatch`` for an OrtValue or a ``__cuda_array_interface__`` object; None for anything else."""
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None and not isinstance(x, np.ndarray):
        try:
            shape = tuple(int(n) for n in cai["shape"])
            dtype = np.dtype(cai["typestr"])
            pointer = int(cai["data"][0])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise InputError(f"input's __cuda_array_interface__ is malformed ({e})") from None
        strides = cai.get("strides")
        if not _c_contiguous(shape, tuple(strides) if strides is not None else None, dtype.itemsize):
            raise InputError(f"device input with strides {tuple(strides)} is not C-contiguous; pass a contiguous "
                             "tensor (e.g. x.contiguous())")
        device_id = getattr(getattr(x, "device", None), "index", None)
        if device_id is None:
            device_id = getattr(getattr(x, "device", None), "id", 0)  # CuPy: x.device.id
        return DeviceBatch(shape, dtype.name, "cuda", int(device_id or 0), pointer, x)
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a base dependency
        return None
    if isinstance(x, ort.OrtValue):
        dtype = _ORT_TYPES.get(x.data_type(), x.data_type())
        device = "cuda" if x.device_name().lower().startswith("cuda") else "cpu"
        return DeviceBatch(tuple(int(n) for n in x.shape()), dtype, device, 0, 0, x)
    return None
