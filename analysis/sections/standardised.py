"""Standardised shifts: delta_z = delta / SE (Welch, or the paired t) and the effect size d per head, with
intervals from the design's bootstrap (the same draws for every variable). Its text is the head-shift
section's (analysis.sections.shifts)."""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis import standardised as st
from analysis._util import quiet
from analysis.findings import Analysis
from analysis.labels import like
from analysis.resampling import rng_for
from analysis.results import ConfidenceInterval, StandardisedShiftResult
from analysis.seeds import SEED_STD
from analysis.shifts import percentile_interval

NAME = "standardised"


def compute(ctx) -> dict[str, StandardisedShiftResult]:
    s, c, shifts = ctx.streamed, ctx.comparison, ctx.results["shifts"]
    out = {}
    for v, h in ctx.heads.items():
        samples = s.samples(v, h.shape)
        point = st.standardised(samples)
        boot = st.bootstrap_standardised(samples, c.n_boot, rng_for(c.seed, SEED_STD))
        shifted = shifts[v]
        with quiet():
            z_ci = ConfidenceInterval(like(h, np.asarray(shifted.confidence_interval.low) / point["se"]),
                                      like(h, np.asarray(shifted.confidence_interval.high) / point["se"]))
            d_ci = percentile_interval(boot["d"], shifted.confidence_level)
        out[v] = StandardisedShiftResult(
            like(h, point["t"]), z_ci, like(h, point["se"]), like(h, point["df"]), like(h, point["d"]),
            ConfidenceInterval(like(h, d_ci.low), like(h, d_ci.high)), like(h, boot["t"], ("resample",)), c.design,
            shifted.confidence_level)
    return out


def summary(an: Analysis) -> dict[str, Any]:
    from analysis.summary import STANDARDISATION

    c = an.comparison
    return {
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
    }
