"""End to end, offline: the posts' 50 + 50 prompts on the shipped IOI model with `jaxdiag run` and
`jaxdiag report`, tested against the circuit found by patching and mean-ablation (not the diagnostics)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxdiag.ioi import CHECKPOINT_DIR

pytestmark = pytest.mark.skipif(not (CHECKPOINT_DIR / "circuit.toml").is_file(), reason="no shipped checkpoint")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict:
    from jaxdiag.cli import main

    work = tmp_path_factory.mktemp("ioi_model")
    store, report = work / "blog.zarr", work / "report"
    assert main(["run", "--preset", "ioi_model", "--out", str(store), "--quiet"]) == 0
    assert main(["report", str(store), "--out", str(report), "--n-perm", "500", "--n-boot", "200"]) == 0
    return {"summary": json.loads((report / "summary.json").read_text()), "text": (report / "report.md").read_text(),
            "store": store, "work": work}


def test_report_names_the_identified_circuit_with_its_tests(outputs):
    summary, text = outputs["summary"], outputs["text"]
    assert summary["conditions"] == {"a": "ioi", "b": "non_ioi"}
    assert summary["n_prompts"] == {"ioi": 50, "non_ioi": 50}
    assert summary["circuit"]["name"] == "ioi-4l8h"
    found = json.loads((CHECKPOINT_DIR / "identify.json").read_text())
    heads = sorted([int(x) for x in h.split(".")] for hs in found["roles"].values() for h in hs)
    assert sorted(summary["circuit"]["heads"]) == heads
    for var in ("kl_norm", "chi"):
        mw = summary["mannwhitney"][var]
        assert 0 < mw["p"] <= 1 and mw["min_attainable_p"] > 0
        assert 0 < summary["permutation"][var]["p"] <= 1
    assert "Smallest attainable" in text


def test_blog_store_has_the_models_metric_and_effects(outputs):
    import xarray as xr

    ds = xr.open_zarr(outputs["store"], chunks=None)
    assert ds.attrs["model"].endswith("ioi-4l8h")
    metric = ds["metric"].sel(condition="ioi").values
    assert np.mean(metric > 0) >= 0.95  # the posts' own prompts: the model identifies the IO
    assert {"effect_zero", "effect_mean", "effect_atpstar_mean"} <= set(ds.data_vars)


def test_ioi_blog_preset_with_a_model_override_runs_offline(outputs):
    """The posts' own preset with --model: the same prompts, and the model's own circuit replaces the preset's."""
    from jaxdiag.cli import main

    store, report = outputs["work"] / "override.zarr", outputs["work"] / "override_report"
    assert main(["run", "--preset", "ioi_blog", "--model", "builtin:ioi-4l8h", "--out", str(store), "--quiet"]) == 0
    assert main(["report", str(store), "--out", str(report), "--n-perm", "200", "--n-boot", "100"]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["circuit"]["name"] == "ioi-4l8h"
    ours = outputs["summary"]["delta"]["kl_norm"]
    # same prompts, other batch size: equal to float32 rounding
    np.testing.assert_allclose(np.asarray(summary["delta"]["kl_norm"], float), np.asarray(ours, float), atol=1e-5)


def test_ioi_model_presets_name_the_shipped_model_and_circuit():
    from jaxdiag.sweep.runconfig import load_config

    blog, big = load_config(preset="ioi_model"), load_config(preset="ioi_model_10k")
    for config in (blog, big):
        assert config.model == "builtin:ioi-4l8h" and config.conditions == ("ioi", "non_ioi")
        assert isinstance(config.circuit, dict) and config.circuit["name"] == "ioi-4l8h"  # kept inline
    assert (blog.prompts.source, blog.prompts.n_prompts) == ("ioi-blog", 50)
    assert (big.prompts.source, big.prompts.n_prompts, big.prompts.n_tokens, big.prompts.pairs) == ("ioi", 5000, 15, True)
    assert {"patch", "atp_patch", "atpstar_patch"} <= set(big.effects)


def test_every_figure_of_the_report_is_readable(outputs):
    """The report's figures of the shipped IOI model's store (tests/figure_checks.py)."""
    from tests.test_induction_end_to_end import test_every_figure_of_the_report_is_readable as check

    check(outputs)
