"""The report object: everything one comparison of two conditions found, one result per report section.

`analysis.pipeline.run_analysis` builds an `Analysis` from the sections of analysis.sections; summary.json
(`analysis.summary.summary`), report.md (`analysis.markdown.markdown`) and the figures
(`analysis.figures.write_figures`) are pure functions of it, each section's part written by its own module. Per-head arrays are (layer, head) DataArrays; head x head matrices are
(unit, unit_2) DataArrays over the flat head axis of `analysis.labels`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import xarray as xr
from scipy.cluster import hierarchy

from analysis.causal import CircuitRule
from analysis.circuits import Circuit
from analysis.labels import head_at
from analysis.results import (ConfidenceInterval, CorrelationResult, MannWhitneyResult, MaxNullResult,
                              MeanEffectResult, MinEffectResult, PermutationResult, ShiftResult,
                              StandardisedShiftResult, StratifiedResult)
from analysis.taxonomy import HeadTaxonomy

TESTED = ("kl_norm", "chi")  # the posts' two diagnostics: every circuit test runs on both
N_SIGMA = 5.0  # the posts' band: |C_diff| > 5 sigma
FLAG_LEVEL = 0.05  # the diagnostics flag a head when its minimum-effect BH q <= this (the report's headline level)
# the minimum effect of interest per variable, in the variable's own units (`jaxdiag report --min-effect`):
# kl_norm lives in [0, 1] (KL as a share of its maximum log n), so 0.01 is a shift of 1% of the range; chi
# (Var_pi(log pi) / (log n)^2) has the same normalisation and 0.01 is the same share of its scale (its
# head means span about 0 to 0.2 on the shipped model, so 0.01 is 5% of that span). Other variables use
# MIN_EFFECT_FALLBACK unless given.
MIN_EFFECT = {"kl_norm": 0.01, "chi": 0.01}
MIN_EFFECT_FALLBACK = 0.01
CURVE_N_PERM = 99  # label permutations per subsample in the prompt-count curve's permutation p-values


@dataclasses.dataclass(frozen=True)
class Comparison:
    """What was compared: two conditions' prompts on every head, a circuit, the resampling settings."""

    a: str
    b: str
    circuit: Circuit
    mask: xr.DataArray  # (layer, head), True on circuit heads
    values: dict[str, tuple[xr.DataArray, xr.DataArray]]  # variable -> (prompt, layer, head) of a and of b
    n_boot: int
    n_perm: int
    seed: int
    store: dict[str, Any]  # path and provenance attributes of the store read
    design: str = "independent"  # "paired" when row i of a's values and of b's values are one pair
    design_reason: str = ""  # why the design is what it is (from the store's `pair` coordinate)
    min_effect: dict[str, float] = dataclasses.field(default_factory=lambda: dict(MIN_EFFECT))  # TESTED var -> x
    # streamed reports (analysis.pipeline.run_analysis_streamed): values hold a seeded subsample of the prompts (the prompt-count curve and
    # the figures' scatter clouds); counts are the store's prompt counts, head_means the exact per-head means
    # (var -> (mean a, mean b), (layer, head) arrays) and scale says what was streamed and what subsampled
    counts: dict[str, int] | None = None
    head_means: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    scale: dict[str, Any] | None = None

    @property
    def paired(self) -> bool:
        return self.design == "paired"

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    @property
    def n_prompts(self) -> dict[str, int]:
        if self.counts is not None:
            return dict(self.counts)
        xa, xb = self.values["kl_norm"]
        return {self.a: xa.sizes["prompt"], self.b: xb.sizes["prompt"]}


@dataclasses.dataclass(frozen=True)
class CircuitTests:
    """Is the circuit more shifted than the other heads? Every test on one diagnostic's |delta| (the posts'
    statistic, kept as such) and on |delta_z| = |delta / SE| (the lead result), plus per-head tests."""

    # the circuit-vs-other tests are None when the report has no circuit (jaxdiag.circuits.NO_CIRCUIT)
    mann_whitney: MannWhitneyResult | None  # raw |delta|, heads as units, one-sided (the posts' test)
    auc_interval: ConfidenceInterval | None  # prompt-bootstrap percentile CI of mann_whitney.auc
    permutation: PermutationResult | None  # the same U against condition-label shuffles, one-sided
    stratified: StratifiedResult | None  # within-layer ranks, one-sided
    per_head: PermutationResult  # statistic |delta|, pvalue per head: (layer, head), two-sided
    q_bh: xr.DataArray  # Benjamini-Hochberg q of per_head.pvalue, (layer, head)
    rank: xr.DataArray  # rank of |delta| among all heads, 1 = largest, (layer, head)
    # the lead result: the same circuit tests on |delta_z|; permutation_z is the report's `circuit_test`
    mann_whitney_z: MannWhitneyResult | None = None
    auc_interval_z: ConfidenceInterval | None = None  # percentile CI over the design's bootstrap (delta_z recomputed)
    permutation_z: PermutationResult | None = None  # U of |delta_z|, labels permuted and every delta_z recomputed
    stratified_z: StratifiedResult | None = None
    rank_z: xr.DataArray | None = None  # rank of |delta_z| among all heads, 1 = largest
    min_effect: MinEffectResult | None = None  # per-head H0 |delta| <= x, BH over heads: what "flagged" means

    def bh_heads(self, level: float) -> list[tuple[int, int]]:
        """Heads with per-head permutation q <= level (|delta| > 0), layer-major."""
        return _heads_where(self.q_bh, level)

    def flagged(self, level: float = FLAG_LEVEL, at_zero: bool = False) -> list[tuple[int, int]]:
        """Heads shifted by more than the minimum effect x (at_zero: by more than 0), significantly: minimum-effect
        test BH q <= level, layer-major."""
        if self.min_effect is None:
            return []
        return _heads_where(self.min_effect.q_bh_zero if at_zero else self.min_effect.q_bh, level)


def _heads_where(q: xr.DataArray, level: float) -> list[tuple[int, int]]:
    hit = np.argwhere(np.asarray(q) <= level)
    return [(int(q["layer"].values[l]), int(q["head"].values[h])) for l, h in hit]


@dataclasses.dataclass(frozen=True)
class PairInterval:
    """Bootstrap percentile CI of one C_diff entry (heads as flat indices)."""

    pair: tuple[int, int]
    confidence_interval: ConfidenceInterval


@dataclasses.dataclass(frozen=True)
class CrossHead:
    """Cross-head correlation of kl_norm over prompts: C_a, C_b, C_diff, the posts' band, a null."""

    c_a: xr.DataArray  # (unit, unit_2)
    c_b: xr.DataArray
    c_diff: xr.DataArray
    sigma: float  # the posts' band unit
    flagged: list[tuple[int, int]]  # flat-head pairs (i < j) with |C_diff| > N_SIGMA sigma, largest first
    max_null: MaxNullResult  # family-wise null of max |C_diff|
    family_wise_p: xr.DataArray  # (unit, unit_2) p of each |C_diff| under max_null
    pair_intervals: list[PairInterval]
    linkage: np.ndarray  # scipy linkage matrix of the heads on 1 - C_diff (correlation.head_linkage)

    @property
    def units(self) -> xr.DataArray:
        return self.c_diff["unit"]

    def head(self, index: int) -> tuple[int, int]:
        """(layer, head) of a flat head index."""
        return head_at(self.units, index)

    @property
    def order(self) -> np.ndarray:
        """Flat head indices in dendrogram order (the tree's leaves, left to right)."""
        return hierarchy.leaves_list(self.linkage)


@dataclasses.dataclass(frozen=True)
class CausalEffects:
    """One kind of causal effect against the diagnostics: does a large shift mean a causally important head?"""

    kind: str  # the store's effect_<kind>
    conditions: tuple[str, ...]  # whose prompts the effects are averaged over (condition a when it has targets)
    mean: MeanEffectResult  # per head, (layer, head)
    q_bh: xr.DataArray  # Benjamini-Hochberg q of mean.pvalue, (layer, head)
    rule: CircuitRule
    circuit: list[tuple[int, int]]  # the causal circuit: heads passing rule, layer-major
    spearman: dict[str, CorrelationResult]  # TESTED var -> Spearman of |delta var| with |mean effect|, bootstrap CI
    flagged: dict[str, list[tuple[int, int]]]  # TESTED var -> heads the diagnostics flag (BH q <= FLAG_LEVEL)
    precision: dict[str, float]  # TESTED var -> share of flagged heads in the causal circuit
    recall: dict[str, float]  # TESTED var -> share of the causal circuit flagged

    @property
    def threshold(self) -> float:
        """The "large" cut: rule.fraction x the largest |mean effect|."""
        with np.errstate(invalid="ignore"):
            magnitude = np.abs(self.mean.statistic.values)
        return float(self.rule.fraction * np.nanmax(magnitude)) if np.isfinite(magnitude).any() else np.nan


@dataclasses.dataclass(frozen=True)
class MethodAgreement:
    """One cheap method's per-head ranking against one exact effect kind's |mean effect|."""

    name: str  # a cheap effect kind ("atp_patch", "atpstar_patch") or "delta_<var>" for a diagnostic's shift
    family: str  # "atp" (signed estimate of the effect), "atpstar" (unsigned estimate of |effect|), "diagnostic"
    description: str  # the store variable's description attribute ("" when it has none)
    magnitude: xr.DataArray  # what is ranked, (layer, head): |mean AtP|, |mean AtP*| (= its mean), |delta var|
    signed: xr.DataArray | None  # mean AtP per head, to set against the signed mean effect (family "atp" only)
    spearman: CorrelationResult  # of magnitude with |mean effect|, prompt-bootstrap percentile CI
    top_k: list[tuple[int, int]]  # the method's k largest heads, largest first; k = the causal circuit's size
    precision: float  # share of top_k in the causal circuit
    recall: float  # share of the causal circuit in top_k
    missed: list[tuple[int, int]]  # causal-circuit heads outside top_k (false negatives), largest |effect| first


@dataclasses.dataclass(frozen=True)
class CheapVsExact:
    """Every cheap method against one exact effect kind (its mean effect and circuit: Analysis.causal[kind])."""

    kind: str
    k: int  # size of the kind's causal circuit: how many heads each method nominates
    methods: dict[str, MethodAgreement]  # effect estimates first, then the diagnostics in store order

    @property
    def best(self) -> str | None:
        """The method with the highest Spearman rho (the first on a tie; None when no rho is defined)."""
        rhos = {m: a.spearman.statistic for m, a in self.methods.items() if np.isfinite(a.spearman.statistic)}
        return max(rhos, key=rhos.get) if rhos else None

    @property
    def ties(self) -> list[str]:
        """Methods whose rho interval overlaps the best one's: the data do not rank them below it."""
        best = self.best
        if best is None:
            return []
        top = self.methods[best].spearman.confidence_interval
        return [m for m, a in self.methods.items() if m != best
                and a.spearman.confidence_interval.high >= top.low and top.high >= a.spearman.confidence_interval.low]


@dataclasses.dataclass(frozen=True)
class Analysis:
    """One comparison and the results of the report sections it ran (analysis.sections: NAME -> result): the single
    input of every report output. The properties name the built-in sections' results."""

    comparison: Comparison
    sections: dict[str, Any]

    @property
    def shifts(self) -> dict[str, ShiftResult]:
        """Every variable: delta per head with BCa CI, (layer, head)."""
        return self.sections["shifts"]

    @property
    def standardised(self) -> dict[str, StandardisedShiftResult]:
        """Every variable: delta_z, d and their intervals."""
        return self.sections.get("standardised", {})

    @property
    def circuit_tests(self) -> dict[str, CircuitTests]:
        """The TESTED variables."""
        return self.sections["circuit_tests"]

    @property
    def independent_shifts(self) -> dict[str, ShiftResult]:
        """Paired design only: the TESTED variables' shifts analysed as if independent (same bootstrap settings), to
        show what pairing buys; {} otherwise."""
        return self.sections.get("independent_shifts", {})

    @property
    def ablation(self) -> CorrelationResult | None:
        """Spearman of |delta kl_norm| with the circuit's ablation effects (None without them)."""
        return self.sections.get("circuit_heads")

    @property
    def correlations(self) -> dict[str, CorrelationResult]:
        """Diagnostic-vs-diagnostic, across heads."""
        return self.sections["correlations"]

    @property
    def cross_head(self) -> CrossHead:
        return self.sections["cross_head"]

    @property
    def curve(self) -> dict[str, list]:
        """Significance vs prompt count (empty when not computed)."""
        return self.sections.get("prompt_curve", {})

    @property
    def causal(self) -> dict[str, CausalEffects]:
        """Effect kind -> (empty: the store has no effects)."""
        return self.sections.get("causal", {})

    @property
    def cheap(self) -> dict[str, CheapVsExact]:
        """Exact kind -> (empty: no AtP/AtP* estimates)."""
        return self.sections.get("cheap", {})

    @property
    def taxonomy(self) -> HeadTaxonomy | None:
        """Per-head role scores and labels (None: a store without schema 2's taxonomy variables)."""
        return self.sections.get("taxonomy")

    def ci_width_ratio(self, var: str) -> float:
        """Paired design: median over heads of (paired 95% CI width) / (independent 95% CI width); NaN otherwise."""
        if var not in self.independent_shifts:
            return float("nan")
        p, i = self.shifts[var].confidence_interval, self.independent_shifts[var].confidence_interval
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = (np.asarray(p.high) - np.asarray(p.low)) / (np.asarray(i.high) - np.asarray(i.low))
        return float(np.nanmedian(ratio)) if np.isfinite(ratio).any() else float("nan")

    def delta(self, var: str) -> xr.DataArray:
        return self.shifts[var].statistic
