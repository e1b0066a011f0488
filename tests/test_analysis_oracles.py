"""The report's unit engines (analysis.units) with units of one prompt against the prompt-array engines they
replaced (tests/oracles.py): the same draws for a generator, so every replicate agrees to float64 rounding
(rtol 1e-9; most are bit for bit). Data: skewed values with NaN entries, both designs, hypothesis-drawn shapes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as hs

from analysis import causal as ca
from analysis import correlation as corr
from analysis import standardised as st
from analysis.effects import EffectSample
from analysis.shifts import acceleration, bootstrap_mean, shift
from analysis.units import cross_moments, unit_moments
from tests import oracles

RTOL = 1e-9


def _data(seed: int, n_a: int, n_b: int, k: int, nan: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xa, xb = rng.gamma(2.0, size=(n_a, k)) + 0.3, rng.gamma(2.5, size=(n_b, k))
    for x in (xa, xb):
        x[rng.random(x.shape) < nan] = np.nan
    return xa, xb


def _close(new, old):
    np.testing.assert_allclose(np.asarray(new, float), np.asarray(old, float), rtol=RTOL, atol=1e-14, equal_nan=True)


@settings(max_examples=25, deadline=None)
@given(seed=hs.integers(0, 2**16), n_a=hs.integers(4, 40), n_b=hs.integers(4, 40), k=hs.integers(1, 6),
       nan=hs.sampled_from([0.0, 0.1]), paired=hs.booleans())
def test_two_sample_engines_are_the_prompt_oracles(seed, n_a, n_b, k, nan, paired):
    if paired:
        n_b = n_a
    xa, xb = _data(seed, n_a, n_b, k, nan)
    design = st.PAIRED if paired else st.INDEPENDENT
    samples = st.prompt_samples(xa, xb, design)
    point, ref = st.standardised(samples), oracles.standardised(xa, xb, design)
    for key in ("delta", "se", "df", "t", "d"):
        _close(point[key], ref[key])
    boot = st.bootstrap_standardised(samples, 50, np.random.default_rng(seed))
    ref = oracles.bootstrap_standardised(xa, xb, design, 50, np.random.default_rng(seed))
    for key in ("delta", "t", "d"):
        _close(boot[key], ref[key])
    null = st.permutation_null(samples, 40, np.random.default_rng(seed + 1))
    ref = oracles.permutation_null(xa, xb, design, 40, np.random.default_rng(seed + 1))
    _close(null[0], ref[0])
    _close(null[1], ref[1])
    if not paired:
        _close(null[0], oracles.permutation_deltas(xa, xb, 40, np.random.default_rng(seed + 1)))


@settings(max_examples=25, deadline=None)
@given(seed=hs.integers(0, 2**16), n=hs.integers(3, 50), k=hs.integers(1, 5), nan=hs.sampled_from([0.0, 0.15]))
def test_bootstrap_means_and_acceleration_are_the_prompt_oracles(seed, n, k, nan):
    xa, xb = _data(seed, n, n + 3, k, nan)
    ua, ub = unit_moments(xa, 1), unit_moments(xb, 1)
    _close(bootstrap_mean(ua, 60, np.random.default_rng(seed)),
           oracles.bootstrap_means(xa, 60, np.random.default_rng(seed)))
    if nan == 0.0:  # the oracle's jackknife counts every row of a head with NaN, the units its finite prompts
        _close(acceleration((ua, 1.0), (ub, -1.0)), oracles.jackknife_acceleration(xa, xb))
        _close(acceleration((ua, 1.0)), oracles.jackknife_acceleration(xa))


def test_acceleration_with_nan_is_the_jackknife_of_the_finite_prompts():
    xa, xb = _data(3, 30, 25, 4, 0.2)
    ua, ub = unit_moments(xa, 1), unit_moments(xb, 1)
    for j in range(4):
        a, b = xa[:, j][np.isfinite(xa[:, j])], xb[:, j][np.isfinite(xb[:, j])]
        _close(acceleration((ua, 1.0), (ub, -1.0))[j], oracles.jackknife_acceleration(a[:, None], b[:, None])[0])


@pytest.mark.parametrize("paired", [False, True])
def test_shift_is_the_prompt_oracles_bootstrap(paired):
    xa, xb = _data(5, 40, 40, 6, 0.05)
    new = shift(xa, xb, n_boot=300, rng=1, paired=paired)
    boot = (oracles.bootstrap_means(xa - xb, 300, np.random.default_rng(1)) if paired
            else oracles.bootstrap_delta(xa, xb, 300, np.random.default_rng(1)))
    _close(new.bootstrap_distribution, boot)
    _close(new.statistic, np.nanmean(xa - xb, axis=0) if paired else oracles.mean_delta(xa, xb))


def test_cross_head_engines_are_the_prompt_oracles():
    rng = np.random.default_rng(2)
    shared = rng.standard_normal(70)
    xa = rng.standard_normal((70, 7))
    xa[:, 1] += shared
    xa[:, 4] += shared
    xb = rng.standard_normal((90, 7))
    xa[3, 2] = np.nan  # an incomplete row: left out of every cross-head statistic
    active = np.ones(7, dtype=bool)
    ca_, cb_ = cross_moments(xa, 1, active), cross_moments(xb, 1, active)
    c_diff = ca_.correlation() - cb_.correlation()
    _close(c_diff, oracles.head_correlation(xa) - oracles.head_correlation(xb))
    observed = corr.max_abs_offdiag(c_diff)
    new = corr.c_diff_max_null(ca_, cb_, observed, 130, np.random.default_rng(4))
    ref = oracles.c_diff_max_null(xa, xb, 130, np.random.default_rng(4))
    _close(new.null_distribution, ref.null_distribution)
    assert new.pvalue == ref.pvalue
    pairs = [(1, 4), (0, 6)]
    _close(corr.bootstrap_c_diff(ca_, cb_, pairs, 200, np.random.default_rng(5)),
           oracles.bootstrap_c_diff(xa, xb, pairs, 200, np.random.default_rng(5)))


def test_blocked_cross_products_give_the_cached_null(monkeypatch):
    """Units of one prompt past CROSS_BLOCK_BYTES: the null's cross-products summed block by block (the in-memory
    report at 10^4 prompts) equal the one-product path to rounding."""
    xa, xb = _data(8, 120, 100, 5, 0.0)
    active = np.ones(5, dtype=bool)
    ca_, cb_ = cross_moments(xa, 1, active), cross_moments(xb, 1, active)
    whole = corr.c_diff_max_null(ca_, cb_, 0.5, 70, np.random.default_rng(6))
    monkeypatch.setattr(corr, "CROSS_BLOCK_BYTES", 8 * 25 * 7)  # blocks of 7 units
    blocked = corr.c_diff_max_null(ca_, cb_, 0.5, 70, np.random.default_rng(6))
    _close(blocked.null_distribution, whole.null_distribution)


def test_joint_bootstrap_is_the_prompt_oracles():
    """Effects on condition a (rows = a's prompts) and on a third condition: the units' joint draws are the
    oracle's prompt draws."""
    xa, xb = _data(9, 30, 26, 6, 0.05)
    effect_a, effect_c = _data(10, 30, 12, 6, 0.1)
    shape = (2, 3)
    values = xr.DataArray(np.concatenate([effect_a, effect_c]).reshape(42, *shape), dims=("prompt", "layer", "head"))
    sample = EffectSample("zero", values,
                          np.array(["a"] * 30 + ["c"] * 12), np.concatenate([np.arange(30), np.arange(12)]),
                          ("a", "c"))
    deltas, means = ca.joint_bootstrap({"v": (unit_moments(xa, 1), unit_moments(xb, 1))}, "a", "b", ["a", "c"],
                                       {"zero": {"a": unit_moments(effect_a, 1), "c": unit_moments(effect_c, 1)}},
                                       80, np.random.default_rng(11), shape)
    ref_d, ref_m = oracles.joint_bootstrap_many({"v": (xa.reshape(30, *shape), xb.reshape(26, *shape))}, "a", "b",
                                                sample, {"zero": sample.values}, 80, np.random.default_rng(11))
    _close(deltas["v"], ref_d["v"])
    _close(means["zero"], ref_m["zero"])
