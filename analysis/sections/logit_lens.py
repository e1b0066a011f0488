"""The logit lens (stores with lens_metric, optionally lens_rank): per condition, the mean metric read after each
layer with a BCa interval (the last layer's is the metric itself), and the target's mean rank when the store has
it; a curve per condition. Streamed one pass per condition (analysis.beyond_heads)."""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.beyond_heads import LENS_VARIABLES, CellMeans, present, run
from analysis.findings import Analysis
from analysis.sections import SKIP
from analysis.seeds import SEED_LENS

NAME = "logit_lens"
SHORT = {"lens_metric": "metric", "lens_rank": "rank"}


def compute(ctx) -> dict[str, CellMeans]:
    if "lens_metric" not in ctx.ds.data_vars:
        return SKIP
    means, _, _ = run(ctx, NAME, present(ctx.ds, LENS_VARIABLES), SEED_LENS)
    return means or SKIP


def summary(an: Analysis) -> dict[str, Any]:
    r = an.sections[NAME]
    out = {SHORT[v]: m.entry() for v, m in r.items()}
    out["meaning"] = ("the task metric read from the residual stream after each layer through the final norm and the "
                      "unembedding (the last layer's is the metric)" + ("; rank: the target token's rank there"
                                                                        if "lens_rank" in r else ""))
    out["ci_method"] = "BCa, prompts resampled with replacement within each condition; layers of a condition share draws"
    return {"logit_lens": out}


def markdown(an: Analysis) -> list[str]:
    from analysis.markdown import fmt, section, streamed_note

    r = an.sections[NAME]
    names = list(dict.fromkeys(c for m in r.values() for c in m.conditions))
    lines = ["| layer | " + " | ".join(f"{SHORT[v]} `{c}`" for v in r for c in names) + " |",
             "|---|" + "---|" * (len(r) * len(names))]
    layers = r["lens_metric"].coords["layer"]
    for i, layer in enumerate(layers):
        cells = []
        for m in r.values():
            for c in names:
                if c not in m.mean or not np.isfinite(m.mean[c][i]):
                    cells.append("n/a")
                else:
                    cells.append(f"{fmt(m.mean[c][i])} [{fmt(m.low[c][i])}, {fmt(m.high[c][i])}]")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    intro = ("The logit lens: the task metric read after each layer (the residual stream through the final norm and "
             "the unembedding; the last layer's is the metric itself), mean over each condition's prompts with a "
             "metric, with 95% BCa bootstrap intervals (prompts resampled with replacement)"
             + ("; rank: the target token's mean rank there (0 = top)" if "lens_rank" in r else "")
             + ". summary.json `logit_lens`." + streamed_note(an.comparison.scale, NAME, "means and counts"))
    return section("Logit lens", intro, [lines])


def figures(an: Analysis) -> tuple[str, ...]:
    return ("fig16_logit_lens",)


def draw(name: str, an: Analysis):
    return lens_curves(an.sections[NAME])


def lens_curves(r: dict[str, CellMeans]):
    """Fig. 16: the mean lens metric per layer, one curve per condition with its 95% interval as a band (and the
    mean target rank beside it when the store has lens_rank)."""
    from analysis.figures import legend_outside, plt

    fig, axes = plt.subplots(1, len(r), squeeze=False, figsize=(5.2 * len(r), 3.8))
    for ax, (v, m) in zip(axes[0], r.items()):
        x = np.asarray(m.coords["layer"])
        for c in m.conditions:
            line, = ax.plot(x, m.mean[c], marker="o", ms=3, label=f"{c}")
            ax.fill_between(x, m.low[c], m.high[c], color=line.get_color(), alpha=0.2, lw=0)
        if v == "lens_metric":
            ax.axhline(0, c="k", lw=0.6)
        ax.set_xticks(x)
        ax.set_xlabel("layer")
        ax.set_ylabel("mean metric read after the layer" if v == "lens_metric" else "mean target rank")
        ax.set_title(f"logit lens: {SHORT[v]} (band: 95% CI)", fontsize=9)
        legend_outside(ax, fontsize=7)
    return fig
