"""Activation patching by layer and position (stores with effect_patch_resid, effect_patch_attn_out,
effect_patch_mlp_out, effect_patch_head_pos): per variable and condition, the mean patched-minus-clean metric per
(layer, position) cell with a BCa interval and the prompts behind it, and, when the store has role_position, per
(layer, role) cell from each prompt's value at its role's position; heatmaps of both views. Streamed one pass per
condition (analysis.beyond_heads)."""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.beyond_heads import HEAD_POS, PATCH_VARIABLES, CellMeans, cell_label, present, run
from analysis.findings import Analysis
from analysis.sections import SKIP
from analysis.seeds import SEED_PATCH

NAME = "position_patching"
TOP = 5  # cells per variable and condition in report.md
SHORT = {"effect_patch_resid": "resid", "effect_patch_attn_out": "attn_out", "effect_patch_mlp_out": "mlp_out",
         HEAD_POS: "head_pos"}


def compute(ctx) -> dict[str, CellMeans]:
    """View name -> CellMeans: each variable's (layer[, head], position) cells, and its "<variable>@role" cells
    when the store has role_position."""
    variables = present(ctx.ds, PATCH_VARIABLES)
    if not variables:
        return SKIP
    means, _, _ = run(ctx, NAME, variables, SEED_PATCH, by_role=True)
    return means or SKIP


def summary(an: Analysis) -> dict[str, Any]:
    r = an.sections[NAME]
    out = {"variables": [v for v in PATCH_VARIABLES if v in r]}
    for v in out["variables"]:
        out[SHORT[v]] = {"position": r[v].entry(), **({"role": r[f"{v}@role"].entry()} if f"{v}@role" in r else {})}
    out["by_role"] = ("each prompt's value at its role's position (role_position); prompts without the role drop out "
                      "of that cell (`n`)")
    out["ci_method"] = "BCa, prompts resampled with replacement within each condition; cells of a condition share draws"
    out["meaning"] = "patched minus clean metric (negative: patching the cell in from the pair partner lowers the metric)"
    return {"position_patching": out}


def markdown(an: Analysis) -> list[str]:
    from analysis.markdown import fmt, section, streamed_note

    r = an.sections[NAME]
    parts = []
    for view, m in r.items():
        name = view.replace("@role", " by role")
        lines = [f"### {name}", "", "| condition | cell | mean | 95% CI | prompts | CI excludes 0 |",
                 "|---|---|---|---|---|---|"]
        for c in m.conditions:
            for labels, mean, low, high, n in m.top(c, TOP):
                excl = "yes" if (low > 0 or high < 0) else "-"
                lines.append(f"| `{c}` | {cell_label(labels, m.dims)} | {mean:+.4f} | [{fmt(low)}, {fmt(high)}] | "
                             f"{n} | {excl} |")
        parts.append(lines)
    intro = ("Activation patching by layer and position: per prompt, the task metric with one layer's residual "
             "stream (`resid`), attention output (`attn_out`), MLP output (`mlp_out`) or one head's output "
             "(`head_pos`) at one position patched in from the pair partner, minus the clean metric. Per cell, the "
             "mean over the condition's prompts that define it (positions past a prompt's end and unpaired prompts "
             "are undefined) with a 95% BCa bootstrap interval (prompts resampled with replacement) and the prompt "
             "count; the tables list each condition's "
             f"{TOP} cells of largest |mean|. "
             + ("By role: each prompt's value at its own role position (`role_position`); prompts without the role "
                "drop out of that cell. " if any(v.endswith("@role") for v in r) else "")
             + "Full arrays: summary.json `position_patching`."
             + streamed_note(an.comparison.scale, NAME, "cell means and counts"))
    return section("Activation patching by position", intro, parts)


def figures(an: Analysis) -> tuple[str, ...]:
    r = an.sections[NAME]
    names = []
    if any(v in r for v in PATCH_VARIABLES if v != HEAD_POS):
        names.append("fig12_patching_by_position")
        if any(f"{v}@role" in r for v in PATCH_VARIABLES if v != HEAD_POS):
            names.append("fig13_patching_by_role")
    if HEAD_POS in r:
        names.append("fig14_head_patching")
    return tuple(names)


def draw(name: str, an: Analysis):
    r = an.sections[NAME]
    if name == "fig14_head_patching":
        return head_patching(r[f"{HEAD_POS}@role"] if f"{HEAD_POS}@role" in r else r[HEAD_POS])
    role = name == "fig13_patching_by_role"
    views = [r[v + ("@role" if role else "")] for v in PATCH_VARIABLES if v != HEAD_POS and v + ("@role" if role else "") in r]
    return layer_maps(views, "role" if role else "position")


def layer_maps(views: list[CellMeans], across: str):
    """Figs. 12-13: one heatmap per variable (rows) and condition (columns), layer x position (or role), colour the
    mean (one symmetric scale per variable); a dot marks cells whose 95% interval excludes 0; grey: undefined."""
    from analysis.figures import plt

    names = list(dict.fromkeys(c for m in views for c in m.conditions))
    n_layers = max(len(m.coords["layer"]) for m in views)
    width = max(len(m.coords[across]) for m in views)
    fig, axes = plt.subplots(len(views), len(names), squeeze=False,
                             figsize=(len(names) * (0.32 * width + 1.8) + 0.5, len(views) * (0.3 * n_layers + 1.2) + 0.6))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")
    for row, m in enumerate(views):
        with np.errstate(invalid="ignore"):
            limit = max([float(np.nanmax(np.abs(x))) for x in m.mean.values() if np.isfinite(x).any()] or [1.0])
        for col, c in enumerate(names):
            ax = axes[row, col]
            if c not in m.mean:
                ax.axis("off")
                continue
            im = ax.imshow(np.ma.masked_invalid(m.mean[c]), cmap=cmap, vmin=-limit, vmax=limit, aspect="auto",
                           interpolation="nearest")
            ys, xs = np.nonzero(m.excludes_zero(c))
            ax.scatter(xs, ys, s=6, c="k", marker="o", lw=0)
            labels = m.coords[across]
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels([str(x) for x in labels], fontsize=6, rotation=90 if across == "role" else 0)
            ax.set_yticks(range(len(m.coords["layer"])))
            ax.tick_params(labelsize=6, length=1.5, pad=1)
            ax.set_title(f"{SHORT[m.variable]} @ {across}: {c}", fontsize=8)
            ax.set_xlabel(across, fontsize=7)
            ax.set_ylabel("layer", fontsize=7)
            if col == len(names) - 1:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.suptitle(f"Patched minus clean metric, mean over prompts, by layer and {across} (dot: 95% CI excludes 0)",
                 fontsize=9)
    return fig


def head_patching(m: CellMeans, k: int = 16):
    """Fig. 14: per condition, the k heads of largest peak |mean| (over roles or positions) as rows, roles (or
    positions) as columns, colour the mean; dots: 95% CI excludes 0."""
    from analysis.figures import plt
    from analysis.labels import head_label

    across = m.dims[-1]
    names = m.conditions
    labels = m.coords[across]
    fig, axes = plt.subplots(1, len(names), squeeze=False,
                             figsize=(len(names) * (0.32 * len(labels) + 2.2) + 0.5, 0.28 * k + 1.6))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")
    with np.errstate(invalid="ignore"):
        limit = max([float(np.nanmax(np.abs(x))) for x in m.mean.values() if np.isfinite(x).any()] or [1.0])
    for ax, c in zip(axes[0], names):
        mean = m.mean[c].reshape(-1, len(labels))  # (layer x head, across)
        with np.errstate(invalid="ignore"):
            peak = np.nan_to_num(np.nanmax(np.abs(mean), axis=1), nan=-1.0) if np.isfinite(mean).any() else \
                np.full(mean.shape[0], -1.0)
        rows = np.argsort(-peak, kind="stable")[:k]
        n_heads = len(m.coords["head"])
        im = ax.imshow(np.ma.masked_invalid(mean[rows]), cmap=cmap, vmin=-limit, vmax=limit, aspect="auto",
                       interpolation="nearest")
        excl = m.excludes_zero(c).reshape(-1, len(labels))[rows]
        ys, xs = np.nonzero(excl)
        ax.scatter(xs, ys, s=6, c="k", lw=0)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([head_label(m.coords["layer"][i // n_heads], m.coords["head"][i % n_heads]) for i in rows],
                           fontsize=6)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([str(x) for x in labels], fontsize=6, rotation=90 if across == "role" else 0)
        ax.set_title(f"head_pos @ {across}: {c} (top {len(rows)} heads by peak |mean|)", fontsize=8)
        ax.set_xlabel(across, fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.suptitle("One head's output patched at one position: patched minus clean metric (dot: 95% CI excludes 0)",
                 fontsize=9)
    return fig

