"""`jaxdiag run --help` lists its choices from the one registry of each: presets (the shipped run configs), effect
kinds (jaxdiag.schema), model families (jaxdiag.models.registry), none written by hand."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from jaxdiag.cli import main
from jaxdiag.models.registry import SUPPORTED
from jaxdiag.schema import EFFECT_KINDS
from jaxdiag.sweep.runconfig import preset_names


def test_run_help_lists_every_preset_effect_kind_and_family(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    assert len(preset_names()) >= 8 and len(EFFECT_KINDS) >= 9
    for name in (*preset_names(), *EFFECT_KINDS, *SUPPORTED):
        assert re.search(rf"[\s:,]{re.escape(name)}(,|\s|$)", text), name


def test_light_commands_still_start_without_jax():
    """The families are listed lazily: building the parser (every command) must not import the registry."""
    code = "import sys; from jaxdiag.cli import _parser; _parser(); print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
