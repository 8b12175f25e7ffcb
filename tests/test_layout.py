"""The installed layout: one import package ``clip_debias`` (runtime, exporters, toolchain below it) and nothing else
at the top of site-packages; no module imports the repository's folder names as top-level packages."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"runtime": "clip_debias.runtime", "exporters": "clip_debias.exporters", "toolchain": "clip_debias.toolchain"}


def _package_modules() -> dict[str, Path]:
    """{dotted module name: file} of every .py under the three folders, named as installed."""
    out = {}
    for folder, package in FOLDERS.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in f.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = f
    return out


def test_no_module_imports_a_bare_folder_name():
    """``import runtime`` would work from the repository root only (and pick up a foreign ``runtime`` elsewhere)."""
    bad = []
    for name, f in _package_modules().items():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            bad += [f"{f.relative_to(ROOT)}:{node.lineno} {m}" for m in mods if m.split(".")[0] in FOLDERS]
    assert not bad, bad


def test_pyproject_lists_every_package():
    """Every folder with an ``__init__.py`` is an installed package (the list in pyproject.toml is explicit because
    the folders are mapped under ``clip_debias``)."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join([FOLDERS[init.relative_to(ROOT).parts[0]], *init.relative_to(ROOT).parts[1:-1]])
             for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py")}
    assert set(cfg["packages"]) == found
    assert cfg["package-dir"] == {v: k for k, v in FOLDERS.items()}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project installed from a freshly built wheel into an empty target folder (no dependencies)."""
    from importlib.metadata import version

    tmp = tmp_path_factory.mktemp("wheel")
    # the installed setuptools when it is new enough for pyproject.toml (torch depends on it), else an isolated build
    recent = int(version("setuptools").split(".")[0]) >= 68
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *(["--no-build-isolation"] * recent),
                    "-w", str(tmp / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp / "dist").glob("clip_debias-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp / "site")
    return tmp / "site"


def test_wheel_installs_one_top_level_package(installed):
    top = sorted(p.name for p in installed.iterdir())
    assert [t for t in top if not t.endswith(".dist-info")] == ["clip_debias"]
    assert sorted(p.name for p in (installed / "clip_debias").iterdir()) == ["exporters", "runtime", "toolchain"]
    data = installed / "clip_debias" / "toolchain"
    for f in ("models/configs/clipdebias-lab.json", "lab/weights/clipdebias-lab.safetensors", "lab/recipe.json",
              "explain/data/pool.txt", "correct/defaults/waterbirds.yaml"):
        assert (data / f).is_file(), f


def test_installed_runtime_is_torch_free_and_folder_names_are_not_importable(installed, tmp_path):
    """From another directory, with the wheel's files first on sys.path: ``clip_debias.runtime`` comes from them and
    imports without torch; ``runtime``, ``exporters`` and ``toolchain`` are no importable top-level names."""
    code = "\n".join([
        "import importlib.util, sys",
        "import clip_debias.runtime as r",
        "from clip_debias.runtime import backends, classifier, manifest, preprocess, verify",
        f"assert r.__file__.startswith({str(installed)!r}), r.__file__",
        "assert 'torch' not in sys.modules",
        "missing = [n for n in ('runtime', 'exporters', 'toolchain') if importlib.util.find_spec(n) is None]",
        "assert missing == ['runtime', 'exporters', 'toolchain'], missing",
    ])
    env = {**os.environ, "PYTHONPATH": str(installed)}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
