"""Head taxonomy: every attention score's per-head mean per condition with a BCa interval, the sink rate per
condition and each head's roles (previous-token, induction, duplicate-token, self, sink), streamed one
(condition, score) at a time (analysis.taxonomy.stream_taxonomy); runs on stores with schema 2's taxonomy
variables."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from analysis.findings import Analysis
from analysis.labels import head_label
from analysis.sections import SKIP
from analysis.streaming import held_bytes
from analysis.taxonomy import NEEDS_REPEATS, ROLE_SCORES, HeadTaxonomy, has_taxonomy, stream_taxonomy

NAME = "taxonomy"
SUMMARY_AFTER = MARKDOWN_AFTER = "cheap"  # computed before the causal sections, reported after them


def compute(ctx) -> HeadTaxonomy:
    """Every condition of the store, not just a and b: a head's role is a property of the model."""
    if not has_taxonomy(ctx.ds):
        return SKIP
    c = ctx.comparison
    taxonomy, sizes, blocks = stream_taxonomy(
        ctx.ds, n_boot=c.n_boot, seed=c.seed, memory=ctx.memory - held_bytes(ctx.streamed, ctx.results),
        in_flight=ctx.in_flight, thresholds=ctx.thresholds, g_max=ctx.g_max)
    ctx.scale[NAME] = {
        "streamed": True, "unit_prompts": sizes,
        "resampling": ("prompts resampled one by one (units of one prompt)" if max(sizes.values()) == 1 else
                       "bootstrap over units of consecutive prompts (unit_prompts per condition)"),
        "exact": "means, defined counts, source conditions and labels (float64 rounding with units of several "
                 "prompts)"}
    ctx.scale["execution"]["taxonomy_blocks"] = int(blocks)
    return taxonomy


def summary(an: Analysis) -> dict[str, Any]:
    return {"taxonomy": taxonomy_entry(an.taxonomy)}


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


def markdown(an: Analysis) -> list[str]:
    return taxonomy_lines(an.taxonomy, an.comparison.scale)


def taxonomy_lines(t: HeadTaxonomy, scale: Mapping[str, Any] | None = None) -> list[str]:
    """The "Head taxonomy" section: the sink rate per condition, the roles and their rule, and every head's
    mean scores per condition with intervals."""
    from analysis.markdown import fmt, heads_text, section, streamed_note

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


def figures(an: Analysis) -> tuple[str, ...]:
    return ("fig11_head_taxonomy",)


def draw(name: str, an: Analysis):
    return head_taxonomy(an)


def head_taxonomy(an: Analysis):
    """Fig. 11: per condition (rows) and score (columns), each head's mean score as a layer x head map (grey:
    undefined, e.g. induction_attn without repeats); outlined: heads with the role that score decides."""
    from matplotlib.patches import Rectangle

    from analysis.figures import plt

    t = an.taxonomy
    scores = list(t.means)
    names = [str(c) for c in t.sink_rate.statistic["condition"].values]
    role_of_score = {var: role for role, var in ROLE_SCORES.items() if role in t.roles}
    n_layers, n_heads = t.labels.sizes["layer"], t.labels.sizes["head"]
    cell = 0.28 if n_heads > 8 else 0.4
    fig, axes = plt.subplots(len(names), len(scores), squeeze=False,
                             figsize=(len(scores) * (cell * n_heads + 1.2), len(names) * (cell * n_layers + 1.0) + 0.6))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    for col, var in enumerate(scores):
        values = t.means[var].statistic
        # attention shares on one 0..1 scale; log_z has its own
        limits = (0.0, 1.0) if var != "log_z" else (None, None)
        role = role_of_score.get(var)
        for row, c in enumerate(names):
            ax = axes[row, col]
            im = ax.imshow(np.ma.masked_invalid(values.sel(condition=c).values), cmap=cmap, vmin=limits[0],
                           vmax=limits[1], aspect="equal", interpolation="nearest")
            if role is not None:
                for layer, head in t.heads_with(role):
                    ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="red", lw=1.6))
            ax.set_xticks(range(n_heads))
            ax.set_yticks(range(n_layers))
            ax.tick_params(labelsize=5, length=1.5, pad=1)
            title = var if row else (f"{var}\n{role} >= {t.thresholds[role]:g} on {t.sources[role]}" if role else var)
            ax.set_title(title, fontsize=7)
            if col == 0:
                ax.set_ylabel(f"{c}\nlayer", fontsize=7)
            if row == len(names) - 1:
                ax.set_xlabel("head", fontsize=7)
            if var == "log_z" or var == [v for v in scores if v != "log_z"][-1]:  # one bar per scale
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
    rates = ", ".join(f"{c} {float(t.sink_rate.statistic.sel(condition=c)):.2f}" for c in names)
    fig.suptitle(f"Head taxonomy: mean scores per condition (red outline: the column's role); "
                 f"sink rate (bos_attn > {t.sink_rate.epsilon:g}): {rates}", fontsize=8)
    return fig
