"""Correlation structure: diagnostic-vs-diagnostic correlations across heads, and head x head
correlation matrices across prompts (C_a, C_b, C_diff) with the posts' sigma band and a proper null.

The cross-head engines work on analysis.units.CrossUnits (per-unit cross-product matrices over complete rows):
units of one prompt in memory, blocks of prompts when streamed.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from analysis._util import quiet
from analysis.resampling import bootstrap_counts, permutation_members, permutation_pvalue
from analysis.results import ConfidenceInterval, CorrelationResult, MaxNullResult
from analysis.units import CrossUnits


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


def c_diff_max_null(xa: CrossUnits, xb: CrossUnits, observed: float, n_perm: int,
                    rng: np.random.Generator) -> MaxNullResult:
    """The family-wise null of max |C_diff|: whole units relabelled across the pooled units (prompts, for units of
    one prompt) and C_a - C_b recomputed each time. The relabelled-a cross-product matrices of a chunk of
    permutations are one matrix product, membership [c, units] times the units' cross-products [units, k*k]
    (about the pooled mean: well conditioned); b's are the pooled ones minus a's."""
    xa, xb = xa.nonempty(), xb.nonempty()
    count = np.concatenate([xa.count, xb.count])
    mean = np.concatenate([xa.mean, xb.mean])
    centre = (count[:, None] * mean).sum(axis=0) / count.sum()
    d = mean - centre
    k = d.shape[1]
    sums = count[:, None] * d
    g_a = xa.count.size

    def cross(lo: int, hi: int) -> np.ndarray:  # units lo..hi's centred cross-products, [hi - lo, k*k]
        # a's units come first, then b's; their M2 is added in place, without a concatenated copy (1024 units x
        # 144^2 heads: each copy of the [units, k, k] matrix is 170 MB of the streamed report's peak memory)
        out = sums[lo:hi, :, None] * d[lo:hi, None, :]
        if xa.m2 is not None:
            cut = min(max(g_a - lo, 0), hi - lo)  # rows of out that are a's units
            out[:cut] += xa.m2[lo:lo + cut]
            out[cut:] += xb.m2[max(lo - g_a, 0):max(hi - g_a, 0)]
        return out.reshape(-1, k * k)

    g = count.size
    # the [units, k*k] matrix once when it is small (always in the streamed report: at most 2 x GC_MAX units),
    # else in blocks of CROSS_BLOCK_BYTES recomputed per chunk of permutations (the in-memory report's units of
    # one prompt: 10^4 prompts x 144^2 heads would be 3.3 GB)
    block = g if g * k * k * 8 <= CROSS_BLOCK_BYTES * 4 else max(1, CROSS_BLOCK_BYTES // (8 * k * k))
    cached = cross(0, g) if block == g else None
    total_n, total_sum = count.sum(), sums.sum(axis=0)
    total_cross = cached.sum(axis=0) if cached is not None else sum(cross(s, s + block).sum(axis=0)
                                                                     for s in range(0, g, block))
    iu = upper_pairs(k)
    null = []
    for members in permutation_members(xa.count.size, xb.count.size, n_perm, rng, chunk=64):
        n_a = members @ count
        if cached is not None:
            cross_a = members @ cached
        else:
            cross_a = np.zeros((members.shape[0], k * k))
            for s in range(0, g, block):
                cross_a += members[:, s:s + block] @ cross(s, s + block)
        sum_a = members @ sums
        c_a = correlation_from_moments(sum_a, cross_a.reshape(-1, k, k), n_a[:, None, None])
        c_b = correlation_from_moments(total_sum - sum_a, (total_cross - cross_a).reshape(-1, k, k),
                                       (total_n - n_a)[:, None, None])
        with quiet():
            null.append(np.nanmax(np.abs((c_a - c_b)[:, iu[0], iu[1]]), axis=1))
    null = np.concatenate(null)
    return MaxNullResult(observed, float(permutation_pvalue(observed, null)), null, float(np.quantile(null, 0.95)),
                         int(null.size))


CROSS_BLOCK_BYTES = 64 * 2**20


def family_wise_p(values: np.ndarray, null: MaxNullResult) -> np.ndarray:
    """Family-wise (max-statistic) p-value of each |C_diff| value."""
    v = np.abs(np.asarray(values, dtype=float))
    return permutation_pvalue(v, null.null_distribution.reshape((-1,) + (1,) * v.ndim))


def bootstrap_c_diff(xa: CrossUnits, xb: CrossUnits, pairs: list[tuple[int, int]], n_boot: int,
                     rng: np.random.Generator, level: float = 0.95) -> np.ndarray:
    """Percentile CIs [len(pairs), 2] of chosen C_diff entries, units resampled within each condition."""
    if not pairs:
        return np.zeros((0, 2))
    i = np.array([p[0] for p in pairs])
    j = np.array([p[1] for p in pairs])
    boot = pair_correlations(xa.nonempty(), i, j, n_boot, rng) - pair_correlations(xb.nonempty(), i, j, n_boot, rng)
    alpha = (1 - level) / 2
    with quiet():
        return np.nanquantile(boot, [alpha, 1 - alpha], axis=0).T


def pair_correlations(x: CrossUnits, i: np.ndarray, j: np.ndarray, n_boot: int, rng: np.random.Generator
                      ) -> np.ndarray:
    """[n_boot, pairs] Pearson r of heads i vs j over bootstrap-resampled units, from weighted moments."""
    si, sj = x.count * x.mean[:, i].T, x.count * x.mean[:, j].T  # [pairs, G] unit sums
    sij = x.m2_at(i, j) + x.count * x.mean[:, i].T * x.mean[:, j].T
    sii = x.m2_at(i, i) + x.count * x.mean[:, i].T ** 2
    sjj = x.m2_at(j, j) + x.count * x.mean[:, j].T ** 2
    out = []
    for w in bootstrap_counts(x.count.size, n_boot, rng):
        n = w @ x.count if x.size > 1 else float(x.count.sum())
        n = n[:, None] if np.ndim(n) else n
        mi, mj = w @ si.T / n, w @ sj.T / n
        cov = w @ sij.T / n - mi * mj
        vi, vj = w @ sii.T / n - mi**2, w @ sjj.T / n - mj**2
        with quiet():
            out.append(cov / np.sqrt(vi * vj))
    return np.concatenate(out)


def pearson_from(r: float, n: int) -> CorrelationResult:
    """scipy.stats.pearsonr's two-sided p and 95% Fisher-z interval from r and n."""
    if n < 3 or not np.isfinite(r):
        return CorrelationResult(np.nan, np.nan, ConfidenceInterval(np.nan, np.nan), int(n))
    r = float(np.clip(r, -1.0, 1.0))
    ab = n / 2 - 1
    p = float(2 * stats.beta.sf(abs(r), ab, ab, loc=-1, scale=2))
    with quiet():
        z, se = np.arctanh(r), 1 / np.sqrt(n - 3)
        zc = stats.norm.ppf(0.975)
        low, high = float(np.tanh(z - zc * se)), float(np.tanh(z + zc * se))
    return CorrelationResult(r, p, ConfidenceInterval(low, high), int(n))


def head_linkage(c: np.ndarray) -> np.ndarray:
    """Average-linkage clustering of heads on distance 1 - r (NaN correlations count as 0), as a
    scipy linkage matrix."""
    d = 1.0 - np.nan_to_num(c, nan=0.0)
    np.fill_diagonal(d, 0.0)
    d = np.clip((d + d.T) / 2, 0.0, None)
    return hierarchy.linkage(squareform(d, checks=False), method="average")

