"""The README's notebook snippet for the shipped models runs as written (token ids: they have no tokenizer; a layer
they have), and the folders the README's report / verify commands write are ignored by git."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_model_snippet_runs():
    import jaxdiag

    lines = [l for l in (ROOT / "README.md").read_text().splitlines() if "small" in l and "jaxdiag." in l]
    assert any("builtin:induction-3l8h" in l for l in lines)
    code = "\n".join(l.split("  #")[0] for l in lines).replace("jaxdiag.diagnose(small, ",
                                                                 "result = jaxdiag.diagnose(small, ")
    code = code.replace(").kl_norm", ", progress=False).kl_norm")
    scope = {"jaxdiag": jaxdiag}
    exec(code, scope)  # noqa: S102 -- the README's own lines
    assert scope["result"].shape == (1, 8)
    layers = [int(x) for x in re.findall(r"layer=(\d+)", "\n".join(lines))]
    assert all(l < 3 for l in layers)  # induction-3l8h has 3 layers


def test_report_and_verify_folders_are_ignored():
    for folder in ("report", "report10k", "verify", "minilm-report"):
        out = subprocess.run(["git", "check-ignore", "--no-index", f"{folder}/summary.json"], cwd=ROOT,
                             capture_output=True, text=True)
        assert out.returncode == 0, folder
