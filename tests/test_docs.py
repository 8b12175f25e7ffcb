"""The documentation site builds with ``mkdocs build --strict`` (broken links, missing pages and API objects fail),
and the README stays a short first page."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    first_block = lines[lines.index("```bash") + 1:lines.index("```")]
    assert len(first_block) == 2 and "clip-debias demo" in first_block[0] and "pytest" in first_block[1]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="the docs extra is not installed (pip install -e '.[docs]')")
def test_docs_build_strict(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1",
                                                                         "PATH": "/usr/bin:/bin"}, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "site" / "cli" / "index.html").read_text().count("clip-debias verify") > 0
