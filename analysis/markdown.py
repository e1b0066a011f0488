"""report.md: every test in words, with its sidedness and its numbers: a pure function of the report
object (summary.json's derived rows come from the same helpers, so the two always agree)."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from analysis.findings import FLAG_LEVEL, TESTED, Analysis, CausalEffects, CheapVsExact, figure_names
from analysis.labels import head_label, pair_label
from analysis.summary import (BOOTSTRAP, MIN_EFFECT_FORM, PERMUTATION, STANDARDISATION, agree, circuit_head_rows,
                              magnitude_label, mann_whitney_entry)
from analysis.taxonomy import NEEDS_REPEATS, ROLE_SCORES, HeadTaxonomy

def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, (float, np.floating)) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if x.is_integer() and 1 <= abs(x) < 1e12:  # U statistics, counts
        return str(int(x))
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}"


def table_cell(text: str) -> str:
    """text safe inside a Markdown table row (a bare | would end the cell)."""
    return text.replace("|", r"\|")


def heads_text(heads) -> str:
    return " ".join(head_label(*h) for h in heads)


def scale_lines(c) -> list[str]:
    """What a streamed report (analysis.pipeline.run_analysis_streamed) resampled over and subsampled (summary.json `scale`)."""
    if c.scale is None:
        return []
    sub = c.scale["subsample"]
    shown = ", ".join(f"{sub['prompts'][k]:,} of {sub['of'][k]:,} `{k}`" for k in sub["prompts"])
    return [f"Streamed over the store's chunks: point estimates exact; {c.scale['resampling']}; "
            f"{c.scale['c_diff_resampling']}; BCa acceleration: {c.scale['bca_acceleration']}. "
            f"Prompt-count curve and figure scatter clouds: "
            + ("all prompts." if sub["all_prompts"] else f"a seeded random subsample ({shown} prompts).")]


def streamed_note(scale: Mapping[str, Any] | None, key: str, exact: str) -> str:
    """How a streamed report (summary.json `scale.<key>`) computed a section: '' for in-memory reports."""
    if not scale or key not in scale:
        return ""
    units = scale[key]["unit_prompts"]
    how = ("prompts resampled one by one" if max(units.values()) == 1 else
           "resampled over units of " + ", ".join(f"{n} `{k}`" for k, n in units.items()) + " consecutive prompts")
    return f" Streamed from the store's chunks ({exact} exact; intervals {how}; summary.json `scale.{key}`)."


def markdown(an: Analysis) -> str:
    c = an.comparison
    a, b = c.a, c.b
    n = c.n_prompts
    n_heads_total = c.mask.size
    lines = [
        f"# jaxdiag report: {a} vs {b}",
        "",
        f"Store `{c.store['path']}` (model `{c.store.get('model', '?')}`), "
        f"{c.shape[0]} layers x {c.shape[1]} heads; {n[a]} `{a}` prompts, {n[b]} `{b}` prompts "
        + (f"(**paired design**: {n[a]} matched pairs, from the store's `pair` coordinate)" if c.paired else
           f"(**independent design**: {c.design_reason or 'independent samples'})")
        + ". Diagnostics are read at each prompt's last token.",
        f"Circuit `{c.circuit.name}`: {len(c.circuit.heads)} of {n_heads_total} heads "
        f"({'; '.join(f'{r}: ' + heads_text(hs) for r, hs in c.circuit.roles.items())}).",
        f"Bootstrap: {c.n_boot} resamples ({BOOTSTRAP[c.design]}); permutations: {c.n_perm} "
        f"({PERMUTATION[c.design]}); seed {c.seed}.",
        *scale_lines(c),
        "",
        "## Head shifts",
        "",
        f"delta = mean over `{a}` prompts - mean over `{b}` prompts, per head, with 95% BCa bootstrap "
        "intervals (summary.json `delta`, `delta_ci`, arrays indexed [layer][head]). A raw delta mixes how far a "
        "head moves with how noisy it is, so every shift is also given standardised: "
        f"{STANDARDISATION[c.design]} (summary.json `delta_z`, `effect_size`, with `delta_z_ci` = the delta "
        "interval in SE units and `effect_size_ci`, a percentile interval over the same bootstrap). delta_z grows "
        "with the prompt count, d does not. Min-effect q: the per-head test of |delta kl_norm| > "
        f"{fmt(c.min_effect['kl_norm'])} (below). Largest |delta kl_norm|:",
        "",
        "| head | role | delta kl_norm | 95% CI | delta_z | d [95% CI] | delta chi | 95% CI | per-head p | BH q "
        "| min-effect q |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    dk, dc = an.shifts["kl_norm"], an.shifts["chi"]
    tk = an.circuit_tests["kl_norm"]
    zk = an.standardised["kl_norm"]
    flat = dk.statistic.stack(unit=("layer", "head"))  # layer-major, labelled by (layer, head)
    for k in np.argsort(-np.nan_to_num(np.abs(flat.values)))[:10]:
        at = {"layer": int(flat["layer"].values[k]), "head": int(flat["head"].values[k])}

        def value(x) -> float:
            return float(x.sel(at))

        lines.append(
            f"| {head_label(**at)} | {c.circuit.role_of(**at) or '-'} | {value(dk.statistic):+.4f} | "
            f"[{value(dk.confidence_interval.low):+.4f}, {value(dk.confidence_interval.high):+.4f}] | "
            f"{fmt(value(zk.statistic))} | {fmt(value(zk.effect_size))} [{fmt(value(zk.effect_size_interval.low))}, "
            f"{fmt(value(zk.effect_size_interval.high))}] | "
            f"{value(dc.statistic):+.4f} | [{value(dc.confidence_interval.low):+.4f}, "
            f"{value(dc.confidence_interval.high):+.4f}] | {fmt(value(tk.per_head.pvalue))} | {fmt(value(tk.q_bh))} | "
            f"{fmt(value(tk.min_effect.q_bh))} |"
        )
    lines += ["", "## Is the circuit more shifted than the other heads?", "",
              "The lead result ranks heads by |delta_z| = |delta / SE|, each head's shift in units of its own noise: "
              "with no shift every head's delta_z has (nearly) the same t distribution however noisy the head is, "
              "so a noisy circuit is not mistaken for a shifted one. The raw-|delta| tests below it are the posts' "
              "test, kept for comparison: a rank test on raw |delta| also ranks the noisiest heads first when "
              "nothing shifts.", ""]
    for var in TESTED:
        lines += lead_lines(an, var)
    for var in TESTED:
        t = an.circuit_tests[var]
        mw, pm, st = mann_whitney_entry(t), t.permutation, t.stratified
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
            f"{fmt(st.statistic)}, stratified AUC = {fmt(st.auc)}, p = {fmt(st.pvalue)} (circuit labels shuffled "
            f"within layers, {st.n_resamples} times; layers used: {', '.join(map(str, st.layers))}; smallest "
            f"attainable p {fmt(st.min_pvalue)}).",
            f"- **Per-head permutation tests (two-sided, |delta|)** with Benjamini-Hochberg FDR over all "
            f"{n_heads_total} heads: {len(bh05)} head(s) at q <= 0.05 ({heads_text(bh05) or 'none'}), "
            f"{len(bh01)} at q <= 0.01. "
            f"Smallest attainable per-head p = 1/({c.n_perm}+1) = {fmt(min_head_p)}"
            + (f"; BH at 1% over {n_heads_total} heads needs p <= {fmt(0.01 / n_heads_total)} for the top head, so "
               f"use --n-perm >= {int(np.ceil(n_heads_total / 0.01))} to make that reachable."
               if min_head_p > 0.01 / n_heads_total else "."),
            "",
        ]
    lines += min_effect_lines(an)
    if c.paired:
        lines += paired_lines(an)
    lines += ["### Circuit heads", "",
              "Rank = position by |delta| among all heads (1 = largest); p, q: per-head permutation p and BH q; "
              "z rank: position by |delta_z|; min-effect q: BH q of |delta| > x.", "",
              "| head | role | delta kl_norm | rank | p | q | delta chi | rank | ablation effect | delta_z kl_norm "
              "| z rank | min-effect q |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in circuit_head_rows(an):
        lines.append(
            f"| {head_label(e['layer'], e['head'])} | {e['role']} | {fmt(e['delta_kl_norm'])} | "
            f"{fmt(e['rank_abs_kl_norm'])} | {fmt(e['p_kl_norm'])} | {fmt(e['q_kl_norm'])} | {fmt(e['delta_chi'])} | "
            f"{fmt(e['rank_abs_chi'])} | {fmt(e['ablation'])} | {fmt(e['delta_z_kl_norm'])} | "
            f"{fmt(e['rank_abs_z_kl_norm'])} | {fmt(e['q_min_effect_kl_norm'])} |"
        )
    if an.ablation is not None:
        sp = an.ablation
        lines += ["", f"**Spearman correlation (two-sided)** between |delta kl_norm| and the per-head ablation effect "
                  f"over {sp.n} heads: rho = {fmt(sp.statistic)}, p = {fmt(sp.pvalue)}. Caveat: ablation "
                  "measures causal necessity for the task, the diagnostics measure how attention changes between "
                  "conditions; structural heads (e.g. previous-token) can be essential yet unshifted."]
    names = {
        "kl_chi_head_means": f"corr(KL, chi) across heads of their `{a}` means",
        "kl_chi_points": f"corr(KL, chi) over all prompt-head points of `{a}`",
        "dkl_dchi": "corr(delta KL, delta chi) across heads",
        "layer_kl_noncircuit": f"corr(layer, mean KL on `{a}`) over non-circuit heads (layer-depth confound)",
        "layer_chi_noncircuit": f"corr(layer, mean chi on `{a}`) over non-circuit heads",
    }
    lines += ["", "## Correlations", "", "Pearson r, two-sided p, 95% Fisher-z CI.", "",
              "| quantity | r | 95% CI | p | n |", "|---|---|---|---|---|"]
    for key, label in names.items():
        r = an.correlations[key]
        lines.append(f"| {label} | {fmt(r.statistic)} | [{fmt(r.confidence_interval.low)}, "
                     f"{fmt(r.confidence_interval.high)}] | {fmt(r.pvalue)} | {r.n} |")
    lines += cross_head_lines(an)
    if an.curve:
        t = an.curve
        lines += ["", "## Significance vs prompt count", "",
                  "Medians over random subsamples of n prompts per condition (without replacement"
                  + ("; whole pairs" if c.paired else "") + "). Lead p: the lead test (U of |delta_z| against "
                  f"label permutations), with only {min(c.n_perm, 99)} permutations on each of the first 5 subsamples "
                  f"per n to stay cheap (smallest possible p {fmt(1 / (min(c.n_perm, 99) + 1))}): the prompt count "
                  "at which it falls below your level is the answer to \"how many prompts do I need\" for the test "
                  "the report leads with. MW p: the posts' one-sided rank test on raw |delta|; CI width = mean over "
                  "heads of the 95% percentile bootstrap interval.", "",
                  "| n | lead p kl_norm | AUC(delta_z) kl_norm | MW p kl_norm | AUC kl_norm | CI width kl_norm "
                  "| lead p chi | AUC(delta_z) chi | MW p chi | AUC chi | CI width chi |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for i, n_i in enumerate(t["n"]):
            lines.append(f"| {n_i} | {fmt(t['perm_p_kl_norm'][i])} | {fmt(t['auc_z_kl_norm'][i])} | "
                         f"{fmt(t['mw_p_kl_norm'][i])} | {fmt(t['auc_kl_norm'][i])} | "
                         f"{fmt(t['ci_width_kl_norm'][i])} | {fmt(t['perm_p_chi'][i])} | {fmt(t['auc_z_chi'][i])} | "
                         f"{fmt(t['mw_p_chi'][i])} | {fmt(t['auc_chi'][i])} | {fmt(t['ci_width_chi'][i])} |")
    if an.causal:
        lines += causal_lines(an)
    if an.cheap:
        lines += cheap_lines(an)
    if an.taxonomy is not None:
        lines += taxonomy_lines(an.taxonomy, an.comparison.scale)
    lines += ["", "## Figures", ""] + [f"![{f}.png]({f}.png)" for f in figure_names(an)] + [""]
    return "\n".join(lines)


def lead_lines(an: Analysis, var: str) -> list[str]:
    """The lead circuit test of one variable (summary.json `circuit_test`, `standardised_tests`)."""
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
        f"- **Agreement**: the lead permutation test and the rank test on |delta_z| "
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
    c = an.comparison
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


def paired_lines(an: Analysis) -> list[str]:
    """What pairing buys on this store: paired vs independent 95% CI widths of the same shifts."""
    lines = ["### Paired design", "",
             "The two conditions are matched pairs, so intervals resample pairs and permutations flip signs "
             "within pairs. The same shifts analysed as independent samples (prompts resampled within each "
             "condition, same bootstrap settings) give wider intervals when the pair members are positively "
             "correlated; summary.json `paired_vs_independent`:", ""]
    for var in an.independent_shifts:
        lines.append(f"- **{var}**: median over heads of paired / independent 95% CI width = "
                     f"{fmt(an.ci_width_ratio(var))}.")
    return lines + [""]


def cross_head_lines(an: Analysis) -> list[str]:
    a, b = an.comparison.a, an.comparison.b
    x = an.cross_head
    c_diff, fw = x.c_diff.values, x.family_wise_p.values
    i, j = np.triu_indices(c_diff.shape[0], 1)
    low, high = (np.nanmin(c_diff[i, j]), np.nanmax(c_diff[i, j])) if i.size else (None, None)
    n_significant = int(np.sum(fw[i, j] <= 0.05))
    nm = x.max_null

    def pair(p: int, q: int) -> str:
        return pair_label(x.head(p), x.head(q))

    return [
        "", "## Cross-head correlation of KL",
        "",
        f"C_{a}, C_{b}: Pearson correlation over prompts between every two heads' kl_norm; C_diff = C_{a} - C_{b}. "
        f"C_diff off-diagonal range [{fmt(low)}, {fmt(high)}].",
        f"- **The posts' band**: sigma = SD of C_diff over ordered off-diagonal pairs involving at least one "
        f"non-circuit head = {fmt(x.sigma)}; {len(x.flagged)} pair(s) with |C_diff| > 5 sigma"
        + (": " + "; ".join(f"{pair(p, q)} C_diff {fmt(c_diff[p, q])} ({fmt(c_diff[p, q] / x.sigma)} sigma)"
                            for p, q in x.flagged) if x.flagged else "") + ". The band is a "
        "heuristic without a null model.",
        f"- **Max-statistic permutation null (one-sided on max |C_diff|, family-wise over all pairs)**: "
        f"observed max |C_diff| = {fmt(nm.statistic)}, null 95% quantile {fmt(nm.quantile_95)}, "
        f"p = {fmt(nm.pvalue)} ({nm.n_resamples} label shuffles). Family-wise p of the flagged pairs: "
        + ("; ".join(f"{pair(p, q)} {fmt(fw[p, q])}" for p, q in x.flagged) or "none flagged")
        + f". Pairs significant family-wise at 5%: {n_significant}.",
        "- Bootstrap 95% percentile CIs (prompts resampled within condition) of chosen entries: "
        + "; ".join(f"{pair(*p.pair)} {fmt(c_diff[p.pair])} [{fmt(p.confidence_interval.low)}, "
                    f"{fmt(p.confidence_interval.high)}]" for p in x.pair_intervals) + ".",
        "- Heads in dendrogram order (average linkage on 1 - C_diff) are in summary.json `c_diff.dendrogram_order`; "
        "`fig8_c_diff_clustered` draws C_diff in that order under its tree.",
    ]


def causal_lines(an: Analysis) -> list[str]:
    """The "Causal effects" section: per effect kind, the mean effects, the causal circuit and how well the
    diagnostics' shifts find it."""
    return section("Causal effects",
                   "An effect is the task metric with one head's output intervened on (zero: set to 0; mean: replaced "
                   "by its mean on the reference condition; patch: replaced by its pair partner's; atp_*: attribution-"
                   "patching estimates of these) minus the clean "
                   "metric, per prompt; negative = the task relies on the head. Means over the prompts with a task "
                   "target, with 95% BCa bootstrap intervals (prompts resampled with replacement); summary.json "
                   "`causal`, arrays indexed [layer][head]."
                   + streamed_note(an.comparison.scale, "causal", "mean effects, t-tests, the causal circuit"),
                   [causal_kind_lines(an, kind, e) for kind, e in an.causal.items()])


def section(title: str, intro: str, parts: list[list[str]]) -> list[str]:
    """A report section: its heading, one paragraph, then each part after a blank line."""
    lines = ["", f"## {title}", "", intro]
    for part in parts:
        lines += [""] + part
    return lines


def causal_kind_lines(an: Analysis, kind: str, e: CausalEffects) -> list[str]:
    c, m = an.comparison, e.mean
    lines = [
        f"### effect_{kind}",
        "",
        f"- Averaged over {m.n} prompt(s) of {', '.join(f'`{x}`' for x in e.conditions)}.",
        f"- **Per-head test (two-sided)**: one-sample t-test of the per-prompt effects against 0 "
        f"(`scipy.stats.ttest_1samp`), Benjamini-Hochberg q over all {c.mask.size} heads.",
        f"- **Causal circuit** (rule: {e.rule.text()}; cut |mean effect| >= {fmt(e.threshold)}): "
        f"{len(e.circuit)} head(s): {heads_text(e.circuit) or 'none'}. Use it as the report's circuit with "
        f"`--circuit effects:{kind}`.",
    ]
    for v in TESTED:
        r = e.spearman[v]
        lines.append(f"- **Spearman (two-sided p)** of |delta {v}| with |mean effect| across {r.n} heads: rho = "
                     f"{fmt(r.statistic)}, 95% CI [{fmt(r.confidence_interval.low)}, {fmt(r.confidence_interval.high)}] "
                     f"(percentile; prompts resampled within each condition, both quantities recomputed), "
                     f"p = {fmt(r.pvalue)}.")
    for v in TESTED:
        lines.append(f"- **Diagnostics vs causal circuit ({v})**: heads flagged by the per-head permutation test "
                     f"of |delta {v}| (two-sided, BH q <= {FLAG_LEVEL:g}): {len(e.flagged[v])} "
                     f"({heads_text(e.flagged[v]) or 'none'}); precision {fmt(e.precision[v])}, "
                     f"recall {fmt(e.recall[v])}.")
    lines += ["", "| head | role | mean effect | 95% CI | t-test p | BH q | causal circuit |",
              "|---|---|---|---|---|---|---|"]
    flat = m.statistic.stack(unit=("layer", "head"))
    in_circuit = set(e.circuit)
    for k in np.argsort(-np.nan_to_num(np.abs(flat.values)))[:10]:
        at = {"layer": int(flat["layer"].values[k]), "head": int(flat["head"].values[k])}
        lines.append(
            f"| {head_label(**at)} | {c.circuit.role_of(**at) or '-'} | {float(m.statistic.sel(at)):+.4f} | "
            f"[{float(m.confidence_interval.low.sel(at)):+.4f}, {float(m.confidence_interval.high.sel(at)):+.4f}] | "
            f"{fmt(float(m.pvalue.sel(at)))} | {fmt(float(e.q_bh.sel(at)))} | "
            f"{'yes' if (at['layer'], at['head']) in in_circuit else '-'} |")
    return lines


def cheap_lines(an: Analysis) -> list[str]:
    """The "Cheap methods against exact patching" section: per exact kind, how each cheap method ranks the
    heads against the exact |mean effect| and which causal-circuit heads its top k misses."""
    return section("Cheap methods against exact patching",
                   "Cheap methods: `atp_K`, attribution patching, a signed first-order estimate of exact effect K "
                   "from one forward and one backward pass (ranked by |mean|); `atpstar_K`, AtP* with GradDrop, an "
                   "unsigned estimate of |K| (ranked by its mean); and every diagnostic's |delta| between the two "
                   "conditions. Effect estimates are averaged over the same prompts as the exact effect. "
                   "**Spearman (two-sided p)** of each method's per-head value with |mean exact effect| across "
                   "heads, 95% percentile interval from the causal section's prompt bootstrap (prompts resampled "
                   "within each condition, the same draws, every quantity recomputed). **Top k**: the method's k "
                   "largest heads, k = the exact kind's causal-circuit size, scored against that circuit "
                   "(precision = share of the top k in the circuit, recall = share of the circuit in the top k; "
                   "equal unless the method has fewer than k finite heads); missed = circuit heads outside the top "
                   "k, with their exact mean effect. summary.json `cheap_vs_exact`, `cheap_vs_exact_verdict`.",
                   [cheap_kind_lines(an, kind, x) for kind, x in an.cheap.items()])


def cheap_kind_lines(an: Analysis, kind: str, x: CheapVsExact) -> list[str]:
    e = an.causal[kind]
    effect = e.mean.statistic
    lines = [f"### effect_{kind}", "",
             f"Causal circuit ({x.k} head(s)): {heads_text(e.circuit) or 'none'}."]
    lines += [f"- `{m}`: {a.description}" for m, a in x.methods.items() if a.family != "diagnostic" and a.description]
    lines += ["", "| method | ranks | Spearman rho | 95% CI | p | precision | recall | missed (exact mean effect) |",
              "|---|---|---|---|---|---|---|---|"]
    for m, a in x.methods.items():
        r = a.spearman
        missed = "; ".join(f"{head_label(*h)} ({float(effect.sel(layer=h[0], head=h[1])):+.4f})"
                           for h in a.missed) or ("none" if x.k else "n/a (empty circuit)")
        lines.append(f"| `{m}` | {table_cell(magnitude_label(a))} | {fmt(r.statistic)} | "
                     f"[{fmt(r.confidence_interval.low)}, {fmt(r.confidence_interval.high)}] | {fmt(r.pvalue)} | "
                     f"{fmt(a.precision)} | {fmt(a.recall)} | {missed} |")
    lines += ["", verdict_line(kind, x)]
    return lines


def verdict_line(kind: str, x: CheapVsExact) -> str:
    """Which method agrees best with the exact effects, and which the intervals cannot rank below it."""
    best = x.best
    if best is None:
        return (f"**Verdict (effect_{kind})**: no method's Spearman rho is defined (too few finite heads or "
                "constant values).")
    r = x.methods[best].spearman
    said = (f"**Verdict (effect_{kind})**: `{best}` agrees best with the exact effects (rho = {fmt(r.statistic)}, "
            f"95% CI [{fmt(r.confidence_interval.low)}, {fmt(r.confidence_interval.high)}])")
    if x.ties:
        return said + (f"; but the intervals of {', '.join(f'`{m}`' for m in x.ties)} overlap its interval, so these "
                       f"data do not rank {'it' if len(x.ties) == 1 else 'them'} below `{best}`.")
    return said + "; no other method's interval overlaps its interval."


def taxonomy_lines(t: HeadTaxonomy, scale: Mapping[str, Any] | None = None) -> list[str]:
    """The "Head taxonomy" section: the sink rate per condition, the roles and their rule, and every head's
    mean scores per condition with intervals."""
    names = [str(c) for c in t.sink_rate.statistic["condition"].values]
    where = ("each prompt's score is its mean over the query positions where it is defined"
             if t.query_positions == "all" else "each prompt's score is read at its last token")
    intro = ("Per head and condition, the mean over prompts of each attention score (" + where + "), with 95% "
             "BCa bootstrap intervals (prompts resampled with replacement); summary.json `taxonomy`. "
             "prev_attn = attention on the previous token, self_attn on the current one, dup_attn on earlier copies "
             "of the current token, induction_attn on tokens that followed an earlier copy of it (TransformerLens's "
             "induction pattern), bos_attn on the first token, log_z the softmax normaliser. "
             f"{' and '.join(NEEDS_REPEATS)} are NaN where the current token has no earlier copy, so a condition "
             "without repeats shows n/a for them, never 0."
             + streamed_note(scale, "taxonomy", "means, defined counts and labels"))
    sinks = [f"- **Sink rate** Sink_eps (Gu et al. 2024): share of heads whose mean bos_attn exceeds eps = "
             f"{fmt(t.sink_rate.epsilon)}, among heads with a defined mean; 95% percentile interval over the same "
             "prompt resamples. Uniform causal attention over T tokens gives H_T / T (0.211 at T = 16), below eps."]
    for c in names:
        at = {"condition": c}
        sinks.append(f"  - `{c}`: {fmt(float(t.sink_rate.statistic.sel(at)))} "
                     f"[{fmt(float(t.sink_rate.confidence_interval.low.sel(at)))}, "
                     f"{fmt(float(t.sink_rate.confidence_interval.high.sel(at)))}] of "
                     f"{int(t.sink_rate.n_heads.sel(at))} heads")
    roles = ["- **Roles**: a head has a role when its mean score on the role's source condition is >= the "
             "threshold (the condition where the score is defined most often: for induction and duplicate-token "
             "roles, the one with repeats). Rules: "
             + "; ".join(f"{r}: {ROLE_SCORES[r]} >= {fmt(t.thresholds[r])} on `{t.sources[r]}`" for r in t.roles)
             + "."]
    roles += [f"  - {r}: {heads_text(t.heads_with(r)) or 'none'}" for r in t.roles]
    scores = list(t.means)
    table = ["| head | labels | condition | " + " | ".join(scores) + " |",
             "|---|---|---|" + "---|" * len(scores)]
    labels = t.labels
    for layer in labels["layer"].values:
        for head in labels["head"].values:
            tag = ", ".join(t.roles_of(layer, head)) or "-"
            for k, c in enumerate(names):
                at = {"condition": c, "layer": layer, "head": head}
                cells = [_score_cell(t.means[v], at) for v in scores]
                first = k == 0
                table.append(f"| {head_label(layer, head) if first else ''} | {tag if first else ''} | `{c}` | "
                             + " | ".join(cells) + " |")
    return section("Head taxonomy", intro, [sinks, roles, table])


def _score_cell(mean, at: dict) -> str:
    def three(x) -> str:
        x = float(x)
        return f"{x:.3f}" if math.isfinite(x) else "n/a"

    value = float(mean.statistic.sel(at))
    if not math.isfinite(value):
        return "n/a"
    return (f"{three(value)} [{three(mean.confidence_interval.low.sel(at))}, "
            f"{three(mean.confidence_interval.high.sel(at))}]")
