"""Head shifts between two conditions: delta of means with bootstrap confidence intervals, over units
(analysis.units: blocks of consecutive prompts, or single prompts for the in-memory report and `shift`).

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
from analysis.resampling import bootstrap_counts
from analysis.results import ConfidenceInterval, ShiftResult
from analysis.units import Units, unit_moments


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


def bootstrap_mean(u: Units, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, k] means of the units' k columns over units resampled with replacement (prompts, for units of one
    prompt): one matrix product per chunk of draws (analysis.resampling)."""
    return np.concatenate([weighted_mean(w, u) for w in bootstrap_counts(u.n_units, n_boot, rng)])


def weighted_mean(w: np.ndarray, u: Units) -> np.ndarray:
    """Means of the units' columns under each row of unit weights w [c, G], NaN entries skipped."""
    with quiet():
        return (w @ (u.count * u.mean)) / (w @ u.counts)


def acceleration(*samples: tuple[Units, float]) -> np.ndarray:
    """BCa acceleration of sum(sign * mean(sample)) from the prompt-level jackknife, exactly, from the units'
    M2 and M3: leave-one-prompt-out means give influence values u_i = sign (x_i - mean), so
    a = sum u^3 / (6 (sum u^2)^1.5) needs only the centred second and third moments (no second pass)."""
    nums, dens = 0.0, 0.0
    for u, sign in samples:
        t = u.totals(third=True)
        n = t["n"]
        with quiet():
            nums = nums + sign * t["m3"] / n**3
            dens = dens + t["m2"] / n**2
    with quiet():
        return nums / (6.0 * dens**1.5)


def shift_units(ua: Units, ub: Units | None, n_boot: int, rng: np.random.Generator, heads: xr.DataArray | None,
                level: float = 0.95, method: str = "BCa", shape: tuple[int, ...] | None = None) -> ShiftResult:
    """Delta of means per column with a bootstrap interval, from units: a - b (units resampled within each
    condition), or, with ub None, the mean of ua (one sample, e.g. the pair differences of a paired design).
    heads: the DataArray the results are labelled like (None: plain arrays of `shape`)."""
    shape = heads.shape if heads is not None else shape
    if ub is None:
        theta = ua.centre()
        boot = bootstrap_mean(ua, n_boot, rng)
        samples: tuple[tuple[Units, float], ...] = ((ua, 1.0),)
    else:
        theta = ua.centre() - ub.centre()
        boot = bootstrap_mean(ua, n_boot, rng) - bootstrap_mean(ub, n_boot, rng)
        samples = ((ua, 1.0), (ub, -1.0))
    theta, boot = theta.reshape(shape), boot.reshape((n_boot, *shape))
    if method == "percentile":
        ci = percentile_interval(boot, level)
    else:
        ci = bca_interval(boot, theta, acceleration(*samples).reshape(shape), level)
    with quiet():
        se = np.nanstd(boot, axis=0, ddof=1)
    return ShiftResult(like(heads, theta), ConfidenceInterval(like(heads, ci.low), like(heads, ci.high)),
                       like(heads, se), like(heads, boot, ("resample",)), method, level)


def shift(xa: np.ndarray | xr.DataArray, xb: np.ndarray | xr.DataArray, *, n_boot: int = 1000,
          rng: np.random.Generator | int = 0, method: str = "BCa", confidence_level: float = 0.95,
          paired: bool = False) -> ShiftResult:
    """Delta of means (a - b) per head with a bootstrap confidence interval, from prompt arrays: shift_units
    with units of one prompt (the report's own engine; its draws for a generator).

    paired: row i of xa and row i of xb are a matched pair; delta is then the mean within-pair difference
    (over pairs where both are defined: equal to mean(a) - mean(b) when nothing is NaN) and the bootstrap
    resamples pairs.

    xa, xb: [n_prompts_a, *heads] and [n_prompts_b, *heads] (e.g. [n, layer, head]); NaN entries are
    skipped. method: "BCa" or "percentile". DataArrays with prompts on their first dim give
    DataArray results labelled like the heads (the bootstrap distribution gains a "resample" dim).
    """
    heads = xa.isel({xa.dims[0]: 0}, drop=True) if isinstance(xa, xr.DataArray) else None
    xa, xb = np.asarray(xa, dtype=np.float64), np.asarray(xb, dtype=np.float64)
    if method not in ("BCa", "percentile"):
        raise AnalysisError(f"unknown interval method {method!r}: use 'BCa' or 'percentile'")
    if xa.shape[1:] != xb.shape[1:]:
        raise AnalysisError(f"conditions have different head shapes {xa.shape[1:]} and {xb.shape[1:]}")
    if min(xa.shape[0], xb.shape[0]) < 2:
        raise AnalysisError("each condition needs at least 2 prompts for a bootstrap")
    if n_boot < 2:
        raise AnalysisError("n_boot must be at least 2")
    if paired and xa.shape != xb.shape:
        raise AnalysisError(f"a paired shift needs one b prompt per a prompt, got {xa.shape[0]} and {xb.shape[0]}")
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    flat = lambda x: unit_moments(x.reshape(x.shape[0], -1), 1)  # noqa: E731
    ua, ub = (flat(xa - xb), None) if paired else (flat(xa), flat(xb))
    return shift_units(ua, ub, n_boot, rng, heads, confidence_level, method, shape=xa.shape[1:])
