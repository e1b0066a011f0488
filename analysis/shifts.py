"""Head shifts between two conditions: delta of means with bootstrap confidence intervals.

Independent design: prompts are resampled with replacement within each condition independently (the
conditions are independent draws). Paired design (``paired=True``: row i of a and row i of b are a
matched pair): pairs are resampled, i.e. the bootstrap of the mean within-pair difference. Either way
the same resample serves every head so joint statistics (AUC, rankings) can be
bootstrapped from the same replicates. Intervals: percentile and BCa (bias-corrected and
accelerated; the acceleration from the two-sample jackknife exactly as scipy.stats.bootstrap
computes it for multi-sample statistics).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy.special import ndtr, ndtri

from analysis._util import quiet
from analysis.errors import AnalysisError
from analysis.labels import like
from analysis.resampling import bootstrap_counts, finite_mask, weighted_means
from analysis.results import ConfidenceInterval, ShiftResult


def mean_delta(xa: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """nanmean over prompts (axis 0) of a minus that of b."""
    with quiet():
        return np.nanmean(xa, axis=0) - np.nanmean(xb, axis=0)


def bootstrap_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, k] means of x's k columns over prompts resampled with replacement (x is [n, k])."""
    finite = finite_mask(x)
    return np.concatenate([weighted_means(w, x, finite) for w in bootstrap_counts(x.shape[0], n_boot, rng)])


def bootstrap_delta(xa: np.ndarray, xb: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, *heads] bootstrap replicates of mean(a) - mean(b), prompts on axis 0 of xa and xb."""
    heads = xa.shape[1:]
    a = bootstrap_means(xa.reshape(xa.shape[0], -1), n_boot, rng)
    b = bootstrap_means(xb.reshape(xb.shape[0], -1), n_boot, rng)
    return (a - b).reshape((n_boot, *heads))


def jackknife_acceleration(xa: np.ndarray, xb: np.ndarray | None = None) -> np.ndarray:
    """BCa acceleration of mean(a) - mean(b) (of mean(a) when xb is None) from leave-one-prompt-out
    means of each sample in turn."""
    nums, dens = 0.0, 0.0
    samples = ((xa, 1.0),) if xb is None else ((xa, 1.0), (xb, -1.0))
    for x, sign in samples:
        n = x.shape[0]
        finite = np.isfinite(x)
        total, count = np.where(finite, x, 0.0).sum(axis=0), finite.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            loo = (total - np.where(finite, x, 0.0)) / (count - finite)  # [n, *heads]
        theta = sign * loo  # the other sample's mean is a constant shift and cancels below
        with quiet():
            u = (n - 1) * (np.nanmean(theta, axis=0) - theta)
        nums = nums + np.nansum(u**3, axis=0) / n**3
        dens = dens + np.nansum(u**2, axis=0) / n**2
    with np.errstate(invalid="ignore", divide="ignore"):
        return nums / (6.0 * dens**1.5)


def column_quantiles(sorted_boot: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Linear-interpolated quantile q[k] of column k of an already sorted [B, k] array (NaN q -> NaN)."""
    n = sorted_boot.shape[0]
    pos = np.clip(np.nan_to_num(q, nan=0.0), 0.0, 1.0) * (n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    cols = np.arange(sorted_boot.shape[1])
    out = sorted_boot[lo, cols] * (1 - frac) + sorted_boot[hi, cols] * frac
    return np.where(np.isnan(q), np.nan, out)


def percentile_interval(boot: np.ndarray, level: float) -> ConfidenceInterval:
    alpha = (1 - level) / 2
    with quiet():
        quantile = np.nanquantile if np.isnan(boot).any() else np.quantile  # nanquantile is 100x slower
        low, high = quantile(boot, [alpha, 1 - alpha], axis=0)
    return ConfidenceInterval(low, high)


def bca_interval(boot: np.ndarray, theta: np.ndarray, accel: np.ndarray, level: float) -> ConfidenceInterval:
    """BCa interval per column (scipy.stats.bootstrap's formulas, vectorised over heads)."""
    shape = theta.shape
    b = boot.reshape(boot.shape[0], -1)
    t, a = theta.ravel(), np.asarray(accel, dtype=float).ravel()
    # scipy's percentileofscore 'mean' kind: ties count half
    frac = ((b < t).sum(axis=0) + (b <= t).sum(axis=0)) / (2.0 * b.shape[0])
    z0 = ndtri(frac)
    alpha = (1 - level) / 2
    out = []
    for z_alpha in (ndtri(alpha), ndtri(1 - alpha)):
        with np.errstate(invalid="ignore", divide="ignore"):
            q = ndtr(z0 + (z0 + z_alpha) / (1 - a * (z0 + z_alpha)))
        out.append(column_quantiles(np.sort(b, axis=0), q).reshape(shape))
    return ConfidenceInterval(*out)


def mean_interval(x: np.ndarray, n_boot: int, rng: np.random.Generator, confidence_level: float = 0.95
                  ) -> tuple[np.ndarray, ConfidenceInterval, np.ndarray, np.ndarray]:
    """One sample's mean over prompts (axis 0) per column, NaN skipped, with a BCa interval (prompts
    resampled with replacement): (mean, interval, bootstrap SE, [n_boot, *columns] replicates)."""
    x = np.asarray(x, dtype=np.float64)
    with quiet():
        mean = np.nanmean(x, axis=0)
        boot = bootstrap_means(x.reshape(x.shape[0], -1), n_boot, rng).reshape((n_boot, *x.shape[1:]))
        se = np.nanstd(boot, axis=0, ddof=1)
    return mean, bca_interval(boot, mean, jackknife_acceleration(x), confidence_level), se, boot


def shift(xa: np.ndarray | xr.DataArray, xb: np.ndarray | xr.DataArray, *, n_boot: int = 1000,
          rng: np.random.Generator | int = 0, method: str = "BCa", confidence_level: float = 0.95,
          paired: bool = False) -> ShiftResult:
    """Delta of means (a - b) per head with a bootstrap confidence interval.

    paired: row i of xa and row i of xb are a matched pair; delta is then the mean within-pair difference
    (over pairs where both are defined: equal to mean(a) - mean(b) when nothing is NaN) and the bootstrap
    resamples pairs.

    xa, xb: [n_prompts_a, *heads] and [n_prompts_b, *heads] (e.g. [n, layer, head]); NaN entries are
    skipped. method: "BCa" or "percentile". DataArrays with prompts on their first dim give
    DataArray results labelled like the heads (the bootstrap distribution gains a "resample" dim).
    """
    heads = xa.isel({xa.dims[0]: 0}, drop=True) if isinstance(xa, xr.DataArray) else None
    res = _shift(np.asarray(xa, dtype=np.float64), np.asarray(xb, dtype=np.float64), n_boot, rng, method,
                 confidence_level, paired)
    ci = ConfidenceInterval(like(heads, res.confidence_interval.low), like(heads, res.confidence_interval.high))
    return ShiftResult(like(heads, res.statistic), ci, like(heads, res.standard_error),
                       like(heads, res.bootstrap_distribution, ("resample",)), method, confidence_level)


def _shift(xa: np.ndarray, xb: np.ndarray, n_boot: int, rng: np.random.Generator | int, method: str,
           confidence_level: float, paired: bool = False) -> ShiftResult:
    if method not in ("BCa", "percentile"):
        raise AnalysisError(f"unknown interval method {method!r}: use 'BCa' or 'percentile'")
    if xa.shape[1:] != xb.shape[1:]:
        raise AnalysisError(f"conditions have different head shapes {xa.shape[1:]} and {xb.shape[1:]}")
    if min(xa.shape[0], xb.shape[0]) < 2:
        raise AnalysisError("each condition needs at least 2 prompts for a bootstrap")
    if n_boot < 2:
        raise AnalysisError("n_boot must be at least 2")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    if paired:
        if xa.shape != xb.shape:
            raise AnalysisError(f"a paired shift needs one b prompt per a prompt, got {xa.shape[0]} and {xb.shape[0]}")
        diff = xa - xb
        with quiet():
            theta = np.nanmean(diff, axis=0)
        boot = bootstrap_means(diff.reshape(diff.shape[0], -1), n_boot, rng).reshape((n_boot, *diff.shape[1:]))
        if method == "percentile":
            ci = percentile_interval(boot, confidence_level)
        else:
            ci = bca_interval(boot, theta, jackknife_acceleration(diff), confidence_level)
        with quiet():
            se = np.nanstd(boot, axis=0, ddof=1)
        return ShiftResult(theta, ci, se, boot, method, confidence_level)
    theta = mean_delta(xa, xb)
    boot = bootstrap_delta(xa, xb, n_boot, rng)
    if method == "percentile":
        ci = percentile_interval(boot, confidence_level)
    else:
        ci = bca_interval(boot, theta, jackknife_acceleration(xa, xb), confidence_level)
    with quiet():
        se = np.nanstd(boot, axis=0, ddof=1)
    return ShiftResult(theta, ci, se, boot, method, confidence_level)
