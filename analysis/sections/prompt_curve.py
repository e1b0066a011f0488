"""Significance vs prompt count: the report's tests on random subsamples of n prompts per condition (10 up to all;
up to SAMPLE_MAX prompts of a streamed store, a seeded subsample gathered by the streaming pass)."""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.findings import CURVE_N_PERM, TESTED, Analysis
from analysis.prompt_curve import prompt_curve
from analysis.resampling import rng_for
from analysis.seeds import SEED_CURVE, SEED_CURVE_PERM
from analysis.palette import OKABE_ITO

NAME = "prompt_curve"
MARKDOWN_AFTER = "cross_head"


def compute(ctx) -> dict[str, list]:
    """{} when the curve is not asked for (summary.json then holds an empty `prompt_curve`)."""
    if not ctx.curve or ctx.comparison.circuit.absent:  # the curve is of the circuit test's p-value
        return {}
    c = ctx.comparison
    return prompt_curve({v: c.values[v][0].values for v in TESTED}, {v: c.values[v][1].values for v in TESTED},
                        c.mask.values, rng=rng_for(c.seed, SEED_CURVE), n_boot=min(c.n_boot, 200), paired=c.paired,
                        perm_rng=rng_for(c.seed, SEED_CURVE_PERM), n_perm=min(c.n_perm, CURVE_N_PERM))


def summary(an: Analysis) -> dict[str, Any]:
    return {"prompt_curve": an.curve}


def markdown(an: Analysis) -> list[str]:
    from analysis.markdown import fmt

    if not an.curve:
        return []
    c, t = an.comparison, an.curve
    lines = ["", "## Significance vs prompt count", "",
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
    return lines


def figures(an: Analysis) -> tuple[str, ...]:
    return ("fig7_prompt_count",) if an.curve else ()


def draw(name: str, an: Analysis):
    return prompt_count_curve(an)


def prompt_count_curve(an: Analysis):
    """Fig. 7: the lead test's permutation p and the posts' Mann-Whitney p, AUC and CI width against prompts
    per condition (subsampling)."""
    from analysis.figures import legend_outside, plt

    t = an.curve
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for var, c in zip(TESTED, (OKABE_ITO["purple"], OKABE_ITO["green"])):
        axes[0].plot(t["n"], t[f"mw_p_{var}"], marker="o", c=c, ls="--", label=f"{var}: posts' MW, raw |delta|")
        if any(p is not None for p in t[f"perm_p_{var}"]):
            axes[0].plot(t["n"], [np.nan if p is None else p for p in t[f"perm_p_{var}"]], marker="s", c=c,
                         label=f"{var}: lead, permutation on |delta_z|")
        axes[1].plot(t["n"], t[f"auc_{var}"], marker="o", c=c, ls="--", label=f"{var}: raw |delta|")
        if f"auc_z_{var}" in t:
            axes[1].plot(t["n"], t[f"auc_z_{var}"], marker="s", c=c, label=f"{var}: |delta_z|")
        axes[1].fill_between(t["n"], t[f"auc_{var}_q25"], t[f"auc_{var}_q75"], color=c, alpha=0.2)
        axes[2].plot(t["n"], t[f"ci_width_{var}"], marker="o", c=c, label=var)
    axes[0].set_yscale("log")
    axes[0].axhline(0.05, c="k", ls=":", lw=0.8)
    axes[0].set_ylabel("one-sided p (median over subsamples)")
    axes[1].axhline(0.5, c="k", ls=":", lw=0.8)
    axes[1].set_ylabel("ROC-AUC (median, IQR)")
    axes[2].set_ylabel("mean 95% CI width of delta")
    axes[0].set_title("significance: circuit vs other heads", fontsize=9)
    axes[1].set_title("separation of circuit from other heads", fontsize=9)
    axes[2].set_title("precision of each head's delta", fontsize=9)
    fig.suptitle("What more prompts buy: medians over random subsamples of n prompts per condition")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("prompts per condition")
        legend_outside(ax, fontsize=8)
    return fig
