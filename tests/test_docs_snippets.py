"""Every ```python block of the README and the docs runs, offline, on the shipped models.

A file's blocks run in order in one namespace (a page builds on its earlier blocks), in a scratch folder. A
block that cannot run here (it needs the hub, a GPU, or a sweep's store) is marked on the line before it with
``<!-- skip: REASON -->`` and is skipped with that reason. Bash blocks are not run (the README's commands are
checked by CI running them, and by tests/test_readme_snippets.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the docs' own pages; docs/performance/[A-Z]*.md and docs/tutorials/ioi.ipynb are copies made at build
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md")
                                     if "_build" not in p.parts and not (p.parent.name == "performance"
                                                                         and p.name != "index.md"))]
BLOCK = re.compile(r"(?:<!--\s*skip:\s*(?P<skip>.*?)\s*-->\s*\n\s*)?^```python\n(?P<code>.*?)^```", re.M | re.S)


def blocks(path: Path) -> list[tuple[str, str | None]]:
    return [(m["code"], m["skip"]) for m in BLOCK.finditer(path.read_text())]


def test_the_docs_have_runnable_blocks():
    runnable = [p for p in PAGES if any(skip is None for _, skip in blocks(p))]
    assert ROOT / "README.md" in runnable and len(runnable) >= 4


@pytest.mark.parametrize("path", [p for p in PAGES if blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    scope: dict = {"__name__": "__docs__"}
    skipped = []
    for i, (code, skip) in enumerate(blocks(path)):
        if skip is not None:
            skipped.append(f"block {i + 1}: {skip}")
            continue
        exec(compile(code, f"{path.name}:block{i + 1}", "exec"), scope)  # noqa: S102 -- the docs' own code
    if skipped and len(skipped) == len(blocks(path)):
        pytest.skip("; ".join(skipped))
