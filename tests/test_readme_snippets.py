"""The README's Python runs offline on the shipped models (tests/test_docs_snippets.py runs it; here: it names no hub
model), its test command installs what scripts/test.sh installs, and the folders the README's report / verify
commands write are ignored by git."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_uses_the_shipped_models():
    code = "\n".join(re.findall(r"^```python\n(.*?)^```", README, re.M | re.S))
    loaded = re.findall(r"jaxdiag\.load\(\"([^\"]+)\"", code)
    assert loaded and all(name.startswith("builtin:") for name in loaded)
    assert not re.search(r"^<!-- skip:.*-->\s*\n\s*```python", README, re.M)  # every README block runs


def test_readme_install_line_is_the_test_scripts():
    extras = re.search(r'pip install -q -e "\.\[([a-z,]+)\]"', (ROOT / "scripts" / "test.sh").read_text())[1]
    assert "docs" in extras.split(",")
    assert f'-e ".[{extras}]"' in README
    assert "bash scripts/test.sh" in README and "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_report_and_verify_folders_are_ignored():
    for folder in ("report", "report10k", "verify", "minilm-report", "docs/_build"):
        out = subprocess.run(["git", "check-ignore", "--no-index", f"{folder}/summary.json"], cwd=ROOT,
                             capture_output=True, text=True)
        assert out.returncode == 0, folder
