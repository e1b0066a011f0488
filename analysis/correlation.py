"""Correlation structure: diagnostic-vs-diagnostic correlations across heads, and head x head
correlation matrices across prompts (C_a, C_b, C_diff) with the posts' sigma band and a proper null.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from analysis._util import quiet
from analysis.resampling import bootstrap_counts, permutation_members, permutation_pvalue
from analysis.results import ConfidenceInterval, CorrelationResult, MaxNullResult


def pearson(x: np.ndarray, y: np.ndarray) -> CorrelationResult:
    """Pearson r (two-sided p, 95% Fisher-z CI) over the entries where both are finite (NaN result
    when fewer than 3 or constant)."""
    x, y = np.ravel(x), np.ravel(y)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return CorrelationResult(np.nan, np.nan, ConfidenceInterval(np.nan, np.nan), int(x.size))
    res = stats.pearsonr(x, y)
    ci = res.confidence_interval(0.95)
    return CorrelationResult(float(res.statistic), float(res.pvalue), ConfidenceInterval(float(ci.low), float(ci.high)),
                             int(x.size))


def complete_rows(x: np.ndarray) -> np.ndarray:
    """Prompts [n, k] finite on every head that has any finite value (all-NaN heads just give NaN rows)."""
    finite = np.isfinite(x)
    return x[finite[:, finite.any(axis=0)].all(axis=1)]


def head_correlation(x: np.ndarray) -> np.ndarray:
    """Pearson correlation over prompts between heads: x [n, k] -> [k, k]; constant heads give NaN."""
    with quiet():
        return np.corrcoef(complete_rows(x), rowvar=False)


def sigma_band(c_diff: np.ndarray, circuit: np.ndarray) -> float:
    """The posts' sigma: SD (ddof 0) of C_diff over ordered off-diagonal pairs with >= 1 non-circuit head."""
    k = c_diff.shape[0]
    involved = ~(circuit[:, None] & circuit[None, :]) & ~np.eye(k, dtype=bool)
    with quiet():
        return float(np.nanstd(c_diff[involved]))


def upper_pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(k, 1)


def flagged_pairs(c_diff: np.ndarray, sigma: float, n_sigma: float = 5.0) -> list[tuple[int, int]]:
    """Unordered pairs (i < j) with |C_diff| > n_sigma * sigma, largest |C_diff| first."""
    i, j = upper_pairs(c_diff.shape[0])
    values = np.abs(c_diff[i, j])
    hit = np.flatnonzero(np.nan_to_num(values) > n_sigma * sigma)
    hit = hit[np.argsort(-values[hit])]
    return [(int(i[h]), int(j[h])) for h in hit]


def max_abs_offdiag(c: np.ndarray) -> float:
    i, j = upper_pairs(c.shape[0])
    with quiet():
        return float(np.nanmax(np.abs(c[i, j])))


def correlation_from_moments(total: np.ndarray, cross: np.ndarray, n: int) -> np.ndarray:
    """Pearson matrices from column sums [..., k] and cross-product matrices X^T X [..., k, k] of n rows."""
    cov = cross - total[..., :, None] * total[..., None, :] / n
    # a constant head's variance cancels to 0 or a rounding-sized negative: 0, so its correlations are NaN
    sd = np.sqrt(np.clip(np.diagonal(cov, axis1=-2, axis2=-1), 0.0, None))
    with quiet():
        return cov / (sd[..., :, None] * sd[..., None, :])


def c_diff_max_null(xa: np.ndarray, xb: np.ndarray, n_perm: int, rng: np.random.Generator) -> MaxNullResult:
    """Shuffle condition labels across pooled prompts and recompute C_a - C_b each time.

    The relabelled-a cross-product matrices of a chunk of permutations are one matrix product:
    membership [c, N] times the prompts' outer products [N, k*k]; b's are the pooled ones minus a's.
    """
    xa, xb = complete_rows(xa), complete_rows(xb)
    pooled = np.concatenate([xa, xb])
    pooled = pooled - pooled.mean(axis=0)  # centring keeps the moment formulas well conditioned
    n_a, n_b = xa.shape[0], xb.shape[0]
    k = pooled.shape[1]
    pooled_sum, pooled_cross = pooled.sum(axis=0), pooled.T @ pooled
    observed = max_abs_offdiag(head_correlation(xa) - head_correlation(xb))
    iu = upper_pairs(k)
    block = max(1, int(OUTER_BYTES // (8 * k * k)))  # prompts per block of outer products
    cached = [_outer(pooled[s:s + block]) for s in range(0, pooled.shape[0], block)] \
        if pooled.shape[0] * k * k * 8 <= OUTER_BYTES * 4 else None
    null = []
    for members in permutation_members(n_a, n_b, n_perm, rng, chunk=64):
        cross_a = np.zeros((members.shape[0], k * k))
        for b, s in enumerate(range(0, pooled.shape[0], block)):
            outer = cached[b] if cached is not None else _outer(pooled[s:s + block])
            cross_a += members[:, s:s + block] @ outer
        cross_a = cross_a.reshape(-1, k, k)
        sum_a = members @ pooled
        c_a = correlation_from_moments(sum_a, cross_a, n_a)
        c_b = correlation_from_moments(pooled_sum - sum_a, pooled_cross - cross_a, n_b)
        with quiet():
            null.append(np.nanmax(np.abs((c_a - c_b)[:, iu[0], iu[1]]), axis=1))
    null = np.concatenate(null)
    return MaxNullResult(observed, float(permutation_pvalue(observed, null)), null, float(np.quantile(null, 0.95)),
                         int(null.size))


OUTER_BYTES = 64 * 2**20


def _outer(x: np.ndarray) -> np.ndarray:
    """Row-wise outer products x_i x_i^T flattened: [n, k] -> [n, k*k]."""
    return (x[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)


def family_wise_p(values: np.ndarray, null: MaxNullResult) -> np.ndarray:
    """Family-wise (max-statistic) p-value of each |C_diff| value."""
    v = np.abs(np.asarray(values, dtype=float))
    return permutation_pvalue(v, null.null_distribution.reshape((-1,) + (1,) * v.ndim))


def bootstrap_c_diff(xa: np.ndarray, xb: np.ndarray, pairs: list[tuple[int, int]], n_boot: int,
                     rng: np.random.Generator, level: float = 0.95) -> np.ndarray:
    """Percentile CIs [len(pairs), 2] of chosen C_diff entries, prompts resampled within each condition."""
    if not pairs:
        return np.zeros((0, 2))
    xa, xb = complete_rows(xa), complete_rows(xb)
    i = np.array([p[0] for p in pairs])
    j = np.array([p[1] for p in pairs])
    boot = weighted_pair_corr(xa, i, j, n_boot, rng) - weighted_pair_corr(xb, i, j, n_boot, rng)
    alpha = (1 - level) / 2
    with quiet():
        return np.nanquantile(boot, [alpha, 1 - alpha], axis=0).T


def weighted_pair_corr(x: np.ndarray, i: np.ndarray, j: np.ndarray, n_boot: int,
                       rng: np.random.Generator) -> np.ndarray:
    """[n_boot, pairs] Pearson r of columns i vs j over bootstrap-resampled rows, via weighted moments."""
    n = x.shape[0]
    out = []
    for w in bootstrap_counts(n, n_boot, rng):
        mi, mj = w @ x[:, i] / n, w @ x[:, j] / n
        cov = w @ (x[:, i] * x[:, j]) / n - mi * mj
        vi, vj = w @ x[:, i] ** 2 / n - mi**2, w @ x[:, j] ** 2 / n - mj**2
        with quiet():
            out.append(cov / np.sqrt(vi * vj))
    return np.concatenate(out)


def head_linkage(c: np.ndarray) -> np.ndarray:
    """Average-linkage clustering of heads on distance 1 - r (NaN correlations count as 0), as a
    scipy linkage matrix."""
    d = 1.0 - np.nan_to_num(c, nan=0.0)
    np.fill_diagonal(d, 0.0)
    d = np.clip((d + d.T) / 2, 0.0, None)
    return hierarchy.linkage(squareform(d, checks=False), method="average")

