"""The posts' correlations of KL with chi (across heads of condition a's means, over all prompt-head points) and
of their shifts, and the layer-depth confound: Pearson r, two-sided p and a 95% Fisher-z interval, exactly from
the units."""

from __future__ import annotations

from typing import Any

from analysis import correlation as corr
from analysis.findings import Analysis
from analysis.results import CorrelationResult

NAME = "correlations"


def compute(ctx) -> dict[str, CorrelationResult]:
    s, c, shifts = ctx.streamed, ctx.comparison, ctx.results["shifts"]
    kl_mean = s.a["kl_norm"].centre().reshape(c.shape)
    chi_mean = s.a["chi"].centre().reshape(c.shape)
    other = ~c.mask.values
    layer = c.mask["layer"].broadcast_like(c.mask).values
    return {
        "kl_chi_head_means": corr.pearson(kl_mean, chi_mean),
        "kl_chi_points": corr.pearson_from(*s.points_a.pearson_r()),
        "dkl_dchi": corr.pearson(shifts["kl_norm"].statistic, shifts["chi"].statistic),
        "layer_kl_noncircuit": corr.pearson(layer[other], kl_mean[other]),
        "layer_chi_noncircuit": corr.pearson(layer[other], chi_mean[other]),
    }


def summary(an: Analysis) -> dict[str, Any]:
    return {
        "correlations": {k: r.statistic for k, r in an.correlations.items()},
        "correlation_tests": {k: {"statistic": r.statistic, "pvalue": r.pvalue, "low": r.confidence_interval.low,
                                  "high": r.confidence_interval.high, "n": r.n} for k, r in an.correlations.items()},
    }


def markdown(an: Analysis) -> list[str]:
    from analysis.markdown import fmt

    a = an.comparison.a
    names = {
        "kl_chi_head_means": f"corr(KL, chi) across heads of their `{a}` means",
        "kl_chi_points": f"corr(KL, chi) over all prompt-head points of `{a}`",
        "dkl_dchi": "corr(delta KL, delta chi) across heads",
        "layer_kl_noncircuit": f"corr(layer, mean KL on `{a}`) over non-circuit heads (layer-depth confound)",
        "layer_chi_noncircuit": f"corr(layer, mean chi on `{a}`) over non-circuit heads",
    }
    lines = ["", "## Correlations", "", "Pearson r, two-sided p, 95% Fisher-z CI.", "",
             "| quantity | r | 95% CI | p | n |", "|---|---|---|---|---|"]
    for key, label in names.items():
        r = an.correlations[key]
        lines.append(f"| {label} | {fmt(r.statistic)} | [{fmt(r.confidence_interval.low)}, "
                     f"{fmt(r.confidence_interval.high)}] | {fmt(r.pvalue)} | {r.n} |")
    return lines
