"""CLI options shared by every command that loads a CLIP model or reads a dataset (one definition each)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

ModelOpt = Annotated[str, typer.Option("--model", help="open_clip model name, e.g. ViT-B-16 (or clipdebias-lab).")]
PretrainedOpt = Annotated[Optional[str], typer.Option(
    "--pretrained", help="open_clip pretrained tag, downloaded by open_clip (e.g. laion2b_s34b_b88k).")]
WeightsOpt = Annotated[Optional[Path], typer.Option(
    "--weights", help="Local OpenAI / open_clip checkpoint (.pt, .bin, .safetensors).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="torch device: cpu, cuda, cuda:1 ...")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="compute dtype: fp32 | fp16 | bf16 (terms are stored fp32).")]
DatasetOpt = Annotated[str, typer.Option("--dataset", help="waterbirds | celeba | csv")]
DataOpt = Annotated[Path, typer.Option("--data", help="Dataset root folder (csv: the CSV file).")]
SplitOpt = Annotated[str, typer.Option("--split", help="train | val | test")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")]

DTYPES = ("fp32", "fp16", "bf16")


def torch_dtype(name: str) -> Any:
    """'fp32' | 'fp16' | 'bf16' -> torch dtype, or one clear error line."""
    import torch

    from toolchain.errors import ClipDebiasError

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise ClipDebiasError(f"--dtype {name}: expected one of {', '.join(DTYPES)}")
    return table[name]


def load_model(model: str, pretrained: str | None, weights: Path | None, device: str = "cpu",
               dtype: str = "fp32") -> Any:
    """``toolchain.models.loading.load_clip`` from CLI option values."""
    from toolchain.models.loading import load_clip

    return load_clip(model, pretrained=pretrained, weights=weights, device=device, dtype=torch_dtype(dtype))
