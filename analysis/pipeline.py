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
3. Every report section (analysis.sections: shifts, standardised shifts, circuit tests, ..., taxonomy, causal
   effects, cheap vs exact, prompt-count curve, patching by position, DLA, logit lens) computes its result from
   the units, in the registry's order;
   the head taxonomy streams one (condition, score) at a time, the causal sections every effect kind per
   condition, with a's and b's units on the diagnostics' unit boundaries so the joint bootstraps move every
   effect unit with its diagnostics.

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
from analysis import sections
from analysis import standardised as st
from analysis.beyond_heads import BEYOND_VARIABLES
from analysis.circuits import Circuit
from analysis.effects import exact_kinds, is_effect_variable
from analysis.errors import AnalysisError
from analysis.findings import MIN_EFFECT, MIN_EFFECT_FALLBACK, TESTED, Analysis, Comparison
from analysis.labels import per_head
from analysis.resampling import rng_for
from analysis.seeds import (SEED_BOOT, SEED_CBOOT, SEED_CNULL, SEED_CURVE, SEED_CURVE_PERM, SEED_EFFECT,  # noqa: F401
                            SEED_JOINT, SEED_PERM, SEED_SAMPLE, SEED_STD, SEED_STRAT, SEED_STRAT_Z)
from analysis.store import (check_condition, check_variables, condition_array, keep_complete_pairs, pair_order,
                            provenance)
from analysis.streaming import DEFAULT_MEMORY, default_in_flight, open_lazy, parse_memory, single_thread_blas, stream_store
from analysis.taxonomy import TAXONOMY_VARIABLES
from analysis.units import G_MAX
from jaxdiag.paths import StoreLocation

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
                          memory: int | str | None = None, in_flight: int | None = None,
                          complete_pairs_only: bool = False) -> Analysis:
    """run_analysis streamed over the store at `store` (a path or URL) in bounded memory (`memory`: parse_memory's
    text or bytes), with units of up to G_MAX prompts per condition. complete_pairs_only: an incomplete store's
    prompts whose partner is missing are left out (analysis.store.keep_complete_pairs)."""
    ds = open_lazy(store)
    if complete_pairs_only:
        ds = keep_complete_pairs(ds, a, b)
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
    in_flight = in_flight or default_in_flight()
    # the cheap-vs-exact section's joint bootstrap needs every variable's per-condition units, paired or not
    s = stream_store(c, variables, memory, in_flight, picks=(picks[0], picks[1]),
                     plain=variables if exact_kinds(ds) else TESTED, g_max=g_max)
    heads = {v: c.values[v][0].isel(prompt=0, drop=True) for v in variables}

    # the bounded subsample (prompt-count curve, figures), gathered by the same pass over the store
    sample = {v: tuple(xr.DataArray(rows.reshape(-1, *c.shape), dims=("prompt", "layer", "head"),
                                    coords={"layer": c.mask["layer"].values, "head": c.mask["head"].values}, name=v)
                       for rows in s.sample[v]) for v in TESTED}
    whole = all(len(p) == n for p, n in zip(picks, (n_a, n_b)))
    scale = {
        "streamed": True,
        # how this run was cut up: not in summary.json, which is the same whatever the memory or the scheduler
        "execution": {"memory_bytes": int(memory), "block_prompts": int(s.rows), "n_blocks": int(s.n_blocks)},
        "unit_prompts": int(s.size), "cross_unit_prompts": int(s.csize),
        "resampling": ("prompts resampled and permuted one by one (units of one prompt)" if s.size == 1 else
                       f"bootstrap and permutations over units of {s.size} consecutive prompts"
                       + (" (pairs)" if c.paired else "")),
        "c_diff_resampling": ("prompts permuted one by one" if s.csize == 1 else
                              f"C_diff null and intervals over units of {s.csize} consecutive prompts"),
        "bca_acceleration": "prompt-level jackknife, exact from streamed second and third central moments",
        "subsample": {"prompts": {a: int(len(picks[0])), b: int(len(picks[1]))}, "of": {a: int(n_a), b: int(n_b)},
                      "all_prompts": bool(whole), "used_for": ["prompt_curve", "figure scatter clouds"]},
    }
    head_means = {v: (s.a[v].centre().reshape(c.shape), s.b[v].centre().reshape(c.shape))
                  for v in TESTED}
    comparison = dataclasses.replace(c, values=sample, counts={a: int(n_a), b: int(n_b)}, head_means=head_means,
                                     scale=scale)
    ctx = sections.Context(ds, comparison, s, heads, rule, thresholds, curve, memory, in_flight, g_max, scale)
    results = sections.compute(ctx)
    scale["execution"]["in_memory"] = []  # sections computed from the loaded store: none (kept for readers)
    if g_max is None:  # the in-memory report: every prompt, one by one; its summary keeps the keys it always had
        comparison = dataclasses.replace(comparison, scale=None)
    return Analysis(comparison, results)


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
    # the taxonomy scores and the direct logit attribution have their own sections (and the taxonomy NaN wherever
    # a token has no earlier copy): the comparison's shifts stay those of the diagnostics, as on stores written
    # before them
    variables = variables or tuple(v for v in ds.data_vars if HEAD_VARIABLE_DIMS <= set(ds[v].dims)
                                   and not is_effect_variable(v) and v not in TAXONOMY_VARIABLES
                                   and v not in BEYOND_VARIABLES)
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
