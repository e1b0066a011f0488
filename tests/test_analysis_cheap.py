"""Cheap methods against exact patching (AtP, AtP*, the diagnostics' shifts): Spearman with the exact
|mean effect|, top-k precision/recall against the causal circuit, the missed heads, the verdict; on
synthetic stores with planted effects and planted AtP-like estimates (known truth)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from analysis.cheap import top_heads
from analysis.circuits import load_circuit
from analysis.effects import aligned_effects, cheap_family, cheap_kinds, effect_sample, exact_kinds
from analysis.errors import AnalysisError
from analysis.findings import CheapVsExact, MethodAgreement
from analysis.labels import per_head
from analysis.pipeline import run_analysis
from analysis.results import ConfidenceInterval, CorrelationResult
from analysis.synthetic import VARIABLES, make_dataset
from tests.jaxfree import run_without_jax
from tests.test_analysis_causal import stored_report

SHAPE = (4, 6)
N_PROMPTS = (40, 30)
CAUSAL = {(3, 1): -3.0, (2, 4): -1.5, (1, 0): 1.0}  # the causal circuit under the default rule
SMALL = {(0, 3): 0.3}  # significant but under the size cut: the 4th head of any faithful ranking
MISSED = (2, 4)  # the head a planted false negative hides from AtP


def store(**kwargs):
    return make_dataset(n_layers=SHAPE[0], n_heads=SHAPE[1], n_prompts=N_PROMPTS, effects=CAUSAL | SMALL, seed=5,
                        shifts={"kl_norm": {(3, 1): 0.08, (0, 5): 0.07}}, **kwargs)


@pytest.fixture(scope="module")
def exact_atp(tmp_path_factory):
    """atp_patch equal to effect_patch prompt by prompt (no noise), AtP* with noise; atp_zero misses MISSED."""
    root = tmp_path_factory.mktemp("cheap")
    ds = store(cheap_kinds=("atp_patch", "atpstar_patch", "atp_zero"), cheap_noise=0.0)
    ds["effect_atpstar_patch"] = np.abs(ds["effect_patch"] + 0.2 * np.random.default_rng(0).standard_normal(
        ds["effect_patch"].shape)).astype(np.float32)
    ds["effect_atp_zero"][0, :, MISSED[0], MISSED[1]] = 0.0  # the planted false negative
    return root, ds, stored_report(ds, root, n_perm=100)


def test_method_equal_to_exact_agrees_perfectly(exact_atp):
    _, _, s = exact_atp
    entry = s["cheap_vs_exact"]["patch"]["atp_patch"]
    assert entry["spearman"]["rho"] == pytest.approx(1.0)
    assert entry["spearman"]["low"] == pytest.approx(1.0) and entry["spearman"]["high"] == pytest.approx(1.0)
    assert entry["precision"] == 1.0 and entry["recall"] == 1.0 and entry["missed"] == []
    assert entry["top_k"] == 3 and sorted(map(tuple, entry["method_top_k"])) == sorted(CAUSAL)
    assert [tuple(h) for h in entry["method_top_k"]] == sorted(CAUSAL, key=lambda h: -abs(CAUSAL[h]))  # largest first
    assert s["cheap_vs_exact_verdict"]["patch"]["best"] == "atp_patch"


def test_planted_false_negative_is_named(exact_atp):
    _, ds, s = exact_atp
    entry = s["cheap_vs_exact"]["zero"]["atp_zero"]
    exact_mean = ds["effect_zero"].values[0, :N_PROMPTS[0], MISSED[0], MISSED[1]].astype(np.float64).mean()
    assert [h[:2] for h in entry["missed"]] == [list(MISSED)]
    assert entry["missed"][0][2] == pytest.approx(exact_mean) and entry["missed"][0][2] < -1.0
    assert list(MISSED) not in entry["method_top_k"] and [0, 3] in entry["method_top_k"]  # SMALL takes its place
    assert entry["precision"] == pytest.approx(2 / 3) and entry["recall"] == pytest.approx(2 / 3)
    assert entry["spearman"]["rho"] < 1.0


def test_estimates_recompute_from_the_store(exact_atp):
    _, ds, s = exact_atp
    n = N_PROMPTS[0]
    exact = np.abs(ds["effect_patch"].values[0, :n].astype(np.float64).mean(axis=0))
    star = ds["effect_atpstar_patch"].values[0, :n].astype(np.float64).mean(axis=0)
    entry = s["cheap_vs_exact"]["patch"]["atpstar_patch"]
    np.testing.assert_allclose(entry["estimate"], star, rtol=1e-12)
    assert entry["spearman"]["rho"] == pytest.approx(stats.spearmanr(star.ravel(), exact.ravel()).statistic)
    assert entry["spearman"]["low"] < entry["spearman"]["high"]  # noisy estimate: a real interval
    assert entry["family"] == "atpstar" and entry["spearman"]["x"] == "mean atpstar_patch (unsigned)"
    kl = s["cheap_vs_exact"]["patch"]["delta_kl_norm"]
    np.testing.assert_allclose(kl["estimate"], np.abs(np.array(s["delta"]["kl_norm"])), rtol=1e-12)


def test_diagnostics_share_the_causal_sections_bootstrap(exact_atp):
    """Same draws as the causal section, so the diagnostics' Spearman intervals are the same numbers."""
    _, _, s = exact_atp
    for kind in ("zero", "mean", "patch"):
        for var in ("kl_norm", "chi"):
            here, there = s["cheap_vs_exact"][kind][f"delta_{var}"]["spearman"], s["causal"][kind]["spearman"][var]
            assert (here["rho"], here["low"], here["high"]) == (there["rho"], there["low"], there["high"])
    assert set(s["cheap_vs_exact"]["patch"]) == {"atp_patch", "atpstar_patch"} | {f"delta_{v}" for v in VARIABLES}
    assert set(s["cheap_vs_exact"]["mean"]) == {f"delta_{v}" for v in VARIABLES}  # diagnostics face every exact kind
    assert list(s["cheap_vs_exact"]) == ["zero", "mean", "patch"]  # exact kinds only


def test_report_section_and_figure(exact_atp):
    root, _, s = exact_atp
    out = root / "out"
    assert json.loads((out / "summary.json").read_text()) == s
    assert (out / "fig10_cheap_vs_exact.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    section = md[md.index("## Cheap methods against exact patching"):md.index("## Figures")]
    assert md.index("## Causal effects") < md.index("## Cheap methods against exact patching")
    for phrase in ("### effect_patch", "Spearman (two-sided p)", "percentile", "precision", "recall",
                   "**Verdict (effect_patch)**: `atp_patch` agrees best", "2.4 (-1.", r"\|mean atp_patch\|"):
        assert phrase in section, phrase
    assert "fig10_cheap_vs_exact.png" in md


def test_section_absent_without_cheap_methods(tmp_path):
    ds = store(effect_kinds=("zero", "patch"))
    # an AtP estimate of a kind the store lacks is no cheap method of anything present
    ds["effect_atp_mean"] = ds["effect_zero"]
    ds.attrs["effects"] = ["zero", "patch", "atp_mean"]
    assert exact_kinds(ds) == ["zero", "patch"] and cheap_kinds(ds, "zero") == cheap_kinds(ds, "patch") == []
    s = stored_report(ds, tmp_path, circuit="effects:zero", n_boot=50, n_perm=50)
    assert "cheap_vs_exact" not in s and "cheap_vs_exact_verdict" not in s
    md = (tmp_path / "out" / "report.md").read_text()
    assert "Cheap methods" not in md and "fig10" not in md
    assert not (tmp_path / "out" / "fig10_cheap_vs_exact.png").exists()
    assert "## Causal effects" in md


def test_estimates_average_over_the_exact_kinds_prompts():
    """Condition a ('random') has no exact effect, so the exact mean runs over 'ioi'; AtP values planted on
    'random' must not enter AtP's mean."""
    ds = make_dataset(n_layers=2, n_heads=3, n_prompts=(12, 10), conditions=("ioi", "random"), effects={(1, 1): -1.0},
                      effect_kinds=("patch",), cheap_kinds=("atp_patch",), seed=2)
    ds["effect_atp_patch"][1, :10] = 100.0
    sample = effect_sample(ds, "patch", prefer="random")
    aligned = aligned_effects(ds, "atp_patch", sample)
    np.testing.assert_array_equal(aligned.values, ds["effect_atp_patch"].values[0, :12].astype(np.float64))
    an = run_analysis(ds, load_circuit("effects:patch", store=ds, condition="random"), "random", "ioi", n_boot=50,
                      n_perm=20, seed=0, curve=False)
    atp = an.cheap["patch"].methods["atp_patch"]
    assert float(atp.magnitude.max()) < 2.0 and atp.top_k == [(1, 1)] and atp.missed == []
    np.testing.assert_allclose(atp.signed.values, ds["effect_atp_patch"].values[0, :12].astype(np.float64).mean(0))


def agreement(name: str, rho: float, low: float, high: float) -> MethodAgreement:
    r = CorrelationResult(rho, 0.01, ConfidenceInterval(low, high), 24)
    blank = per_head(np.zeros(SHAPE), make_dataset(n_layers=SHAPE[0], n_heads=SHAPE[1], n_prompts=3))
    return MethodAgreement(name, "diagnostic", "", blank, None, r, [], np.nan, np.nan, [])


def test_verdict_names_the_best_and_honest_ties():
    x = CheapVsExact("patch", 3, {"a": agreement("a", 0.6, 0.4, 0.8), "b": agreement("b", 0.9, 0.85, 0.95),
                                  "c": agreement("c", 0.8, 0.7, 0.86), "d": agreement("d", np.nan, np.nan, np.nan)})
    assert x.best == "b" and x.ties == ["c"]  # a's interval ends below b's; d has no rho
    assert CheapVsExact("patch", 3, {"d": agreement("d", np.nan, np.nan, np.nan)}).best is None


def test_top_heads_order_and_nan():
    values = per_head(np.array([[0.1, np.nan, 0.5], [0.5, 0.2, -1.0]]),
                      make_dataset(n_layers=2, n_heads=3, n_prompts=3))
    assert top_heads(values, 3) == [(0, 2), (1, 0), (1, 1)]  # ties layer-major, NaN never nominated
    assert top_heads(values, 9) == [(0, 2), (1, 0), (1, 1), (0, 0), (1, 2)] and top_heads(values, 0) == []


def test_planting_cheap_estimates_leaves_everything_else_alone():
    plain = store()
    cheap = store(cheap_kinds=("atp_mean", "atpstar_mean"), cheap_noise=0.1)
    for v in [*VARIABLES, "metric", "effect_zero", "effect_mean", "effect_patch"]:
        np.testing.assert_array_equal(plain[v].values, cheap[v].values)
    assert cheap.attrs["effects"] == ["zero", "mean", "patch", "atp_mean", "atpstar_mean"]
    star, exact = cheap["effect_atpstar_mean"].values, cheap["effect_mean"].values
    assert (np.isnan(star) == np.isnan(exact)).all() and np.nanmin(star) >= 0
    error = cheap["effect_atp_mean"].values - exact
    assert 0.08 < np.nanstd(error) < 0.12  # signed estimate: exact + noise
    assert cheap_family("atpstar_mean") == ("atpstar", "mean") and cheap_family("atp_mean") == ("atp", "mean")
    assert cheap_family("mean") is None
    with pytest.raises(AnalysisError, match="pass effects too"):
        make_dataset(cheap_kinds=("atp_patch",))
    with pytest.raises(AnalysisError, match="cannot plant 'atp_patch'"):
        store(effect_kinds=("zero",), cheap_kinds=("atp_patch",))


def test_cheap_report_runs_without_jax(tmp_path):
    run_without_jax(f"""
        from analysis.synthetic import make_dataset, write_store
        from analysis.report import write_report
        write_store(make_dataset(n_layers=2, n_heads=3, n_prompts=12, effects={{(1, 1): -1.0}},
                                 effect_kinds=("patch",), cheap_kinds=("atp_patch", "atpstar_patch")),
                    r"{tmp_path}/s.zarr")
        s = write_report(r"{tmp_path}/s.zarr", r"{tmp_path}/out", circuit="effects:patch", n_boot=20, n_perm=20)
        assert set(s["cheap_vs_exact"]["patch"]) >= {{"atp_patch", "atpstar_patch", "delta_kl_norm"}}, s.keys()
    """)
