"""Retraining from the recorded command and seed reproduces the shipped IOI checkpoint bit for bit
(same backend), and its evaluation.

Slow (tens of minutes of CPU): excluded from CI. Run with
    python -m pytest -q -m slow tests/test_ioi_retrain.py
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys

import pytest

from jaxdiag.ioi import CHECKPOINT_DIR


@pytest.mark.slow
@pytest.mark.skipif(not (CHECKPOINT_DIR / "training_record.json").is_file(), reason="no shipped checkpoint")
def test_retraining_with_recorded_command_reproduces_the_checkpoint(tmp_path):
    record = json.loads((CHECKPOINT_DIR / "training_record.json").read_text())
    args = shlex.split(record["command"])
    assert args[:3] == ["python", "-m", "jaxdiag.ioi.train"]
    args[args.index("--out") + 1] = str(tmp_path / "retrained")
    subprocess.run([sys.executable, *args[1:], "--no-progress"], check=True)
    retrained = json.loads((tmp_path / "retrained" / "training_record.json").read_text())
    assert retrained["evaluation"] == record["evaluation"]
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    assert digest(tmp_path / "retrained" / "model.safetensors") == digest(CHECKPOINT_DIR / "model.safetensors")


@pytest.mark.slow
@pytest.mark.skipif(not (CHECKPOINT_DIR / "training_record.json").is_file(), reason="no shipped checkpoint")
def test_the_first_200_steps_reproduce_the_recorded_losses(tmp_path):
    """A few minutes instead of the whole run: the recorded command cut to 200 steps gives the recorded
    loss history's first entries to the last digit (the data stream and the numerics are unchanged)."""
    record = json.loads((CHECKPOINT_DIR / "training_record.json").read_text())
    args = shlex.split(record["command"])
    args[args.index("--out") + 1] = str(tmp_path / "short")
    args = [a for i, a in enumerate(args) if a != "--steps" and (i == 0 or args[i - 1] != "--steps")]
    subprocess.run([sys.executable, *args[1:], "--steps", "200", "--no-progress"], check=True)
    short = json.loads((tmp_path / "short" / "training_record.json").read_text())
    assert short["loss_history"] == record["loss_history"][:2]
