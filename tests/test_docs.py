"""The documentation site builds offline with warnings as errors, and every public name has an API entry.

The build is the one documented command (docs/conf.py, README): ``python -m sphinx -W --keep-going -j 1 -b html
docs OUT`` — MyST-NB with execution off (the IOI notebook shows its stored outputs), no intersphinx, no link
checking, so nothing reaches the network. A broken cross-reference, a missing page or an autodoc entry that
fails to import is a warning, hence a failure."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API_PAGE = ROOT / "docs" / "reference" / "api.md"


def test_site_builds_with_warnings_as_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-j", "1", "-q", "-b", "html",
                          "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(tmp_path / "html")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-6000:]
    html = tmp_path / "html"
    for page in ("index", "tutorials/quickstart", "tutorials/ioi", "reference/cli", "reference/api",
                 "reference/schema", "explanations/science", "performance/index", "performance/PROCESS"):
        assert (html / f"{page}.html").is_file(), page
    cli = (html / "reference" / "cli.html").read_text()
    assert all(f"jaxdiag {c}" in cli for c in ("run", "info", "report", "verify")) and "--resume" in cli
    # the IOI tutorial is the executed notebook: its stored outputs are on the page
    assert "circuit heads: " in (html / "tutorials" / "ioi.html").read_text()


def _documented() -> set[str]:
    return set(re.findall(r"^\.\. auto(?:function|class|data|exception)::\s+(\S+)", API_PAGE.read_text(), re.M))


def _analysis_imports() -> set[str]:
    """`from analysis[.module] import name` in the README, the docs and the example notebooks."""
    texts = [(ROOT / "README.md").read_text(), *(p.read_text() for p in (ROOT / "docs").rglob("*.md"))]
    for nb in (ROOT / "examples").glob("*.ipynb"):
        texts += ["".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
    names = set()
    for text in texts:
        for module, imported in re.findall(r"from (analysis(?:\.\w+)*) import ([\w, ]+)", text):
            names |= {f"{module}.{n.strip()}" for n in imported.split(",") if n.strip()}
    return names


def test_every_public_name_has_an_api_entry():
    import analysis
    import jaxdiag

    documented = _documented()
    public = {f"jaxdiag.{n}" for n in jaxdiag.__all__} | {f"analysis.{n}" for n in analysis.__all__}
    public |= _analysis_imports()
    assert len(public) > 15
    assert sorted(public - documented) == []
    for name in documented:  # and every entry names something real
        module, _, attr = name.rpartition(".")
        assert hasattr(importlib.import_module(module), attr), name
