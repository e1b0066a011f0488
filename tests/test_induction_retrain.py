"""Retraining from the recorded command and seed reproduces the shipped model's copying accuracy.

Slow (minutes of CPU): excluded from CI. Run with
    python -m pytest -q -m slow tests/test_induction_retrain.py
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from jaxdiag.induction import CHECKPOINT_DIR


@pytest.mark.slow
@pytest.mark.skipif(not (CHECKPOINT_DIR / "training_record.json").is_file(), reason="no shipped checkpoint")
def test_retraining_with_recorded_seed_reproduces_accuracy(tmp_path):
    record = json.loads((CHECKPOINT_DIR / "training_record.json").read_text())
    args = shlex.split(record["command"])
    assert args[:3] == ["python", "-m", "jaxdiag.induction.train"]
    out_at = args.index("--out") + 1
    args[out_at] = str(tmp_path / "retrained")
    subprocess.run([sys.executable, *args[1:], "--no-progress"], check=True)
    retrained = json.loads((tmp_path / "retrained" / "training_record.json").read_text())
    assert retrained["seed"] == record["seed"]
    for kind, shipped in record["copying_accuracy"].items():
        assert abs(retrained["copying_accuracy"][kind] - shipped) <= 0.02, kind
