"""File formats on pydantic: the one formatter (``runtime.schema``) and, through the CLI, one ``error:`` line naming
the file and the field for a malformed plan, manifest, config.json, context YAML and cache header."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import pytest
from pydantic import Field
from pydantic.dataclasses import dataclass
from typer.testing import CliRunner

from clip_debias.runtime.errors import ArtifactError, ClipDebiasError
from clip_debias.runtime.schema import FORMAT, FieldError, describe_type, describe_value, validate
from plan_fixtures import small_cache, write_plan
from runtime_fixtures import build_artifact, build_csv_dataset


# ---- the formatter ----------------------------------------------------------------------------------------------

@dataclass(config=FORMAT)
class Inner:
    name: str
    size: Annotated[list[int], Field(min_length=2, max_length=2)]


@dataclass(config=FORMAT)
class Outer:
    items: list[Inner]
    scale: float = 1.0
    limit: Optional[int] = None
    value: int | str = 0  # a union: its error names the field, not the member types

    def __post_init__(self) -> None:
        if self.scale < 0:
            raise FieldError("scale", f"must be >= 0, got {self.scale}")


def _line(data, model=Outer) -> str:
    with pytest.raises(ClipDebiasError) as e:
        validate(model, data, "f.json", "an outer file")
    assert "\n" not in str(e.value)
    return str(e.value)


def test_formatter_lines():
    ok = {"items": [{"name": "a", "size": [1, 2]}]}
    assert validate(Outer, ok, "f.json", "x").items[0].size == [1, 2]
    assert _line([]) == "f.json: expected an outer file, got []"
    assert _line({}) == "f.json: field 'items': missing (expected a list of objects {name, size})"
    assert _line({"items": [{"name": 1, "size": [1, 2]}]}) == (
        "f.json: field 'items[0].name': expected a string, got the number 1")
    assert _line({"items": [{"name": "a", "size": [1]}]}) == (
        "f.json: field 'items[0].size': expected a list of integers (list should have at least 2 items after "
        "validation, not 1), got [1]")
    assert _line({**ok, "limit": True}) == "f.json: field 'limit': expected an integer or null, got true"
    assert _line({**ok, "limit": "3"}) == "f.json: field 'limit': expected an integer or null, got the string \"3\""
    assert _line({**ok, "extra": 1}) == "f.json: field 'extra': unknown field (allowed: items, scale, limit, value)"
    assert _line({**ok, "value": 1.5}) == "f.json: field 'value': expected an integer or a string, got the number 1.5"
    assert _line({**ok, "scale": -1}) == "f.json: field 'scale': must be >= 0, got -1.0"
    assert _line({"items": [{"name": 1, "size": []}], "limit": "x"}) == (
        "f.json: field 'items[0].name': expected a string, got the number 1 (and 2 more problems)")


def test_formatter_words():
    assert describe_value("x" * 100) == f'the string "{"x" * 37}..."'
    assert describe_value(list(range(30))) == "a list of 30 items"
    assert describe_value({"a": 1, "b": 2}) == "an object {a, b}" and describe_value({}) == "an empty object"
    assert describe_value({f"key{i}": i for i in range(20)}) == "an object of 20 keys"
    assert describe_type(dict[str, list[int]]) == "an object of lists of integers"
    assert describe_type(Annotated[list[int], Field(description="a [layer, head] pair")]) == "a [layer, head] pair"
    assert describe_type(list[Annotated[list[int], Field(description="a [layer, head] pair (two integers)")]]) == (
        "a list of [layer, head] pairs (two integers)")


def test_schema_is_torch_free():
    """runtime.schema and runtime.manifest import without torch (pydantic only)."""
    import subprocess
    import sys

    code = "import sys; import clip_debias.runtime.manifest, clip_debias.runtime.schema; assert 'torch' not in " \
           "sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# ---- one error line per malformed file, through the CLI -----------------------------------------------------------

def _error_line(res) -> str:
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def _cli(*args: str):
    from clip_debias.toolchain.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _edit_json(path: Path, edit) -> Path:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_malformed_plan(tmp_path):
    plan = _edit_json(write_plan(tmp_path / "plan.json", [[3, 1]], [[2, 0]]),
                      lambda d: d["salient"][0].update(n_correct=None))
    res = _cli("build", "--plan", plan, "--model", "clipdebias-tiny", "--random-weights", "--out", tmp_path / "m")
    assert _error_line(res) == f"error: {plan}: field 'salient[0].n_correct': expected a number, got null"


def test_malformed_manifest(tmp_path):
    art = build_artifact(tmp_path / "art").path
    build_csv_dataset(tmp_path / "data", ("landbird", "waterbird"))
    _edit_json(art / "manifest.json", lambda d: d["files"][0].update(sha256="0" * 32 + "g" * 32))
    res = _cli("verify", art, "--dataset", "csv", "--data", tmp_path / "data", "--split", "test", "--no-progress")
    assert _error_line(res) == (f"error: {art / 'manifest.json'}: field 'files[0].sha256': expected a sha256 digest "
                                f"(64 hex digits), got the string \"{'0' * 32 + 'g' * 5}...\"")
    with pytest.raises(ArtifactError):  # the runtime's own error type
        from clip_debias import runtime

        runtime.load(art)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_clip) -> Path:
    from clip_debias.toolchain.correct.classifier import plain_classifier

    out = tmp_path_factory.mktemp("model") / "m"
    plain_classifier(tiny_clip, ["a", "b"], ["g0", "g1"]).save(out)
    return out


@pytest.mark.parametrize("edit,message", [
    (lambda d: d.update(ablated="3:1"), "field 'ablated': expected a list of [layer, head] pairs (two integers), "
                                        "got the string \"3:1\""),
    (lambda d: d.update(ablated=[[3, "1"]]), "field 'ablated[0][1]': expected an integer, got the string \"1\""),
    (lambda d: d.update(salient=[[4, 0]]), "field 'salient[0]': [4, 0] is outside the tower (4 layers x 4 heads)"),
    (lambda d: d.update(renorm="none"), "field 'renorm': expected one of 'stepwise', 'keep', 'unit-once' or 'unit', "
                                        "got the string \"none\""),
    (lambda d: d.update(convention="paper"), "field 'convention': expected one of 'textspan' or 'centred', got the "
                                             "string \"paper\""),
    (lambda d: d["tower"].update(heads="4"), "field 'tower.heads': expected an integer, got the string \"4\""),
    (lambda d: d["identity"].pop("name"), "field 'identity.name': missing (expected a string)"),
    (lambda d: d["head"].update(kind="svm"), "field 'head.kind': expected one of 'zeroshot', 'perception', 'lle', "
                                             "got the string \"svm\""),
    (lambda d: d["head"].pop("num_classes"), "field 'head.num_classes': missing (expected an integer >= 1)"),
    (lambda d: d["preprocess"].update(mean=[0.5]), "field 'preprocess.mean': expected three numbers (R, G, B), got "
                                                   "[0.5]"),
    (lambda d: d.update(format=2), "field 'format': is 2, expected 1"),
])
def test_malformed_model_config(tmp_path, model_dir, edit, message):
    """``export onnx`` on a model directory whose config.json is wrong: one line, never a traceback."""
    import shutil

    bad = tmp_path / "m"
    shutil.copytree(model_dir, bad)
    _edit_json(bad / "config.json", edit)
    res = _cli("export", "onnx", bad, "--out", tmp_path / "art")
    assert _error_line(res) == f"error: {bad / 'config.json'}: {message}"
    assert not (tmp_path / "art").exists()


def test_malformed_context_yaml(tmp_path, tiny_clip):
    cache = small_cache(tmp_path / "val.safetensors", tiny_clip.identity)
    plan = write_plan(tmp_path / "plan.json", [], [[2, 0]], identity=tiny_clip.identity.to_dict())
    contexts = tmp_path / "ctx.yaml"
    contexts.write_text("template: 'a photo of a {class}, {context}.'\ncontexts:\n  light: at night\n")
    res = _cli("build", "--plan", plan, "--model", "clipdebias-tiny", "--random-weights", "--out", tmp_path / "m",
               "--calibration", cache, "--no-project", "--classifier", "perception", "--contexts", contexts)
    assert _error_line(res) == (f"error: {contexts}: field 'perception.contexts.light': expected a non-empty list of "
                                "strings, got the string \"at night\"")


@pytest.mark.parametrize("key,value,message", [
    ("layers", '[2, "x"]', "field 'layers[1]': expected an integer, got the string \"x\""),
    ("layers", "[2, 2]", "field 'layers': expected distinct absolute layer indices (>= 0), got [2, 2]"),
    ("layers", "[2", "field 'layers': expected JSON text (the header stores it as JSON), got '[2' (Expecting ',' "
                     "delimiter)"),
    ("model", '{"name": "clipdebias-tiny", "weights": "x"}', "field 'model.weights': unknown field (allowed: name, "
                                                            "pretrained, weights_sha256, weights_file)"),
    ("dataset", None, "field 'dataset': missing (expected a string)"),
    ("surprise", "1", "field 'surprise': unknown field (not part of a decomposition cache written by 'clip-debias "
                      "decompose')"),
    ("convention", "paper", "field 'convention': expected one of 'textspan' or 'centred', got the string \"paper\""),
    ("protected", '"race"', "field 'protected': 'race' is not one of 'attribute_columns'"),
    ("attribute_values", '[["a"]]', "field 'attribute_values': 1 lists for 0 'attribute_columns'"),
    ("format", "1", "field 'format': is \"1\", expected \"2\" (a cache of an earlier clip-debias: decompose again)"),
    ("layers", "[1, 2, 3]", "tensor 'heads' has shape [24, 2, 4, 32], expected [N, 3 (one per entry of 'layers'), "
                            "H, D]"),
    ("group_names", '["g0", "g1"]', "tensor 'groups' holds ids outside 0..1 (the 2 entries of 'group_names')"),
])
def test_malformed_cache_header(tmp_path, key, value, message):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from clip_debias.toolchain.models.loading import ModelIdentity

    good = small_cache(tmp_path / "good.safetensors", ModelIdentity("clipdebias-tiny"))
    with safe_open(str(good), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    if value is None:
        meta.pop(key)
    else:
        meta[key] = value
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    res = _cli("locate", bad, "--model", "clipdebias-tiny", "--random-weights", "--out", tmp_path / "plan.json")
    assert _error_line(res) == f"error: {bad}: {message}"
