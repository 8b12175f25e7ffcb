"""The toolchain's (and the exporters') closed sets of option values (``runtime.choices.Choice``, which says why they
live apart from the torch modules that validate them: the CLI builds its options from here without importing torch).
Each is defined here once; the module named in its docstring validates with it (``Cls.parse``).
"""

from __future__ import annotations

from clip_debias.runtime.choices import Choice


class TorchDtype(Choice):
    """Base of the sets whose values name torch dtypes (fp32, fp16, bf16): ``.torch`` is the dtype (torch imported
    only there). The runtime's file and compute precisions (``runtime.choices.FilePrecision`` / ``Precision``) name
    the same values plus int8, for the inference libraries instead of torch."""

    @property
    def torch(self):  # noqa: ANN201 (torch.dtype; torch imported here only)
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.value]


class ComputeDtype(TorchDtype):
    """``--dtype``: the dtype the model computes in (``toolchain.models.loading``)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class TermsDtype(TorchDtype):
    """``--terms-dtype``: how a decomposition cache stores the head terms; embeddings and means stay fp32 / fp64
    (``toolchain.decompose.cache``)."""

    FP32 = "fp32"
    FP16 = "fp16"


class Convention(Choice):
    """``--convention``: how ln_post's centring and the biases are shared among the terms
    (``toolchain.decompose.conventions``, whose ``FORMULAS`` state each)."""

    TEXTSPAN = "textspan"
    CENTRED = "centred"


class MinoritySource(Choice):
    """``--minority-from``: minority groups from the split's group counts (per class, all but the most frequent
    group) or from zero-shot predictions (all but the group with the best accuracy) (``toolchain.locate.ltc``)."""

    COUNTS = "counts"
    PREDICTIONS = "predictions"


class HeadName(Choice):
    """``--classifier``: the name of a head kind, one per entry of ``toolchain.correct.heads.HEAD_KINDS`` (which
    checks that both list the same kinds; not ``runtime.Classifier``, the artifact class)."""

    ZEROSHOT = "zeroshot"
    PERCEPTION = "perception"
    LLE = "lle"


class Renorm(Choice):
    """``--renorm``: the norm of a projected head term (``toolchain.correct.edits``)."""

    STEPWISE = "stepwise"
    KEEP = "keep"
    UNIT_ONCE = "unit-once"


class ZFrom(Choice):
    """``--z-from``: PerceptionCLIP's P(z|x) from the class-conditional prompts summed over y (joint) or from the
    class-free prompts (class-free) (``toolchain.correct.perception``)."""

    JOINT = "joint"
    CLASS_FREE = "class-free"


class PairEmbeddings(Choice):
    """``--pair-embeddings``: accept directions E(p+) - E(p-) from unit-norm text embeddings (unit; the default
    protocol's) or unnormalized ones (raw; the reference protocol's) (``toolchain.correct.build``)."""

    UNIT = "unit"
    RAW = "raw"


class Protocol(Choice):
    """``--protocol`` (``toolchain.protocol``, whose docstring says what each does)."""

    DEFAULT = "default"
    REFERENCE = "reference"


class TritonKind(Choice):
    """``export triton --kind``: the instance group kind of the Triton model (``exporters.triton``)."""

    CPU = "cpu"
    GPU = "gpu"


class TritonBackend(Choice):
    """``export triton --backend``: Triton's own ONNX Runtime / TensorRT backends, or its python backend serving the
    artifact through ``clip_debias.runtime`` (``exporters.triton``)."""

    ONNXRUNTIME = "onnxruntime"
    PYTHON = "python"


class LabShortcuts(Choice):
    """``lab make-data --shortcuts``: the planted shortcuts, the background alone (today's data) or with a
    co-occurring object (``toolchain.lab.data.parse_shortcuts``; names in ``toolchain.lab.groups.SHORTCUTS``)."""

    BACKGROUND = "background"
    BACKGROUND_OBJECT = "background,object"


class LleSchedule(Choice):
    """``--lle-schedule``: how the LLE head trains (``toolchain.correct.lle_fit.SCHEDULES``, whose entries say what
    each is): the authors' UrbanCars schedule, their ImageNet one, or this project's earlier (lr, wd) grid."""

    URBANCARS = "urbancars"
    IMAGENET = "imagenet"
    GRID = "grid"


class LleRedraw(Choice):
    """``--lle-redraw``: what the swap augmentations take besides the swapped part (``toolchain.correct.augment``):
    the authors' cross-redraw (the other part from a random same-class image) or ours (the image's own)."""

    CROSS = "cross"
    OWN = "own"


class LleShiftInit(Choice):
    """``--lle-shift-init``: the shift classifier's start (``toolchain.correct.lle_fit.init_shift``): PyTorch's
    ``nn.Linear`` default (the authors') or zero (ours: every type equally likely)."""

    RANDOM = "random"
    ZERO = "zero"


class LabLoss(Choice):
    """``lab train --loss``: open_clip's softmax ``ClipLoss`` or SigLIP's pairwise sigmoid loss
    (``toolchain.lab.train``: ``sigmoid_loss``)."""

    CLIP = "clip"
    SIGMOID = "sigmoid"
