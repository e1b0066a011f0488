"""The whole comparison of two conditions on one store: `run_analysis` computes every statistic the
report shows and returns one `analysis.findings.Analysis` (no files written).

Random streams: each purpose has its own generator derived from (seed, purpose), and the bootstrap
and the permutations are the same draws for every variable, so joint statistics stay coherent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from analysis import causal as ca
from analysis import cheap
from analysis import circuit_tests as ct
from analysis import correlation as corr
from analysis import standardised as st
from analysis._util import quiet
from analysis.circuits import Circuit
from analysis.errors import AnalysisError
from analysis.effects import effect_sample, exact_kinds, is_effect_variable
from analysis.findings import (CURVE_N_PERM, FLAG_LEVEL, MIN_EFFECT, MIN_EFFECT_FALLBACK, N_SIGMA, TESTED, Analysis,
                               CausalEffects, CircuitTests, Comparison, CrossHead, PairInterval)
from analysis.labels import head_matrix, like, per_head, units_of
from analysis.prompt_curve import prompt_curve
from analysis.resampling import rng_for
from analysis.results import (ConfidenceInterval, CorrelationResult, MinEffectResult, ShiftResult,
                              StandardisedShiftResult)
from analysis.shifts import percentile_interval, shift
from analysis.store import check_condition, check_variables, condition_array, pair_order, provenance
from analysis.taxonomy import TAXONOMY_VARIABLES, has_taxonomy, head_taxonomy

SEED_BOOT, SEED_PERM, SEED_STRAT, SEED_CNULL, SEED_CBOOT, SEED_CURVE, SEED_EFFECT, SEED_JOINT = range(1, 9)
SEED_STD, SEED_STRAT_Z, SEED_CURVE_PERM = range(9, 12)
HEAD_VARIABLE_DIMS = {"condition", "prompt", "layer", "head"}


def run_analysis(ds: xr.Dataset, circuit: Circuit, a: str, b: str, *, n_boot: int = 1000, n_perm: int = 1000,
                 seed: int = 0, variables: tuple[str, ...] | None = None, curve: bool = True,
                 store_path: str | Path | None = None, rule: ca.CircuitRule = ca.CircuitRule(),
                 thresholds: Mapping[str, float] | None = None, min_effect: Mapping[str, float] | None = None,
                 design: str | None = None) -> Analysis:
    """Compare condition a with condition b on every head of the store (loads only needed variables).

    store_path: how the report names the store (default: the path xarray opened it from).
    rule: what makes a head part of a causal circuit (used only when the store has causal effects).
    thresholds: role -> threshold of the head taxonomy (analysis.taxonomy.DEFAULT_THRESHOLDS otherwise; used
      only when the store has the taxonomy variables).
    min_effect: variable -> the minimum effect of interest x of the per-head tests (findings.MIN_EFFECT for the
      rest).
    design: "paired" | "independent" | None (paired exactly when the store's `pair` coordinate matches every
      prompt of a with one of b: analysis.store.pair_order).
    """
    comparison = compare(ds, circuit, a, b, n_boot=n_boot, n_perm=n_perm, seed=seed, variables=variables,
                         store_path=store_path, min_effect=min_effect, design=design)
    steps = tqdm(total=5, desc="report", unit="step", disable=None)
    paired = comparison.paired
    shifts = {v: shift(*pair, n_boot=n_boot, rng=rng_for(seed, SEED_BOOT), paired=paired)
              for v, pair in comparison.values.items()}
    # what pairing buys: the same stores' shifts analysed as independent samples (same draws)
    independent = {v: shift(*comparison.values[v], n_boot=n_boot, rng=rng_for(seed, SEED_BOOT))
                   for v in TESTED} if paired else {}
    standard = {v: standardise(comparison, v, shifts[v]) for v in comparison.values}
    steps.update()
    tests = {v: circuit_tests(comparison, v, shifts[v], standard[v]) for v in TESTED}
    steps.update()
    correlations = diagnostic_correlations(comparison, shifts)
    steps.update()
    cross_head = cross_head_structure(comparison)
    steps.update()
    ablation = None
    if circuit.ablation is not None and np.isfinite(circuit.ablation).sum() >= 3:  # else no correlation to report
        ablation = ct.ablation_spearman(np.abs(shifts["kl_norm"].statistic.values), circuit.ablation)
    table = {}
    if curve:
        xa = {v: comparison.values[v][0].values for v in TESTED}
        xb = {v: comparison.values[v][1].values for v in TESTED}
        table = prompt_curve(xa, xb, comparison.mask.values, rng=rng_for(seed, SEED_CURVE), n_boot=min(n_boot, 200),
                             paired=paired, perm_rng=rng_for(seed, SEED_CURVE_PERM), n_perm=min(n_perm, CURVE_N_PERM))
    steps.update()
    # exact kinds only: an AtP estimate gets its own section (cheap_vs_exact), and AtP* is a magnitude
    causal = {kind: causal_effects(ds, comparison, kind, shifts, tests, rule) for kind in exact_kinds(ds)}
    cheap_methods = cheap.cheap_vs_exact(ds, comparison, causal, shifts, lambda: rng_for(seed, SEED_JOINT))
    # every condition of the store, not just a and b: a head's role is a property of the model
    taxonomy = head_taxonomy(ds, n_boot=n_boot, seed=seed, thresholds=thresholds) if has_taxonomy(ds) else None
    steps.close()
    return Analysis(comparison, shifts, tests, correlations, cross_head, ablation, table, causal, cheap_methods,
                    taxonomy, standard, independent)


def compare(ds: xr.Dataset, circuit: Circuit, a: str, b: str, *, n_boot: int, n_perm: int, seed: int,
            variables: tuple[str, ...] | None, store_path: str | Path | None,
            min_effect: Mapping[str, float] | None = None, design: str | None = None) -> Comparison:
    """Check the request against the store and load both conditions' values of every variable."""
    if a == b:
        raise AnalysisError(f"conditions a and b are both {a!r}; compare two different conditions")
    check_condition(ds, a)
    check_condition(ds, b)
    check_variables(ds, list(TESTED))
    if n_boot < 2 or n_perm < 1:
        raise AnalysisError("n_boot must be >= 2 and n_perm >= 1")
    shape = (ds.sizes["layer"], ds.sizes["head"])
    circuit.check_fits(*shape)
    mask = per_head(circuit.mask(*shape), ds, name="circuit")
    # the taxonomy scores have their own section (and NaN wherever a token has no earlier copy): the
    # comparison's shifts stay those of the diagnostics, as on stores written before them
    variables = variables or tuple(v for v in ds.data_vars if HEAD_VARIABLE_DIMS <= set(ds[v].dims)
                                   and not is_effect_variable(v) and v not in TAXONOMY_VARIABLES)
    variables = tuple(dict.fromkeys(TESTED + tuple(variables)))
    if design not in (None, st.PAIRED, st.INDEPENDENT):
        raise AnalysisError(f"unknown design {design!r}: use 'paired' or 'independent'")
    x_min = {v: float(MIN_EFFECT.get(v, MIN_EFFECT_FALLBACK)) for v in TESTED}
    for v, x in (min_effect or {}).items():
        if v not in TESTED:
            raise AnalysisError(f"--min-effect names {v!r}; the per-head tests run on {', '.join(TESTED)}")
        if not np.isfinite(x) or x < 0:
            raise AnalysisError(f"minimum effect for {v} must be a finite number >= 0, got {x!r}")
        x_min[v] = float(x)
    order, reason = pair_order(ds, a, b)
    if design == st.PAIRED and order is None:
        raise AnalysisError(f"a paired design needs matched pairs, but {reason}")
    chosen = design or (st.PAIRED if order is not None else st.INDEPENDENT)
    if chosen == st.INDEPENDENT and order is not None:
        reason = "requested (the store's prompts are paired)"
    values = {v: (condition_array(ds, a, v), condition_array(ds, b, v)) for v in variables}
    if chosen == st.PAIRED:  # row i of b is the partner of row i of a
        values = {v: (xa, xb.isel(prompt=order)) for v, (xa, xb) in values.items()}
    n_a, n_b = (x.sizes["prompt"] for x in values["kl_norm"])
    if min(n_a, n_b) < 3:
        raise AnalysisError(f"conditions {a!r} and {b!r} have {n_a} and {n_b} prompts; need at least 3 each")
    path = store_path if store_path is not None else ds.encoding.get("source", "")
    return Comparison(a, b, circuit, mask, values, n_boot, n_perm, seed, {"path": str(path), **provenance(ds)},
                      chosen, reason, x_min)


def standardise(comparison: Comparison, var: str, shifted: ShiftResult) -> StandardisedShiftResult:
    """delta_z = delta / SE and the effect size d per head, with intervals from the design's bootstrap (the same
    draws for every variable)."""
    c = comparison
    xa, xb = (x.values for x in c.values[var])
    heads = shifted.statistic
    s = st.standardised(xa, xb, c.design)
    boot = st.bootstrap_standardised(xa, xb, c.design, c.n_boot, rng_for(c.seed, SEED_STD))
    level = shifted.confidence_level
    with quiet():
        z_ci = ConfidenceInterval(like(heads, np.asarray(shifted.confidence_interval.low) / s["se"]),
                                  like(heads, np.asarray(shifted.confidence_interval.high) / s["se"]))
        d_ci = percentile_interval(boot["d"], level)
    return StandardisedShiftResult(
        like(heads, s["t"]), z_ci, like(heads, s["se"]), like(heads, s["df"]), like(heads, s["d"]),
        ConfidenceInterval(like(heads, d_ci.low), like(heads, d_ci.high)),
        like(heads, boot["t"], ("resample",)), c.design, level)


def circuit_tests(comparison: Comparison, var: str, shifted: ShiftResult,
                  standard: StandardisedShiftResult) -> CircuitTests:
    """Every circuit-vs-other test of one diagnostic, on |delta| (the posts') and on |delta_z| (the lead); the
    label permutations (paired: sign flips) are the same for every var and serve both statistics."""
    c = comparison
    delta, mask = shifted.statistic, c.mask.values
    abs_delta = np.abs(delta)
    null, null_z = st.permutation_null(*(x.values for x in c.values[var]), c.design, c.n_perm,
                                       rng_for(c.seed, SEED_PERM))
    per_head_test = ct.per_head_permutation(delta, null)
    z = standard.statistic
    abs_z = np.abs(z)
    x = c.min_effect[var]
    se, df = standard.standard_error.values, standard.df.values
    p_x, p_0 = (st.min_effect_pvalue(delta.values, se, df, value) for value in (x, 0.0))
    min_effect = MinEffectResult(x, like(delta, p_x), ct.benjamini_hochberg(like(delta, p_x)), like(delta, p_0),
                                 ct.benjamini_hochberg(like(delta, p_0)), standard.df)
    return CircuitTests(
        mann_whitney=ct.mann_whitney(abs_delta.values, mask),
        auc_interval=ct.auc_interval(shifted.bootstrap_distribution.values, mask),
        permutation=ct.circuit_permutation_test(delta.values, null, mask),
        stratified=ct.layer_stratified_test(abs_delta.values, mask, c.n_perm, rng_for(c.seed, SEED_STRAT)),
        per_head=per_head_test,
        q_bh=ct.benjamini_hochberg(per_head_test.pvalue),
        rank=ct.descending_ranks(abs_delta),
        mann_whitney_z=ct.mann_whitney(abs_z.values, mask),
        auc_interval_z=ct.auc_interval(standard.bootstrap_statistic.values, mask),
        permutation_z=ct.circuit_permutation_test(z.values, null_z, mask),
        stratified_z=ct.layer_stratified_test(abs_z.values, mask, c.n_perm, rng_for(c.seed, SEED_STRAT_Z)),
        rank_z=ct.descending_ranks(abs_z),
        min_effect=min_effect,
    )


def causal_effects(ds: xr.Dataset, comparison: Comparison, kind: str, shifts: dict[str, ShiftResult],
                   tests: dict[str, CircuitTests], rule: ca.CircuitRule) -> CausalEffects:
    """One effect kind against the diagnostics. Every kind gets the same bootstrap draws (same seeds)."""
    c = comparison
    sample = effect_sample(ds, kind, prefer=c.a)
    mean = ca.mean_effect(sample.values, n_boot=c.n_boot, rng=rng_for(c.seed, SEED_EFFECT))
    diagnostics = {v: tuple(x.values for x in c.values[v]) for v in TESTED}
    boot_deltas, boot_means = ca.joint_bootstrap(diagnostics, c.a, c.b, sample, c.n_boot, rng_for(c.seed, SEED_JOINT))
    abs_mean = np.abs(mean.statistic.values)
    spearman = {v: ca.effect_spearman(np.abs(shifts[v].statistic.values), abs_mean, np.abs(boot_deltas[v]),
                                      np.abs(boot_means)) for v in TESTED}
    circuit = ca.select_heads(mean.statistic, mean.pvalue, rule)
    flagged = {v: tests[v].flagged(FLAG_LEVEL) for v in TESTED}
    scores = {v: ca.precision_recall(flagged[v], circuit) for v in TESTED}
    return CausalEffects(kind, sample.conditions, mean, ct.benjamini_hochberg(mean.pvalue), rule, circuit, spearman,
                         flagged, {v: p for v, (p, _) in scores.items()}, {v: r for v, (_, r) in scores.items()})


def diagnostic_correlations(comparison: Comparison, shifts: dict[str, ShiftResult]) -> dict[str, CorrelationResult]:
    """The posts' correlations of KL with chi, and the layer-depth confound (on condition a)."""
    (ka, _), (ca, _) = comparison.values["kl_norm"], comparison.values["chi"]
    with quiet():  # numpy's nanmean, not xarray's reductions (which may use other summation kernels)
        kl_mean, chi_mean = np.nanmean(ka.values, axis=0), np.nanmean(ca.values, axis=0)
    other = ~comparison.mask.values
    layer = comparison.mask["layer"].broadcast_like(comparison.mask).values
    return {
        "kl_chi_head_means": corr.pearson(kl_mean, chi_mean),
        "kl_chi_points": corr.pearson(ka, ca),
        "dkl_dchi": corr.pearson(shifts["kl_norm"].statistic, shifts["chi"].statistic),
        "layer_kl_noncircuit": corr.pearson(layer[other], kl_mean[other]),
        "layer_chi_noncircuit": corr.pearson(layer[other], chi_mean[other]),
    }


def cross_head_structure(comparison: Comparison) -> CrossHead:
    """C_a, C_b, C_diff of kl_norm over prompts, the posts' sigma band, the max-|C_diff| null, CIs."""
    c = comparison
    ka, kb = c.values["kl_norm"]
    unit_axis = units_of(ka)
    flat_a = ka.values.reshape(ka.sizes["prompt"], -1)  # layer-major, the order of unit_axis
    flat_b = kb.values.reshape(kb.sizes["prompt"], -1)
    c_a, c_b = corr.head_correlation(flat_a), corr.head_correlation(flat_b)
    c_diff = c_a - c_b
    sigma = corr.sigma_band(c_diff, c.mask.values.ravel())
    flagged = corr.flagged_pairs(c_diff, sigma, N_SIGMA)
    max_null = corr.c_diff_max_null(flat_a, flat_b, c.n_perm, rng_for(c.seed, SEED_CNULL))
    i, j = corr.upper_pairs(c_diff.shape[0])
    family_wise = np.full(c_diff.shape, np.nan)
    family_wise[i, j] = family_wise[j, i] = corr.family_wise_p(c_diff[i, j], max_null)
    top = np.argsort(-np.nan_to_num(np.abs(c_diff[i, j])))[:5]
    chosen = list(dict.fromkeys(flagged + [(int(i[t]), int(j[t])) for t in top]))
    intervals = corr.bootstrap_c_diff(flat_a, flat_b, chosen, c.n_boot, rng_for(c.seed, SEED_CBOOT))
    pair_intervals = [PairInterval(p, ConfidenceInterval(float(lo), float(hi))) for p, (lo, hi) in zip(chosen, intervals)]
    return CrossHead(
        c_a=head_matrix(c_a, unit_axis, f"C_{c.a}"), c_b=head_matrix(c_b, unit_axis, f"C_{c.b}"),
        c_diff=head_matrix(c_diff, unit_axis, "C_diff"), sigma=sigma, flagged=flagged, max_null=max_null,
        family_wise_p=head_matrix(family_wise, unit_axis, "family_wise_p"), pair_intervals=pair_intervals,
        linkage=corr.head_linkage(c_diff),
    )
