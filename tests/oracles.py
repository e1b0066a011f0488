"""Reference oracles: the prompt-array engines the report ran before it ran every statistic over units
(analysis.units), kept verbatim (commit ce8797f) so the tests can check the unit engines against them with units of
one prompt: same draws for a generator, the same numbers to rounding. Only the tests use them.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from analysis._util import quiet
from analysis.resampling import bootstrap_counts, permutation_members, permutation_pvalue
from analysis.results import MaxNullResult
from analysis.standardised import PAIRED, sign_flips
from analysis.correlation import correlation_from_moments, max_abs_offdiag, upper_pairs
from analysis.effects import EffectSample

# ---- from analysis/resampling.py (commit ce8797f)
def weighted_means(weights: np.ndarray, x: np.ndarray, finite: np.ndarray | None) -> np.ndarray:
    """Means of x's columns under each row of weights; NaN entries of x (marked by ~finite) are skipped."""
    if finite is None:
        return weights @ x / weights.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ np.where(finite, x, 0.0)) / (weights @ finite.astype(np.float64))

def finite_mask(x: np.ndarray) -> np.ndarray | None:
    """None when x has no NaN (the fast path), else the boolean mask of finite entries."""
    finite = np.isfinite(x)
    return None if finite.all() else finite

# ---- from analysis/standardised.py (commit ce8797f)
def _moments(weights: np.ndarray, x: np.ndarray, finite: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """(count, mean, variance with ddof 1) of x's columns under each row of weights [c, n]; x [n, k] is
    centred by the caller (the sums of squares then lose no precision); NaN entries skipped."""
    if finite is None:
        count = np.broadcast_to(weights.sum(axis=1, keepdims=True), (weights.shape[0], x.shape[1]))
        x0 = x
    else:
        count = weights @ finite.astype(np.float64)
        x0 = np.where(finite, x, 0.0)
    with quiet():
        s1, s2 = weights @ x0, weights @ (x0 * x0)
        mean = s1 / count
        var = np.maximum(s2 - count * mean * mean, 0.0) / (count - 1.0)
    return count, mean, var

def _centred(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    finite = np.isfinite(x)
    with quiet():
        centre = np.nanmean(x, axis=0)
    x = x - np.nan_to_num(centre)
    return x, (None if finite.all() else finite)

def welch(xa: np.ndarray, xb: np.ndarray) -> dict[str, np.ndarray]:
    """Per column of [n_a, k] and [n_b, k]: delta, Welch SE, Welch-Satterthwaite df, t, d and both SDs."""
    with quiet():
        na, nb = np.sum(np.isfinite(xa), axis=0), np.sum(np.isfinite(xb), axis=0)
        va, vb = np.nanvar(xa, axis=0, ddof=1), np.nanvar(xb, axis=0, ddof=1)
        delta = np.nanmean(xa, axis=0) - np.nanmean(xb, axis=0)
        ua, ub = va / na, vb / nb
        se = np.sqrt(ua + ub)
        df = (ua + ub) ** 2 / (ua**2 / (na - 1) + ub**2 / (nb - 1))
        return {"delta": delta, "se": se, "df": df, "t": delta / se, "d": delta / np.sqrt((va + vb) / 2)}

def paired_stats(xa: np.ndarray, xb: np.ndarray) -> dict[str, np.ndarray]:
    """Per column of two [n, k] arrays whose row i is pair i: mean difference, paired SE, df = n - 1, t, d.
    A pair counts where both members are defined."""
    diff = xa - xb
    keep = np.isfinite(diff)
    with quiet():
        n = keep.sum(axis=0)
        delta = np.nanmean(diff, axis=0)
        se = np.nanstd(diff, axis=0, ddof=1) / np.sqrt(n)
        va = np.nanvar(np.where(keep, xa, np.nan), axis=0, ddof=1)
        vb = np.nanvar(np.where(keep, xb, np.nan), axis=0, ddof=1)
        return {"delta": delta, "se": se, "df": n - 1.0, "t": delta / se, "d": delta / np.sqrt((va + vb) / 2)}

def standardised(xa: np.ndarray, xb: np.ndarray, design: str) -> dict[str, np.ndarray]:
    """welch or paired_stats, per column (prompts on axis 0, any head shape after it)."""
    heads = xa.shape[1:]
    fa, fb = xa.reshape(xa.shape[0], -1), xb.reshape(xb.shape[0], -1)
    out = paired_stats(fa, fb) if design == PAIRED else welch(fa, fb)
    return {k: v.reshape(heads) for k, v in out.items()}

def bootstrap_standardised(xa: np.ndarray, xb: np.ndarray, design: str, n_boot: int, rng: np.random.Generator
                           ) -> dict[str, np.ndarray]:
    """[n_boot, *heads] replicates of delta, t and d: prompts resampled within each condition
    (independent) or pairs resampled (paired)."""
    heads = xa.shape[1:]
    fa, fb = xa.reshape(xa.shape[0], -1), xb.reshape(xb.shape[0], -1)
    out: dict[str, list] = {"delta": [], "t": [], "d": []}
    if design == PAIRED:
        keep = np.isfinite(fa - fb)
        fa, fb = np.where(keep, fa, np.nan), np.where(keep, fb, np.nan)
        (ca, fin_a), (cb, fin_b) = _centred(fa), _centred(fb)
        diff, fin_d = _centred(fa - fb)
        with quiet():
            centre_d = np.nanmean(fa - fb, axis=0)
        for w in bootstrap_counts(fa.shape[0], n_boot, rng):
            n, md, vd = _moments(w, diff, fin_d)
            _, _, va = _moments(w, ca, fin_a)
            _, _, vb = _moments(w, cb, fin_b)
            with quiet():
                delta = md + np.nan_to_num(centre_d)
                out["delta"].append(delta)
                out["t"].append(delta / np.sqrt(vd / n))
                out["d"].append(delta / np.sqrt((va + vb) / 2))
    else:
        (ca, fin_a), (cb, fin_b) = _centred(fa), _centred(fb)
        with quiet():
            shift = np.nan_to_num(np.nanmean(fa, axis=0) - np.nanmean(fb, axis=0))
        for wa, wb in zip(bootstrap_counts(fa.shape[0], n_boot, rng), bootstrap_counts(fb.shape[0], n_boot, rng)):
            na, ma, va = _moments(wa, ca, fin_a)
            nb, mb, vb = _moments(wb, cb, fin_b)
            with quiet():
                delta = ma - mb + shift
                out["delta"].append(delta)
                out["t"].append(delta / np.sqrt(va / na + vb / nb))
                out["d"].append(delta / np.sqrt((va + vb) / 2))
    return {k: np.concatenate(v).reshape((n_boot, *heads)) for k, v in out.items()}

def permutation_null(xa: np.ndarray, xb: np.ndarray, design: str, n_perm: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """([n_perm, *heads] delta, [n_perm, *heads] t) with the condition labels permuted: shuffled across
    the pooled prompts (independent; the draws of analysis.circuit_tests.permutation_deltas, so its deltas
    are exactly those) or swapped within each pair at random (paired: sign flips of the differences)."""
    heads = xa.shape[1:]
    fa, fb = xa.reshape(xa.shape[0], -1).astype(np.float64), xb.reshape(xb.shape[0], -1).astype(np.float64)
    deltas, ts = [], []
    if design == PAIRED:
        diff = fa - fb
        finite = np.isfinite(diff)
        d0 = np.where(finite, diff, 0.0)
        n = finite.sum(axis=0).astype(np.float64)
        ss = (d0 * d0).sum(axis=0)
        for s in sign_flips(fa.shape[0], n_perm, rng):
            with quiet():
                mean = (s @ d0) / n
                var = np.maximum(ss - n * mean * mean, 0.0) / (n - 1.0)
                deltas.append(mean)
                ts.append(mean / np.sqrt(var / n))
    else:
        n_a, n_b = fa.shape[0], fb.shape[0]
        pooled = np.concatenate([fa, fb])
        finite = np.isfinite(pooled)
        with quiet():
            centre = np.nan_to_num(np.nanmean(pooled, axis=0))
        finite = None if finite.all() else finite
        pooled_c = pooled - centre
        for members in permutation_members(n_a, n_b, n_perm, rng):
            na, ma, va = _moments(members, pooled_c, finite)
            nb, mb, vb = _moments(1.0 - members, pooled_c, finite)
            with quiet():
                deltas.append(ma - mb)
                ts.append((ma - mb) / np.sqrt(va / na + vb / nb))
    return (np.concatenate(deltas).reshape((n_perm, *heads)), np.concatenate(ts).reshape((n_perm, *heads)))

# ---- from analysis/shifts.py (commit ce8797f)
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

# ---- from analysis/correlation.py (commit ce8797f)
def complete_rows(x: np.ndarray) -> np.ndarray:
    """Prompts [n, k] finite on every head that has any finite value (all-NaN heads just give NaN rows)."""
    finite = np.isfinite(x)
    return x[finite[:, finite.any(axis=0)].all(axis=1)]

def head_correlation(x: np.ndarray) -> np.ndarray:
    """Pearson correlation over prompts between heads: x [n, k] -> [k, k]; constant heads give NaN."""
    with quiet():
        return np.corrcoef(complete_rows(x), rowvar=False)

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

# ---- from analysis/causal.py (commit ce8797f)
def joint_bootstrap_many(diagnostics: dict[str, tuple[np.ndarray, np.ndarray]], a: str, b: str, sample: EffectSample,
                         effects: Mapping[str, np.ndarray], n_boot: int,
                         rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Replicates [n_boot, *heads] of delta (a - b) of each diagnostic and of the mean of each per-prompt
    effect array, from ONE resample of prompts within each condition per replicate: an effect prompt of
    condition a or b gets the draw count its diagnostics got, so every per-head quantity moves together.
    The draws depend only on the prompt counts and rng, not on which quantities ride along.

    diagnostics: var -> ([n_a, *heads], [n_b, *heads]) in the row order of analysis.store.condition_array.
    effects: name -> [sample.n_prompts, *heads], rows in the sample's order (e.g. the sample's own values
    and another kind's effects on the same prompts, analysis.effects.aligned_effects).
    """
    xa0 = next(iter(diagnostics.values()))[0]
    heads = xa0.shape[1:]
    sizes = {a: xa0.shape[0], b: next(iter(diagnostics.values()))[1].shape[0]}
    rows = {c: np.flatnonzero(sample.condition == c) for c in sample.conditions}
    # position of each effect row among the prompts its condition resamples: the diagnostics' rows for a
    # and b, the target prompts alone for any other condition
    position = {c: sample.index[r] if c in sizes else np.arange(r.size) for c, r in rows.items()}
    sizes |= {c: r.size for c, r in rows.items() if c not in sizes}
    flat = {v: tuple(np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1) for x in pair)
            for v, pair in diagnostics.items()}
    finite = {v: tuple(finite_mask(x) for x in pair) for v, pair in flat.items()}
    # one matrix product per effect array (not one over their concatenation), so a quantity's replicates
    # are bit for bit the same whatever else rides along
    per_prompt = {k: np.asarray(x, dtype=np.float64).reshape(sample.n_prompts, -1) for k, x in effects.items()}
    per_prompt_finite = {k: finite_mask(x) for k, x in per_prompt.items()}
    draws = {c: bootstrap_counts(n, n_boot, rng) for c, n in sizes.items()}
    deltas: dict[str, list[np.ndarray]] = {v: [] for v in diagnostics}
    means: dict[str, list[np.ndarray]] = {k: [] for k in effects}
    for chunk in zip(*draws.values()):
        counts = dict(zip(draws, chunk))
        for v, (xa, xb) in flat.items():
            fa, fb = finite[v]
            deltas[v].append(weighted_means(counts[a], xa, fa) - weighted_means(counts[b], xb, fb))
        weights = np.concatenate([counts[c][:, position[c]] for c in sample.conditions], axis=1)
        for k, x in per_prompt.items():
            means[k].append(weighted_means(weights, x, per_prompt_finite[k]))
    shape = (n_boot, *heads)
    return ({v: np.concatenate(d).reshape(shape) for v, d in deltas.items()},
            {k: np.concatenate(m).reshape(shape) for k, m in means.items()})

# ---- from analysis/circuit_tests.py (commit ce8797f)
def permutation_deltas(xa: np.ndarray, xb: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """[n_perm, *heads] delta of means after shuffling condition labels across the pooled prompts."""
    xa, xb = np.asarray(xa, dtype=np.float64), np.asarray(xb, dtype=np.float64)
    heads = xa.shape[1:]
    n_a, n_b = xa.shape[0], xb.shape[0]
    pooled = np.concatenate([xa.reshape(n_a, -1), xb.reshape(n_b, -1)])
    finite = finite_mask(pooled)
    out = []
    for members in permutation_members(n_a, n_b, n_perm, rng):
        out.append(weighted_means(members, pooled, finite) - weighted_means(1.0 - members, pooled, finite))
    return np.concatenate(out).reshape((n_perm, *heads))
