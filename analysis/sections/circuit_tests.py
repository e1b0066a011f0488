"""Is the circuit more shifted than the other heads? Every circuit-vs-other test of the TESTED diagnostics, on
|delta| (the posts' statistic) and on |delta_z| (the lead result), the per-head permutation tests and the
minimum-effect tests that say which heads are flagged; the |delta| distributions figure."""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis import circuit_tests as ct
from analysis import standardised as st
from analysis.findings import FLAG_LEVEL, TESTED, Analysis, CircuitTests
from analysis.labels import like
from analysis.resampling import rng_for
from analysis.results import MinEffectResult
from analysis.seeds import SEED_PERM, SEED_STRAT, SEED_STRAT_Z
from analysis.palette import OKABE_ITO

NAME = "circuit_tests"
RAW = "|delta| (raw shift; the posts' test)"
STANDARDISED = "|delta_z| = |delta / SE| (standardised shift; the lead result)"
MIN_EFFECT_FORM = ("per head H0 |delta| <= x vs H1 |delta| > x: p = F((x - |delta|)/SE) + F((-x - |delta|)/SE), F the "
                   "t distribution with the design's df (exact level at |delta| = x, conservative inside); "
                   "Benjamini-Hochberg over heads; x = 0 is the two-sided t-test of delta = 0")


def compute(ctx) -> dict[str, CircuitTests]:
    """Per TESTED variable; the label permutations (paired: sign flips) are the same for every variable and
    serve both statistics."""
    s, c = ctx.streamed, ctx.comparison
    mask = c.mask.values
    tests = {}
    for v in TESTED:
        shifted, standard = ctx.results["shifts"][v], ctx.results["standardised"][v]
        delta = shifted.statistic
        null, null_z = st.permutation_null(s.samples(v, ctx.flat_shape(v)), c.n_perm, rng_for(c.seed, SEED_PERM))
        per_head_test = ct.per_head_permutation(delta, null)
        z = standard.statistic
        se, df = standard.standard_error.values, standard.df.values
        x = c.min_effect[v]
        p_x, p_0 = (st.min_effect_pvalue(delta.values, se, df, value) for value in (x, 0.0))
        min_eff = MinEffectResult(x, like(delta, p_x), ct.benjamini_hochberg(like(delta, p_x)), like(delta, p_0),
                                  ct.benjamini_hochberg(like(delta, p_0)), standard.df)
        if c.circuit.absent:  # no circuit to test: the per-head tests only
            tests[v] = CircuitTests(None, None, None, None, per_head=per_head_test,
                                    q_bh=ct.benjamini_hochberg(per_head_test.pvalue), rank=ct.descending_ranks(np.abs(delta)),
                                    rank_z=ct.descending_ranks(np.abs(z)), min_effect=min_eff)
            continue
        tests[v] = CircuitTests(
            mann_whitney=ct.mann_whitney(np.abs(delta).values, mask),
            auc_interval=ct.auc_interval(shifted.bootstrap_distribution.values, mask),
            permutation=ct.circuit_permutation_test(delta.values, null, mask),
            stratified=ct.layer_stratified_test(np.abs(delta).values, mask, c.n_perm, rng_for(c.seed, SEED_STRAT)),
            per_head=per_head_test, q_bh=ct.benjamini_hochberg(per_head_test.pvalue),
            rank=ct.descending_ranks(np.abs(delta)),
            mann_whitney_z=ct.mann_whitney(np.abs(z).values, mask),
            auc_interval_z=ct.auc_interval(standard.bootstrap_statistic.values, mask),
            permutation_z=ct.circuit_permutation_test(z.values, null_z, mask),
            stratified_z=ct.layer_stratified_test(np.abs(z).values, mask, c.n_perm, rng_for(c.seed, SEED_STRAT_Z)),
            rank_z=ct.descending_ranks(np.abs(z)), min_effect=min_eff)
    return tests


def summary(an: Analysis) -> dict[str, Any]:
    c = an.comparison
    if c.circuit.absent:  # the per-head tests; the circuit tests' keys say there are none (CONTRACT.md)
        return {"circuit_test": None, "standardised_tests": None, "min_effect": dict(c.min_effect),
                "min_effect_tests": {v: min_effect_entry(an.circuit_tests[v]) for v in TESTED},
                "mannwhitney": None, "permutation": None,
                "per_head": {v: per_head_entry(an.circuit_tests[v], c.n_perm) for v in TESTED}, "layer_stratified": None}
    out: dict[str, Any] = {
        "circuit_test": {v: circuit_test_entry(an.circuit_tests[v], c.design) for v in TESTED},
        "standardised_tests": {v: standardised_entry(an.circuit_tests[v]) for v in TESTED},
        "min_effect": dict(c.min_effect),
        "min_effect_tests": {v: min_effect_entry(an.circuit_tests[v]) for v in TESTED},
        "mannwhitney": {}, "permutation": {}, "per_head": {}, "layer_stratified": {},
    }
    for v in TESTED:
        t = an.circuit_tests[v]
        out["mannwhitney"][v] = {**mann_whitney_entry(t), "statistic": RAW}
        out["permutation"][v] = {"p": t.permutation.pvalue, "U": t.permutation.statistic,
                                 "n_perm": t.permutation.n_resamples, "alternative": t.permutation.alternative,
                                 "statistic": RAW}
        out["per_head"][v] = per_head_entry(t, c.n_perm)
        out["layer_stratified"][v] = {**stratified_entry(t.stratified), "statistic": RAW}
    return out


def per_head_entry(t: CircuitTests, n_perm: int) -> dict[str, Any]:
    return {"p": t.per_head.pvalue.values, "q_bh": t.q_bh.values, "n_perm": n_perm,
            "min_attainable_p": 1.0 / (n_perm + 1), "alternative": t.per_head.alternative,
            "rank_abs_delta": t.rank.values,
            "bh_0.05": [list(h) for h in t.bh_heads(0.05)], "bh_0.01": [list(h) for h in t.bh_heads(0.01)]}


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
    from analysis.summary import PERMUTATION

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


def markdown(an: Analysis) -> list[str]:
    from analysis.markdown import fmt, heads_text

    c = an.comparison
    n_heads_total = c.mask.size
    if c.circuit.absent:
        lines = ["", "## Circuit tests", "",
                 "No circuit was given (no `--circuit`, none in the run config, and no default for this model), so "
                 "this report has no test of \"the circuit shifts more than the other heads\": pass `--circuit FILE` "
                 "(a TOML/JSON circuit) or `--circuit effects:KIND` (the causal circuit of the store's effects) for "
                 "them. Every other section is circuit-free.", ""]
        for var in TESTED:
            bh05, bh01 = an.circuit_tests[var].bh_heads(0.05), an.circuit_tests[var].bh_heads(0.01)
            lines.append(f"- **Per-head permutation tests (two-sided, |delta {var}|)** with Benjamini-Hochberg FDR "
                         f"over all {n_heads_total} heads: {len(bh05)} head(s) at q <= 0.05 "
                         f"({heads_text(bh05) or 'none'}), {len(bh01)} at q <= 0.01.")
        return lines + [""] + min_effect_lines(an)
    lines = ["", "## Is the circuit more shifted than the other heads?", "",
             "The lead result ranks heads by |delta_z| = |delta / SE|, each head's shift in units of its own noise: "
             "with no shift every head's delta_z has (nearly) the same t distribution however noisy the head is, "
             "so a noisy circuit is not mistaken for a shifted one. The raw-|delta| tests below it are the posts' "
             "test, kept for comparison: a rank test on raw |delta| also ranks the noisiest heads first when "
             "nothing shifts.", ""]
    for var in TESTED:
        lines += lead_lines(an, var)
    for var in TESTED:
        t = an.circuit_tests[var]
        mw, pm, st_ = mann_whitney_entry(t), t.permutation, t.stratified
        bh05, bh01 = t.bh_heads(0.05), t.bh_heads(0.01)
        min_head_p = 1.0 / (c.n_perm + 1)
        lines += [
            f"### |delta {var}|: raw shift (the posts' test)",
            "",
            f"- **Mann-Whitney U (one-sided, alternative: circuit |delta| greater)**, heads as the units, exactly "
            f"`scipy.stats.mannwhitneyu(circuit, other, alternative='greater')`: U = {fmt(mw['U'])}, "
            f"p = {fmt(mw['p'])} (exact-distribution p = {fmt(mw['p_exact'])}), {mw['n_circuit']} circuit vs "
            f"{mw['n_other']} other heads. Smallest attainable one-sided exact p with these sizes: "
            f"1/C({mw['n_circuit'] + mw['n_other']}, {mw['n_circuit']}) = {fmt(mw['min_attainable_p'])}"
            + (" — the circuit is so small that no rank test on it can be very significant."
               if mw["min_attainable_p"] > 1e-3 else "."),
            f"- **ROC-AUC** = U / (k m) = {fmt(mw['auc'])}, 95% prompt-bootstrap percentile CI "
            f"[{fmt(mw['auc_ci'][0])}, {fmt(mw['auc_ci'][1])}] (0.5 = no separation).",
            f"- **Permutation test (one-sided, circuit greater)** of the same U, with condition labels shuffled "
            f"across prompts and every delta recomputed (a null that keeps each head's prompt noise, which the "
            f"rank test ignores): p = {fmt(pm.pvalue)} ({pm.n_resamples} permutations; smallest possible "
            f"{fmt(1 / (pm.n_resamples + 1))}).",
            f"- **Layer-stratified test (one-sided, circuit greater)**: circuit heads ranked only against "
            f"non-circuit heads of their own layer (controls the layer-depth confound); sum of within-layer U = "
            f"{fmt(st_.statistic)}, stratified AUC = {fmt(st_.auc)}, p = {fmt(st_.pvalue)} (circuit labels shuffled "
            f"within layers, {st_.n_resamples} times; layers used: {', '.join(map(str, st_.layers))}; smallest "
            f"attainable p {fmt(st_.min_pvalue)}).",
            f"- **Per-head permutation tests (two-sided, |delta|)** with Benjamini-Hochberg FDR over all "
            f"{n_heads_total} heads: {len(bh05)} head(s) at q <= 0.05 ({heads_text(bh05) or 'none'}), "
            f"{len(bh01)} at q <= 0.01. "
            f"Smallest attainable per-head p = 1/({c.n_perm}+1) = {fmt(min_head_p)}"
            + (f"; BH at 1% over {n_heads_total} heads needs p <= {fmt(0.01 / n_heads_total)} for the top head, so "
               f"use --n-perm >= {int(np.ceil(n_heads_total / 0.01))} to make that reachable."
               if min_head_p > 0.01 / n_heads_total else "."),
            "",
        ]
    return lines + min_effect_lines(an)


def lead_lines(an: Analysis, var: str) -> list[str]:
    """The lead circuit test of one variable (summary.json `circuit_test`, `standardised_tests`)."""
    from analysis.markdown import fmt
    from analysis.summary import PERMUTATION

    c, t = an.comparison, an.circuit_tests[var]
    pm, st = t.permutation_z, t.stratified_z
    mw = mann_whitney_entry(t, standardised=True)
    raw_mw, raw_pm = t.mann_whitney.pvalue, t.permutation.pvalue
    same = agree(pm.pvalue, mw["p"])
    return [
        f"### Lead test: |delta_z {var}| (standardised shift)",
        "",
        f"- **Permutation test (one-sided, circuit greater): the lead result** (summary.json `circuit_test`). "
        f"Statistic: Mann-Whitney U of circuit vs other heads' |delta_z| = {fmt(pm.statistic)} (AUC {fmt(mw['auc'])}, "
        f"95% bootstrap CI [{fmt(mw['auc_ci'][0])}, {fmt(mw['auc_ci'][1])}]); null: {pm.n_resamples} permutations "
        f"({PERMUTATION[c.design]}) with every head's delta_z recomputed, so it keeps the heads' correlation "
        f"across prompts: p = {fmt(pm.pvalue)} (smallest possible {fmt(1 / (pm.n_resamples + 1))}). Exact null: "
        + ("the labels of the two prompts of each pair are exchangeable (H0: no head's distribution differs "
           "between the conditions within a pair)." if c.paired else
           "condition labels are exchangeable across prompts (H0: no head's distribution differs between the "
           "conditions)."),
        f"- **Mann-Whitney U on |delta_z| (one-sided)**, heads as the units, "
        f"`scipy.stats.mannwhitneyu(circuit, other, alternative='greater')`: p = {fmt(mw['p'])} (exact-distribution "
        f"p = {fmt(mw['p_exact'])}; smallest attainable {fmt(mw['min_attainable_p'])}). Its null treats heads as "
        "independent draws of the same |t| distribution, which holds under no shift whatever each head's noise.",
        "- **Agreement**: the lead permutation test and the rank test on |delta_z| "
        + ("agree" if same else "disagree") + f" at 5% (p = {fmt(pm.pvalue)} vs {fmt(mw['p'])}). "
        "Any gap comes from heads that move together across prompts (their delta_z are correlated, so they enter "
        "the rank test as fewer independent units than it counts; the permutation null widens accordingly) and "
        "from heads that really shift outside the circuit (they enter both tests alike). On raw |delta| the two "
        f"gave p = {fmt(raw_mw)} (rank test) and {fmt(raw_pm)} (permutation): there the rank test reads noise "
        "as shift.",
        f"- **Layer-stratified test on |delta_z| (one-sided)**: stratified AUC = {fmt(st.auc)}, p = {fmt(st.pvalue)} "
        f"({st.n_resamples} within-layer relabellings; smallest attainable {fmt(st.min_pvalue)}).",
        "",
    ]


def min_effect_lines(an: Analysis) -> list[str]:
    """Per-head tests of |delta| > x, BH over heads: what "flagged" means (summary.json `min_effect_tests`)."""
    from analysis.markdown import fmt, heads_text

    lines = ["### Which heads shift by at least the minimum effect?", "",
             f"Test: {MIN_EFFECT_FORM}. The minimum effect x (summary.json `min_effect`, `jaxdiag report "
             "--min-effect`) is in each variable's own units: with many prompts every non-zero shift is "
             "significant, so \"flagged\" means shifted by at least x, significantly (BH q <= "
             f"{fmt(FLAG_LEVEL)}). Counts at x = 0 beside it.", ""]
    for var in TESTED:
        t = an.circuit_tests[var]
        at_x, at_0 = t.flagged(FLAG_LEVEL), t.flagged(FLAG_LEVEL, at_zero=True)
        lines.append(f"- **{var}**, x = {fmt(t.min_effect.x)}: {len(at_x)} head(s) flagged "
                     f"({heads_text(at_x) or 'none'}); at x = 0, {len(at_0)} ({heads_text(at_0) or 'none'}); "
                     f"at q <= 0.01: {len(t.flagged(0.01))} at x, {len(t.flagged(0.01, at_zero=True))} at 0.")
    return lines + [""]


def figures(an: Analysis) -> tuple[str, ...]:
    return () if an.comparison.circuit.absent else ("fig4_delta_distributions",)


def draw(name: str, an: Analysis):
    """Fig. 4: |delta| of circuit vs non-circuit heads, with the test results in the titles."""
    from analysis.figures import plt

    fig, axes = plt.subplots(1, len(TESTED), figsize=(5.2 * len(TESTED), 4))
    rng = np.random.default_rng(an.comparison.seed)
    mask = an.comparison.mask.values
    for ax, var in zip(np.atleast_1d(axes), TESTED):
        absd = np.abs(an.delta(var).values)
        groups = [absd[mask], absd[~mask]]
        ax.boxplot([g[np.isfinite(g)] for g in groups], showfliers=False)
        for i, g in enumerate(groups):
            ax.scatter(i + 1 + rng.uniform(-0.15, 0.15, g.size), g, s=10, alpha=0.6,
                       c=OKABE_ITO["orange"] if i == 0 else OKABE_ITO["grey"], zorder=3)
        ax.set_xticks([1, 2], [f"circuit ({groups[0].size})", f"other ({groups[1].size})"])
        ax.set_ylabel(f"|delta {var}|")
        mw, pm = an.circuit_tests[var].mann_whitney, an.circuit_tests[var].permutation
        lead = an.circuit_tests[var].permutation_z
        ax.set_title(f"raw |delta| (posts'): MW U={mw.statistic:.0f}, p={mw.pvalue:.2g} (one-sided)\n"
                     f"AUC={mw.auc:.2f}, permutation p={pm.pvalue:.2g}; lead |delta_z| permutation "
                     f"p={lead.pvalue:.2g}", fontsize=8)
    return fig
