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
from analysis.resampling import bootstrap_counts
from analysis.results import ConfidenceInterval, CorrelationResult, MeanEffectResult
from analysis.shifts import percentile_interval, shift_units, weighted_mean
from analysis.units import Units, unit_moments

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


def effect_test(u: Units) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, t, two-sided p) per column of the per-prompt effects' units, exactly from their totals:
    scipy.stats.ttest_1samp's t = mean / (sd / sqrt(n)) and p from t with n - 1 df, per head over its finite
    prompts."""
    t = u.totals()
    with quiet():
        tstat = t["mean"] / np.sqrt(t["var"] / t["n"])
        p = 2.0 * stats.t.sf(np.abs(tstat), t["n"] - 1.0)
    return t["mean"], tstat, p


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
    values = sample.values
    heads = values.isel({values.dims[0]: 0}, drop=True)
    mean, _, pvalue = (like(heads, x.reshape(heads.shape)) for x in
                       effect_test(unit_moments(np.asarray(values, dtype=np.float64).reshape(values.shape[0], -1), 1)))
    chosen = select_heads(mean, pvalue, rule)
    roles = {SUPPORTS: tuple(h for h in chosen if float(mean.sel(layer=h[0], head=h[1])) < 0),
             OPPOSES: tuple(h for h in chosen if float(mean.sel(layer=h[0], head=h[1])) > 0)}
    return {role: members for role, members in roles.items() if members}


def mean_effect(u: Units, n_rows: int, heads: xr.DataArray, n_boot: int, rng: np.random.Generator,
                confidence_level: float = 0.95) -> MeanEffectResult:
    """Mean over prompts per head of the effect sample's units with a BCa interval (units resampled with
    replacement, one sample) and the two-sided one-sample t-test against 0 (effect_test)."""
    _, tstat, p = effect_test(u)
    r = shift_units(u, None, n_boot, rng, heads, confidence_level)
    return MeanEffectResult(r.statistic, r.confidence_interval, r.standard_error, r.bootstrap_distribution,
                            like(heads, p.reshape(heads.shape)), like(heads, tstat.reshape(heads.shape)), int(n_rows),
                            "BCa", confidence_level)


def joint_bootstrap(diagnostics: Mapping[str, tuple[Units, Units]], a: str, b: str, used: list[str],
                    parts: Mapping[str, Mapping[str, Units]], n_boot: int, rng: np.random.Generator,
                    shape: tuple[int, ...]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Replicates [n_boot, *heads] of delta (a - b) of each diagnostic and of the mean of each effect, from ONE
    multinomial draw over the units of each condition per replicate (a, b, then the effect sample's other
    conditions `used`), so every per-head quantity moves together: an effect unit of a or b has the diagnostics'
    unit boundaries (the same prompts), so it gets their draw count. The draws depend only on the unit counts and
    rng, not on which quantities ride along; one matrix product per quantity (not one over their concatenation),
    so a quantity's replicates are bit for bit the same whatever else rides along.
    diagnostics: var -> (units of a, units of b); parts: effect name -> condition -> units."""
    first = next(iter(diagnostics.values()))
    sizes = {a: first[0].n_units, b: first[1].n_units}
    sizes |= {c: parts[next(iter(parts))][c].n_units for c in used if c not in sizes}
    pooled = {name: Units.concat([by[c] for c in used]) for name, by in parts.items()}
    draws = {c: bootstrap_counts(n, n_boot, rng) for c, n in sizes.items()}
    deltas: dict[str, list[np.ndarray]] = {v: [] for v in diagnostics}
    means: dict[str, list[np.ndarray]] = {k: [] for k in parts}
    for chunk in zip(*draws.values()):
        counts = dict(zip(draws, chunk))
        for v, (ua, ub) in diagnostics.items():
            deltas[v].append(weighted_mean(counts[a], ua) - weighted_mean(counts[b], ub))
        weights = np.concatenate([counts[c] for c in used], axis=1)
        for name, u in pooled.items():
            means[name].append(weighted_mean(weights, u))
    full = (n_boot, *shape)
    return ({v: np.concatenate(d).reshape(full) for v, d in deltas.items()},
            {k: np.concatenate(m).reshape(full) for k, m in means.items()})


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
