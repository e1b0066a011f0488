"""Statistical properties of the analysis package: calibration, coverage, power, parity with scipy.

Calibration tests vectorise across replicates (heads as replicates where the property allows) so the
file runs in seconds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis import circuit_tests as ct
from analysis import correlation as corr
from analysis import standardised as st
from analysis.resampling import bootstrap_counts, permutation_members, rng_for
from analysis.shifts import shift
from analysis.units import CrossUnits, cross_moments


def permutation_deltas(xa: np.ndarray, xb: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """[n_perm, *heads] delta of means with the condition labels shuffled (the report's engine, prompt units)."""
    return st.permutation_null(st.prompt_samples(xa, xb, st.INDEPENDENT), n_perm, rng)[0]


def prompt_cross(x: np.ndarray) -> CrossUnits:
    """Cross-head units of one prompt of x [n, k]."""
    return cross_moments(x, 1, np.ones(x.shape[1], dtype=bool))


def c_diff_null(xa: np.ndarray, xb: np.ndarray, n_perm: int, rng: np.random.Generator):
    ca, cb = prompt_cross(xa), prompt_cross(xb)
    return corr.c_diff_max_null(ca, cb, corr.max_abs_offdiag(ca.correlation() - cb.correlation()), n_perm, rng)


def null_replicate_pvalues(rng, n_rep, *, shape=(5, 8), n=12, n_perm=199, noise_by_head=None, circuit=None):
    """Permutation, Mann-Whitney and per-head p-values over replicate datasets with no condition effect."""
    sd = np.ones(shape) if noise_by_head is None else noise_by_head
    mask = circuit if circuit is not None else np.zeros(shape, bool)
    if circuit is None:
        mask[:, :2] = True  # 2 circuit heads per layer
    out = {"perm": [], "mw": [], "head": [], "strat": []}
    for r in range(n_rep):
        xa = rng.standard_normal((n, *shape)) * sd
        xb = rng.standard_normal((n, *shape)) * sd
        delta = xa.mean(0) - xb.mean(0)
        null = permutation_deltas(xa, xb, n_perm, rng)
        out["perm"].append(ct.circuit_permutation_test(delta, null, mask).pvalue)
        out["mw"].append(ct.mann_whitney(np.abs(delta), mask).pvalue)
        out["head"].append(ct.per_head_permutation(delta, null).pvalue[0, 0])
        out["strat"].append(ct.layer_stratified_test(np.abs(delta), mask, n_perm, rng).pvalue)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def null_pvalues():
    return null_replicate_pvalues(np.random.default_rng(1234), 250)


@pytest.mark.parametrize("test", ["perm", "head", "strat", "mw"])
def test_pvalues_uniform_under_null(null_pvalues, test):
    p = null_pvalues[test]
    assert p.size >= 200
    assert stats.kstest(p, "uniform").pvalue > 0.01, test
    assert np.mean(p <= 0.05) < 0.1  # and never grossly anti-conservative


def test_permutation_null_keeps_calibration_when_circuit_heads_are_noisier():
    """Circuit heads 2x noisier, no condition effect: the rank test (heads as units) rejects far too
    often, the label-permutation null does not: it is the proper null for prompt noise."""
    shape = (4, 10)
    mask = np.zeros(shape, bool)
    mask[:, :3] = True
    sd = np.where(mask, 2.0, 1.0)
    p = null_replicate_pvalues(np.random.default_rng(8), 220, shape=shape, n_perm=199, noise_by_head=sd, circuit=mask)
    assert np.mean(p["mw"] <= 0.05) > 0.5
    assert stats.kstest(p["perm"], "uniform").pvalue > 0.01
    assert np.mean(p["perm"] <= 0.05) < 0.1


@pytest.mark.parametrize("method", ["percentile", "BCa"])
def test_bootstrap_ci_coverage(method):
    """Each of 2,000 independent heads is a replicate: the 95% CI covers the true delta 93-97% of the time."""
    rng = np.random.default_rng(99)
    k, true_delta = 2000, 0.3
    xa = true_delta + rng.standard_normal((50, k))
    xb = rng.exponential(1.0, (60, k)) - 1.0  # skewed, mean 0
    res = shift(xa, xb, n_boot=1000, rng=rng, method=method)
    ci = res.confidence_interval
    coverage = np.mean((ci.low <= true_delta) & (true_delta <= ci.high))
    assert 0.93 <= coverage <= 0.97, coverage
    se = np.sqrt(xa.var(0, ddof=1) / 50 + xb.var(0, ddof=1) / 60)
    np.testing.assert_allclose(np.median(res.standard_error / se), 1.0, atol=0.03)


def test_bca_matches_scipy_bootstrap():
    rng = np.random.default_rng(5)
    xa, xb = rng.gamma(2.0, size=(40, 3)), rng.gamma(2.5, size=(30, 3))
    ours = shift(xa, xb, n_boot=20000, rng=1, method="BCa")
    for h in range(3):
        ref = stats.bootstrap((xa[:, h], xb[:, h]), lambda x, y: x.mean() - y.mean(), n_resamples=20000,
                              method="BCa", vectorized=False, random_state=2).confidence_interval
        tol = 0.1 * ours.standard_error[h]  # Monte-Carlo error of BCa tails
        assert abs(ours.confidence_interval.low[h] - ref.low) < tol
        assert abs(ours.confidence_interval.high[h] - ref.high) < tol


def test_resampling_engines_are_what_they_claim():
    rng = np.random.default_rng(0)
    counts = np.concatenate(list(bootstrap_counts(7, 600, rng)))
    assert counts.shape == (600, 7) and (counts.sum(1) == 7).all()
    np.testing.assert_allclose(counts.mean(0), 1.0, atol=0.1)  # each prompt drawn once on average
    members = np.concatenate(list(permutation_members(5, 3, 600, rng)))
    assert members.shape == (600, 8) and (members.sum(1) == 5).all()
    np.testing.assert_allclose(members.mean(0), 5 / 8, atol=0.06)
    a = [m for m in bootstrap_counts(9, 300, rng_for(3, 1))]
    b = [m for m in bootstrap_counts(9, 300, rng_for(3, 1))]
    assert all((x == y).all() for x, y in zip(a, b))  # seeded


def test_planted_shifts_are_found():
    from analysis.synthetic import make_dataset
    from analysis.store import condition_values

    planted = {(1, 2): 0.05, (2, 5): -0.04}
    ds = make_dataset(n_layers=3, n_heads=8, n_prompts=50, shifts={"kl_norm": planted}, seed=3)
    xa, xb = condition_values(ds, "ioi", "kl_norm"), condition_values(ds, "non_ioi", "kl_norm")
    res = shift(xa, xb, n_boot=500, rng=0)
    for (l, h), d in planted.items():
        assert res.confidence_interval.low[l, h] <= d <= res.confidence_interval.high[l, h]
        assert np.sign(res.confidence_interval.low[l, h]) == np.sign(res.confidence_interval.high[l, h])
    null = permutation_deltas(xa, xb, 999, np.random.default_rng(1))
    q = ct.benjamini_hochberg(ct.per_head_permutation(res.statistic, null).pvalue)
    flagged = {tuple(map(int, x)) for x in np.argwhere(q <= 0.05)}
    assert set(planted) <= flagged and len(flagged) <= len(planted) + 1
    mask = np.zeros((3, 8), bool)
    for l, h in planted:
        mask[l, h] = True
    mw = ct.mann_whitney(np.abs(res.statistic), mask)
    assert mw.auc == 1.0 and mw.pvalue_exact == pytest.approx(mw.min_pvalue)
    # shifted heads also have a wider pooled spread, so their shuffled |delta| run large: p above 1/C(24, 2)
    assert ct.circuit_permutation_test(res.statistic, null, mask).pvalue <= 0.05


def test_mann_whitney_equals_scipy_and_vectorised_u():
    rng = np.random.default_rng(11)
    for trial in range(20):
        values = np.round(rng.exponential(size=30), 1 if trial % 2 else 6)  # with and without ties
        mask = np.zeros(30, bool)
        mask[rng.choice(30, rng.integers(1, 10), replace=False)] = True
        ours = ct.mann_whitney(values, mask)
        ref = stats.mannwhitneyu(values[mask], values[~mask], alternative="greater")
        assert ours.statistic == ref.statistic and ours.pvalue == ref.pvalue
        rows = rng.permutation(np.tile(values, (4, 1)).T).T
        for row, u in zip(rows, ct.u_statistics(rows, mask)):
            assert u == stats.mannwhitneyu(row[mask], row[~mask]).statistic


def test_smallest_attainable_mann_whitney_p():
    values = np.arange(24.0)
    mask = np.zeros(24, bool)
    mask[-1] = True  # one circuit head, ranked first
    res = ct.mann_whitney(values, mask)
    assert res.min_pvalue == pytest.approx(1 / 24) and res.pvalue_exact == pytest.approx(1 / 24)
    mask[-3:] = True
    assert ct.mann_whitney(values, mask).pvalue_exact == pytest.approx(1 / 2024)  # 1/C(24, 3)


def test_layer_stratified_test_removes_a_pure_layer_effect():
    """Every head of the last layer shifts; the circuit is two of them. The plain rank test calls the
    circuit special, the within-layer test does not."""
    rng = np.random.default_rng(2)
    absd = np.abs(rng.normal(0, 0.01, (4, 6)))
    absd[3] += 0.1
    mask = np.zeros((4, 6), bool)
    mask[3, :2] = True
    assert ct.mann_whitney(absd, mask).pvalue < 0.05
    strat = ct.layer_stratified_test(absd, mask, 999, rng)
    assert strat.pvalue > 0.1 and strat.layers == [3]
    absd[3, :2] += 0.05  # now the circuit heads lead their layer
    strat = ct.layer_stratified_test(absd, mask, 999, rng)
    assert strat.auc == 1.0 and strat.pvalue <= 1 / 15 + 0.02  # exact min 1/C(6, 2)


def test_benjamini_hochberg_by_hand():
    p = np.array([[0.01, 0.04], [0.03, np.nan]])
    q = ct.benjamini_hochberg(p)
    # sorted p 0.01, 0.03, 0.04 (m = 3): q_(i) = min over j >= i of p_(j) m / j
    np.testing.assert_allclose([q[0, 0], q[1, 0], q[0, 1]], [0.03, min(0.03 * 3 / 2, 0.04), 0.04])
    assert np.isnan(q[1, 1])


def test_c_diff_null_calibrated_and_finds_planted_coupling():
    rng = np.random.default_rng(21)
    ps = []
    for _ in range(60):  # family-wise p of the max |C_diff| is uniform with no coupling
        xa, xb = rng.standard_normal((20, 6)), rng.standard_normal((20, 6))
        ps.append(c_diff_null(xa, xb, 99, rng).pvalue)
    assert stats.kstest(ps, "uniform").pvalue > 0.01
    shared = rng.standard_normal(80)
    xa = rng.standard_normal((80, 8))
    xa[:, 1] = shared + 0.2 * xa[:, 1]
    xa[:, 5] = shared + 0.2 * xa[:, 5]
    xb = rng.standard_normal((80, 8))
    null = c_diff_null(xa, xb, 199, rng)
    c_diff = prompt_cross(xa).correlation() - prompt_cross(xb).correlation()
    assert null.pvalue <= 0.01 and corr.family_wise_p(c_diff[1, 5], null) <= 0.01
    sigma = corr.sigma_band(c_diff, np.zeros(8, bool))
    assert (1, 5) in corr.flagged_pairs(c_diff, sigma, 2.0)
    lo, hi = corr.bootstrap_c_diff(prompt_cross(xa), prompt_cross(xb), [(1, 5)], 500, rng)[0]
    assert lo <= c_diff[1, 5] <= hi and lo > 0.4


@pytest.mark.parametrize("units_per_block", [1, 2, 3])
def test_c_diff_null_is_the_same_in_blocks_as_cached(monkeypatch, units_per_block):
    """c_diff_max_null builds the units' cross-products in blocks when the [units, k*k] matrix is large: blocks
    that straddle the boundary between a's and b's units give the null of the cached matrix (to the rounding of
    the blocked sums)."""
    from analysis import correlation
    from analysis.units import CrossUnits

    rng = np.random.default_rng(0)

    def units(g: int, k: int = 5) -> CrossUnits:
        a = rng.normal(size=(g, k, k))
        return CrossUnits(rng.integers(1, 5, g).astype(float), rng.normal(size=(g, k)), a @ a.transpose(0, 2, 1), 3)

    xa, xb = units(7), units(6)
    cached = correlation.c_diff_max_null(xa, xb, 0.5, 50, np.random.default_rng(1)).null_distribution
    # blocks of units_per_block units (13 units x 25 x 8 B exceeds 4x the block, so the matrix is not cached)
    monkeypatch.setattr(correlation, "CROSS_BLOCK_BYTES", 8 * 25 * units_per_block)
    blocked = correlation.c_diff_max_null(xa, xb, 0.5, 50, np.random.default_rng(1)).null_distribution
    np.testing.assert_allclose(blocked, cached, rtol=1e-12, atol=1e-15)
