"""report.md: every test in words, with its sidedness and its numbers (read from the summary dict)."""

from __future__ import annotations

import numpy as np

from analysis.pipeline import TESTED, Analysis


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if x.is_integer() and 1 <= abs(x) < 1e12:  # U statistics, counts
        return str(int(x))
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}"


def head(l: int, h: int) -> str:
    return f"{l}.{h}"


def render(an: Analysis, s: dict, figures: list[str]) -> str:
    a, b = an.a, an.b
    n = s["n_prompts"]
    c = s["circuit"]
    n_heads_total = an.mask.size
    lines = [
        f"# jaxdiag report: {a} vs {b}",
        "",
        f"Store `{s['store']['path']}` (model `{s['store'].get('model', '?')}`), "
        f"{an.shape[0]} layers x {an.shape[1]} heads; {n[a]} `{a}` prompts, {n[b]} `{b}` prompts "
        "(independent samples). Diagnostics are read at each prompt's last token.",
        f"Circuit `{c['name']}`: {len(c['heads'])} of {n_heads_total} heads "
        f"({'; '.join(f'{r}: ' + ' '.join(head(*h) for h in hs) for r, hs in c['roles'].items())}).",
        f"Bootstrap: {an.n_boot} resamples of prompts within each condition; permutations: {an.n_perm} "
        f"shuffles of condition labels across the pooled prompts; seed {an.seed}.",
        "",
        "## Head shifts",
        "",
        f"delta = mean over `{a}` prompts - mean over `{b}` prompts, per head, with 95% BCa bootstrap "
        "intervals (summary.json `delta`, `delta_ci`, arrays indexed [layer][head]). Largest |delta kl_norm|:",
        "",
        "| head | role | delta kl_norm | 95% CI | delta chi | 95% CI | per-head p | BH q |",
        "|---|---|---|---|---|---|---|---|",
    ]
    dk, dc = an.delta("kl_norm"), an.delta("chi")
    ck, cc = an.shifts["kl_norm"].confidence_interval, an.shifts["chi"].confidence_interval
    order = np.argsort(-np.nan_to_num(np.abs(dk)).ravel())[:10]
    for k in order:
        l, h = divmod(int(k), an.shape[1])
        lines.append(
            f"| {head(l, h)} | {an.circuit.role_of(l, h) or '-'} | {dk[l, h]:+.4f} | [{ck.low[l, h]:+.4f}, "
            f"{ck.high[l, h]:+.4f}] | {dc[l, h]:+.4f} | [{cc.low[l, h]:+.4f}, {cc.high[l, h]:+.4f}] | "
            f"{fmt(an.per_head_p['kl_norm'][l, h])} | {fmt(an.per_head_q['kl_norm'][l, h])} |"
        )
    lines += ["", "## Is the circuit more shifted than the other heads?", ""]
    for var in TESTED:
        mw, pm, st = s["mannwhitney"][var], s["permutation"][var], s["layer_stratified"][var]
        ph = s["per_head"][var]
        lines += [
            f"### |delta {var}|",
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
            f"rank test ignores): p = {fmt(pm['p'])} ({pm['n_perm']} permutations; smallest possible "
            f"{fmt(1 / (pm['n_perm'] + 1))}).",
            f"- **Layer-stratified test (one-sided, circuit greater)**: circuit heads ranked only against "
            f"non-circuit heads of their own layer (controls the layer-depth confound); sum of within-layer U = "
            f"{fmt(st['U'])}, stratified AUC = {fmt(st['auc'])}, p = {fmt(st['p'])} (circuit labels shuffled within "
            f"layers, {st['n_perm']} times; layers used: {', '.join(map(str, st['layers']))}; smallest attainable "
            f"p {fmt(st['min_attainable_p'])}).",
            f"- **Per-head permutation tests (two-sided, |delta|)** with Benjamini-Hochberg FDR over all "
            f"{n_heads_total} heads: {len(ph['bh_0.05'])} head(s) at q <= 0.05 "
            f"({' '.join(head(*x) for x in ph['bh_0.05']) or 'none'}), {len(ph['bh_0.01'])} at q <= 0.01. "
            f"Smallest attainable per-head p = 1/({an.n_perm}+1) = {fmt(ph['min_attainable_p'])}"
            + (f"; BH at 1% over {n_heads_total} heads needs p <= {fmt(0.01 / n_heads_total)} for the top head, so "
               f"use --n-perm >= {int(np.ceil(n_heads_total / 0.01))} to make that reachable."
               if ph["min_attainable_p"] > 0.01 / n_heads_total else "."),
            "",
        ]
    lines += ["### Circuit heads", "",
              "Rank = position by |delta| among all heads (1 = largest); p, q: per-head permutation p and BH q.", "",
              "| head | role | delta kl_norm | rank | p | q | delta chi | rank | ablation effect |",
              "|---|---|---|---|---|---|---|---|---|"]
    for e in s["circuit_heads"]:
        lines.append(
            f"| {head(e['layer'], e['head'])} | {e['role']} | {fmt(e['delta_kl_norm'])} | {fmt(e['rank_abs_kl_norm'])} "
            f"| {fmt(e['p_kl_norm'])} | {fmt(e['q_kl_norm'])} | {fmt(e['delta_chi'])} | {fmt(e['rank_abs_chi'])} "
            f"| {fmt(e['ablation'])} |"
        )
    if "ablation_spearman" in s:
        sp = s["ablation_spearman"]
        lines += ["", f"**Spearman correlation (two-sided)** between |delta kl_norm| and the per-head ablation effect "
                  f"over {sp['n_heads']} heads: rho = {fmt(sp['rho'])}, p = {fmt(sp['p'])}. Caveat: ablation "
                  "measures causal necessity for the task, the diagnostics measure how attention changes between "
                  "conditions; structural heads (e.g. previous-token) can be essential yet unshifted."]
    ct = s["correlation_tests"]
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
        r = ct[key]
        lines.append(f"| {label} | {fmt(r['statistic'])} | [{fmt(r['low'])}, {fmt(r['high'])}] | {fmt(r['pvalue'])} "
                     f"| {r['n']} |")
    cd = s["c_diff"]
    nm = cd["null_max_abs_p"]
    lines += [
        "", "## Cross-head correlation of KL",
        "",
        f"C_{a}, C_{b}: Pearson correlation over prompts between every two heads' kl_norm; C_diff = C_{a} - C_{b}. "
        f"C_diff off-diagonal range [{fmt(cd['range'][0])}, {fmt(cd['range'][1])}].",
        f"- **The posts' band**: sigma = SD of C_diff over ordered off-diagonal pairs involving at least one "
        f"non-circuit head = {fmt(cd['sigma'])}; {len(cd['flagged_pairs'])} pair(s) with |C_diff| > 5 sigma"
        + (": " + "; ".join(f"{head(p[0], p[1])}-{head(p[2], p[3])} C_diff {fmt(p[4])} ({fmt(p[5])} sigma)"
                            for p in cd["flagged_pairs"]) if cd["flagged_pairs"] else "") + ". The band is a "
        "heuristic without a null model.",
        f"- **Max-statistic permutation null (one-sided on max |C_diff|, family-wise over all pairs)**: "
        f"observed max |C_diff| = {fmt(nm['observed_max'])}, null 95% quantile {fmt(nm['quantile_95'])}, "
        f"p = {fmt(nm['p'])} ({nm['n_perm']} label shuffles). Family-wise p of the flagged pairs: "
        + ("; ".join(f"{head(p[0], p[1])}-{head(p[2], p[3])} {fmt(p[4])}" for p in nm["flagged_pairs"]) or "none flagged")
        + f". Pairs significant family-wise at 5%: {len(nm['significant_pairs'])}.",
        "- Bootstrap 95% percentile CIs (prompts resampled within condition) of chosen entries: "
        + "; ".join(f"{head(p[0], p[1])}-{head(p[2], p[3])} {fmt(p[4])} [{fmt(p[5])}, {fmt(p[6])}]"
                    for p in cd["bootstrap_ci"]) + ".",
        "- Heads in dendrogram order (average linkage on 1 - C_diff) are in summary.json `c_diff.dendrogram_order`; "
        "`fig8_c_diff_clustered` draws C_diff in that order under its tree.",
    ]
    if s["prompt_curve"]:
        t = s["prompt_curve"]
        lines += ["", "## Significance vs prompt count", "",
                  "Medians over random subsamples of n prompts per condition (without replacement). Mann-Whitney "
                  "one-sided as above; CI width = mean over heads of the 95% percentile bootstrap interval.", "",
                  "| n | MW p kl_norm | AUC kl_norm | CI width kl_norm | MW p chi | AUC chi | CI width chi |",
                  "|---|---|---|---|---|---|---|"]
        for i, n_i in enumerate(t["n"]):
            lines.append(f"| {n_i} | {fmt(t['mw_p_kl_norm'][i])} | {fmt(t['auc_kl_norm'][i])} | "
                         f"{fmt(t['ci_width_kl_norm'][i])} | {fmt(t['mw_p_chi'][i])} | {fmt(t['auc_chi'][i])} | "
                         f"{fmt(t['ci_width_chi'][i])} |")
    lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures if f.endswith(".png")] + [""]
    return "\n".join(lines)
