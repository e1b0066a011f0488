"""The package's layering (``[tool.importlinter]`` in pyproject.toml) holds: arrows point down only,
no import cycles, causal effects see only the family interface, analysis never imports JAX."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports(config: str) -> subprocess.CompletedProcess:
    """import-linter on ``config`` in a fresh process (its graph builder imports nothing of ours)."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={config!r}, no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)


def test_import_contracts_are_kept():
    result = _lint_imports(str(ROOT / "pyproject.toml"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "5 kept" in result.stdout, result.stdout[-2000:]


def test_a_broken_contract_is_reported(tmp_path):
    """The check can fail: a config whose contract forbids an import that exists is reported broken."""
    config = tmp_path / "importlinter.ini"
    config.write_text("[importlinter]\nroot_packages =\n    jaxdiag\n\n[importlinter:contract:1]\nname = impossible\n"
                      "type = forbidden\nsource_modules =\n    jaxdiag.causal\nforbidden_modules =\n"
                      "    jaxdiag.models.family\n")
    result = _lint_imports(str(config))
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout[-2000:]


def test_a_clone_folder_named_jaxdiag_does_not_shadow_the_installed_package(tmp_path):
    """A script run from the parent of a clone named ``jaxdiag`` (``git clone ... jaxdiag``) must import the
    package, not the clone folder as a namespace package (pyproject's ``package-dir`` note)."""
    (tmp_path / "jaxdiag").mkdir()  # the clone's root: no __init__.py
    (tmp_path / "analysis").mkdir()
    res = subprocess.run([sys.executable, "-c", "import jaxdiag, analysis; print(callable(jaxdiag.load), analysis.__file__)"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("True "), res.stderr[-1500:]
    assert not res.stdout.split()[1].startswith(str(tmp_path)), res.stdout
