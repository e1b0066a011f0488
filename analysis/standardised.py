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

Every engine works on units (analysis.units): `TwoSamples` holds one variable's units of both conditions
(and, paired, of the pair differences); `prompt_samples` makes units of one prompt from arrays, with which the
draws and the numbers are those of a prompt-level analysis.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
from scipy import stats

from analysis._util import quiet
from analysis.resampling import CHUNK, bootstrap_counts, permutation_members
from analysis.units import Units, unit_moments

INDEPENDENT, PAIRED = "independent", "paired"


@dataclasses.dataclass(frozen=True)
class TwoSamples:
    """One variable's units in a comparison of two conditions (columns: flat heads; shape: the heads' shape).

    a, b: each condition's units of all its finite values. Paired design only: diff, the units of the pair
    differences, and keep_a, keep_b: a's and b's values where the pair's difference is defined."""

    design: str
    shape: tuple[int, ...]
    a: Units
    b: Units
    diff: Units | None = None
    keep_a: Units | None = None
    keep_b: Units | None = None

    @property
    def paired(self) -> bool:
        return self.design == PAIRED


def prompt_samples(xa: np.ndarray, xb: np.ndarray, design: str) -> TwoSamples:
    """TwoSamples of units of one prompt from prompt arrays [n_a, *heads] and [n_b, *heads] (paired: row i of
    each is pair i)."""
    shape = tuple(np.shape(xa)[1:])
    fa = np.asarray(xa, dtype=np.float64).reshape(np.shape(xa)[0], -1)
    fb = np.asarray(xb, dtype=np.float64).reshape(np.shape(xb)[0], -1)
    units = lambda x: unit_moments(x, 1)  # noqa: E731
    if design != PAIRED:
        return TwoSamples(design, shape, units(fa), units(fb))
    diff = fa - fb
    keep = np.isfinite(diff)
    return TwoSamples(design, shape, units(fa), units(fb), units(diff), units(np.where(keep, fa, np.nan)),
                      units(np.where(keep, fb, np.nan)))


def moments(w: np.ndarray, count: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, ...]:
    """(count, mean, variance ddof 1) under each row of unit weights w [c, G], from the units' counts, sums and
    sums of squares about a centre (Units.centred: centring first keeps the sums of squares precise)."""
    with quiet():
        n = w @ count
        mean = (w @ s1) / n
        var = np.maximum(w @ s2 - n * mean * mean, 0.0) / (n - 1.0)
    return n, mean, var


def standardised(t: TwoSamples) -> dict[str, np.ndarray]:
    """Per head, exactly from the units' totals: delta, SE, df, t and d (Welch for independent samples, the
    paired t for pairs), each of the heads' shape."""
    with quiet():
        if t.paired:
            d, ta, tb = t.diff.totals(), t.keep_a.totals(), t.keep_b.totals()
            n = d["n"]
            se = np.sqrt(d["var"]) / np.sqrt(n)
            out = {"delta": d["mean"], "se": se, "df": n - 1.0, "t": d["mean"] / se,
                   "d": d["mean"] / np.sqrt((ta["var"] + tb["var"]) / 2)}
        else:
            ta, tb = t.a.totals(), t.b.totals()
            na, nb, va, vb = ta["n"], tb["n"], ta["var"], tb["var"]
            delta = ta["mean"] - tb["mean"]
            ua, ub = va / na, vb / nb
            se = np.sqrt(ua + ub)
            df = (ua + ub) ** 2 / (ua**2 / (na - 1) + ub**2 / (nb - 1))
            out = {"delta": delta, "se": se, "df": df, "t": delta / se, "d": delta / np.sqrt((va + vb) / 2)}
    return {k: v.reshape(t.shape) for k, v in out.items()}


def bootstrap_standardised(t: TwoSamples, n_boot: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """[n_boot, *heads] replicates of delta, t and d: units resampled within each condition (independent) or
    units of pairs resampled (paired)."""
    out: dict[str, list] = {"delta": [], "t": [], "d": []}
    if t.paired:
        ud, ua, ub = t.diff, t.keep_a, t.keep_b
        cd = ud.centre()
        d_, a_, b_ = ud.centred(cd), ua.centred(ua.centre()), ub.centred(ub.centre())
        for w in bootstrap_counts(ud.n_units, n_boot, rng):
            n, md, vd = moments(w, *d_)
            _, _, va = moments(w, *a_)
            _, _, vb = moments(w, *b_)
            with quiet():
                delta = md + np.nan_to_num(cd)
                out["delta"].append(delta)
                out["t"].append(delta / np.sqrt(vd / n))
                out["d"].append(delta / np.sqrt((va + vb) / 2))
    else:
        ua, ub = t.a, t.b
        centre_a, centre_b = ua.centre(), ub.centre()
        a_, b_ = ua.centred(centre_a), ub.centred(centre_b)
        with quiet():
            shift = np.nan_to_num(centre_a - centre_b)
        for wa, wb in zip(bootstrap_counts(ua.n_units, n_boot, rng), bootstrap_counts(ub.n_units, n_boot, rng)):
            na, ma, va = moments(wa, *a_)
            nb, mb, vb = moments(wb, *b_)
            with quiet():
                delta = ma - mb + shift
                out["delta"].append(delta)
                out["t"].append(delta / np.sqrt(va / na + vb / nb))
                out["d"].append(delta / np.sqrt((va + vb) / 2))
    return {k: np.concatenate(v).reshape((n_boot, *t.shape)) for k, v in out.items()}


def sign_flips(n: int, n_perm: int, rng: np.random.Generator, chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """Yield [c, n] matrices of +-1: each pair's two prompts keep (+1) or swap (-1) their condition labels."""
    for start in range(0, n_perm, chunk):
        size = min(chunk, n_perm - start)
        yield np.where(rng.random((size, n)) < 0.5, -1.0, 1.0)


def permutation_null(t: TwoSamples, n_perm: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """([n_perm, *heads] delta, [n_perm, *heads] t) with the condition labels permuted: whole units relabelled
    across the pooled units (independent; with units of one prompt the draws of
    analysis.circuit_tests.permutation_deltas, so its deltas are exactly those) or whole units of pairs
    sign-flipped (paired). Under the test's own assumption (exchangeable prompts) equal-sized units are
    exchangeable, so the test stays valid for units of several prompts."""
    deltas, ts = [], []
    if t.paired:
        u = t.diff
        count, s1, s2 = u.centred(np.zeros(u.mean.shape[1]))
        n, ss = count.sum(axis=0), s2.sum(axis=0)
        for flips in sign_flips(u.n_units, n_perm, rng):
            with quiet():
                mean = (flips @ s1) / n
                var = np.maximum(ss - n * mean * mean, 0.0) / (n - 1.0)
                deltas.append(mean)
                ts.append(mean / np.sqrt(var / n))
    else:
        pooled = Units.concat([t.a, t.b])
        sums = pooled.centred(pooled.centre())
        for members in permutation_members(t.a.n_units, t.b.n_units, n_perm, rng):
            na, ma, va = moments(members, *sums)
            nb, mb, vb = moments(1.0 - members, *sums)
            with quiet():
                deltas.append(ma - mb)
                ts.append((ma - mb) / np.sqrt(va / na + vb / nb))
    shape = (n_perm, *t.shape)
    return np.concatenate(deltas).reshape(shape), np.concatenate(ts).reshape(shape)


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

    samples = prompt_samples(xa, xb, design)
    _, null_t = permutation_null(samples, n_perm, rng)
    return circuit_permutation_test(standardised(samples)["t"], null_t, mask)
