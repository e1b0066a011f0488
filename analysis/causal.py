"""Causal effects against the diagnostics: per-head mean effect (BCa interval, one-sample test), the
causal circuit, Spearman of |delta diagnostic| with |mean effect| (prompt-bootstrap interval), and
precision/recall of the diagnostics' flagged heads against the causal circuit.

Sidedness: the per-head test is two-sided (an intervention may raise or lower the metric); the
Spearman p is scipy's two-sided one. An effect is metric(head intervened on) - metric(clean), so a
head the task relies on has a negative effect.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

import numpy as np
import xarray as xr
from scipy import stats

from analysis._util import quiet
from analysis.circuit_tests import benjamini_hochberg
from analysis.effects import EffectSample
from analysis.labels import like
from analysis.resampling import bootstrap_counts, finite_mask, weighted_means
from analysis.results import ConfidenceInterval, CorrelationResult, MeanEffectResult
from analysis.shifts import mean_interval, percentile_interval

Head = tuple[int, int]
TEST = "one-sample t-test of each head's per-prompt effects against 0 (scipy.stats.ttest_1samp, two-sided)"
SUPPORTS, OPPOSES = "supports task (effect < 0)", "opposes task (effect > 0)"  # causal-circuit roles


@dataclasses.dataclass(frozen=True)
class CircuitRule:
    """A head is in the causal circuit when its effect is significant AND large."""

    level: float = 0.01  # Benjamini-Hochberg FDR level across heads
    fraction: float = 0.2  # |mean effect| >= fraction x the largest |mean effect| of any head

    def text(self) -> str:
        return (f"{TEST}, Benjamini-Hochberg q <= {self.level:g} across heads, and |mean effect| >= "
                f"{self.fraction:g} x the largest |mean effect|")


def effect_test(values: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """(mean, t, two-sided p) per head of the per-prompt effects (prompt on the first dim), NaN skipped."""
    heads = values.isel({values.dims[0]: 0}, drop=True)
    x = np.asarray(values, dtype=np.float64)
    with quiet():
        mean = np.nanmean(x, axis=0)
        res = stats.ttest_1samp(x, 0.0, axis=0, nan_policy="omit")
    return like(heads, mean), like(heads, np.asarray(res.statistic, dtype=float)), \
        like(heads, np.asarray(res.pvalue, dtype=float))


def select_heads(mean: xr.DataArray, pvalue: xr.DataArray, rule: CircuitRule) -> list[Head]:
    """Heads (layer-major) passing the rule: BH q <= level and |mean| >= fraction x max |mean|."""
    q = np.asarray(benjamini_hochberg(np.asarray(pvalue)))
    magnitude = np.abs(np.asarray(mean, dtype=float))
    if not np.isfinite(magnitude).any():
        return []
    with quiet():  # NaN heads compare False: never selected
        hit = (q <= rule.level) & (magnitude >= rule.fraction * np.nanmax(magnitude))
    return [(int(mean["layer"].values[l]), int(mean["head"].values[h])) for l, h in np.argwhere(hit)]


def causal_roles(sample: EffectSample, rule: CircuitRule) -> dict[str, tuple[Head, ...]]:
    """The causal circuit of one effect kind as roles by the sign of the mean effect (empty roles left out);
    needs no bootstrap, so it is the same whatever the seed."""
    mean, _, pvalue = effect_test(sample.values)
    heads = select_heads(mean, pvalue, rule)
    roles = {SUPPORTS: tuple(h for h in heads if float(mean.sel(layer=h[0], head=h[1])) < 0),
             OPPOSES: tuple(h for h in heads if float(mean.sel(layer=h[0], head=h[1])) > 0)}
    return {role: members for role, members in roles.items() if members}


def mean_effect(values: xr.DataArray, *, n_boot: int, rng: np.random.Generator,
                confidence_level: float = 0.95) -> MeanEffectResult:
    """Mean over prompts per head with a BCa interval (prompts resampled with replacement, one sample)
    and the two-sided one-sample t-test against 0. values: (prompt, layer, head)."""
    mean, t, pvalue = effect_test(values)
    _, ci, se, boot = mean_interval(np.asarray(values, dtype=np.float64), n_boot, rng, confidence_level)
    return MeanEffectResult(mean, ConfidenceInterval(like(mean, ci.low), like(mean, ci.high)), like(mean, se),
                            like(mean, boot, ("resample",)), pvalue, t, int(values.shape[0]), "BCa",
                            confidence_level)


def joint_bootstrap(diagnostics: dict[str, tuple[np.ndarray, np.ndarray]], a: str, b: str, sample: EffectSample,
                    n_boot: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Replicates [n_boot, *heads] of delta (a - b) of each diagnostic and of the sample's mean effect, from
    ONE resample of prompts within each condition per replicate (see `joint_bootstrap_many`)."""
    deltas, means = joint_bootstrap_many(diagnostics, a, b, sample, {sample.kind: np.asarray(sample.values)}, n_boot,
                                         rng)
    return deltas, means[sample.kind]


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


def rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of x[r] with y[r] for each row r (ties averaged; a row with NaN or constant -> NaN)."""
    rx, ry = stats.rankdata(x, axis=1), stats.rankdata(y, axis=1)
    rx = rx - rx.mean(axis=1, keepdims=True)
    ry = ry - ry.mean(axis=1, keepdims=True)
    with quiet():
        return (rx * ry).sum(axis=1) / np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))


def effect_spearman(abs_delta: np.ndarray, abs_effect: np.ndarray, boot_abs_delta: np.ndarray,
                    boot_abs_effect: np.ndarray, level: float = 0.95) -> CorrelationResult:
    """scipy.stats.spearmanr (two-sided p) of |delta| with |mean effect| across the heads where both are
    finite, with a percentile interval over the joint prompt-bootstrap replicates ([B, *heads] each)."""
    x, y = np.ravel(abs_delta), np.ravel(abs_effect)
    keep = np.isfinite(x) & np.isfinite(y)
    n = int(keep.sum())
    if n < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return CorrelationResult(np.nan, np.nan, ConfidenceInterval(np.nan, np.nan), n)
    with quiet():
        res = stats.spearmanr(x[keep], y[keep])
    replicates = rowwise_spearman(boot_abs_delta.reshape(boot_abs_delta.shape[0], -1)[:, keep],
                                  boot_abs_effect.reshape(boot_abs_effect.shape[0], -1)[:, keep])
    ci = percentile_interval(replicates, level)
    return CorrelationResult(float(res.statistic), float(res.pvalue), ConfidenceInterval(float(ci.low), float(ci.high)), n)


def precision_recall(flagged: Iterable[Head], circuit: Iterable[Head]) -> tuple[float, float]:
    """Share of flagged heads in the circuit (NaN when none is flagged) and share of the circuit flagged
    (NaN when the circuit is empty)."""
    flagged, circuit = set(flagged), set(circuit)
    hits = len(flagged & circuit)
    precision = hits / len(flagged) if flagged else np.nan
    recall = hits / len(circuit) if circuit else np.nan
    return precision, recall
