"""benchmarks/analysis_scale.py's synthetic stores: shaped like a real sweep's, written chunk by chunk."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.effects import exact_kinds
from analysis.store import open_store
from analysis.taxonomy import has_taxonomy
from benchmarks.analysis_scale import write_store
from jaxdiag.schema import DIAGNOSTICS, HEAD_VARIABLES, TASK_COORDS


@pytest.mark.parametrize("shape", ["sweep", "effects", "diagnostics"])
def test_store_shapes(tmp_path, shape):
    path = tmp_path / f"{shape}.zarr"
    write_store(path, 300, 128, shape=shape)  # three chunks, the last one partial
    ds = open_store(path)
    assert ds.sizes["prompt"] == 300 and list(ds["prompt"].values) == list(range(300))
    wanted = set(DIAGNOSTICS if shape == "diagnostics" else HEAD_VARIABLES)
    assert wanted <= set(ds.data_vars)
    assert has_taxonomy(ds) == (shape != "diagnostics")
    assert exact_kinds(ds) == (["zero"] if shape == "effects" else [])
    if shape != "diagnostics":
        for v in ("prev_attn", "self_attn", "dup_attn", "induction_attn"):
            x = ds[v].values
            assert np.nanmin(x) >= 0 and np.nanmax(x) <= 1
        assert np.isfinite(ds["log_z"].values).all() and np.isfinite(ds["prev_attn"].values).all()
        missing = np.isnan(ds["dup_attn"].values)
        per_prompt = missing.all(axis=(2, 3))
        assert (missing.any(axis=(2, 3)) == per_prompt).all()  # a prompt without repeats: NaN on every head
        assert 0.2 < per_prompt[0].mean() < 0.6 and 0.5 < per_prompt[1].mean() < 0.9
        assert np.array_equal(missing, np.isnan(ds["induction_attn"].values))
    if shape == "effects":
        assert set(TASK_COORDS) <= set(ds.coords)
        effect = ds["effect_zero"].values
        assert np.isfinite(effect[0]).all() and np.isnan(effect[1]).all()
        assert (ds["target"].values[0] >= 0).all() and (ds["target"].values[1] == -1).all()
        assert np.isfinite(ds["metric"].values[0]).all()
