"""Standardised shifts, the lead circuit test, minimum-effect tests and paired designs (issue 14).

Calibration and power run many replicate datasets at once: replicates are extra columns of one
[prompt, replicate, head] array, so the library's permutation engine (analysis.standardised.permutation_null)
draws one set of permutations and recomputes every replicate's t in the same matrix products (valid: each
replicate's data are independent of the permutations). Fixed seeds throughout.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis import circuit_tests as ct
from analysis import standardised as st
from analysis.pipeline import run_analysis
from analysis.report import parse_min_effect, write_report
from analysis.resampling import permutation_pvalue
from analysis.shifts import shift
from analysis.synthetic import make_dataset, write_store
from analysis.errors import AnalysisError
from tests import oracles

H = 144  # GPT-2 small's heads
N_CIRCUIT = 23  # the posts' IOI circuit


def circuit_mask(seed: int = 0) -> np.ndarray:
    mask = np.zeros(H, bool)
    mask[np.random.default_rng(seed).choice(H, N_CIRCUIT, replace=False)] = True
    return mask


def replicate_pvalues(xa: np.ndarray, xb: np.ndarray, mask: np.ndarray, design: str, n_perm: int,
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
    """xa, xb: [n, R, H]. Per replicate: the lead test's p (U of |t| vs label permutations), the rank test on
    |t| and the posts' rank test on raw |delta| (scipy's Mann-Whitney, one-sided)."""
    t = st.standardised(st.prompt_samples(xa, xb, design))["t"]  # [R, H]
    _, null_t = st.permutation_null(st.prompt_samples(xa, xb, design), n_perm, rng)  # [n_perm, R, H]
    lead = permutation_pvalue(ct.u_statistics(np.abs(t), mask), ct.u_statistics(np.abs(null_t), mask))
    raw = np.abs(np.nanmean(xa, 0) - np.nanmean(xb, 0))
    return {
        "lead": lead,
        "rank_z": stats.mannwhitneyu(np.abs(t)[:, mask], np.abs(t)[:, ~mask], axis=1, alternative="greater").pvalue,
        "rank_raw": stats.mannwhitneyu(raw[:, mask], raw[:, ~mask], axis=1, alternative="greater").pvalue,
    }


def test_batched_replicates_are_the_library_lead_test():
    """The batching above computes, replicate by replicate, exactly st.lead_circuit_test (same permutations)."""
    rng = np.random.default_rng(3)
    mask = circuit_mask()
    xa, xb = rng.standard_normal((20, 3, H)), rng.standard_normal((20, 3, H))
    batched = replicate_pvalues(xa, xb, mask, st.INDEPENDENT, 49, np.random.default_rng(7))["lead"]
    for r in range(3):
        one = st.lead_circuit_test(xa[:, r], xb[:, r], mask, st.INDEPENDENT, 49, np.random.default_rng(7)).pvalue
        assert one == pytest.approx(batched[r])


def test_lead_test_is_calibrated_when_the_circuit_is_noisier():
    """No shift anywhere; the 23 circuit heads have 4x the noise of the other 121; 60 prompts per condition;
    500 replicates, 99 permutations each. The lead test rejects at 5% in 3-7% of replicates (binomial SD at 5%:
    1.0 point), and so does the rank test on |t|; the posts' rank test on raw |delta| rejects in nearly all."""
    rng = np.random.default_rng(1)
    mask = circuit_mask()
    sd = np.where(mask, 4.0, 1.0)
    n, reps = 60, 500
    xa, xb = rng.standard_normal((n, reps, H)) * sd, rng.standard_normal((n, reps, H)) * sd
    p = replicate_pvalues(xa, xb, mask, st.INDEPENDENT, 99, rng)
    rate = {k: float(np.mean(v <= 0.05)) for k, v in p.items()}
    assert 0.03 <= rate["lead"] <= 0.07, rate
    assert 0.03 <= rate["rank_z"] <= 0.07, rate
    assert rate["rank_raw"] > 0.9, rate  # the posts' test calls a noisy circuit shifted
    assert stats.kstest(p["lead"], "uniform").pvalue > 0.01


def test_paired_lead_test_is_calibrated():
    """Paired design (pair members correlated 0.7, circuit 4x noisier, no shift): sign-flip permutations keep
    the lead test at its level over 300 replicates."""
    rng = np.random.default_rng(2)
    mask = circuit_mask(1)
    sd = np.where(mask, 4.0, 1.0)
    n, reps, r = 40, 300, 0.7
    shared = rng.standard_normal((n, reps, H))
    xa = (r**0.5 * shared + (1 - r) ** 0.5 * rng.standard_normal((n, reps, H))) * sd
    xb = (r**0.5 * shared + (1 - r) ** 0.5 * rng.standard_normal((n, reps, H))) * sd
    p = replicate_pvalues(xa, xb, mask, st.PAIRED, 99, rng)
    assert 0.02 <= np.mean(p["lead"] <= 0.05) <= 0.08
    assert np.mean(p["rank_raw"] <= 0.05) > 0.9


def test_lead_test_detects_a_small_shift_among_noisy_heads():
    """Circuit heads shift by 0.5 of their SD (d = 0.5), the other heads are 4x noisier and unshifted; 60 prompts
    per condition, 200 replicates. The lead test detects the circuit in >= 90% of replicates, while the posts'
    raw-|delta| rank test mostly cannot (the noisy heads' |delta| is larger than the circuit's shift)."""
    rng = np.random.default_rng(4)
    mask = circuit_mask(2)
    sd = np.where(mask, 1.0, 4.0)
    n, reps = 60, 200
    xa = rng.standard_normal((n, reps, H)) * sd + np.where(mask, 0.5, 0.0)
    xb = rng.standard_normal((n, reps, H)) * sd
    p = replicate_pvalues(xa, xb, mask, st.INDEPENDENT, 99, rng)
    assert np.mean(p["lead"] <= 0.05) >= 0.9
    assert np.mean(p["rank_raw"] <= 0.05) < 0.5


def test_min_effect_flags_only_the_heads_beyond_x():
    """X = 0.01; half the heads shift by 0.5X, the others by 2X (noise SD 0.02, 400 prompts per condition,
    50 replicates of 144 heads). BH at 5% over heads flags almost only the 2X heads at x = X, and every head at
    x = 0 (with enough prompts every non-zero shift is significant)."""
    rng = np.random.default_rng(5)
    x, n, reps = 0.01, 400, 50
    big = np.arange(H) % 2 == 0
    true = np.where(big, 2 * x, 0.5 * x) * np.where(np.arange(H) % 4 < 2, 1, -1)  # both signs
    xa = true + 0.02 * rng.standard_normal((n, reps, H))
    xb = 0.02 * rng.standard_normal((n, reps, H))
    s = st.standardised(st.prompt_samples(xa, xb, st.INDEPENDENT))
    hits_big, false_small, at_zero = [], [], []
    for r in range(reps):
        q = np.asarray(ct.benjamini_hochberg(st.min_effect_pvalue(s["delta"][r], s["se"][r], s["df"][r], x)))
        q0 = np.asarray(ct.benjamini_hochberg(st.min_effect_pvalue(s["delta"][r], s["se"][r], s["df"][r], 0.0)))
        hits_big.append(np.mean(q[big] <= 0.05))
        false_small.append(np.mean(q[~big] <= 0.05))
        at_zero.append(np.mean(q0 <= 0.05))
    assert np.mean(hits_big) >= 0.95
    assert np.mean(false_small) <= 0.01
    assert np.mean(at_zero) >= 0.95


def test_min_effect_test_has_its_level_on_the_boundary():
    """|delta| = x exactly on 4,000 heads (replicates): unadjusted p <= 0.05 in 3-7% (binomial SD 0.34 points);
    at x = 0 the test is the two-sided Welch t-test."""
    rng = np.random.default_rng(6)
    x, k = 0.01, 4000
    true = np.where(np.arange(k) % 2 == 0, x, -x)
    xa = true + 0.03 * rng.standard_normal((50, k))
    xb = 0.05 * rng.standard_normal((70, k))
    s = st.standardised(st.prompt_samples(xa, xb, st.INDEPENDENT))
    p = st.min_effect_pvalue(s["delta"], s["se"], s["df"], x)
    assert 0.03 <= np.mean(p <= 0.05) <= 0.07
    welch = stats.ttest_ind(xa, xb, equal_var=False).pvalue
    np.testing.assert_allclose(st.min_effect_pvalue(s["delta"], s["se"], s["df"], 0.0), welch, rtol=1e-9)


def paired_columns(rng, n: int, k: int, r: float, delta: float):
    """k independent heads (replicates) of n pairs; within-pair correlation r; a skewed b condition."""
    shared = rng.standard_normal((n, k))
    xa = delta + r**0.5 * shared + (1 - r) ** 0.5 * rng.standard_normal((n, k))
    xb = r**0.5 * shared + (1 - r) ** 0.5 * (rng.exponential(1.0, (n, k)) - 1.0)
    return xa, xb


@pytest.mark.parametrize("design", [st.PAIRED, st.INDEPENDENT])
def test_interval_coverage(design):
    """2,000 independent heads as replicates, 60 prompts per condition, a skewed b condition: the 95% BCa
    interval of delta covers the true shift in 93-97% (binomial SD 0.49 points). Paired intervals on paired
    data (pair correlation 0.6), independent intervals on independent data."""
    rng = np.random.default_rng(7)
    true = 0.3
    xa, xb = paired_columns(rng, 60, 2000, 0.6 if design == st.PAIRED else 0.0, true)
    ci = shift(xa, xb, n_boot=1000, rng=rng, paired=design == st.PAIRED).confidence_interval
    assert 0.93 <= np.mean((ci.low <= true) & (true <= ci.high)) <= 0.97


def test_paired_intervals_are_narrower_on_paired_data():
    """Pair correlation 0.6: the paired interval is about sqrt(1 - 0.6) = 0.63 of the independent one, which on
    paired data is valid but wasteful (it over-covers)."""
    rng = np.random.default_rng(8)
    xa, xb = paired_columns(rng, 60, 2000, 0.6, 0.3)
    paired = shift(xa, xb, n_boot=1000, rng=rng, paired=True).confidence_interval
    independent = shift(xa, xb, n_boot=1000, rng=rng).confidence_interval
    ratio = np.median((paired.high - paired.low) / (independent.high - independent.low))
    assert 0.55 <= ratio <= 0.72
    assert np.mean((independent.low <= 0.3) & (0.3 <= independent.high)) > 0.98


def test_effect_size_interval_coverage():
    """Percentile interval of d over the bootstrap (d recomputed): 93-97% coverage over 2,000 heads."""
    rng = np.random.default_rng(8)
    xa = 0.5 + rng.standard_normal((80, 2000))
    xb = rng.standard_normal((80, 2000))
    boot = st.bootstrap_standardised(st.prompt_samples(xa, xb, st.INDEPENDENT), 1000, rng)["d"]
    low, high = np.quantile(boot, [0.025, 0.975], axis=0)
    assert 0.93 <= np.mean((low <= 0.5) & (0.5 <= high)) <= 0.97


def test_standardised_statistics_equal_scipy():
    rng = np.random.default_rng(9)
    xa, xb = rng.normal(0.2, 1.0, (30, 3, 4)), rng.normal(0.0, 3.0, (45, 3, 4))
    s = st.standardised(st.prompt_samples(xa, xb, st.INDEPENDENT))
    ref = stats.ttest_ind(xa, xb, equal_var=False)
    np.testing.assert_allclose(s["t"], ref.statistic)
    np.testing.assert_allclose(s["df"], ref.df)
    d = (xa.mean(0) - xb.mean(0)) / np.sqrt((xa.var(0, ddof=1) + xb.var(0, ddof=1)) / 2)
    np.testing.assert_allclose(s["d"], d)
    ya, yb = paired_columns(rng, 25, 12, 0.5, 0.1)
    p = st.standardised(st.prompt_samples(ya, yb, st.PAIRED))
    ref = stats.ttest_rel(ya, yb)
    np.testing.assert_allclose(p["t"], ref.statistic)
    np.testing.assert_allclose(p["df"], ref.df)
    # permutations: the independent deltas are exactly the prompt-array oracle's (same draws); each
    # permuted t is the Welch t of the relabelled samples
    null_d, null_t = st.permutation_null(st.prompt_samples(xa, xb, st.INDEPENDENT), 20, np.random.default_rng(1))
    np.testing.assert_allclose(null_d, oracles.permutation_deltas(xa, xb, 20, np.random.default_rng(1)))
    assert np.all(np.isfinite(null_t)) and null_t.shape == (20, 3, 4)
    _, flip_t = st.permutation_null(st.prompt_samples(ya, yb, st.PAIRED), 2000, np.random.default_rng(2))
    assert abs(np.std(flip_t) - 1.0) < 0.1  # sign-flip null of a paired t: about N(0, 1)


@pytest.fixture(scope="module")
def paired_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    circuit = {"name": "toy", "roles": {"Mover": ["2.1", "2.3"]}}
    ds = make_dataset(n_layers=3, n_heads=6, n_prompts=60, conditions=("ioi", "non_ioi"), pair_corr=0.8,
                      shifts={"kl_norm": {(2, 1): 0.03, (2, 3): 0.03, (0, 4): 0.004}}, noise=0.01, seed=11,
                      circuit=circuit)
    write_store(ds, root / "paired.zarr")
    s = write_report(str(root / "paired.zarr"), str(root / "out"), n_boot=300, n_perm=300, seed=0,
                     min_effect="kl_norm=0.01")
    return root, ds, s


def test_paired_store_gets_the_paired_design(paired_report):
    root, ds, s = paired_report
    assert s["design"] == "paired"
    xa = ds["kl_norm"].sel(condition="ioi").values.astype(float)
    xb = ds["kl_norm"].sel(condition="non_ioi").values.astype(float)
    ref = stats.ttest_rel(xa, xb)
    np.testing.assert_allclose(np.array(s["delta_z"]["kl_norm"], dtype=float), ref.statistic, rtol=1e-9)
    ratio = s["paired_vs_independent"]["kl_norm"]["ci_width_ratio_median"]
    assert ratio < 0.6  # correlation 0.8: sqrt(0.2) = 0.45 in theory
    md = (root / "out" / "report.md").read_text()
    assert "paired design" in md and "paired / independent 95% CI width" in md
    assert "sign flips" in s["settings"]["permutation"] and "pairs resampled" in s["settings"]["bootstrap"]
    # the min-effect flags: the two 0.03 shifts pass x = 0.01, the 0.004 one passes only x = 0
    assert s["min_effect"]["kl_norm"] == 0.01
    tests = s["min_effect_tests"]["kl_norm"]
    assert tests["flagged"] == [[2, 1], [2, 3]]
    assert [0, 4] in tests["flagged_zero"] and tests["n_flagged"]["zero"] > tests["n_flagged"]["x"]
    lead = s["circuit_test"]["kl_norm"]
    assert lead["pvalue"] <= 0.05 and lead["agrees_with_rank_test"]


def test_pairing_is_detected_or_refused(paired_report):
    root, ds, _ = paired_report
    c = dict(name="toy", roles={"Mover": ["2.1"]})
    from analysis.circuits import from_mapping

    circuit = from_mapping(c, name="toy", source="test")
    shuffled = ds.copy()  # b's pairs stored in another order: matched by id, not by position
    order = np.random.default_rng(0).permutation(60)
    for name in list(shuffled.data_vars):
        values = shuffled[name].values.copy()
        values[1] = values[1][order]
        shuffled[name] = (shuffled[name].dims, values)
    pair = shuffled["pair"].values.copy()
    pair[1] = pair[1][order]
    shuffled = shuffled.assign_coords(pair=(("condition", "prompt"), pair))
    an0 = run_analysis(ds, circuit, "ioi", "non_ioi", n_boot=50, n_perm=50, curve=False)
    an1 = run_analysis(shuffled, circuit, "ioi", "non_ioi", n_boot=50, n_perm=50, curve=False)
    assert an1.comparison.design == "paired"
    np.testing.assert_allclose(an1.standardised["kl_norm"].statistic.values, an0.standardised["kl_norm"].statistic.values)
    independent = run_analysis(ds, circuit, "ioi", "non_ioi", n_boot=50, n_perm=50, curve=False, design="independent")
    assert independent.comparison.design == "independent" and not independent.independent_shifts
    unpaired = make_dataset(n_layers=3, n_heads=6, n_prompts=30, seed=1)
    an = run_analysis(unpaired, circuit, "ioi", "non_ioi", n_boot=50, n_perm=50, curve=False)
    assert an.comparison.design == "independent" and "no `pair`" in an.comparison.design_reason
    with pytest.raises(AnalysisError, match="paired design needs matched pairs"):
        run_analysis(unpaired, circuit, "ioi", "non_ioi", n_boot=50, n_perm=50, curve=False, design="paired")


def test_min_effect_flag_parsing():
    assert parse_min_effect(None) == {}
    assert parse_min_effect("0.02") == {"kl_norm": 0.02, "chi": 0.02}
    assert parse_min_effect("kl_norm=0.02, chi=0.005") == {"kl_norm": 0.02, "chi": 0.005}
    with pytest.raises(AnalysisError, match="--min-effect"):
        parse_min_effect("big")
    ds = make_dataset(n_layers=2, n_heads=3, n_prompts=20, seed=2)
    from analysis.circuits import from_mapping

    circuit = from_mapping({"roles": {"A": ["1.1"]}}, name="c", source="test")
    with pytest.raises(AnalysisError, match="per-head tests run on"):
        run_analysis(ds, circuit, "ioi", "non_ioi", n_boot=20, n_perm=20, curve=False, min_effect={"kl": 0.1})
    with pytest.raises(AnalysisError, match=">= 0"):
        run_analysis(ds, circuit, "ioi", "non_ioi", n_boot=20, n_perm=20, curve=False, min_effect={"chi": -1.0})


def test_prompt_curve_has_the_lead_permutation_p(paired_report):
    _, _, s = paired_report
    curve = s["prompt_curve"]
    for var in ("kl_norm", "chi"):
        p = curve[f"perm_p_{var}"]
        assert len(p) == len(curve["n"]) and all(1 / 100 <= v <= 1 for v in p)
        assert len(curve[f"auc_z_{var}"]) == len(curve["n"])
    assert curve["perm_p_kl_norm"][-1] <= 0.05  # all 60 pairs: the planted circuit shift is found
    assert s["settings"]["prompt_curve_n_perm"] == 99


def test_cli_min_effect_flag(tmp_path):
    """`jaxdiag report --min-effect` reaches summary.json; a bad value is a one-line error, exit 2."""
    import json

    from jaxdiag.cli import main

    ds = make_dataset(n_layers=2, n_heads=3, n_prompts=20, seed=3, circuit={"name": "c", "roles": {"A": ["1.1"]}})
    write_store(ds, tmp_path / "s.zarr")
    args = ["report", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "out"), "--n-perm", "20", "--n-boot", "20"]
    assert main(args + ["--min-effect", "kl_norm=0.05"]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["min_effect"] == {"kl_norm": 0.05, "chi": 0.01}
    assert main(args[:3] + [str(tmp_path / "bad"), "--min-effect", "chi=-1"]) == 2
    assert not (tmp_path / "bad").exists()


def test_report_lead_test_is_lead_circuit_test(paired_report):
    """The report's `circuit_test` p is st.lead_circuit_test on the store's values with the report's permutation
    stream (the documented stand-alone form of the lead test)."""
    from analysis.circuits import from_mapping
    from analysis.pipeline import SEED_PERM
    from analysis.resampling import rng_for

    _, ds, _ = paired_report
    circuit = from_mapping({"roles": {"Mover": ["2.1", "2.3"]}}, name="toy", source="test")
    an = run_analysis(ds, circuit, "ioi", "non_ioi", n_boot=20, n_perm=200, seed=4, curve=False)
    xa, xb = (x.values for x in an.comparison.values["chi"])
    alone = st.lead_circuit_test(xa, xb, an.comparison.mask.values, st.PAIRED, 200, rng_for(4, SEED_PERM))
    assert alone.pvalue == an.circuit_tests["chi"].permutation_z.pvalue
    assert alone.statistic == an.circuit_tests["chi"].permutation_z.statistic
