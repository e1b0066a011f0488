"""Is the circuit more shifted than the other heads? Rank tests, permutation nulls, per-head tests.

Sidedness: every circuit-level test here is one-sided, alternative "circuit heads have larger |delta|
than non-circuit heads" (the posts' hypothesis). Per-head permutation tests are two-sided (|delta|).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats

from analysis._util import quiet
from analysis.errors import AnalysisError
from analysis.resampling import finite_mask, permutation_members, weighted_means


@dataclasses.dataclass(frozen=True)
class MannWhitneyResult:
    """One-sided Mann-Whitney U of circuit vs non-circuit |delta| (alternative: circuit greater)."""

    statistic: float  # U of the circuit sample, as scipy.stats.mannwhitneyu reports it
    pvalue: float  # scipy's default method (exact for tiny tie-free samples, else normal + continuity)
    pvalue_exact: float  # scipy's exact null distribution (NaN when ties make it inapplicable)
    auc: float  # U / (k m): P(|delta| of a random circuit head > that of a random other head)
    n_circuit: int
    n_other: int
    min_pvalue: float  # smallest one-sided exact p attainable: 1 / C(k + m, k)


@dataclasses.dataclass(frozen=True)
class PermutationResult:
    statistic: float | np.ndarray
    pvalue: float | np.ndarray
    null_distribution: np.ndarray
    n_resamples: int


def min_attainable_pvalue(n_circuit: int, n_total: int) -> float:
    """The one-sided exact rank test cannot go below 1/C(N, k): all k circuit heads ranked on top."""
    return 1.0 / math.comb(n_total, n_circuit)


def mann_whitney(abs_delta: np.ndarray, mask: np.ndarray) -> MannWhitneyResult:
    """scipy.stats.mannwhitneyu(circuit, other, alternative='greater') on finite |delta| values."""
    values, mask = np.ravel(abs_delta), np.ravel(mask)
    keep = np.isfinite(values)
    x, y = values[keep & mask], values[keep & ~mask]
    if x.size == 0 or y.size == 0:
        raise AnalysisError("Mann-Whitney needs at least one circuit and one non-circuit head with a finite delta")
    res = stats.mannwhitneyu(x, y, alternative="greater")
    has_ties = np.unique(np.concatenate([x, y])).size < x.size + y.size
    exact = np.nan if has_ties else float(stats.mannwhitneyu(x, y, alternative="greater", method="exact").pvalue)
    return MannWhitneyResult(
        float(res.statistic), float(res.pvalue), exact, float(res.statistic) / (x.size * y.size),
        int(x.size), int(y.size), min_attainable_pvalue(int(x.size), int(x.size + y.size)),
    )


def u_statistics(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mann-Whitney U of the masked columns vs the rest, for each row of values [r, k] (ties averaged)."""
    ranks = stats.rankdata(values, axis=-1)
    k = int(mask.sum())
    return ranks[..., mask].sum(axis=-1) - k * (k + 1) / 2.0


def permutation_deltas(xa: np.ndarray, xb: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """[n_perm, *heads] delta of means after shuffling condition labels across the pooled prompts."""
    heads = xa.shape[1:]
    n_a, n_b = xa.shape[0], xb.shape[0]
    pooled = np.concatenate([xa.reshape(n_a, -1), xb.reshape(n_b, -1)])
    finite = finite_mask(pooled)
    out = []
    for members in permutation_members(n_a, n_b, n_perm, rng):
        out.append(weighted_means(members, pooled, finite) - weighted_means(1.0 - members, pooled, finite))
    return np.concatenate(out).reshape((n_perm, *heads))


def p_from_null(observed: np.ndarray | float, null: np.ndarray) -> np.ndarray:
    """(1 + #{null >= observed}) / (1 + n): a valid (never anti-conservative) Monte-Carlo p-value.

    A relative tolerance absorbs the rounding between a recomputed statistic and the observed one.
    """
    observed = np.asarray(observed, dtype=float)
    tol = 1e-9 * np.maximum(np.abs(observed), 1e-300)
    p = (1.0 + np.sum(null >= observed - tol, axis=0)) / (1.0 + null.shape[0])
    return np.where(np.isnan(observed), np.nan, p)


def circuit_permutation_test(delta: np.ndarray, null_deltas: np.ndarray, mask: np.ndarray) -> PermutationResult:
    """One-sided: U(circuit |delta| > other |delta|) against its distribution under label shuffles.

    Unlike the rank test, which treats heads as exchangeable, this null keeps each head's own prompt
    noise: a noisy head has a large |delta| under shuffled labels too.
    """
    keep = np.isfinite(np.ravel(delta))  # heads undefined in the data take no part
    flat_mask = np.ravel(mask)[keep]
    observed = float(u_statistics(np.abs(np.ravel(delta)[keep])[None], flat_mask)[0])
    null = u_statistics(np.abs(null_deltas.reshape(null_deltas.shape[0], -1)[:, keep]), flat_mask)
    return PermutationResult(observed, float(p_from_null(observed, null)), null, null.shape[0])


def per_head_permutation(delta: np.ndarray, null_deltas: np.ndarray) -> PermutationResult:
    """Two-sided per-head permutation p-values on |delta| (array of the heads' shape)."""
    return PermutationResult(np.abs(delta), p_from_null(np.abs(delta), np.abs(null_deltas)), null_deltas,
                             null_deltas.shape[0])


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (q-values) of the finite entries, same shape; NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = stats.false_discovery_control(p[finite], method="bh")
    return q


@dataclasses.dataclass(frozen=True)
class StratifiedResult:
    """Layer-stratified rank test: circuit heads compared only with non-circuit heads of their own layer."""

    statistic: float  # sum over layers of the within-layer Mann-Whitney U
    auc: float  # statistic / sum over layers of k_l m_l
    pvalue: float  # one-sided (circuit greater), Monte-Carlo over within-layer relabelling of circuit heads
    layers: list[int]  # layers that hold both circuit and non-circuit heads (the only informative ones)
    n_resamples: int
    min_pvalue: float  # 1 / prod_l C(H_l, k_l): all circuit heads on top of their layers


def layer_stratified_test(abs_delta: np.ndarray, mask: np.ndarray, n_perm: int,
                          rng: np.random.Generator) -> StratifiedResult:
    """abs_delta, mask: [layer, head]. Controls the layer-depth confound by ranking within layers."""
    observed, null, pairs, layers, n_arrangements = 0.0, np.zeros(n_perm), 0, [], 1
    for layer in range(abs_delta.shape[0]):
        keep = np.isfinite(abs_delta[layer])
        values, m = abs_delta[layer][keep], mask[layer][keep]
        k, n = int(m.sum()), int(m.size)
        if k == 0 or k == n:
            continue
        layers.append(layer)
        pairs += k * (n - k)
        n_arrangements *= math.comb(n, k)
        ranks = stats.rankdata(values)
        observed += ranks[m].sum() - k * (k + 1) / 2.0
        chosen = np.argsort(rng.random((n_perm, n)), axis=1)[:, :k]
        null += ranks[chosen].sum(axis=1) - k * (k + 1) / 2.0
    if not layers:
        raise AnalysisError("no layer holds both circuit and non-circuit heads; the stratified test is undefined")
    return StratifiedResult(float(observed), float(observed / pairs), float(p_from_null(observed, null[:, None])[0]),
                            layers, n_perm, 1.0 / n_arrangements)


def auc_interval(boot_deltas: np.ndarray, mask: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the ROC-AUC over prompt-bootstrap replicates of the deltas [B, *heads]."""
    flat = np.abs(boot_deltas.reshape(boot_deltas.shape[0], -1))
    m = np.ravel(mask)
    if not np.isfinite(flat).all():
        keep = np.isfinite(flat).all(axis=0)
        flat, m = flat[:, keep], m[keep]
    auc = u_statistics(flat, m) / (m.sum() * (~m).sum())
    alpha = (1 - level) / 2
    low, high = np.quantile(auc, [alpha, 1 - alpha])
    return float(low), float(high)


def descending_ranks(abs_delta: np.ndarray) -> np.ndarray:
    """Rank of each head by |delta| over all heads, 1 = largest (ties averaged; NaN -> NaN)."""
    flat = np.ravel(abs_delta)
    ranks = np.full(flat.shape, np.nan)
    finite = np.isfinite(flat)
    ranks[finite] = stats.rankdata(-flat[finite])
    return ranks.reshape(np.shape(abs_delta))


def ablation_spearman(abs_delta: np.ndarray, ablation: np.ndarray):
    """scipy.stats.spearmanr of |delta| and ablation effect over the heads where both are finite."""
    x, y = np.ravel(abs_delta), np.ravel(ablation)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        raise AnalysisError("ablation effects cover fewer than 3 heads; no Spearman correlation")
    with quiet():
        return stats.spearmanr(x[keep], y[keep]), int(keep.sum())
