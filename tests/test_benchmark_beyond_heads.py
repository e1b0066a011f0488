"""benchmarks/beyond_heads.py's smoke mode runs and writes its report (the full run is for machines with time)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_beyond_heads_smoke(tmp_path):
    pytest.importorskip("transformer_lens")
    from benchmarks.beyond_heads import main

    results = main(["--smoke", "--out-dir", str(tmp_path)])
    assert results["patch_resid_speedup"] > 0 and results["patch_head_pos_speedup"] > 0
    assert "patch_head_pos" in (tmp_path / "BEYOND_HEADS_smoke.md").read_text()
    assert json.loads((tmp_path / "beyond_heads_smoke.json").read_text())["machine"]
