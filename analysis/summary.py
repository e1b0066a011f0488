"""summary.json's content: a pure function of the report object (CONTRACT.md's keys plus details): the comparison's
header, every section's entries (analysis.sections, in their layout order), then the settings.

Arrays are indexed [layer][head]; heads are written as [layer, head] pairs. numpy types and NaN are
left for `analysis._util.to_jsonable`.
"""

from __future__ import annotations

from typing import Any

from analysis import sections
from analysis.findings import CURVE_N_PERM, Analysis

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
        **sections.summary_entries(an),
    }
    out["settings"] = {"n_boot": c.n_boot, "n_perm": c.n_perm, "seed": c.seed,
                       "bootstrap": BOOTSTRAP[c.design], "permutation": PERMUTATION[c.design],
                       "prompt_curve_n_perm": min(c.n_perm, CURVE_N_PERM), "prompt_curve_perm_repeats": 5}
    out["store"] = c.store
    if c.scale is not None:  # streamed reports (analysis.pipeline.run_analysis_streamed) say what was streamed
        out["scale"] = {k: v for k, v in c.scale.items() if k != "execution"}  # same for any memory or scheduler
    return out
