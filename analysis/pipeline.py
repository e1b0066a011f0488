"""The whole comparison of two conditions on one store: every statistic the report shows.

`run_analysis` computes (no files written); `summary` turns the result into summary.json's dict.
Random streams: each purpose has its own generator derived from (seed, purpose), and the bootstrap
and the permutations are the same draws for every variable, so joint statistics stay coherent.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import xarray as xr
from scipy.cluster import hierarchy
from tqdm.auto import tqdm

from analysis import circuit_tests as ct
from analysis import correlation as corr
from analysis._util import quiet
from analysis.circuits import Circuit
from analysis.errors import AnalysisError
from analysis.prompt_curve import prompt_curve
from analysis.resampling import rng_for
from analysis.shifts import ShiftResult, shift
from analysis.store import check_condition, check_variables, condition_values

TESTED = ("kl_norm", "chi")  # the posts' two diagnostics: every circuit test runs on both
SEED_BOOT, SEED_PERM, SEED_STRAT, SEED_CNULL, SEED_CBOOT, SEED_CURVE = range(1, 7)
N_SIGMA = 5.0


@dataclasses.dataclass
class Analysis:
    a: str
    b: str
    circuit: Circuit
    mask: np.ndarray  # [layer, head], True on circuit heads
    values: dict[str, tuple[np.ndarray, np.ndarray]]  # variable -> ([n_a, L, H], [n_b, L, H])
    shifts: dict[str, ShiftResult]
    mann_whitney: dict[str, ct.MannWhitneyResult]
    permutation: dict[str, ct.PermutationResult]
    per_head_p: dict[str, np.ndarray]
    per_head_q: dict[str, np.ndarray]
    stratified: dict[str, ct.StratifiedResult]
    auc_ci: dict[str, tuple[float, float]]
    correlations: dict[str, corr.Pearson]
    c_a: np.ndarray
    c_b: np.ndarray
    c_diff: np.ndarray
    sigma: float
    flagged: list[tuple[int, int]]
    max_null: corr.MaxNull
    pair_ci: list[tuple[tuple[int, int], float, float]]
    linkage: np.ndarray  # scipy linkage matrix of the heads on 1 - C_diff (correlation.head_linkage)
    ablation: tuple[object, int] | None
    curve: dict[str, list]
    n_boot: int
    n_perm: int
    seed: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape

    @property
    def order(self) -> np.ndarray:
        """Flat head indices in dendrogram order (the tree's leaves, left to right)."""
        return hierarchy.leaves_list(self.linkage)

    def delta(self, var: str) -> np.ndarray:
        return self.shifts[var].statistic


def run_analysis(ds: xr.Dataset, circuit: Circuit, a: str, b: str, *, n_boot: int = 1000, n_perm: int = 1000,
                 seed: int = 0, variables: tuple[str, ...] | None = None, curve: bool = True) -> Analysis:
    """Compare condition a with condition b on every head of the store (loads only needed variables)."""
    if a == b:
        raise AnalysisError(f"conditions a and b are both {a!r}; compare two different conditions")
    check_condition(ds, a)
    check_condition(ds, b)
    check_variables(ds, list(TESTED))
    if n_boot < 2 or n_perm < 1:
        raise AnalysisError("n_boot must be >= 2 and n_perm >= 1")
    shape = (ds.sizes["layer"], ds.sizes["head"])
    circuit.check_fits(*shape)
    mask = circuit.mask(*shape)
    variables = variables or tuple(v for v in ds.data_vars if set(("condition", "prompt", "layer", "head")) <= set(ds[v].dims))
    variables = tuple(dict.fromkeys(TESTED + tuple(variables)))
    values = {v: (condition_values(ds, a, v), condition_values(ds, b, v)) for v in variables}
    n_a, n_b = values["kl_norm"][0].shape[0], values["kl_norm"][1].shape[0]
    if min(n_a, n_b) < 3:
        raise AnalysisError(f"conditions {a!r} and {b!r} have {n_a} and {n_b} prompts; need at least 3 each")

    steps = tqdm(total=5, desc="report", unit="step", disable=None)
    shifts = {v: shift(*values[v], n_boot=n_boot, rng=rng_for(seed, SEED_BOOT)) for v in variables}
    steps.update()
    mw, perm, p_head, q_head, strat, auc_ci = {}, {}, {}, {}, {}, {}
    for v in TESTED:
        delta = shifts[v].statistic
        mw[v] = ct.mann_whitney(np.abs(delta), mask)
        null = ct.permutation_deltas(*values[v], n_perm, rng_for(seed, SEED_PERM))  # same shuffles for each v
        perm[v] = ct.circuit_permutation_test(delta, null, mask)
        p_head[v] = ct.per_head_permutation(delta, null).pvalue
        q_head[v] = ct.benjamini_hochberg(p_head[v])
        strat[v] = ct.layer_stratified_test(np.abs(delta), mask, n_perm, rng_for(seed, SEED_STRAT))
        auc_ci[v] = ct.auc_interval(shifts[v].bootstrap_distribution, mask)
    steps.update()

    (ka, kb), (xa_chi, _) = values["kl_norm"], values["chi"]
    with quiet():
        kl_mean, chi_mean = np.nanmean(ka, axis=0), np.nanmean(xa_chi, axis=0)
    layers = np.broadcast_to(np.arange(shape[0])[:, None], shape)
    other = ~mask
    correlations = {
        "kl_chi_head_means": corr.pearson(kl_mean, chi_mean),
        "kl_chi_points": corr.pearson(ka, xa_chi),
        "dkl_dchi": corr.pearson(shifts["kl_norm"].statistic, shifts["chi"].statistic),
        "layer_kl_noncircuit": corr.pearson(layers[other], kl_mean[other]),
        "layer_chi_noncircuit": corr.pearson(layers[other], chi_mean[other]),
    }

    flat_a, flat_b = ka.reshape(n_a, -1), kb.reshape(n_b, -1)
    c_a, c_b = corr.head_correlation(flat_a), corr.head_correlation(flat_b)
    c_diff = c_a - c_b
    sigma = corr.sigma_band(c_diff, mask.ravel())
    flagged = corr.flagged_pairs(c_diff, sigma, N_SIGMA)
    steps.update()
    max_null = corr.c_diff_max_null(flat_a, flat_b, n_perm, rng_for(seed, SEED_CNULL))
    i, j = corr.upper_pairs(c_diff.shape[0])
    top = np.argsort(-np.nan_to_num(np.abs(c_diff[i, j])))[:5]
    chosen = list(dict.fromkeys(flagged + [(int(i[t]), int(j[t])) for t in top]))
    intervals = corr.bootstrap_c_diff(flat_a, flat_b, chosen, n_boot, rng_for(seed, SEED_CBOOT))
    pair_ci = [(p, float(lo), float(hi)) for p, (lo, hi) in zip(chosen, intervals)]
    linkage = corr.head_linkage(c_diff)
    steps.update()

    ablation = None
    if circuit.ablation is not None and np.isfinite(circuit.ablation).sum() >= 3:  # else no correlation to report
        ablation = ct.ablation_spearman(np.abs(shifts["kl_norm"].statistic), circuit.ablation)
    table = {}
    if curve:
        table = prompt_curve({v: values[v][0] for v in TESTED}, {v: values[v][1] for v in TESTED}, mask,
                             rng=rng_for(seed, SEED_CURVE), n_boot=min(n_boot, 200))
    steps.update()
    steps.close()
    return Analysis(a, b, circuit, mask, values, shifts, mw, perm, p_head, q_head, strat, auc_ci, correlations,
                    c_a, c_b, c_diff, sigma, flagged, max_null, pair_ci, linkage, ablation, table,
                    n_boot, n_perm, seed)


def head_of(index: int, n_heads: int) -> list[int]:
    return [index // n_heads, index % n_heads]


def summary(an: Analysis) -> dict:
    """summary.json's content (CONTRACT.md keys plus details), numpy types left for to_jsonable."""
    n_layers, n_heads = an.shape
    n_a, n_b = an.values["kl_norm"][0].shape[0], an.values["kl_norm"][1].shape[0]
    circuit_idx = np.flatnonzero(an.mask.ravel())
    ranks = {v: ct.descending_ranks(np.abs(an.delta(v))) for v in TESTED}
    out: dict = {
        "summary_version": 1,
        "conditions": {"a": an.a, "b": an.b},
        "n_prompts": {an.a: n_a, an.b: n_b},
        "shape": {"n_layers": n_layers, "n_heads": n_heads},
        "circuit": {
            "name": an.circuit.name, "source": an.circuit.source,
            "heads": [list(h) for h in an.circuit.heads],
            "roles": {r: [list(h) for h in hs] for r, hs in an.circuit.roles.items()},
        },
        "delta": {v: s.statistic for v, s in an.shifts.items()},
        "delta_ci": {v: {"low": s.confidence_interval.low, "high": s.confidence_interval.high,
                         "method": s.method, "level": s.confidence_level} for v, s in an.shifts.items()},
        "delta_se": {v: s.standard_error for v, s in an.shifts.items()},
        "mannwhitney": {}, "permutation": {}, "per_head": {}, "layer_stratified": {},
    }
    for v in TESTED:
        m, p, st = an.mann_whitney[v], an.permutation[v], an.stratified[v]
        out["mannwhitney"][v] = {
            "U": m.statistic, "p": m.pvalue, "p_exact": m.pvalue_exact, "alternative": "greater",
            "n_circuit": m.n_circuit, "n_other": m.n_other, "min_attainable_p": m.min_pvalue,
            "auc": m.auc, "auc_ci": list(an.auc_ci[v]),
        }
        out["permutation"][v] = {"p": p.pvalue, "U": p.statistic, "n_perm": p.n_resamples, "alternative": "greater"}
        q = an.per_head_q[v]
        out["per_head"][v] = {
            "p": an.per_head_p[v], "q_bh": q, "n_perm": an.n_perm, "min_attainable_p": 1.0 / (an.n_perm + 1),
            "alternative": "two-sided", "rank_abs_delta": ranks[v],
            "bh_0.05": [head_of(k, n_heads) for k in np.flatnonzero(np.ravel(q) <= 0.05)],
            "bh_0.01": [head_of(k, n_heads) for k in np.flatnonzero(np.ravel(q) <= 0.01)],
        }
        out["layer_stratified"][v] = {"U": st.statistic, "auc": st.auc, "p": st.pvalue, "layers": st.layers,
                                      "n_perm": st.n_resamples, "min_attainable_p": st.min_pvalue,
                                      "alternative": "greater"}
    out["circuit_heads"] = [
        {"layer": int(k // n_heads), "head": int(k % n_heads),
         "role": an.circuit.role_of(int(k // n_heads), int(k % n_heads)),
         **{f"delta_{v}": an.delta(v).ravel()[k] for v in TESTED},
         **{f"rank_abs_{v}": ranks[v].ravel()[k] for v in TESTED},
         **{f"p_{v}": an.per_head_p[v].ravel()[k] for v in TESTED},
         **{f"q_{v}": an.per_head_q[v].ravel()[k] for v in TESTED},
         "ablation": None if an.circuit.ablation is None else an.circuit.ablation.ravel()[k]}
        for k in circuit_idx
    ]
    if an.ablation is not None:
        res, n = an.ablation
        out["ablation_spearman"] = {"rho": res.statistic, "p": res.pvalue, "n_heads": n,
                                    "x": "|delta kl_norm|", "alternative": "two-sided"}
    out["correlations"] = {k: c.statistic for k, c in an.correlations.items()}
    out["correlation_tests"] = {k: dataclasses.asdict(c) for k, c in an.correlations.items()}
    i, j = corr.upper_pairs(an.c_diff.shape[0])
    fw = corr.family_wise_p(an.c_diff[i, j], an.max_null)
    fw_of = {(int(x), int(y)): p for x, y, p in zip(i, j, fw)}
    out["c_diff"] = {
        "sigma": an.sigma, "n_sigma": N_SIGMA,
        "range": [np.nanmin(an.c_diff[i, j]), np.nanmax(an.c_diff[i, j])] if i.size else [None, None],
        "flagged_pairs": [[*head_of(x, n_heads), *head_of(y, n_heads), an.c_diff[x, y], an.c_diff[x, y] / an.sigma]
                          for x, y in an.flagged],
        "null_max_abs_p": {
            "observed_max": an.max_null.observed_max, "p": an.max_null.pvalue,
            "quantile_95": an.max_null.quantile_95, "n_perm": an.max_null.n_resamples,
            "flagged_pairs": [[*head_of(x, n_heads), *head_of(y, n_heads), fw_of[(x, y)]] for x, y in an.flagged],
            "significant_pairs": [[*head_of(x, n_heads), *head_of(y, n_heads), an.c_diff[x, y], fw_of[(x, y)]]
                                  for x, y in zip(i, j) if fw_of[(int(x), int(y))] <= 0.05],
        },
        "bootstrap_ci": [[*head_of(x, n_heads), *head_of(y, n_heads), an.c_diff[x, y], lo, hi]
                         for (x, y), lo, hi in an.pair_ci],
        "dendrogram_order": [head_of(int(k), n_heads) for k in an.order],
    }
    out["prompt_curve"] = an.curve
    out["settings"] = {"n_boot": an.n_boot, "n_perm": an.n_perm, "seed": an.seed,
                       "bootstrap": "prompts resampled with replacement within each condition",
                       "permutation": "condition labels shuffled across the pooled prompts"}
    return out
