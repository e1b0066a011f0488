"""End to end on the offline default: `jaxdiag run` + `jaxdiag report` on the shipped induction model
recover its circuit from the attention diagnostics alone.

The circuit file the report uses was written WITHOUT the diagnostics (by attention and ablation,
jaxdiag.induction.identify); here the diagnostics have to find the same heads on their own.
"""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest

from jaxdiag.induction import CHECKPOINT_DIR

pytestmark = pytest.mark.skipif(not (CHECKPOINT_DIR / "circuit.toml").is_file(), reason="no shipped checkpoint")

# With 24 heads, BH at 1% needs a permutation p of at most 0.01 * rank / 24: with one head at the
# floor 1 / (n_perm + 1) that means n_perm >= 2400.
N_PERM = 4999


@pytest.fixture(scope="module")
def report_outputs(tmp_path_factory) -> dict:
    from jaxdiag.cli import main

    work = tmp_path_factory.mktemp("default")
    store, report = work / "default.zarr", work / "report"
    assert main(["run", "--preset", "default", "--out", str(store), "--quiet"]) == 0
    assert main(["report", str(store), "--out", str(report), "--n-perm", str(N_PERM), "--n-boot", "200"]) == 0
    return {"summary": json.loads((report / "summary.json").read_text()), "text": (report / "report.md").read_text(),
            "store": store}


@pytest.fixture(scope="module")
def summary(report_outputs) -> dict:
    return report_outputs["summary"]


@pytest.fixture(scope="module")
def report_text(report_outputs) -> str:
    return report_outputs["text"]


@pytest.fixture(scope="module")
def induction_heads() -> list[tuple[int, int]]:
    roles = tomllib.loads((CHECKPOINT_DIR / "circuit.toml").read_text())["roles"]
    return [tuple(int(x) for x in h.split(".")) for h in roles["Induction"]]


def test_report_compares_repeated_with_random_on_the_shipped_circuit(summary):
    assert summary["conditions"] == {"a": "repeated", "b": "random"}
    assert summary["circuit"]["name"] == "induction-3l8h"


def test_largest_kl_norm_shift_is_an_induction_head(summary, induction_heads):
    delta = np.abs(np.asarray(summary["delta"]["kl_norm"], dtype=float))
    top = tuple(int(i) for i in np.unravel_index(np.nanargmax(delta), delta.shape))
    assert top in induction_heads, f"largest |delta kl_norm| at {top}, induction heads {induction_heads}"


def test_report_ranks_previous_token_heads_and_correlates_with_ablation(summary, report_text):
    """The posts' caveat made concrete: causally essential heads need not shift."""
    previous = [e for e in summary["circuit_heads"] if e["role"] == "Previous Token"]
    assert previous, "the circuit names a previous-token head"
    for entry in previous:
        assert 1 <= entry["rank_abs_kl_norm"] <= 24
        assert f"| {entry['layer']}.{entry['head']} | Previous Token |" in report_text
    rho = summary["ablation_spearman"]["rho"]
    assert -1 <= rho <= 1 and summary["ablation_spearman"]["n_heads"] == 24
    assert "Spearman correlation" in report_text and "Smallest attainable" in report_text


def test_induction_heads_survive_benjamini_hochberg_at_1_percent(summary, induction_heads):
    per_head = summary["per_head"]["kl_norm"]
    q = np.asarray(per_head["q_bh"], dtype=float)
    for layer, head in induction_heads:
        assert q[layer, head] <= 0.01, f"head {layer}.{head}: BH q = {q[layer, head]}"
        assert [layer, head] in per_head["bh_0.01"]


def test_lead_circuit_test_agrees_with_its_rank_version(summary, report_text, induction_heads):
    """Issue 14: on raw |delta| the posts' rank test and its label-permutation version disagreed (p 0.003 vs
    0.70: the induction heads are also the noisiest). On |delta_z| = |delta / SE| the lead (permutation) test and
    the rank test agree, the design is paired (repeated[i] pairs with random[i]), and the minimum-effect flags
    hold every induction head but drop the layer-2 heads that barely move."""
    assert summary["design"] == "paired"
    for var in ("kl_norm", "chi"):
        lead = summary["circuit_test"][var]
        assert lead["agrees_with_rank_test"], (var, lead)
        assert (lead["pvalue"] <= 0.05) == (lead["rank_test_p"] <= 0.05)
    tests = summary["min_effect_tests"]["kl_norm"]
    assert all([l, h] in tests["flagged"] for l, h in induction_heads)
    assert tests["n_flagged"]["x"] < tests["n_flagged"]["zero"]
    assert "Lead test: |delta_z kl_norm|" in report_text and "raw shift (the posts' test)" in report_text


def _top5(values: np.ndarray) -> set[tuple[int, int]]:
    flat = np.argsort(values.ravel())[::-1][:5]
    return {tuple(int(x) for x in np.unravel_index(i, values.shape)) for i in flat}


def test_sweep_effects_find_the_heads_that_ablation_finds(report_outputs):
    """The default store's per-head effects (the sweep's machinery, on the induction metric at the
    last token) against ablation.json (identification's own copying accuracy over many positions).

    Zero-ablation and patching name the same five heads as ablation.json's five largest drops.
    Mean-ablation names four of them; in place of 1.2 (sixth here) it ranks 2.3, whose mean output
    (over every position of the random prompts, BOS included) lowers the last token's
    log-probability while leaving copying accuracy alone (ablation.json: 0.0004). The metric at one
    position and accuracy over many disagree there, and the test says so.
    """
    import xarray as xr

    ds = xr.open_zarr(report_outputs["store"], chunks=None)
    record = json.loads((CHECKPOINT_DIR / "ablation.json").read_text())
    expected = _top5(np.asarray(record["mean_ablation"], dtype=float))
    assert ds.attrs["effects"][:3] == ["zero", "mean", "patch"]
    effect = {kind: -ds[f"effect_{kind}"].sel(condition="repeated").mean("prompt").values for kind in ds.attrs["effects"][:3]}
    assert _top5(effect["zero"]) == expected
    assert _top5(effect["patch"]) == expected
    assert _top5(effect["mean"]) == expected - {(1, 2)} | {(2, 3)}
    assert np.isnan(ds["metric"].sel(condition="random").values).all()  # random prompts have nothing to copy


def test_report_compares_cheap_methods_with_exact_patching(summary, report_text):
    """Offline, on the shipped model: AtP and AtP* rank heads like exact patching far better than the
    attention diagnostics do (the README quotes these numbers with their intervals)."""
    table = summary["cheap_vs_exact"]["patch"]
    atp, star, kl = (table[m]["spearman"] for m in ("atp_patch", "atpstar_patch", "delta_kl_norm"))
    assert atp["rho"] > 0.75 and star["rho"] > 0.75
    assert kl["high"] < min(atp["rho"], star["rho"])  # the diagnostics' whole interval lies below
    assert "Cheap methods against exact patching" in report_text


def test_taxonomy_names_the_circuit_from_a_store_alone(tmp_path_factory):
    """Every query position of the default prompts: classify() labels the identified induction heads and
    the previous-token head, and no other head, from the store's taxonomy scores alone. (At the last
    token alone 0.7 looks elsewhere: its previous-token output is read at the keys, not the query.)"""
    import xarray as xr

    from analysis import classify
    from jaxdiag.cli import main

    store = tmp_path_factory.mktemp("taxonomy") / "all.zarr"
    assert main(["run", "--preset", "default", "--query", "all", "--n-prompts", "40", "--out", str(store), "--quiet"]) == 0
    labels = classify(xr.open_zarr(store, chunks=None))
    roles = tomllib.loads((CHECKPOINT_DIR / "circuit.toml").read_text())["roles"]

    def heads(role: str) -> set[str]:
        return {f"{l}.{h}" for l in labels["layer"].values for h in labels["head"].values
                if bool(labels[role].sel(layer=l, head=h))}

    assert heads("induction") == set(roles["Induction"])
    assert heads("previous_token") == set(roles["Previous Token"])


def test_every_figure_of_the_report_is_readable(report_outputs):
    """The report's figures of the shipped model's store, as `jaxdiag report` draws them (tests/figure_checks.py)."""
    from analysis.pipeline import run_analysis
    from analysis.report import resolve_circuit
    from analysis.store import default_conditions, open_store, run_config
    from jaxdiag.paths import StoreLocation
    from tests.figure_checks import assert_figures_readable

    ds = open_store(StoreLocation.of(str(report_outputs["store"]))).load()
    config = run_config(ds)
    a, b = default_conditions(ds, config)
    circuit = resolve_circuit(None, config, (ds.sizes["layer"], ds.sizes["head"]), report_outputs["store"], ds, a)
    assert_figures_readable(run_analysis(ds, circuit, a, b, n_boot=50, n_perm=50), at_least=10)
