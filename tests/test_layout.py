"""The installed layout: one import package ``clip_debias`` (runtime, serving, exporters, toolchain below it) and
nothing else at the top of site-packages; no module imports the repository's folder names as top-level packages."""

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
FOLDERS = {"runtime": "clip_debias.runtime", "serving": "clip_debias.serving", "exporters": "clip_debias.exporters",
           "toolchain": "clip_debias.toolchain"}


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


# The import layers, low to high: a module may import modules of its own layer or of lower ones, never of a higher
# one. An entry names a package and everything below it (the longest entry that matches wins), except those in
# INIT_ONLY, which name the package's __init__ alone. A new module below no entry fails the test: give it a layer.
LAYERS = (
    ("clip_debias.runtime",),
    ("clip_debias.serving",),  # servers and engines around the runtime (Triton python backend, Ray); no torch
    ("clip_debias.toolchain", "clip_debias.toolchain.errors", "clip_debias.toolchain.choices",
     "clip_debias.toolchain.models", "clip_debias.toolchain.figures"),
    ("clip_debias.toolchain.datasets",),
    ("clip_debias.toolchain.decompose",),
    ("clip_debias.toolchain.prompts", "clip_debias.toolchain.protocol"),
    ("clip_debias.toolchain.locate",),
    ("clip_debias.toolchain.correct",),
    ("clip_debias.toolchain.evaluate", "clip_debias.toolchain.explain", "clip_debias.toolchain.lab",
     "clip_debias.toolchain.audit"),
    ("clip_debias.toolchain.select",),  # chooses among evaluate's rows, builds the winner
    ("clip_debias.exporters",),
    ("clip_debias.toolchain.demo",),  # orchestration of whole pipelines
    ("clip_debias.toolchain.cli",),
)
INIT_ONLY = {"clip_debias.toolchain"}


def _layer(module: str) -> int | None:
    """The index in ``LAYERS`` of ``module`` (None: no entry covers it)."""
    best: tuple[int, int] | None = None
    for i, entries in enumerate(LAYERS):
        for e in entries:
            if module == e or (e not in INIT_ONLY and module.startswith(e + ".")):
                if best is None or len(e) > best[0]:
                    best = (len(e), i)
    return None if best is None else best[1]


def _imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (module level, in functions, under TYPE_CHECKING):
    for ``from X import Y`` the module X.Y when it is one, else X; for ``import X.Y`` the longest module prefix."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def longest(dotted: str) -> str | None:
        parts = dotted.split(".")
        return next((".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in modules), None)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {m for a in node.names if (m := longest(a.name))}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                m = f"{base}.{a.name}" if f"{base}.{a.name}" in modules else longest(base)
                if m:
                    found.add(m)
    return found - {name}


def _import_graph() -> dict[str, set[str]]:
    files = _package_modules()
    return {name: _imports(name, f, set(files)) for name, f in files.items()}


def test_every_module_has_a_layer():
    assert [m for m in _package_modules() if _layer(m) is None] == []


def test_no_import_from_a_lower_layer_to_a_higher_one():
    """runtime <- serving <- errors, models <- datasets <- decompose <- prompts <- locate <- correct <- evaluate,
    explain, lab <- exporters <- demo <- cli (see ``LAYERS``): nothing imports upward, so nothing below the CLI
    imports the CLI."""
    bad = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
           for a, targets in sorted(_import_graph().items()) for b in sorted(targets)
           if None not in (_layer(a), _layer(b)) and _layer(b) > _layer(a)]
    assert bad == []


def test_no_import_cycles():
    """No two modules import each other, directly or through others (Tarjan's strongly connected components)."""
    graph = _import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_import_graph_sees_deferred_imports_and_cycles(tmp_path):
    """The walker itself: an import inside a function counts, and a two-module cycle is found."""
    (tmp_path / "a.py").write_text("def f():\n    from pkg import b\n")
    (tmp_path / "b.py").write_text("import pkg.a\n")
    modules = {"pkg", "pkg.a", "pkg.b"}
    assert _imports("pkg.a", tmp_path / "a.py", modules) == {"pkg.b"}
    assert _imports("pkg.b", tmp_path / "b.py", modules) == {"pkg.a"}
    assert _layer("clip_debias.toolchain.cli.app") == len(LAYERS) - 1 and _layer("clip_debias.toolchain.foo") is None


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
    assert sorted(p.name for p in (installed / "clip_debias").iterdir()) == ["exporters", "runtime", "serving",
                                                                            "toolchain"]
    data = installed / "clip_debias" / "toolchain"
    for f in ("models/configs/clipdebias-lab.json", "lab/weights/clipdebias-lab.safetensors", "lab/recipe.json",
              "models/configs/clipdebias-lab2.json", "lab/weights/clipdebias-lab2.safetensors", "lab/recipe-lab2.json",
              "models/configs/clipdebias-lab-map.json", "lab/weights/clipdebias-lab-map.safetensors",
              "lab/recipe-lab-map.json", "lab/prompts-lab2.yaml", "explain/data/pool.txt",
              "prompts/data/waterbirds.yaml"):
        assert (data / f).is_file(), f


def test_installed_runtime_is_torch_free_and_folder_names_are_not_importable(installed, tmp_path):
    """From another directory, with the wheel's files first on sys.path: ``clip_debias.runtime`` comes from them and
    imports without torch, and so do the torch- and Ray-free modules of ``clip_debias.serving``; ``runtime``,
    ``serving``, ``exporters`` and ``toolchain`` are no importable top-level names."""
    code = "\n".join([
        "import importlib.util, sys",
        "import clip_debias.runtime as r",
        "from clip_debias.runtime import backends, classifier, manifest, preprocess, verify",
        "from clip_debias.serving import app, batcher, http_api, loadtest, server, triton_model",
        f"assert r.__file__.startswith({str(installed)!r}), r.__file__",
        "assert 'torch' not in sys.modules",
        "names = ('runtime', 'serving', 'exporters', 'toolchain')",
        "missing = [n for n in names if importlib.util.find_spec(n) is None]",
        "assert missing == ['runtime', 'serving', 'exporters', 'toolchain'], missing",
    ])
    env = {**os.environ, "PYTHONPATH": str(installed)}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
