"""The circuit heads one by one (role, delta, ranks, per-head p and q, delta_z, d, minimum-effect q, ablation
effect) and, when the circuit file gives per-head ablation effects, their Spearman correlation with |delta
kl_norm|. The result is that correlation (None without ablation effects)."""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis import circuit_tests as ct
from analysis.findings import TESTED, Analysis
from analysis.labels import head_label
from analysis.results import CorrelationResult

NAME = "circuit_heads"


def compute(ctx) -> CorrelationResult | None:
    ablation = ctx.comparison.circuit.ablation
    if ablation is None or np.isfinite(ablation).sum() < 3:  # else no correlation to report
        return None
    return ct.ablation_spearman(np.abs(ctx.results["shifts"]["kl_norm"].statistic.values), ablation)


def summary(an: Analysis) -> dict[str, Any]:
    out: dict[str, Any] = {"circuit_heads": circuit_head_rows(an)}
    if an.ablation is not None:
        out["ablation_spearman"] = {"rho": an.ablation.statistic, "p": an.ablation.pvalue, "n_heads": an.ablation.n,
                                    "x": "|delta kl_norm|", "alternative": an.ablation.alternative}
    return out


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


def markdown(an: Analysis) -> list[str]:
    from analysis.markdown import fmt

    lines = ["### Circuit heads", "",
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
    return lines
