"""Standardised head shifts, the minimum-effect test and the permutation engine they share, for both designs.

A raw shift Delta_h = mean(a) - mean(b) mixes how much a head moves with how noisy it is: a head with
4x the prompt noise has 4x the |Delta| under no shift at all. The standardised shift

    t_h = Delta_h / SE_h     (delta_z)

divides by the head's own standard error, so under "no shift" every head's t_h has (nearly) the same
distribution, whatever its noise: Student's t with the Welch-Satterthwaite df (independent design;
SE_h^2 = s_a^2 / n_a + s_b^2 / n_b) or with n - 1 df (paired design: SE_h = SD of the within-pair
differences / sqrt(n)). The effect size d_h = Delta_h / sqrt((s_a^2 + s_b^2) / 2) (Cohen's d with the
average of the two conditions' variances, the same definition in both designs so that designs compare)
does not grow with the prompt count; t_h does (t ~ d sqrt(n / 2) independently).

Designs. Independent: the two conditions are separate samples; bootstrap resamples prompts within each
condition, permutations shuffle condition labels across the pooled prompts. Paired: prompt i of a and
prompt i of b are a matched pair (the store's `pair` coordinate); bootstrap resamples pairs, permutations
flip the sign of each pair's difference (swap the two prompts' labels within the pair).

Every permutation recomputes Delta and t for every head from count-weighted sums (one matrix product
per chunk of permutations, as in analysis.resampling), so the null of any statistic built on t keeps
the heads' noise and their correlation across prompts.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from scipy import stats

from analysis._util import quiet
from analysis.resampling import CHUNK, bootstrap_counts, permutation_members

INDEPENDENT, PAIRED = "independent", "paired"


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


def sign_flips(n: int, n_perm: int, rng: np.random.Generator, chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """Yield [c, n] matrices of +-1: each pair's two prompts keep (+1) or swap (-1) their condition labels."""
    for start in range(0, n_perm, chunk):
        size = min(chunk, n_perm - start)
        yield np.where(rng.random((size, n)) < 0.5, -1.0, 1.0)


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


def min_effect_pvalue(delta: np.ndarray, se: np.ndarray, df: np.ndarray, x: float) -> np.ndarray:
    """Per head, the minimum-effect test of H0: |Delta| <= x against H1: |Delta| > x.

    p = F((x - |D|) / SE) + F((-x - |D|) / SE), F the t distribution with the design's df: the probability of
    an estimate at least as far from 0 as the observed one when the true shift sits on the boundary
    |Delta| = x (the least favourable point of H0, where the test has exactly its level; inside the interval
    it is conservative). x = 0 gives the usual two-sided t-test of Delta = 0.
    """
    c = np.abs(np.asarray(delta, dtype=float))
    with quiet():
        p = stats.t.cdf((x - c) / se, df) + stats.t.cdf((-x - c) / se, df)
    return np.where(np.isfinite(c) & np.isfinite(se), np.minimum(p, 1.0), np.nan)


def lead_circuit_test(xa: np.ndarray, xb: np.ndarray, mask: np.ndarray, design: str, n_perm: int,
                      rng: np.random.Generator):
    """The report's lead test on its own (what analysis.pipeline.circuit_tests computes as `permutation_z`, from
    the same draws given the same generator): one-sided Mann-Whitney U of circuit vs other heads' |t|, against
    its distribution over n_perm label permutations (design's scheme) with every head's t recomputed.
    xa, xb: [n, *heads]; mask: heads' shape, True on circuit heads. Returns a PermutationResult."""
    from analysis.circuit_tests import circuit_permutation_test  # noqa: PLC0415 (circuit_tests is the heavier module)

    t = standardised(np.asarray(xa, dtype=np.float64), np.asarray(xb, dtype=np.float64), design)["t"]
    _, null_t = permutation_null(xa, xb, design, n_perm, rng)
    return circuit_permutation_test(t, null_t, mask)
