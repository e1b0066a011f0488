"""Direct logit attribution (stores with dla and its components): per condition, each head's mean DLA with a BCa
interval, the per-layer attention-bias and MLP components and the embedding and final-norm-bias terms, and the
sum rule (every component together is the metric) checked prompt by prompt; a layer x head heatmap and the
components per layer. Streamed one pass per condition (analysis.beyond_heads)."""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.beyond_heads import DLA_COMPONENTS, DLA_HEADS, DLA_VARIABLES, CellMeans, cell_label, present, run
from analysis.findings import Analysis
from analysis.sections import SKIP
from analysis.seeds import SEED_DLA

NAME = "dla"
TOP = 10  # heads per condition in report.md
SHORT = {"dla_attn_bias": "attn_bias", "dla_mlp": "mlp", "dla_embed": "embed", "dla_norm_bias": "norm_bias"}


def compute(ctx) -> dict[str, Any]:
    """{"means": variable -> CellMeans, "sum_rule": condition -> {max_abs_residual, n_prompts} (every component
    and `metric` present), "missing": the components the store lacks}."""
    variables = present(ctx.ds, DLA_VARIABLES)
    if not variables:
        return SKIP
    complete = len(variables) == len(DLA_VARIABLES) and "metric" in ctx.ds.data_vars
    means, checks, _ = run(ctx, NAME, variables, SEED_DLA, residual=(list(DLA_VARIABLES), "metric") if complete else None)
    if not means:
        return SKIP
    return {"means": means, "sum_rule": checks if complete else None,
            "missing": [v for v in (*DLA_VARIABLES, "metric") if v not in ctx.ds.data_vars]}


def summary(an: Analysis) -> dict[str, Any]:
    r = an.sections[NAME]
    means = r["means"]
    out: dict[str, Any] = {}
    if DLA_HEADS in means:
        out["heads"] = means[DLA_HEADS].entry()
    out["components"] = {SHORT[v]: means[v].entry() for v in DLA_COMPONENTS if v in means}
    out["sum_rule"] = (r["sum_rule"] if r["sum_rule"] is not None else
                       {"checked": False, "missing": r["missing"]})
    out["sum_rule_meaning"] = ("max over prompts of |sum of dla over heads + dla_attn_bias + dla_mlp over layers + "
                               "dla_embed + dla_norm_bias - metric| over the prompts with a foil (float32 rounding: ~1e-6 x |metric|); "
                               "without a foil the terms sum to the target's logit, not to the log-probability metric")
    out["ci_method"] = "BCa, prompts resampled with replacement within each condition; cells of a condition share draws"
    return {"dla": out}


def markdown(an: Analysis) -> list[str]:
    from analysis.markdown import fmt, section, streamed_note

    r = an.sections[NAME]
    means = r["means"]
    parts = []
    if r["sum_rule"] is not None:
        parts.append(["- **Sum rule** (the heads, attention biases, MLPs, embedding and final-norm bias add up to the "
                      "metric; checked on the prompts with a foil), max |sum - metric|: "
                      + ("; ".join(f"`{c}` {fmt(x['max_abs_residual'])} ({x['n_prompts']} prompts)"
                                   for c, x in r["sum_rule"].items()) or "no prompt with a metric") + "."])
    else:
        parts.append([f"- **Sum rule** not checked: the store lacks {', '.join(r['missing'])}."])
    if DLA_HEADS in means:
        m = means[DLA_HEADS]
        lines = ["| condition | head | mean DLA | 95% CI | prompts | CI excludes 0 |", "|---|---|---|---|---|---|"]
        for c in m.conditions:
            for labels, mean, low, high, n in m.top(c, TOP):
                lines.append(f"| `{c}` | {cell_label(labels, m.dims)} | {mean:+.4f} | [{fmt(low)}, {fmt(high)}] | {n} "
                             f"| {'yes' if low > 0 or high < 0 else '-'} |")
        parts.append(lines)
    per_layer = [v for v in ("dla_attn_bias", "dla_mlp") if v in means]
    if per_layer:
        names = list(dict.fromkeys(c for v in per_layer for c in means[v].conditions))
        lines = ["| condition | layer | " + " | ".join(SHORT[v] for v in per_layer) + " |",
                 "|---|---|" + "---|" * len(per_layer)]
        for c in names:
            for i, layer in enumerate(means[per_layer[0]].coords["layer"]):
                cells = [_cell(means[v], c, i) for v in per_layer]
                lines.append(f"| `{c}` | {layer} | " + " | ".join(cells) + " |")
        parts.append(lines)
    scalars = [v for v in ("dla_embed", "dla_norm_bias") if v in means]
    if scalars:
        parts.append([f"- **{SHORT[v]}**: " + "; ".join(f"`{c}` {_cell(means[v], c, 0)}" for c in means[v].conditions)
                      for v in scalars])
    intro = ("Direct logit attribution: each head's output (and each layer's attention bias and MLP output, the "
             "embedding and the final norm's bias) projected through the final norm's scale and the unembedding "
             "onto the metric's direction, per prompt. Means over the condition's prompts with a metric, with 95% "
             f"BCa bootstrap intervals (prompts resampled with replacement); the table lists each condition's {TOP} "
             "heads of largest |mean|. summary.json `dla`."
             + streamed_note(an.comparison.scale, NAME, "means, counts and the sum-rule check"))
    return section("Direct logit attribution", intro, parts)


def _cell(m: CellMeans, c: str, i: int) -> str:
    from analysis.markdown import fmt

    if c not in m.mean or not np.isfinite(m.mean[c].ravel()[i]):
        return "n/a"
    return f"{m.mean[c].ravel()[i]:+.4f} [{fmt(m.low[c].ravel()[i])}, {fmt(m.high[c].ravel()[i])}]"


def figures(an: Analysis) -> tuple[str, ...]:
    means = an.sections[NAME]["means"]
    return ("fig15_dla",) if any(v in means for v in ("dla", "dla_attn_bias", "dla_mlp")) else ()


def draw(name: str, an: Analysis):
    return dla_figure(an.sections[NAME]["means"])


def dla_figure(means: dict[str, CellMeans]):
    """Fig. 15: per condition (columns), the heads' mean DLA as a layer x head map (dots: 95% CI excludes 0) and
    the per-layer attention-bias and MLP terms with their intervals."""
    from analysis.figures import legend_outside, plt

    heads = means.get(DLA_HEADS)
    per_layer = [v for v in ("dla_attn_bias", "dla_mlp") if v in means]
    names = list(dict.fromkeys(c for m in means.values() for c in m.conditions))
    rows = (heads is not None) + bool(per_layer)
    fig, axes = plt.subplots(rows, len(names), squeeze=False, figsize=(4.2 * len(names) + 0.6, 3.6 * rows + 0.4))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")
    for col, c in enumerate(names):
        row = 0
        if heads is not None:
            ax = axes[row, col]
            row += 1
            if c in heads.mean:
                with np.errstate(invalid="ignore"):
                    limit = max([float(np.nanmax(np.abs(x))) for x in heads.mean.values() if np.isfinite(x).any()]
                                or [1.0])
                im = ax.imshow(np.ma.masked_invalid(heads.mean[c]), cmap=cmap, vmin=-limit, vmax=limit,
                               aspect="auto", interpolation="nearest")
                ys, xs = np.nonzero(heads.excludes_zero(c))
                ax.scatter(xs, ys, s=8, c="k", lw=0)
                ax.set_xticks(range(len(heads.coords["head"])))
                ax.set_yticks(range(len(heads.coords["layer"])))
                ax.tick_params(labelsize=6, length=1.5, pad=1)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
            ax.set_title(f"mean DLA per head: {c} (dot: CI excludes 0)", fontsize=8)
            ax.set_xlabel("head", fontsize=7)
            ax.set_ylabel("layer", fontsize=7)
        if per_layer:
            ax = axes[row, col]
            for k, v in enumerate(per_layer):
                m = means[v]
                if c not in m.mean:
                    continue
                x = np.asarray(m.coords["layer"]) + (k - 0.5 * (len(per_layer) - 1)) * 0.15
                y = m.mean[c]
                with np.errstate(invalid="ignore"):
                    err = np.abs(np.stack([y - m.low[c], m.high[c] - y]))
                ax.errorbar(x, y, yerr=err, marker="o", ms=3, lw=1, capsize=2, label=SHORT[v])
            ax.axhline(0, c="k", lw=0.6)
            ax.set_xticks(means[per_layer[0]].coords["layer"])
            ax.set_xlabel("layer", fontsize=7)
            ax.set_ylabel("mean DLA (metric units)", fontsize=7)
            ax.set_title(f"per-layer components: {c} (95% CI)", fontsize=8)
            legend_outside(ax, fontsize=6)
            ax.tick_params(labelsize=6)
    return fig
