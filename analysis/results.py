"""Result types of every statistic, shaped like scipy.stats' results.

Each result has ``statistic`` and, where the statistic is a test, ``pvalue``, ``alternative`` and
``null_distribution`` (Monte-Carlo nulls) or ``confidence_interval`` (an object with ``.low`` and
``.high``, like scipy's ``ConfidenceInterval``). Per-head fields are ``xr.DataArray``s with dims
(layer, head) when the inputs were labelled, plain arrays otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

Array = Any  # np.ndarray or xr.DataArray: per-head fields keep whatever labels their inputs had


@dataclasses.dataclass(frozen=True)
class ConfidenceInterval:
    low: Array
    high: Array


@dataclasses.dataclass(frozen=True)
class ShiftResult:
    """Delta of means (a - b) per head with a bootstrap confidence interval (analysis.shifts.shift)."""

    statistic: Array  # mean over condition a prompts minus mean over condition b prompts
    confidence_interval: ConfidenceInterval
    standard_error: Array
    bootstrap_distribution: Array  # [resample, *heads]
    method: str
    confidence_level: float


@dataclasses.dataclass(frozen=True)
class MannWhitneyResult:
    """Mann-Whitney U of circuit vs non-circuit |delta| (alternative: circuit greater)."""

    statistic: float  # U of the circuit sample, as scipy.stats.mannwhitneyu reports it
    pvalue: float  # scipy's default method (exact for tiny tie-free samples, else normal + continuity)
    pvalue_exact: float  # scipy's exact null distribution (NaN when ties make it inapplicable)
    auc: float  # U / (k m): P(|delta| of a random circuit head > that of a random other head)
    n_circuit: int
    n_other: int
    min_pvalue: float  # smallest one-sided exact p attainable: 1 / C(k + m, k)
    alternative: str = "greater"


@dataclasses.dataclass(frozen=True)
class PermutationResult:
    """Monte-Carlo permutation test; pvalue from analysis.resampling.permutation_pvalue."""

    statistic: float | Array
    pvalue: float | Array
    null_distribution: np.ndarray  # [n_resamples, ...]
    n_resamples: int
    alternative: str


@dataclasses.dataclass(frozen=True)
class StratifiedResult:
    """Layer-stratified rank test: circuit heads compared only with non-circuit heads of their own layer."""

    statistic: float  # sum over layers of the within-layer Mann-Whitney U
    auc: float  # statistic / sum over layers of k_l m_l
    pvalue: float  # one-sided (circuit greater), Monte-Carlo over within-layer relabelling of circuit heads
    null_distribution: np.ndarray
    layers: list[int]  # layers that hold both circuit and non-circuit heads (the only informative ones)
    n_resamples: int
    min_pvalue: float  # 1 / prod_l C(H_l, k_l): all circuit heads on top of their layers
    alternative: str = "greater"


@dataclasses.dataclass(frozen=True)
class CorrelationResult:
    """Pearson or Spearman correlation with scipy's two-sided p and (Pearson) 95% Fisher-z interval."""

    statistic: float
    pvalue: float
    confidence_interval: ConfidenceInterval  # of floats; NaN when undefined
    n: int  # pairs used (both values finite)
    alternative: str = "two-sided"


@dataclasses.dataclass(frozen=True)
class MaxNullResult:
    """Family-wise null for C_diff: the max over pairs of |C_diff| under condition-label shuffles."""

    statistic: float  # observed max over pairs of |C_diff|
    pvalue: float  # P(null max >= observed max): does any pair differ beyond chance?
    null_distribution: np.ndarray
    quantile_95: float  # pairs beyond this are significant at family-wise 5%
    n_resamples: int
    alternative: str = "greater"

    @property
    def observed_max(self) -> float:
        return self.statistic


@dataclasses.dataclass(frozen=True)
class MeanEffectResult:
    """Mean causal effect per head over prompts, with a BCa bootstrap CI and a one-sample test against 0
    (analysis.causal.mean_effect)."""

    statistic: Array  # mean over prompts of the per-prompt effect
    confidence_interval: ConfidenceInterval
    standard_error: Array  # SD of the bootstrap distribution
    bootstrap_distribution: Array  # [resample, *heads]
    pvalue: Array  # one-sample t-test of the per-prompt effects against 0 (scipy.stats.ttest_1samp)
    t: Array  # its t statistic
    n: int  # prompts
    method: str
    confidence_level: float
    alternative: str = "two-sided"


@dataclasses.dataclass(frozen=True)
class MeanResult:
    """Mean over prompts per head (and condition) with a bootstrap interval; NaN where nothing is defined
    (analysis.taxonomy.score_means)."""

    statistic: Array  # mean over prompts of each prompt's score (NaN entries skipped)
    confidence_interval: ConfidenceInterval
    standard_error: Array  # SD of the bootstrap distribution
    n: Array  # prompts with a defined score, per head
    method: str
    confidence_level: float


@dataclasses.dataclass(frozen=True)
class SinkRateResult:
    """Share of heads whose mean attention to the first token exceeds epsilon (Gu et al. 2024's Sink_eps),
    per condition, with a percentile interval over the same prompt bootstrap as the means."""

    statistic: Array  # (condition,) share of heads with mean bos_attn > epsilon, among heads with a defined mean
    confidence_interval: ConfidenceInterval
    epsilon: float
    n_heads: Array  # (condition,) heads with a defined mean bos_attn (the denominator)


@dataclasses.dataclass(frozen=True)
class StandardisedShiftResult:
    """A head's shift in units of its own noise (analysis.standardised): statistic = delta / SE (delta_z,
    a t statistic), and the effect size d = delta / sqrt((s_a^2 + s_b^2) / 2), both per head."""

    statistic: Array  # delta_z = delta / SE: Welch t (independent design) or paired t
    confidence_interval: ConfidenceInterval  # the design's bootstrap CI of delta, divided by SE
    standard_error: Array  # analytic SE of delta (Welch, or SD of the pair differences / sqrt(n))
    df: Array  # Welch-Satterthwaite df, or n_pairs - 1
    effect_size: Array  # d, Cohen's d with the average of the two conditions' variances
    effect_size_interval: ConfidenceInterval  # percentile over the design's bootstrap (d recomputed)
    bootstrap_statistic: Array  # [resample, *heads] delta_z recomputed on each bootstrap resample
    design: str  # "independent" | "paired"
    confidence_level: float


@dataclasses.dataclass(frozen=True)
class MinEffectResult:
    """Per-head minimum-effect tests, H0 |delta| <= x vs H1 |delta| > x (analysis.standardised.min_effect_pvalue),
    Benjamini-Hochberg over heads; the same test at x = 0 beside it."""

    x: float  # the minimum effect of interest, in the variable's units
    pvalue: Array  # per head, at x
    q_bh: Array
    pvalue_zero: Array  # per head, at 0 (two-sided t-test of delta = 0)
    q_bh_zero: Array
    df: Array
    alternative: str = "|delta| > x"
