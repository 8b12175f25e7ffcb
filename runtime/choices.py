"""Closed sets of option values (``--precision``, ``--dataset``, ``--backend`` ...), each defined once: the runtime's
here, the toolchain's in ``toolchain.choices``. Both modules import nothing heavy, so the CLI builds its options from
them without importing torch, pydantic or an inference library; the modules that validate a value import its set.

A set is a ``Choice`` subclass: a ``StrEnum``, so every member *is* its string (``Precision.FP16 == "fp16"``; JSON,
pydantic ``Literal`` fields and f-strings see the plain value). The library checks a value with
``Cls.parse(value, "--option")`` (one line naming the option and the allowed values); the CLI takes the class itself as
an option's type (``toolchain.cli.options.choice_option``), so Typer lists the values in ``--help`` and refuses any
other before the command runs. Adding a value is one member.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from clip_debias.runtime.errors import ClipDebiasError

C = TypeVar("C", bound="Choice")


class Choice(StrEnum):
    """Base of every closed set of option values."""

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The values, in definition order (also the order ``--help`` lists them in)."""
        return tuple(m.value for m in cls)

    @classmethod
    def parse(cls: type[C], value: str, option: str) -> C:
        """``value`` as a member, else ``ClipDebiasError`` naming ``option`` and the allowed values."""
        try:
            return cls(value)
        except ValueError:
            raise ClipDebiasError(f"{option} {value!r}: expected one of {', '.join(cls.values())}") from None

    @classmethod
    def metavar(cls) -> str:
        """How ``--help`` shows the set: ``a|b|c``."""
        return "|".join(cls.values())


class DatasetFormat(Choice):
    """``--dataset``: the formats ``runtime.datasets.load_index`` reads."""

    WATERBIRDS = "waterbirds"
    CELEBA = "celeba"
    FAIRFACE = "fairface"
    CSV = "csv"


class Dedupe(Choice):
    """``--dedupe``: when two rows of a split name the same image file (``runtime.duplicates``)."""

    PATH = "path"  # the same resolved path
    CONTENT = "content"  # the same bytes (sha256 of the file)


class FairFaceColumn(Choice):
    """``--target``: the FairFace column that is the class (``runtime.datasets.FAIRFACE_VALUES`` holds each column's
    values; the other two are attributes)."""

    AGE = "age"
    GENDER = "gender"
    RACE = "race"


class Split(Choice):
    """``--split``: a dataset's splits (``runtime.datasets``)."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class BackendName(Choice):
    """``--backend``: ``auto`` and every backend of ``runtime.backends.selection.BACKEND_MODULES`` (which checks that
    both list the same), in ``auto``'s order."""

    AUTO = "auto"
    TENSORRT = "tensorrt"
    OPENVINO = "openvino"
    ONNXRUNTIME = "onnxruntime"


class RuntimeDevice(Choice):
    """``--device`` of the runtime (``runtime.backends.selection``; ``auto``: the best available, the only one that
    may fall back to the CPU)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class FilePrecision(Choice):
    """The precision of an artifact's model file (``runtime.manifest.PRECISIONS``; ``export triton --precision``)."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Precision(Choice):
    """``--precision`` of the runtime: what a backend computes in (``runtime.backends.selection``; artifact files are
    fp32 | fp16 | int8, ``runtime.manifest.PRECISIONS``; bf16 is OpenVINO's compute precision over model.onnx)."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    BF16 = "bf16"


class VerifyEngine(Choice):
    """``verify --engine``: where the model runs over the split (``runtime.verify.LocalEngine`` in this process, or
    ``serving.ray_verify.RayEngine`` on Ray)."""

    LOCAL = "local"
    RAY = "ray"


class ServeDevice(Choice):
    """``serve --device``: the device of every replica (``serving.ray_app.ServeOptions``; no ``auto``: a service
    runs where it is told)."""

    CPU = "cpu"
    CUDA = "cuda"


class ServeEngine(Choice):
    """``serve --engine``: one process (uvicorn + an asyncio batcher; ``serving.server``) or Ray Serve for a cluster
    (``serving.ray_app``)."""

    DEFAULT = "default"
    RAY = "ray"


class SearchEngine(Choice):
    """``search --engine``: exact numpy search, or FAISS (the [search] extra; same results on exact indexes)."""

    NUMPY = "numpy"
    FAISS = "faiss"
