"""Is the circuit more shifted than the other heads? Rank tests, permutation nulls, per-head tests.

Sidedness: every circuit-level test here is one-sided, alternative "circuit heads have larger |delta|
than non-circuit heads" (the posts' hypothesis). Per-head permutation tests are two-sided (|delta|).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from analysis._util import quiet
from analysis.errors import AnalysisError
from analysis.labels import like
from analysis.resampling import permutation_pvalue, random_subsets
from analysis.results import (ConfidenceInterval, CorrelationResult, MannWhitneyResult, PermutationResult,
                              StratifiedResult)


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


def circuit_permutation_test(delta: np.ndarray, null_deltas: np.ndarray, mask: np.ndarray) -> PermutationResult:
    """One-sided: U(circuit |delta| > other |delta|) against its distribution under label shuffles.

    Unlike the rank test, which treats heads as exchangeable, this null keeps each head's own prompt
    noise: a noisy head has a large |delta| under shuffled labels too.
    """
    keep = np.isfinite(np.ravel(delta))  # heads undefined in the data take no part
    flat_mask = np.ravel(mask)[keep]
    observed = float(u_statistics(np.abs(np.ravel(delta)[keep])[None], flat_mask)[0])
    null = u_statistics(np.abs(null_deltas.reshape(null_deltas.shape[0], -1)[:, keep]), flat_mask)
    return PermutationResult(observed, float(permutation_pvalue(observed, null)), null, null.shape[0], "greater")


def per_head_permutation(delta: np.ndarray, null_deltas: np.ndarray) -> PermutationResult:
    """Two-sided per-head permutation p-values on |delta| (arrays labelled like delta)."""
    abs_delta = np.abs(np.asarray(delta, dtype=float))
    pvalue = permutation_pvalue(abs_delta, np.abs(np.asarray(null_deltas)))
    return PermutationResult(like(delta, abs_delta), like(delta, pvalue), np.asarray(null_deltas),
                             null_deltas.shape[0], "two-sided")


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (q-values) of the finite entries, labelled like pvalues; NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = stats.false_discovery_control(p[finite], method="bh")
    return like(pvalues, q)


def layer_stratified_test(abs_delta: np.ndarray, mask: np.ndarray, n_perm: int,
                          rng: np.random.Generator) -> StratifiedResult:
    """abs_delta, mask: [layer, head]. Controls the layer-depth confound by ranking within layers."""
    abs_delta, mask = np.asarray(abs_delta, dtype=float), np.asarray(mask, dtype=bool)
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
        chosen = random_subsets(n, k, n_perm, rng)
        null += ranks[chosen].sum(axis=1) - k * (k + 1) / 2.0
    if not layers:
        raise AnalysisError("no layer holds both circuit and non-circuit heads; the stratified test is undefined")
    return StratifiedResult(float(observed), float(observed / pairs), float(permutation_pvalue(observed, null)), null,
                            layers, n_perm, 1.0 / n_arrangements)


def auc_interval(boot_deltas: np.ndarray, mask: np.ndarray, level: float = 0.95) -> ConfidenceInterval:
    """Percentile CI of the ROC-AUC over prompt-bootstrap replicates of the deltas [B, *heads]."""
    boot_deltas = np.asarray(boot_deltas)
    flat = np.abs(boot_deltas.reshape(boot_deltas.shape[0], -1))
    m = np.ravel(mask)
    if not np.isfinite(flat).all():
        keep = np.isfinite(flat).all(axis=0)
        flat, m = flat[:, keep], m[keep]
    auc = u_statistics(flat, m) / (m.sum() * (~m).sum())
    alpha = (1 - level) / 2
    low, high = np.quantile(auc, [alpha, 1 - alpha])
    return ConfidenceInterval(float(low), float(high))


def descending_ranks(abs_delta: np.ndarray) -> np.ndarray:
    """Rank of each head by |delta| over all heads, 1 = largest (ties averaged; NaN -> NaN)."""
    flat = np.ravel(abs_delta)
    ranks = np.full(flat.shape, np.nan)
    finite = np.isfinite(flat)
    ranks[finite] = stats.rankdata(-flat[finite])
    return like(abs_delta, ranks.reshape(np.shape(abs_delta)))


def ablation_spearman(abs_delta: np.ndarray, ablation: np.ndarray) -> CorrelationResult:
    """scipy.stats.spearmanr (two-sided) of |delta| and ablation effect over the heads where both are finite."""
    x, y = np.ravel(abs_delta), np.ravel(ablation)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        raise AnalysisError("ablation effects cover fewer than 3 heads; no Spearman correlation")
    with quiet():
        res = stats.spearmanr(x[keep], y[keep])
    return CorrelationResult(float(res.statistic), float(res.pvalue), ConfidenceInterval(np.nan, np.nan),
                             int(keep.sum()))
