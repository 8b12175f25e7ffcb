"""CLI options shared by several commands: ONE definition each, so an option means the same in every command
(README: "Shared options").

Conventions every command follows (new options too):

- a metavar that says what goes there: ``FILE``, ``DIR``, ``N``, ``FRACTION``, ``MS``, ``NAME``, ``NAMES`` (a comma
  list) ...; flags have none;
- a closed set of values is a ``runtime.choices.Choice`` defined in the library module that validates it, and the
  option's type is that class (``choice_option``): Typer lists the values in ``--help`` and refuses others;
- ``--json FILE`` writes a JSON report to FILE (never a flag that prints JSON), replacing only a file of the same
  kind that clip-debias wrote, or any file with ``--force``;
- ``--split`` has no default: a command that reads images of a dataset split is told which one.
"""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from clip_debias.runtime.choices import Choice, DatasetFormat, Dedupe, FairFaceColumn, Split
from clip_debias.runtime.limits import DEFAULT_MAX_ROWS
from clip_debias.toolchain.choices import ComputeDtype, Convention, Protocol
from clip_debias.toolchain.decompose.layers import LAYERS_HELP


def choice_option(kind: type[Choice], name: str, help: str, **kwargs: Any) -> Any:
    """A ``typer.Option`` for a closed set: the metavar lists the values (``a|b|c``)."""
    return typer.Option(name, metavar=kind.metavar(), help=help, **kwargs)


def check_device(device: str) -> str:
    """``--device`` value -> itself if torch can use it (cpu, cuda, cuda:N; auto = cuda when torch sees one, else
    cpu), else one clear error line. torch is imported only for cuda or auto, so the default costs nothing on the
    torch-free base install."""
    from clip_debias.toolchain.errors import ClipDebiasError

    device = device.strip()
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    m = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", device)
    if m is None or (m.group(1) == "cpu" and m.group(2) is not None):
        raise ClipDebiasError(f"--device {device}: expected cpu, cuda, cuda:N or auto")
    if m.group(1) == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ClipDebiasError(f"--device {device}: no CUDA device is visible to torch (use --device cpu)")
        count = torch.cuda.device_count()
        if m.group(2) is not None and int(m.group(2)) >= count:
            raise ClipDebiasError(f"--device {device}: torch sees {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})")
    return device


# ---- the model ------------------------------------------------------------------------------------------------------
ModelOpt = Annotated[str, typer.Option(
    "--model", metavar="NAME", help="open_clip model name, e.g. ViT-B-16, or clipdebias-lab (loads its shipped "
                                    "weights).")]
RecordedModelOpt = Annotated[Optional[str], typer.Option(
    "--model", metavar="NAME", help="open_clip model name (default: the model the input file records; give it to "
                                    "override, a file of another model is refused).")]
PretrainedOpt = Annotated[Optional[str], typer.Option(
    "--pretrained", metavar="TAG", help="open_clip pretrained tag, downloaded by open_clip (e.g. laion2b_s34b_b88k), "
                                        "or 'shipped': the weights clip-debias ships for --model (the default for "
                                        "clipdebias-lab).")]
WeightsOpt = Annotated[Optional[Path], typer.Option(
    "--weights", metavar="FILE", help="Local OpenAI / open_clip checkpoint (.pt, .bin, .safetensors); a .pt/.bin is "
                                      "converted once into the weights cache (README: Weights cache).")]
RandomWeightsOpt = Annotated[bool, typer.Option(
    "--random-weights", help="Use random weights (tests, timing): the results mean nothing.")]
TokenizerOpt = Annotated[Optional[Path], typer.Option(
    "--tokenizer", metavar="FILE|DIR", help="Local tokenizer.json (Hugging Face tokenizers library) or a folder "
                                            "holding one, for models whose tokenizer comes from the hub (SigLIP, PE) "
                                            "when offline.")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", metavar="DEVICE", callback=check_device,
    help="torch device: cpu, cuda, cuda:N, or auto (cuda when torch sees one, else cpu).")]
DtypeOpt = Annotated[ComputeDtype, choice_option(
    ComputeDtype, "--dtype", "Compute dtype of the model (decompose stores the head terms as --terms-dtype says).")]


# ---- the dataset ----------------------------------------------------------------------------------------------------
DATASET_HELP = "Dataset format (README: Datasets)."
DatasetOpt = Annotated[DatasetFormat, choice_option(DatasetFormat, "--dataset", DATASET_HELP)]
OptionalDatasetOpt = Annotated[Optional[DatasetFormat], choice_option(DatasetFormat, "--dataset", DATASET_HELP)]
DATA_HELP = "Dataset root folder (csv: the CSV file, or a folder holding data.csv)."
DataOpt = Annotated[Path, typer.Option("--data", metavar="PATH", help=DATA_HELP)]
OptionalDataOpt = Annotated[Optional[Path], typer.Option("--data", metavar="PATH", help=DATA_HELP)]
SPLIT_HELP = ("Dataset split to read. No default: a command that reads images of a dataset is always told which split "
              "(evaluate and discover: with a dataset input).")
SplitOpt = Annotated[Split, choice_option(Split, "--split", SPLIT_HELP)]
OptionalSplitOpt = Annotated[Optional[Split], choice_option(Split, "--split", SPLIT_HELP)]
CsvClassesOpt = Annotated[Optional[str], typer.Option(
    "--classes", metavar="NAMES", help="csv datasets: comma-separated class names.")]
BATCH_HELP = "Images per batch."
BatchOpt = Annotated[int, typer.Option("--batch-size", metavar="N", min=1, help=BATCH_HELP)]
SkipBadOpt = Annotated[bool, typer.Option(
    "--skip-bad", help="Leave out unreadable images instead of stopping, up to --max-skipped (listed: decompose in "
                       "OUT.skipped.txt, verify in its JSON report, audit in OUT/N-NAME.skipped.txt).")]
MaxSkippedOpt = Annotated[Optional[str], typer.Option(
    "--max-skipped", metavar="LIMIT", help="With --skip-bad: the most unreadable images before the command stops "
                                          "(verify: FAILS): a count of images (5) or a percentage of the split "
                                          "(2%); default 1%.")]
MaxPixelsOpt = Annotated[int, typer.Option(
    "--max-pixels", metavar="N", min=1, help="Refuse image files of more pixels than this, before decoding them.")]
AllowOutsideRootOpt = Annotated[bool, typer.Option(
    "--allow-outside-root", help="Read image paths that leave the data folder (absolute, or with '..').")]
MaxRowsOpt = Annotated[int, typer.Option(
    "--max-rows", metavar="N", min=1, help="Refuse a metadata file of more rows than this, while it is read.")]
DedupeOpt = Annotated[Dedupe, choice_option(
    Dedupe, "--dedupe", "When two rows of the split name the same image file: path (the same resolved path) | "
                        "content (the same bytes, sha256; reads every file once more).")]
AllowDuplicatesOpt = Annotated[bool, typer.Option(
    "--allow-duplicates", help="Count each image file once when the split lists it on several rows (default: "
                               "refuse such a split).")]


def index_checks(max_rows: int = DEFAULT_MAX_ROWS, dedupe: str = Dedupe.PATH,
                 allow_duplicates: bool = False) -> Any:
    """``runtime.limits.IndexChecks`` (``load_index``'s ``checks``) from ``--max-rows`` / ``--dedupe`` /
    ``--allow-duplicates``."""
    from clip_debias.runtime.limits import IndexChecks

    return IndexChecks(max_rows, Dedupe(dedupe), allow_duplicates)


def need_split(split: Split | None, data: Path | None) -> Split | None:
    """``--split`` when ``--data`` is given (one line when it is missing)."""
    from clip_debias.toolchain.errors import ClipDebiasError

    if data is not None and split is None:
        raise ClipDebiasError(f"--data {data}: name the split to read with --split {Split.metavar()} (no default)")
    return split


# ---- outputs --------------------------------------------------------------------------------------------------------
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Replace an existing output file even when it is not one clip-debias wrote.")]
JsonOpt = Annotated[Optional[Path], typer.Option(
    "--json", metavar="FILE", help="Also write the results as JSON to FILE (replaces only a report of the same kind "
                                   "clip-debias wrote, unless --force).")]


# ---- decomposition and protocol -------------------------------------------------------------------------------------
LayersOpt = Annotated[Optional[str], typer.Option("--layers", metavar="LAYERS", help=f"Layers: {LAYERS_HELP}.")]
ProtocolOpt = Annotated[Protocol, choice_option(
    Protocol, "--protocol", "default (deployable: calibration split, never test) | reference (the published LTC "
                            "pipeline: locate on train, ablation means from the evaluated split itself; "
                            "transductive).")]
CONVENTION_HELP = ("How ln_post's centring and the biases are shared among head terms: textspan (TextSpan's, each of "
                   "the 2L+1 residual terms an equal share) | centred (each head term centred on its own mean, biases "
                   "in rest).")
ConventionOpt = Annotated[Convention, choice_option(Convention, "--convention", CONVENTION_HELP)]
OptionalConventionOpt = Annotated[Optional[Convention], choice_option(Convention, "--convention", CONVENTION_HELP)]


def check_json_target(path: Path | None, kind: str, force: bool) -> None:
    """``--json FILE``: an existing folder's path for a file that clip-debias may write (``kind``: a file kind of
    ``runtime.ownership``), checked before any work."""
    if path is None:
        return
    from clip_debias.runtime.atomic_output import check_file_target
    from clip_debias.runtime.errors import ClipDebiasError

    if path.is_dir():
        raise ClipDebiasError(f"--json {path}: is a folder; expected a file path such as {path / 'report.json'}")
    if not path.parent.is_dir():
        raise ClipDebiasError(f"--json {path}: {path.parent} is not an existing folder")
    check_file_target(path, kind, force)


# ---- bias metrics (runtime.metrics) ---------------------------------------------------------------------------------
TargetOpt = Annotated[Optional[FairFaceColumn], choice_option(
    FairFaceColumn, "--target", "fairface: the column that is the class.")]
ProtectedOpt = Annotated[Optional[str], typer.Option(
    "--protected", metavar="ATTRIBUTE", help="The attribute skew, EO/DP gaps and counterfactual pairs are about "
                                             "(fairface: gender | race | age; a csv: an attribute column; default the "
                                             "dataset's first attribute).")]
ShortcutAttributesOpt = Annotated[Optional[str], typer.Option(
    "--shortcut-attributes", metavar="BACKGROUND,OBJECT", help="Whac-A-Mole gaps: the two spurious attributes "
                                                               "(default: the dataset's, when it has exactly two, "
                                                               "e.g. lab data's place,object).")]
TrainCorrelationOpt = Annotated[Optional[str], typer.Option(
    "--train-correlation", metavar="FRACTION|BACKGROUND=P,OBJECT=P",
    help="Whac-A-Mole: how often each shortcut agreed with the class in train (one fraction for both, or one per "
         "attribute; default: lab data's lab.json, else 0.95 as UrbanCars).")]
SkewKOpt = Annotated[str, typer.Option(
    "--skew-k", metavar="K,K,...", help="Comma-separated k of MaxSkew@k (capped by the number of images).")]
QueriesOpt = Annotated[Optional[str], typer.Option(
    "--queries", metavar="FILE", help="Retrieval skew of a text query list over the images: a text file (one query "
                                      "per line), a YAML/JSON query -> {value: share} file, or a shipped list: "
                                      "occupations, adjectives, lab-birds, lab-backgrounds.")]


# ---- gates (runtime.metrics registry) ---------------------------------------------------------------------------
def gate_parameters() -> list[inspect.Parameter]:
    """One keyword option per registered metric gate (``runtime.metrics.registry``): a float, or for a keyed gate
    (``--max-gap NAME=VALUE``) a repeatable string."""
    from clip_debias.runtime.metrics.registry import gates

    params = []
    for g in gates():
        kind = Optional[list[str]] if g.keys else Optional[float]
        option = typer.Option(g.option, metavar=g.metavar, help=g.help)
        params.append(inspect.Parameter(g.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[kind, option]))  # type: ignore[valid-type]
    return params


def with_gate_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with its ``gate_values`` parameter replaced by one CLI option per registered metric gate (Typer
    reads the signature): the wrapper collects their values into ``gate_values`` ({gate name: value or None})."""
    from clip_debias.runtime.metrics.registry import gates

    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != "gate_values"]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        values = {g.name: kwargs.pop(g.name, None) for g in gates()}
        return command(**kwargs, gate_values=values)

    wrapper.__signature__ = signature.replace(parameters=[*kept, *gate_parameters()])  # type: ignore[attr-defined]
    return wrapper


def gate_limits(values: dict[str, Any]) -> dict[str, Any]:
    """{gate name: limit} from the CLI values: floats as given, a keyed gate's ``NAME=VALUE`` items as {name: value}
    (one error line for a malformed one)."""
    from clip_debias.runtime.metrics.registry import gates
    from clip_debias.toolchain.errors import ClipDebiasError

    out: dict[str, Any] = {}
    for g in gates():
        value = values.get(g.name)
        if not g.keys:
            out[g.name] = value
            continue
        keyed: dict[str, float] = {}
        for item in value or []:
            name, _, text = item.partition("=")
            try:
                number = float(text)
            except ValueError:
                number = None
            if name.strip() not in g.keys or number is None:
                raise ClipDebiasError(f"{g.option} {item}: expected NAME=VALUE with NAME one of {', '.join(g.keys)} "
                                      f"and VALUE a fraction (e.g. {g.keys[0]}=0.05)")
            if name.strip() in keyed:
                raise ClipDebiasError(f"{g.option} {item}: {name.strip()} given twice")
            keyed[name.strip()] = number
        out[g.name] = keyed
    return out


def train_correlation(text: str | None) -> float | dict[str, float] | None:
    """``--train-correlation``: one fraction (both attributes) or ``background=P,object=P``; one line otherwise."""
    from clip_debias.runtime.metric_inputs import ROLES
    from clip_debias.toolchain.errors import ClipDebiasError

    if text is None:
        return None
    hint = (f"--train-correlation {text}: expected a fraction (0.95) or {'=P,'.join(ROLES)}=P "
            "(background=0.95,object=0.9)")
    try:
        if "=" not in text:
            return float(text)
        pairs = [item.partition("=") for item in text.split(",")]
        out = {k.strip(): float(v) for k, _, v in pairs}
    except ValueError:
        raise ClipDebiasError(hint) from None
    if sorted(out) != sorted(ROLES) or len(pairs) != len(ROLES):
        raise ClipDebiasError(hint)
    return out


def metric_options(shortcut_attributes: str | None, correlation: str | None, skew_k: str) -> Any:
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
    return MetricOptions(pair, train_correlation(correlation), ks)  # type: ignore[arg-type]


def reading_options(skip_bad: bool, max_skipped: str | None, max_pixels: int) -> dict[str, Any]:
    """``iter_batches`` keyword arguments from ``--skip-bad`` / ``--max-skipped`` / ``--max-pixels`` (one error line
    for a bad value, or for --max-skipped without --skip-bad)."""
    from clip_debias.runtime.limits import DEFAULT_MAX_SKIPPED, MaxSkipped
    from clip_debias.toolchain.errors import ClipDebiasError

    if max_skipped is not None and not skip_bad:
        raise ClipDebiasError("--max-skipped applies with --skip-bad (without it any unreadable image stops the run)")
    limit = MaxSkipped.parse(max_skipped) if max_skipped is not None else DEFAULT_MAX_SKIPPED
    return {"max_skipped": limit, "max_pixels": max_pixels}


def load_model(model: str, pretrained: str | None, weights: Path | None, device: str = "cpu", dtype: str = "fp32",
               *, random_weights: bool = False, tokenizer: Path | None = None) -> Any:
    """``toolchain.models.loading.load_clip`` from CLI option values (it logs what it loads); a random-weight model
    (``--random-weights``) gets one warning line."""
    from clip_debias.toolchain.models.loading import load_clip

    clip = load_clip(model, pretrained=pretrained, weights=weights, device=check_device(device),
                     dtype=ComputeDtype.parse(dtype, "--dtype").torch, random_weights=random_weights,
                     tokenizer=tokenizer)
    if random_weights:
        typer.echo(f"warning: --random-weights: --model {model} has RANDOM weights (results mean nothing)", err=True)
    return clip


def load_recorded_model(recorded: Any, what: str, model: str | None, pretrained: str | None, weights: Path | None,
                        device: str = "cpu", *, random_weights: bool = False, tokenizer: Path | None = None) -> Any:
    """``load_model`` of the options given; without ``--model``, the model ``recorded`` (a ``ModelIdentity`` read
    from ``what``, e.g. "plan.json") names: its open_clip tag, the shipped weights of its name, or random init when
    it records random init. A record of a local weights file needs ``--weights FILE`` (one line). The caller's
    identity check (same backbone) still refuses a file of another model."""
    from clip_debias.toolchain.errors import ClipDebiasError
    from clip_debias.toolchain.models.shipped import shipped_weights

    if model is None:
        model = recorded.name
        if pretrained is None and weights is None and not random_weights:
            if recorded.pretrained:
                pretrained = recorded.pretrained
            elif recorded.weights_sha256 and shipped_weights(model) is None:
                raise ClipDebiasError(f"{what} records {model} with the weights file {recorded.weights_file} (sha256 "
                                      f"{recorded.weights_sha256[:12]}): pass --weights FILE")
            elif not recorded.weights_sha256:
                random_weights = True
        say(f"model {recorded.describe()}: recorded in {what}")
    return load_model(model, pretrained, weights, device, random_weights=random_weights, tokenizer=tokenizer)


def say(message: str) -> None:
    """A line on stderr saying what the command is doing (stdout keeps the results)."""
    typer.echo(message, err=True)
