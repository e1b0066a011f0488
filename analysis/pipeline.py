"""The whole comparison of two conditions on one store: every statistic the report shows, as one
`analysis.findings.Analysis` (no files written), by one path at any scale.

`run_analysis(ds, ...)` analyses a loaded store with units of one prompt (every bootstrap and permutation
resamples single prompts); `run_analysis_streamed(path, ...)` streams the store's chunks in bounded memory with
units of up to G_MAX (GC_MAX for the cross-head statistics) per condition -- single prompts again for stores up
to that size, so both give the same numbers there. Both run `analyse`:

1. Stream (analysis.streaming): both conditions' variables are reduced to per-unit sufficient statistics
   (analysis.units: count, mean, M2, M3 per head; the cross-head cross-products of kl_norm; the kl-chi point
   moments), with the rows of a seeded subsample of at most SAMPLE_MAX prompts per condition (all prompts in
   memory) for the prompt-count curve and the figures' scatter clouds (stated in summary.json's `scale`).
2. Point estimates (delta, SE, df, t, d, C_a, C_b, C_diff, head means, correlations) come exactly from the units'
   moments; resampling runs on the units: the multinomial bootstrap over units with BCa intervals whose
   acceleration is the prompt-level jackknife's, exactly from the second and third central moments; permutation
   nulls are products of [n_perm, units] label matrices with the units' sums; the C_diff null from the units'
   cross-product matrices.
3. The head taxonomy (analysis.taxonomy.stream_taxonomy) streams one (condition, score) at a time; causal effects
   and cheap-vs-exact stream every effect kind per condition, with a's and b's units on the diagnostics' unit
   boundaries so the joint bootstraps move every effect unit with its diagnostics.

Random streams: each purpose has its own generator derived from (seed, purpose), and the bootstrap
and the permutations are the same draws for every variable, so joint statistics stay coherent.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

import numpy as np
import xarray as xr

from analysis import causal as ca
from analysis import cheap
from analysis import circuit_tests as ct
from analysis import correlation as corr
from analysis import standardised as st
from analysis._util import quiet
from analysis.circuits import Circuit
from analysis.effects import cheap_family, cheap_kinds, effect_variable, exact_kinds, is_effect_variable
from analysis.errors import AnalysisError
from analysis.findings import (CURVE_N_PERM, FLAG_LEVEL, MIN_EFFECT, MIN_EFFECT_FALLBACK, N_SIGMA, TESTED, Analysis,
                               CausalEffects, CheapVsExact, CircuitTests, Comparison, CrossHead, PairInterval)
from analysis.labels import head_matrix, like, per_head, units_of
from analysis.prompt_curve import prompt_curve
from analysis.resampling import rng_for
from analysis.results import ConfidenceInterval, MinEffectResult, StandardisedShiftResult
from analysis.shifts import percentile_interval, shift_units
from analysis.store import check_condition, check_variables, condition_array, condition_prompts, conditions, \
    pair_order, provenance
from analysis.streaming import (DEFAULT_MEMORY, Streamed, default_in_flight, held_bytes, open_lazy, parse_memory,
                                single_thread_blas, stream_effects, stream_store)
from analysis.taxonomy import TAXONOMY_VARIABLES, has_taxonomy, stream_taxonomy
from analysis.units import G_MAX, Units, unit_size
from jaxdiag.paths import StoreLocation

SEED_BOOT, SEED_PERM, SEED_STRAT, SEED_CNULL, SEED_CBOOT, SEED_CURVE, SEED_EFFECT, SEED_JOINT = range(1, 9)
SEED_STD, SEED_STRAT_Z, SEED_CURVE_PERM = range(9, 12)
SEED_SAMPLE = 12
SAMPLE_MAX = 2048  # prompts per condition kept for the prompt-count curve and the figures (= G_MAX: below it, all)
HEAD_VARIABLE_DIMS = {"condition", "prompt", "layer", "head"}


def run_analysis(ds: xr.Dataset, circuit: Circuit, a: str, b: str, *, n_boot: int = 1000, n_perm: int = 1000,
                 seed: int = 0, variables: tuple[str, ...] | None = None, curve: bool = True,
                 store_path: str | Path | None = None, rule: ca.CircuitRule = ca.CircuitRule(),
                 thresholds: Mapping[str, float] | None = None, min_effect: Mapping[str, float] | None = None,
                 design: str | None = None) -> Analysis:
    """Compare condition a with condition b on every head of the store, units of one prompt (`analyse`).

    store_path: how the report names the store (default: the path xarray opened it from).
    rule: what makes a head part of a causal circuit (used only when the store has causal effects).
    thresholds: role -> threshold of the head taxonomy (analysis.taxonomy.DEFAULT_THRESHOLDS otherwise; used
      only when the store has the taxonomy variables).
    min_effect: variable -> the minimum effect of interest x of the per-head tests (findings.MIN_EFFECT for the
      rest).
    design: "paired" | "independent" | None (paired exactly when the store's `pair` coordinate matches every
      prompt of a with one of b: analysis.store.pair_order).
    """
    return analyse(ds, circuit, a, b, n_boot=n_boot, n_perm=n_perm, seed=seed, variables=variables, curve=curve,
                   store_path=store_path, rule=rule, thresholds=thresholds, min_effect=min_effect, design=design,
                   g_max=None)


def run_analysis_streamed(store: str | Path | StoreLocation, circuit: Circuit, a: str, b: str, *, n_boot: int = 1000,
                          n_perm: int = 1000, seed: int = 0, variables: tuple[str, ...] | None = None,
                          curve: bool = True, store_path: str | Path | None = None,
                          rule: ca.CircuitRule = ca.CircuitRule(), thresholds: Mapping[str, float] | None = None,
                          min_effect: Mapping[str, float] | None = None, design: str | None = None,
                          memory: int | str | None = None, in_flight: int | None = None) -> Analysis:
    """run_analysis streamed over the store at `store` (a path or URL) in bounded memory (`memory`: parse_memory's
    text or bytes), with units of up to G_MAX prompts per condition."""
    ds = open_lazy(store)
    return analyse(ds, circuit, a, b, n_boot=n_boot, n_perm=n_perm, seed=seed, variables=variables, curve=curve,
                   store_path=store_path if store_path is not None else store, rule=rule, thresholds=thresholds,
                   min_effect=min_effect, design=design, memory=parse_memory(memory), in_flight=in_flight,
                   g_max=G_MAX)


def analyse(ds: xr.Dataset, circuit: Circuit, a: str, b: str, *, n_boot: int, n_perm: int, seed: int,
            variables: tuple[str, ...] | None, curve: bool, store_path: str | Path | None, rule: ca.CircuitRule,
            thresholds: Mapping[str, float] | None, min_effect: Mapping[str, float] | None, design: str | None,
            memory: int = DEFAULT_MEMORY, in_flight: int | None = None, g_max: int | None = G_MAX) -> Analysis:
    """Every section of the report from units of at most g_max per condition (None: units of one prompt and no
    subsample: the in-memory report, whose summary has no `scale` entry). BLAS runs on one thread meanwhile
    (analysis.streaming.single_thread_blas: the blocks run in parallel already)."""
    with single_thread_blas():
        return _analyse(ds, circuit, a, b, n_boot=n_boot, n_perm=n_perm, seed=seed, variables=variables,
                        curve=curve, store_path=store_path, rule=rule, thresholds=thresholds, min_effect=min_effect,
                        design=design, memory=memory, in_flight=in_flight, g_max=g_max)


def _analyse(ds, circuit, a, b, *, n_boot, n_perm, seed, variables, curve, store_path, rule, thresholds,
             min_effect, design, memory, in_flight, g_max) -> Analysis:
    c = compare(ds, circuit, a, b, n_boot=n_boot, n_perm=n_perm, seed=seed, variables=variables,
                store_path=store_path, min_effect=min_effect, design=design)
    variables = tuple(c.values)
    xa, xb = c.values["kl_norm"]
    n_a, n_b = xa.sizes["prompt"], xb.sizes["prompt"]
    picks = []
    for k_, n in enumerate((n_a, n_b)):
        if g_max is None or n <= SAMPLE_MAX:
            picks.append(np.arange(n))
        elif c.paired and k_ == 1:
            picks.append(picks[0])
        else:
            picks.append(np.sort(rng_for(seed, SEED_SAMPLE, k_).choice(n, SAMPLE_MAX, replace=False)))
    # the cheap-vs-exact section's joint bootstrap needs every variable's per-condition units, paired or not
    s = stream_store(c, variables, memory, in_flight, picks=(picks[0], picks[1]),
                     plain=variables if exact_kinds(ds) else TESTED, g_max=g_max)
    heads = {v: c.values[v][0].isel(prompt=0, drop=True) for v in variables}
    flat_heads = {v: h.shape for v, h in heads.items()}
    paired = c.paired

    # shifts, standardised shifts
    shifts = {v: shift_units(s.diff[v], None, n_boot, rng_for(seed, SEED_BOOT), heads[v]) if paired
              else shift_units(s.a[v], s.b[v], n_boot, rng_for(seed, SEED_BOOT), heads[v]) for v in variables}
    independent = {v: shift_units(s.a[v], s.b[v], n_boot, rng_for(seed, SEED_BOOT), heads[v])
                   for v in TESTED} if paired else {}
    standard = {}
    for v in variables:
        samples = s.samples(v, flat_heads[v])
        point = st.standardised(samples)
        boot = st.bootstrap_standardised(samples, n_boot, rng_for(seed, SEED_STD))
        h, shifted = heads[v], shifts[v]
        with quiet():
            z_ci = ConfidenceInterval(like(h, np.asarray(shifted.confidence_interval.low) / point["se"]),
                                      like(h, np.asarray(shifted.confidence_interval.high) / point["se"]))
            d_ci = percentile_interval(boot["d"], shifted.confidence_level)
        standard[v] = StandardisedShiftResult(
            like(h, point["t"]), z_ci, like(h, point["se"]), like(h, point["df"]), like(h, point["d"]),
            ConfidenceInterval(like(h, d_ci.low), like(h, d_ci.high)), like(h, boot["t"], ("resample",)), c.design,
            shifted.confidence_level)

    # circuit tests (analysis.pipeline.circuit_tests with the nulls from units)
    tests = {}
    mask = c.mask.values
    for v in TESTED:
        delta = shifts[v].statistic
        shape = flat_heads[v]
        null, null_z = st.permutation_null(s.samples(v, shape), n_perm, rng_for(seed, SEED_PERM))
        per_head_test = ct.per_head_permutation(delta, null)
        z = standard[v].statistic
        se, df = standard[v].standard_error.values, standard[v].df.values
        x = c.min_effect[v]
        p_x, p_0 = (st.min_effect_pvalue(delta.values, se, df, value) for value in (x, 0.0))
        min_eff = MinEffectResult(x, like(delta, p_x), ct.benjamini_hochberg(like(delta, p_x)), like(delta, p_0),
                                  ct.benjamini_hochberg(like(delta, p_0)), standard[v].df)
        tests[v] = CircuitTests(
            mann_whitney=ct.mann_whitney(np.abs(delta).values, mask),
            auc_interval=ct.auc_interval(shifts[v].bootstrap_distribution.values, mask),
            permutation=ct.circuit_permutation_test(delta.values, null, mask),
            stratified=ct.layer_stratified_test(np.abs(delta).values, mask, n_perm, rng_for(seed, SEED_STRAT)),
            per_head=per_head_test, q_bh=ct.benjamini_hochberg(per_head_test.pvalue),
            rank=ct.descending_ranks(np.abs(delta)),
            mann_whitney_z=ct.mann_whitney(np.abs(z).values, mask),
            auc_interval_z=ct.auc_interval(standard[v].bootstrap_statistic.values, mask),
            permutation_z=ct.circuit_permutation_test(z.values, null_z, mask),
            stratified_z=ct.layer_stratified_test(np.abs(z).values, mask, n_perm, rng_for(seed, SEED_STRAT_Z)),
            rank_z=ct.descending_ranks(np.abs(z)), min_effect=min_eff)

    # diagnostic correlations (analysis.pipeline.diagnostic_correlations, exactly from the units)
    kl_mean = s.a["kl_norm"].totals()["mean"].reshape(c.shape)
    chi_mean = s.a["chi"].totals()["mean"].reshape(c.shape)
    other = ~mask
    layer = c.mask["layer"].broadcast_like(c.mask).values
    correlations = {
        "kl_chi_head_means": corr.pearson(kl_mean, chi_mean),
        "kl_chi_points": corr.pearson_from(*s.points_a.pearson_r()),
        "dkl_dchi": corr.pearson(shifts["kl_norm"].statistic, shifts["chi"].statistic),
        "layer_kl_noncircuit": corr.pearson(layer[other], kl_mean[other]),
        "layer_chi_noncircuit": corr.pearson(layer[other], chi_mean[other]),
    }

    # cross-head structure (analysis.pipeline.cross_head_structure from the cross units)
    unit_axis = units_of(heads["kl_norm"])
    c_a, c_b = s.cross_a.correlation(), s.cross_b.correlation()
    for cu, units in ((c_a, s.a), (c_b, s.b)):
        dead = units["kl_norm"].count.sum(axis=0) == 0
        cu[dead, :] = np.nan
        cu[:, dead] = np.nan
    c_diff = c_a - c_b
    sigma = corr.sigma_band(c_diff, mask.ravel())
    flagged = corr.flagged_pairs(c_diff, sigma, N_SIGMA)
    observed = corr.max_abs_offdiag(c_diff)
    max_null = corr.c_diff_max_null(s.cross_a, s.cross_b, observed, n_perm, rng_for(seed, SEED_CNULL))
    i, j = corr.upper_pairs(c_diff.shape[0])
    family_wise = np.full(c_diff.shape, np.nan)
    family_wise[i, j] = family_wise[j, i] = corr.family_wise_p(c_diff[i, j], max_null)
    top = np.argsort(-np.nan_to_num(np.abs(c_diff[i, j])))[:5]
    chosen = list(dict.fromkeys(flagged + [(int(i[t]), int(j[t])) for t in top]))
    intervals = corr.bootstrap_c_diff(s.cross_a, s.cross_b, chosen, n_boot, rng_for(seed, SEED_CBOOT))
    cross_head = CrossHead(
        c_a=head_matrix(c_a, unit_axis, f"C_{a}"), c_b=head_matrix(c_b, unit_axis, f"C_{b}"),
        c_diff=head_matrix(c_diff, unit_axis, "C_diff"), sigma=sigma, flagged=flagged, max_null=max_null,
        family_wise_p=head_matrix(family_wise, unit_axis, "family_wise_p"),
        pair_intervals=[PairInterval(p, ConfidenceInterval(float(lo), float(hi))) for p, (lo, hi) in
                        zip(chosen, intervals)],
        linkage=corr.head_linkage(c_diff))

    ablation = None
    if circuit.ablation is not None and np.isfinite(circuit.ablation).sum() >= 3:
        ablation = ct.ablation_spearman(np.abs(shifts["kl_norm"].statistic.values), circuit.ablation)

    # the bounded subsample (prompt-count curve, figures), gathered by the same pass over the store
    sample = {v: tuple(xr.DataArray(rows.reshape(-1, *c.shape), dims=("prompt", "layer", "head"),
                                    coords={"layer": c.mask["layer"].values, "head": c.mask["head"].values}, name=v)
                       for rows in s.sample[v]) for v in TESTED}
    table = {}
    if curve:
        table = prompt_curve({v: sample[v][0].values for v in TESTED}, {v: sample[v][1].values for v in TESTED},
                             mask, rng=rng_for(seed, SEED_CURVE), n_boot=min(n_boot, 200), paired=paired,
                             perm_rng=rng_for(seed, SEED_CURVE_PERM), n_perm=min(n_perm, CURVE_N_PERM))
    whole = all(len(p) == n for p, n in zip(picks, (n_a, n_b)))
    scale = {
        "streamed": True,
        # how this run was cut up: not in summary.json, which is the same whatever the memory or the scheduler
        "execution": {"memory_bytes": int(memory), "block_prompts": int(s.rows), "n_blocks": int(s.n_blocks)},
        "unit_prompts": int(s.size), "cross_unit_prompts": int(s.csize),
        "resampling": ("prompts resampled and permuted one by one (units of one prompt)" if s.size == 1 else
                       f"bootstrap and permutations over units of {s.size} consecutive prompts"
                       + (" (pairs)" if paired else "")),
        "c_diff_resampling": ("prompts permuted one by one" if s.csize == 1 else
                              f"C_diff null and intervals over units of {s.csize} consecutive prompts"),
        "bca_acceleration": "prompt-level jackknife, exact from streamed second and third central moments",
        "subsample": {"prompts": {a: int(len(picks[0])), b: int(len(picks[1]))}, "of": {a: int(n_a), b: int(n_b)},
                      "all_prompts": bool(whole), "used_for": ["prompt_curve", "figure scatter clouds"]},
    }
    head_means = {}
    for v in TESTED:
        ua, ub = (s.a[v], s.b[v])
        head_means[v] = (ua.totals()["mean"].reshape(c.shape), ub.totals()["mean"].reshape(c.shape))
    comparison = dataclasses.replace(c, values=sample, counts={a: int(n_a), b: int(n_b)}, head_means=head_means,
                                     scale=scale)

    # the head taxonomy (every real store has it): streamed, in the memory the results above leave
    taxonomy = None
    in_memory: list[str] = []  # sections computed from the loaded store: none left (kept in the key for readers)
    if has_taxonomy(ds):
        taxonomy, tax_sizes, tax_blocks = stream_taxonomy(
            ds, n_boot=n_boot, seed=seed, memory=memory - held_bytes(s, shifts, standard, tests, independent),
            in_flight=in_flight or default_in_flight(), thresholds=thresholds, g_max=g_max)
        scale["taxonomy"] = {
            "streamed": True, "unit_prompts": tax_sizes,
            "resampling": ("prompts resampled one by one (units of one prompt)" if max(tax_sizes.values()) == 1 else
                           "bootstrap over units of consecutive prompts (unit_prompts per condition)"),
            "exact": "means, defined counts, source conditions and labels (float64 rounding with units of several "
                     "prompts)"}
        scale["execution"]["taxonomy_blocks"] = int(tax_blocks)

    # causal effects and cheap-vs-exact (stores with effects): streamed from the effect variables' units
    causal, cheap_methods = {}, {}
    if exact_kinds(ds):
        causal, cheap_methods, effect_sizes = causal_effects(
            ds, c, s, shifts, tests, rule, memory - held_bytes(standard, independent, taxonomy),
            in_flight or default_in_flight(), g_max)
        scale["causal"] = {
            "streamed": True, "unit_prompts": effect_sizes,
            "resampling": ("prompts resampled one by one (units of one prompt)" if max(effect_sizes.values()) == 1
                           else "bootstrap over units of consecutive prompts (unit_prompts per condition; a and b: "
                                "the diagnostics' units, so the joint bootstraps move both together)"),
            "exact": "mean effects, t-tests and p-values, the causal circuit, the AtP means"}
    scale["execution"]["in_memory"] = in_memory
    if g_max is None:  # the in-memory report: every prompt, one by one; its summary keeps the keys it always had
        comparison = dataclasses.replace(comparison, scale=None)
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


def causal_effects(ds: xr.Dataset, c: Comparison, s: Streamed, shifts: dict, tests: dict[str, CircuitTests],
                   rule: ca.CircuitRule, memory: int, in_flight: int, g_max: int | None
                   ) -> tuple[dict[str, CausalEffects], dict[str, CheapVsExact], dict[str, int]]:
    """Every exact effect kind against the diagnostics, and analysis.cheap.cheap_vs_exact, from the effect
    variables' units (one pass per condition over every kind; conditions other than a only when a kind's effects
    are not on a). Units of a and b have the diagnostics' size, so the joint bootstraps pair each effect unit with
    its diagnostics' draw count; others have unit_size(prompts, g_max). Every kind gets the same bootstrap draws
    (same seeds). Returns (causal, cheap, condition -> unit prompts of the conditions streamed)."""
    kinds = exact_kinds(ds)
    estimates = {k: cheap_kinds(ds, k) for k in kinds}
    every = [*kinds, *(e for k in kinds for e in estimates[k])]
    heads = like(c.mask, np.zeros(c.shape))
    streamed: dict[str, dict[str, tuple[Units, int]]] = {}
    sizes: dict[str, int] = {}

    def of(condition: str) -> dict[str, tuple[Units, int]]:
        if condition not in streamed:
            n = int(condition_prompts(ds, condition, effect_variable(kinds[0])).sizes["prompt"])
            sizes[condition] = s.size if condition in (c.a, c.b) else unit_size(n, g_max)
            left = memory - held_bytes(streamed, s, shifts, tests)
            streamed[condition] = stream_effects(ds, condition, every, sizes[condition], left, in_flight)
        return streamed[condition]

    causal, samples = {}, {}
    for kind in kinds:
        variable = effect_variable(kind)
        targets = lambda cond: of(cond)[kind][1] if of(cond) else 0  # noqa: E731
        used = [c.a] if targets(c.a) else [x for x in conditions(ds) if targets(x)]
        if not used:
            raise AnalysisError(f"{variable} has no finite value: no prompt of the store has a task target")
        parts = {name: {x: of(x)[name][0] for x in used} for name in [kind, *estimates[kind]]}
        samples[kind] = (used, parts)
        mean = ca.mean_effect(Units.concat(list(parts[kind].values())), sum(targets(x) for x in used), heads,
                                 c.n_boot, rng_for(c.seed, SEED_EFFECT))
        diagnostics = {v: (s.a[v], s.b[v]) for v in TESTED}
        boot_deltas, boot_means = ca.joint_bootstrap(diagnostics, c.a, c.b, used, {kind: parts[kind]}, c.n_boot,
                                                     rng_for(c.seed, SEED_JOINT), c.shape)
        abs_mean = np.abs(mean.statistic.values)
        spearman = {v: ca.effect_spearman(np.abs(shifts[v].statistic.values), abs_mean, np.abs(boot_deltas[v]),
                                          np.abs(boot_means[kind])) for v in TESTED}
        circuit = ca.select_heads(mean.statistic, mean.pvalue, rule)
        flagged = {v: tests[v].flagged(FLAG_LEVEL) for v in TESTED}
        scores = {v: ca.precision_recall(flagged[v], circuit) for v in TESTED}
        causal[kind] = CausalEffects(kind, tuple(used), mean, ct.benjamini_hochberg(mean.pvalue), rule, circuit,
                                     spearman, flagged, {v: p for v, (p, _) in scores.items()},
                                     {v: r for v, (_, r) in scores.items()})
    cheap_methods = cheap.cheap_vs_exact(ds, c, s, causal, samples, shifts, lambda: rng_for(c.seed, SEED_JOINT))
    return causal, cheap_methods, sizes
