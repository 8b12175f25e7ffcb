"""CLI options shared by every command that loads a CLIP model or reads a dataset (one definition each)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from clip_debias.toolchain.decompose.layers import LAYERS_HELP


def check_device(device: str) -> str:
    """``--device`` value -> itself if torch can use it (cpu, cuda, cuda:N), else one clear error line. torch is
    imported only for a cuda device, so the default costs nothing on the torch-free base install."""
    from clip_debias.toolchain.errors import ClipDebiasError

    m = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", device.strip())
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise ClipDebiasError(f"--device {device}: expected cpu, cuda or cuda:N")
    if m.group(1) == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ClipDebiasError(f"--device {device}: no CUDA device is visible to torch (use --device cpu)")
        count = torch.cuda.device_count()
        if m.group(2) is not None and int(m.group(2)) >= count:
            raise ClipDebiasError(f"--device {device}: torch sees {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
    return device.strip()


ModelOpt = Annotated[str, typer.Option(
    "--model", help="open_clip model name, e.g. ViT-B-16, or clipdebias-lab (loads its shipped weights).")]
PretrainedOpt = Annotated[Optional[str], typer.Option(
    "--pretrained", help="open_clip pretrained tag, downloaded by open_clip (e.g. laion2b_s34b_b88k), or 'shipped': "
                         "the weights clip-debias ships for --model (the default for clipdebias-lab).")]
WeightsOpt = Annotated[Optional[Path], typer.Option(
    "--weights", help="Local OpenAI / open_clip checkpoint (.pt, .bin, .safetensors); a .pt/.bin is converted once "
                      "into the weights cache (README: Weights cache).")]
RandomWeightsOpt = Annotated[bool, typer.Option(
    "--random-weights", help="Use random weights (tests, timing): the results mean nothing.")]
DeviceOpt = Annotated[str, typer.Option("--device", callback=check_device,
                                        help="torch device: cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="compute dtype: fp32 | fp16 | bf16 (terms are stored fp32).")]
DatasetOpt = Annotated[str, typer.Option("--dataset", help="waterbirds | celeba | fairface | csv")]
DataOpt = Annotated[Path, typer.Option("--data", help="Dataset root folder (csv: the CSV file).")]
SplitOpt = Annotated[str, typer.Option("--split", help="train | val | test")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Replace an existing output file even when it is not one clip-debias wrote.")]
MaxSkippedOpt = Annotated[Optional[str], typer.Option(
    "--max-skipped", help="With --skip-bad: the most unreadable images before the command stops: a count (5), a "
                          "fraction (0.02) or a percentage (2%); default 1%.")]
MaxPixelsOpt = Annotated[int, typer.Option(
    "--max-pixels", min=1, help="Refuse image files of more pixels than this, before decoding them.")]
AllowOutsideRootOpt = Annotated[bool, typer.Option(
    "--allow-outside-root", help="Read image paths that leave the data folder (absolute, or with '..').")]
LayersOpt = Annotated[Optional[str], typer.Option("--layers", help=f"Layers: {LAYERS_HELP}.")]
ProtocolOpt = Annotated[str, typer.Option(
    "--protocol", help="default (deployable: calibration split, never test) | reference (the published LTC pipeline: "
                       "locate on train, ablation means from the evaluated split itself; transductive).")]
ConventionOpt = Annotated[str, typer.Option(
    "--convention", help="How ln_post's centring and the biases are shared among head terms: textspan (TextSpan's, "
                         "each of the 2L+1 residual terms an equal share) | centred (each head term centred on its own "
                         "mean, biases in rest).")]

TargetOpt = Annotated[Optional[str], typer.Option(
    "--target", help="fairface: the class column, age | race | gender.")]
ProtectedOpt = Annotated[Optional[str], typer.Option(
    "--protected", help="The attribute skew, EO/DP gaps and counterfactual pairs are about (fairface: gender | race | "
                        "age; a csv: an attribute column; default the dataset's first attribute).")]
ShortcutAttributesOpt = Annotated[Optional[str], typer.Option(
    "--shortcut-attributes", help="Whac-A-Mole gaps: the two spurious attributes BACKGROUND,OBJECT (default: the "
                                  "dataset's, when it has exactly two, e.g. lab data's place,object).")]
TrainCorrelationOpt = Annotated[Optional[float], typer.Option(
    "--train-correlation", help="Whac-A-Mole p_agree: how often each shortcut agreed with the class in train "
                                "(default: lab data's lab.json, else 0.95 as UrbanCars).")]
SkewKOpt = Annotated[str, typer.Option(
    "--skew-k", help="Comma-separated k of MaxSkew@k (capped by the number of images).")]
MaxGapOpt = Annotated[Optional[list[str]], typer.Option(
    "--max-gap", help="NAME=VALUE, repeatable: the largest |gap| allowed, NAME bg | coobj | bg+coobj (Whac-A-Mole; "
                      "VALUE a fraction, 0.05 = 5 points).")]

DTYPES = ("fp32", "fp16", "bf16")


def max_gaps(values: list[str] | None) -> dict[str, float]:
    """``--max-gap NAME=VALUE`` options as {name: value}; one error line for a malformed one."""
    from clip_debias.runtime.metrics import GAP_NAMES
    from clip_debias.toolchain.errors import ClipDebiasError

    out: dict[str, float] = {}
    for item in values or []:
        name, _, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if name.strip() not in GAP_NAMES or number is None:
            raise ClipDebiasError(f"--max-gap {item}: expected NAME=VALUE with NAME one of {', '.join(GAP_NAMES)} "
                                  "and VALUE a fraction (e.g. bg=0.05)")
        if name.strip() in out:
            raise ClipDebiasError(f"--max-gap {item}: {name.strip()} given twice")
        out[name.strip()] = number
    return out


def metric_options(shortcut_attributes: str | None, train_correlation: float | None, skew_k: str) -> Any:
    """``runtime.metric_inputs.MetricOptions`` from the CLI values; one error line for a malformed one."""
    from clip_debias.runtime.metric_inputs import MetricOptions
    from clip_debias.toolchain.errors import ClipDebiasError

    try:
        ks = tuple(int(k) for k in skew_k.split(","))
    except ValueError:
        raise ClipDebiasError(f"--skew-k {skew_k}: expected comma-separated integers >= 1 (e.g. 10,50,100)") from None
    pair = None
    if shortcut_attributes is not None:
        pair = tuple(a.strip() for a in shortcut_attributes.split(","))
        if len(pair) != 2 or not all(pair):
            raise ClipDebiasError(f"--shortcut-attributes {shortcut_attributes}: expected two attribute names, "
                                  "BACKGROUND,OBJECT")
    return MetricOptions(pair, train_correlation, ks)  # type: ignore[arg-type]


def reading_options(skip_bad: bool, max_skipped: str | None, max_pixels: int) -> dict[str, Any]:
    """``iter_batches`` keyword arguments from ``--skip-bad`` / ``--max-skipped`` / ``--max-pixels`` (one error line
    for a bad value, or for --max-skipped without --skip-bad)."""
    from clip_debias.runtime.limits import DEFAULT_MAX_SKIPPED, MaxSkipped
    from clip_debias.toolchain.errors import ClipDebiasError

    if max_skipped is not None and not skip_bad:
        raise ClipDebiasError("--max-skipped applies with --skip-bad (without it any unreadable image stops the run)")
    limit = MaxSkipped.parse(max_skipped) if max_skipped is not None else DEFAULT_MAX_SKIPPED
    return {"max_skipped": limit, "max_pixels": max_pixels}


def torch_dtype(name: str) -> Any:
    """'fp32' | 'fp16' | 'bf16' -> torch dtype, or one clear error line."""
    import torch

    from clip_debias.toolchain.errors import ClipDebiasError

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise ClipDebiasError(f"--dtype {name}: expected one of {', '.join(DTYPES)}")
    return table[name]


def load_model(model: str, pretrained: str | None, weights: Path | None, device: str = "cpu", dtype: str = "fp32",
               *, random_weights: bool = False) -> Any:
    """``toolchain.models.loading.load_clip`` from CLI option values; a random-weight model (``--random-weights``)
    gets one warning line on stderr."""
    from clip_debias.toolchain.models.loading import load_clip

    clip = load_clip(model, pretrained=pretrained, weights=weights, device=check_device(device),
                     dtype=torch_dtype(dtype), random_weights=random_weights)
    if random_weights:
        typer.echo(f"warning: --random-weights: --model {model} has RANDOM weights (results mean nothing)", err=True)
    return clip
