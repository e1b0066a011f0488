"""summary.json's content: a pure function of the report object (CONTRACT.md's keys plus details).

Arrays are indexed [layer][head]; heads are written as [layer, head] pairs. numpy types and NaN are
left for `analysis._util.to_jsonable`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.findings import (CURVE_N_PERM, FLAG_LEVEL, N_SIGMA, TESTED, Analysis, CausalEffects, CheapVsExact, CircuitTests,
                               CrossHead, MethodAgreement)
from analysis.labels import head_label
from analysis.taxonomy import HeadTaxonomy, ROLE_SCORES


def summary(an: Analysis) -> dict[str, Any]:
    c = an.comparison
    n_layers, n_heads = c.shape
    out: dict[str, Any] = {
        "summary_version": 1,
        "conditions": {"a": c.a, "b": c.b},
        "n_prompts": c.n_prompts,
        "shape": {"n_layers": n_layers, "n_heads": n_heads},
        "circuit": {
            "name": c.circuit.name, "source": c.circuit.source,
            "heads": [list(h) for h in c.circuit.heads],
            "roles": {r: [list(h) for h in hs] for r, hs in c.circuit.roles.items()},
        },
        "delta": {v: s.statistic.values for v, s in an.shifts.items()},
        "delta_ci": {v: {"low": s.confidence_interval.low.values, "high": s.confidence_interval.high.values,
                         "method": s.method, "level": s.confidence_level} for v, s in an.shifts.items()},
        "delta_se": {v: s.standard_error.values for v, s in an.shifts.items()},
        "design": c.design, "design_reason": c.design_reason,
        "delta_z": {v: z.statistic.values for v, z in an.standardised.items()},
        "delta_z_ci": {v: {"low": z.confidence_interval.low.values, "high": z.confidence_interval.high.values,
                           "method": "the design's bootstrap interval of delta divided by the analytic SE",
                           "level": z.confidence_level} for v, z in an.standardised.items()},
        "delta_z_se": {v: z.standard_error.values for v, z in an.standardised.items()},
        "delta_z_df": {v: z.df.values for v, z in an.standardised.items()},
        "effect_size": {v: z.effect_size.values for v, z in an.standardised.items()},
        "effect_size_ci": {v: {"low": z.effect_size_interval.low.values, "high": z.effect_size_interval.high.values,
                               "method": "percentile, d recomputed on the design's bootstrap resamples",
                               "level": z.confidence_level} for v, z in an.standardised.items()},
        "standardisation": STANDARDISATION[c.design],
        "circuit_test": {v: circuit_test_entry(an.circuit_tests[v], c.design) for v in TESTED},
        "standardised_tests": {v: standardised_entry(an.circuit_tests[v]) for v in TESTED},
        "min_effect": dict(c.min_effect),
        "min_effect_tests": {v: min_effect_entry(an.circuit_tests[v]) for v in TESTED},
        "mannwhitney": {}, "permutation": {}, "per_head": {}, "layer_stratified": {},
    }
    if c.paired:
        out["paired_vs_independent"] = {v: {
            "ci_width_ratio_median": an.ci_width_ratio(v),
            "independent_ci": {"low": i.confidence_interval.low.values, "high": i.confidence_interval.high.values},
            "rule": "median over heads of (paired 95% CI width) / (independent 95% CI width), same store and "
                    "bootstrap settings"} for v, i in an.independent_shifts.items()}
    for v in TESTED:
        t = an.circuit_tests[v]
        out["mannwhitney"][v] = {**mann_whitney_entry(t), "statistic": RAW}
        out["permutation"][v] = {"p": t.permutation.pvalue, "U": t.permutation.statistic,
                                 "n_perm": t.permutation.n_resamples, "alternative": t.permutation.alternative,
                                 "statistic": RAW}
        out["per_head"][v] = {
            "p": t.per_head.pvalue.values, "q_bh": t.q_bh.values, "n_perm": c.n_perm,
            "min_attainable_p": 1.0 / (c.n_perm + 1), "alternative": t.per_head.alternative,
            "rank_abs_delta": t.rank.values,
            "bh_0.05": [list(h) for h in t.bh_heads(0.05)], "bh_0.01": [list(h) for h in t.bh_heads(0.01)],
        }
        st = t.stratified
        out["layer_stratified"][v] = {**stratified_entry(st), "statistic": RAW}
    out["circuit_heads"] = circuit_head_rows(an)
    if an.ablation is not None:
        out["ablation_spearman"] = {"rho": an.ablation.statistic, "p": an.ablation.pvalue, "n_heads": an.ablation.n,
                                    "x": "|delta kl_norm|", "alternative": an.ablation.alternative}
    out["correlations"] = {k: r.statistic for k, r in an.correlations.items()}
    out["correlation_tests"] = {k: {"statistic": r.statistic, "pvalue": r.pvalue, "low": r.confidence_interval.low,
                                    "high": r.confidence_interval.high, "n": r.n} for k, r in an.correlations.items()}
    out["c_diff"] = c_diff_entry(an.cross_head)
    if an.causal:  # stores without effects keep exactly the keys they always had
        out["effects"] = list(an.causal)
        out["causal"] = {kind: causal_entry(e) for kind, e in an.causal.items()}
    if an.cheap:  # only stores with AtP/AtP* estimates get the key
        out["cheap_vs_exact"] = {kind: {m: method_entry(a, an.causal[kind]) for m, a in x.methods.items()}
                                 for kind, x in an.cheap.items()}
        out["cheap_vs_exact_verdict"] = {kind: verdict_entry(x) for kind, x in an.cheap.items()}
    if an.taxonomy is not None:  # only stores with schema 2's taxonomy variables get the key
        out["taxonomy"] = taxonomy_entry(an.taxonomy)
    out["prompt_curve"] = an.curve
    out["settings"] = {"n_boot": c.n_boot, "n_perm": c.n_perm, "seed": c.seed,
                       "bootstrap": BOOTSTRAP[c.design], "permutation": PERMUTATION[c.design],
                       "prompt_curve_n_perm": min(c.n_perm, CURVE_N_PERM), "prompt_curve_perm_repeats": 5}
    out["store"] = c.store
    if c.scale is not None:  # streamed reports (analysis.pipeline.run_analysis_streamed) say what was streamed and what subsampled
        out["scale"] = {k: v for k, v in c.scale.items() if k != "execution"}  # same for any memory or scheduler
    return out


RAW = "|delta| (raw shift; the posts' test)"
STANDARDISED = "|delta_z| = |delta / SE| (standardised shift; the lead result)"
BOOTSTRAP = {"independent": "prompts resampled with replacement within each condition",
             "paired": "pairs resampled with replacement (both prompts of a pair together)"}
PERMUTATION = {"independent": "condition labels shuffled across the pooled prompts",
               "paired": "condition labels swapped within each pair at random (sign flips of the pair differences)"}
STANDARDISATION = {
    "independent": "delta_z = delta / SE, SE = sqrt(s_a^2/n_a + s_b^2/n_b) (Welch; a Welch t with Welch-Satterthwaite "
                   "df); effect_size d = delta / sqrt((s_a^2 + s_b^2)/2)",
    "paired": "delta_z = mean pair difference / (SD of the differences / sqrt(n_pairs)) (a paired t, df n_pairs - 1); "
              "effect_size d = delta / sqrt((s_a^2 + s_b^2)/2)",
}
MIN_EFFECT_FORM = ("per head H0 |delta| <= x vs H1 |delta| > x: p = F((x - |delta|)/SE) + F((-x - |delta|)/SE), F the "
                   "t distribution with the design's df (exact level at |delta| = x, conservative inside); "
                   "Benjamini-Hochberg over heads; x = 0 is the two-sided t-test of delta = 0")


def mann_whitney_entry(t: CircuitTests, standardised: bool = False) -> dict[str, Any]:
    m = t.mann_whitney_z if standardised else t.mann_whitney
    ci = t.auc_interval_z if standardised else t.auc_interval
    return {"U": m.statistic, "p": m.pvalue, "p_exact": m.pvalue_exact, "alternative": m.alternative,
            "n_circuit": m.n_circuit, "n_other": m.n_other, "min_attainable_p": m.min_pvalue,
            "auc": m.auc, "auc_ci": [ci.low, ci.high]}


def stratified_entry(st) -> dict[str, Any]:
    return {"U": st.statistic, "auc": st.auc, "p": st.pvalue, "layers": st.layers, "n_perm": st.n_resamples,
            "min_attainable_p": st.min_pvalue, "alternative": st.alternative}


def circuit_test_entry(t: CircuitTests, design: str) -> dict[str, Any]:
    """The report's lead test of "circuit heads shift more than the others" (CONTRACT.md `circuit_test`)."""
    pm, mw = t.permutation_z, t.mann_whitney_z
    return {"statistic": pm.statistic, "pvalue": pm.pvalue, "alternative": pm.alternative,
            "method": ("Mann-Whitney U of circuit vs other heads' |delta_z| (|delta / SE|), one-sided (circuit "
                       f"greater), null from {pm.n_resamples} permutations: {PERMUTATION[design]}, every head's "
                       "delta_z recomputed"),
            "auc": mw.auc, "auc_ci": [t.auc_interval_z.low, t.auc_interval_z.high], "n_perm": pm.n_resamples,
            "min_attainable_p": 1.0 / (pm.n_resamples + 1),
            "rank_test_p": mw.pvalue, "agrees_with_rank_test": agree(pm.pvalue, mw.pvalue)}


def agree(p1: float, p2: float, level: float = 0.05) -> bool:
    """Both tests reject at level, or neither does."""
    return bool((p1 <= level) == (p2 <= level))


def standardised_entry(t: CircuitTests) -> dict[str, Any]:
    return {"statistic": STANDARDISED, "mannwhitney": mann_whitney_entry(t, standardised=True),
            "permutation": {"p": t.permutation_z.pvalue, "U": t.permutation_z.statistic,
                            "n_perm": t.permutation_z.n_resamples, "alternative": t.permutation_z.alternative},
            "layer_stratified": stratified_entry(t.stratified_z), "rank_abs_delta_z": t.rank_z.values}


def min_effect_entry(t: CircuitTests) -> dict[str, Any]:
    m = t.min_effect
    return {"x": m.x, "p": m.pvalue.values, "q_bh": m.q_bh.values, "p_zero": m.pvalue_zero.values,
            "q_bh_zero": m.q_bh_zero.values, "level": FLAG_LEVEL,
            "flagged": [list(h) for h in t.flagged(FLAG_LEVEL)],
            "flagged_zero": [list(h) for h in t.flagged(FLAG_LEVEL, at_zero=True)],
            "n_flagged": {"zero": len(t.flagged(FLAG_LEVEL, at_zero=True)), "x": len(t.flagged(FLAG_LEVEL)),
                          "zero_q0.01": len(t.flagged(0.01, at_zero=True)), "x_q0.01": len(t.flagged(0.01))},
            "form": MIN_EFFECT_FORM, "alternative": m.alternative}


def circuit_head_rows(an: Analysis) -> list[dict[str, Any]]:
    """One row per circuit head (layer-major): role, delta, rank, per-head p and q, ablation effect."""
    c = an.comparison
    rows = []
    for layer, head in c.circuit.heads:
        at = {"layer": layer, "head": head}
        rows.append({
            "layer": layer, "head": head, "role": c.circuit.role_of(layer, head),
            **{f"delta_{v}": an.delta(v).sel(at).item() for v in TESTED},
            **{f"rank_abs_{v}": an.circuit_tests[v].rank.sel(at).item() for v in TESTED},
            **{f"p_{v}": an.circuit_tests[v].per_head.pvalue.sel(at).item() for v in TESTED},
            **{f"q_{v}": an.circuit_tests[v].q_bh.sel(at).item() for v in TESTED},
            **{f"delta_z_{v}": an.standardised[v].statistic.sel(at).item() for v in TESTED},
            **{f"rank_abs_z_{v}": an.circuit_tests[v].rank_z.sel(at).item() for v in TESTED},
            **{f"effect_size_{v}": an.standardised[v].effect_size.sel(at).item() for v in TESTED},
            **{f"q_min_effect_{v}": an.circuit_tests[v].min_effect.q_bh.sel(at).item() for v in TESTED},
            "ablation": None if c.circuit.ablation is None else c.circuit.ablation[layer, head],
        })
    return rows


def causal_entry(e: CausalEffects) -> dict[str, Any]:
    m = e.mean
    return {
        "conditions": list(e.conditions), "n_prompts": m.n,
        "mean": m.statistic.values,
        "ci": {"low": m.confidence_interval.low.values, "high": m.confidence_interval.high.values,
               "method": m.method, "level": m.confidence_level},
        "se": m.standard_error.values,
        "test": {"t": m.t.values, "p": m.pvalue.values, "q_bh": e.q_bh.values, "alternative": m.alternative,
                 "method": "one-sample t-test against 0 (scipy.stats.ttest_1samp)"},
        "circuit": [list(h) for h in e.circuit],
        "rule": e.rule.text(), "level": e.rule.level, "fraction": e.rule.fraction, "threshold": e.threshold,
        "spearman": {v: {"rho": r.statistic, "low": r.confidence_interval.low, "high": r.confidence_interval.high,
                         "p": r.pvalue, "n_heads": r.n, "alternative": r.alternative,
                         "x": f"|delta {v}|", "y": "|mean effect|",
                         "ci": "percentile, prompts resampled within each condition"} for v, r in e.spearman.items()},
        "flagged": {v: [list(h) for h in heads] for v, heads in e.flagged.items()},
        "flag_rule": f"per-head minimum-effect test of |delta| > x (summary `min_effect`), Benjamini-Hochberg "
                     f"q <= {FLAG_LEVEL:g}",
        "precision": e.precision, "recall": e.recall,
    }


def c_diff_entry(x: CrossHead) -> dict[str, Any]:
    c_diff, fw = x.c_diff.values, x.family_wise_p.values
    i, j = np.triu_indices(c_diff.shape[0], 1)
    significant = np.flatnonzero(fw[i, j] <= 0.05)
    return {
        "sigma": x.sigma, "n_sigma": N_SIGMA,
        "range": [np.nanmin(c_diff[i, j]), np.nanmax(c_diff[i, j])] if i.size else [None, None],
        "flagged_pairs": [[*x.head(p), *x.head(q), c_diff[p, q], c_diff[p, q] / x.sigma] for p, q in x.flagged],
        "null_max_abs_p": {
            "observed_max": x.max_null.statistic, "p": x.max_null.pvalue,
            "quantile_95": x.max_null.quantile_95, "n_perm": x.max_null.n_resamples,
            "flagged_pairs": [[*x.head(p), *x.head(q), fw[p, q]] for p, q in x.flagged],
            "significant_pairs": [[*x.head(i[k]), *x.head(j[k]), c_diff[i[k], j[k]], fw[i[k], j[k]]]
                                  for k in significant],
        },
        "bootstrap_ci": [[*x.head(p.pair[0]), *x.head(p.pair[1]), c_diff[p.pair], p.confidence_interval.low,
                          p.confidence_interval.high] for p in x.pair_intervals],
        "dendrogram_order": [list(x.head(int(k))) for k in x.order],
    }


def method_entry(m: MethodAgreement, exact: CausalEffects) -> dict[str, Any]:
    """One cheap method against one exact kind; missed heads carry their exact mean effect."""
    r = m.spearman
    effect = exact.mean.statistic
    return {
        "family": m.family, "estimate": m.magnitude.values,
        "spearman": {"rho": r.statistic, "low": r.confidence_interval.low, "high": r.confidence_interval.high,
                     "p": r.pvalue, "n_heads": r.n, "alternative": r.alternative,
                     "x": magnitude_label(m), "y": "|mean effect|",
                     "ci": "percentile, prompts resampled within each condition"},
        "precision": m.precision, "recall": m.recall, "top_k": len(exact.circuit),
        "method_top_k": [list(h) for h in m.top_k],
        "missed": [[*h, effect.sel(layer=h[0], head=h[1]).item()] for h in m.missed],
    }


def verdict_entry(x: CheapVsExact) -> dict[str, Any]:
    return {"best": x.best, "ties": x.ties,
            "rule": "highest Spearman rho; ties: methods whose 95% interval overlaps the best one's"}


def magnitude_label(m: MethodAgreement) -> str:
    """What a method ranks, in words (summary.json and report.md share it)."""
    if m.family == "diagnostic":
        return f"|delta {m.name.removeprefix('delta_')}|"
    return f"|mean {m.name}|" if m.family == "atp" else f"mean {m.name} (unsigned)"


def taxonomy_entry(t: HeadTaxonomy) -> dict[str, Any]:
    """Per-head mean scores per condition with intervals, every head's roles, the sink rate."""
    def by_condition(da) -> dict[str, Any]:
        return {str(c): da.sel(condition=c).values for c in da["condition"].values}

    labels = t.labels
    return {
        "scores": {v: by_condition(m.statistic) for v, m in t.means.items()},
        "ci": {v: {str(c): {"low": m.confidence_interval.low.sel(condition=c).values,
                            "high": m.confidence_interval.high.sel(condition=c).values}
                   for c in m.statistic["condition"].values} for v, m in t.means.items()},
        "n_prompts": {v: by_condition(m.n) for v, m in t.means.items()},
        "labels": {head_label(l, h): t.roles_of(l, h) for l in labels["layer"].values for h in labels["head"].values},
        "thresholds": {r: t.thresholds[r] for r in t.roles},
        "role_scores": {r: ROLE_SCORES[r] for r in t.roles},
        "sources": t.sources,
        "sink_rate": {str(c): float(t.sink_rate.statistic.sel(condition=c)) for c in t.sink_rate.statistic["condition"].values},
        "sink_rate_ci": {str(c): {"low": float(t.sink_rate.confidence_interval.low.sel(condition=c)),
                                  "high": float(t.sink_rate.confidence_interval.high.sel(condition=c))}
                         for c in t.sink_rate.statistic["condition"].values},
        "sink_heads_counted": by_condition(t.sink_rate.n_heads),
        "epsilon": t.sink_rate.epsilon,
        "query_positions": t.query_positions,
        "method": t.means["bos_attn"].method, "level": t.means["bos_attn"].confidence_level,
        "rule": "role when the head's mean score on the role's source condition >= its threshold; "
                "sink rate: share of heads (with a defined mean) whose mean bos_attn > epsilon",
        "averaging": ("mean over prompts of each prompt's score; a prompt's score is its mean over the query "
                      "positions where the score is defined" if t.query_positions == "all" else
                      "mean over prompts of the score at each prompt's last token")
                     + "; NaN where no prompt defines it (dup_attn, induction_attn need a repeated token)",
        "ci_method": "BCa, prompts resampled with replacement within each condition; sink rate: percentile "
                     "over the same resamples",
    }
