"""Cross-head structure of kl_norm: C_a, C_b (Pearson correlation over prompts between every two heads), C_diff =
C_a - C_b, the posts' sigma band, the family-wise max-|C_diff| permutation null, bootstrap intervals of chosen
entries and the heads' clustering on 1 - C_diff; its three figures."""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis import correlation as corr
from analysis.findings import N_SIGMA, Analysis, CrossHead, PairInterval
from analysis.labels import head_matrix, pair_label, units_of
from analysis.resampling import rng_for
from analysis.results import ConfidenceInterval
from analysis.seeds import SEED_CBOOT, SEED_CNULL
from analysis.palette import OKABE_ITO

NAME = "cross_head"
FIGURES = ("fig5_correlation_matrices", "fig6_ca_vs_cb", "fig8_c_diff_clustered")


def compute(ctx) -> CrossHead:
    """From the cross-head units of kl_norm (complete rows; heads with no finite value give NaN rows)."""
    s, c = ctx.streamed, ctx.comparison
    mask = c.mask.values
    unit_axis = units_of(ctx.heads["kl_norm"])
    c_a, c_b = s.cross_a.correlation(), s.cross_b.correlation()
    for cu, units in ((c_a, s.a), (c_b, s.b)):
        dead = units["kl_norm"].count.sum(axis=0) == 0
        cu[dead, :] = np.nan
        cu[:, dead] = np.nan
    c_diff = c_a - c_b
    sigma = corr.sigma_band(c_diff, mask.ravel())
    flagged = corr.flagged_pairs(c_diff, sigma, N_SIGMA)
    observed = corr.max_abs_offdiag(c_diff)
    max_null = corr.c_diff_max_null(s.cross_a, s.cross_b, observed, c.n_perm, rng_for(c.seed, SEED_CNULL))
    i, j = corr.upper_pairs(c_diff.shape[0])
    family_wise = np.full(c_diff.shape, np.nan)
    family_wise[i, j] = family_wise[j, i] = corr.family_wise_p(c_diff[i, j], max_null)
    top = np.argsort(-np.nan_to_num(np.abs(c_diff[i, j])))[:5]
    chosen = list(dict.fromkeys(flagged + [(int(i[t]), int(j[t])) for t in top]))
    intervals = corr.bootstrap_c_diff(s.cross_a, s.cross_b, chosen, c.n_boot, rng_for(c.seed, SEED_CBOOT))
    return CrossHead(
        c_a=head_matrix(c_a, unit_axis, f"C_{c.a}"), c_b=head_matrix(c_b, unit_axis, f"C_{c.b}"),
        c_diff=head_matrix(c_diff, unit_axis, "C_diff"), sigma=sigma, flagged=flagged, max_null=max_null,
        family_wise_p=head_matrix(family_wise, unit_axis, "family_wise_p"),
        pair_intervals=[PairInterval(p, ConfidenceInterval(float(lo), float(hi))) for p, (lo, hi) in
                        zip(chosen, intervals)],
        linkage=corr.head_linkage(c_diff))


def summary(an: Analysis) -> dict[str, Any]:
    return {"c_diff": c_diff_entry(an.cross_head)}


def c_diff_entry(x: CrossHead) -> dict[str, Any]:
    c_diff, fw = x.c_diff.values, x.family_wise_p.values
    i, j = np.triu_indices(c_diff.shape[0], 1)
    significant = np.flatnonzero(fw[i, j] <= 0.05)
    return {
        "sigma": x.sigma, "n_sigma": N_SIGMA,
        "range": [np.nanmin(c_diff[i, j]), np.nanmax(c_diff[i, j])] if i.size else [None, None],
        "flagged_pairs": [[*x.head(p), *x.head(q), c_diff[p, q], c_diff[p, q] / x.sigma] for p, q in x.flagged],
        "null_max_abs_p": {
            "observed_max": x.max_null.statistic, "p": x.max_null.pvalue,
            "quantile_95": x.max_null.quantile_95, "n_perm": x.max_null.n_resamples,
            "flagged_pairs": [[*x.head(p), *x.head(q), fw[p, q]] for p, q in x.flagged],
            "significant_pairs": [[*x.head(i[k]), *x.head(j[k]), c_diff[i[k], j[k]], fw[i[k], j[k]]]
                                  for k in significant],
        },
        "bootstrap_ci": [[*x.head(p.pair[0]), *x.head(p.pair[1]), c_diff[p.pair], p.confidence_interval.low,
                          p.confidence_interval.high] for p in x.pair_intervals],
        "dendrogram_order": [list(x.head(int(k))) for k in x.order],
    }


def markdown(an: Analysis) -> list[str]:
    from analysis.markdown import fmt

    a, b = an.comparison.a, an.comparison.b
    x = an.cross_head
    c_diff, fw = x.c_diff.values, x.family_wise_p.values
    i, j = np.triu_indices(c_diff.shape[0], 1)
    low, high = (np.nanmin(c_diff[i, j]), np.nanmax(c_diff[i, j])) if i.size else (None, None)
    n_significant = int(np.sum(fw[i, j] <= 0.05))
    nm = x.max_null

    def pair(p: int, q: int) -> str:
        return pair_label(x.head(p), x.head(q))

    return [
        "", "## Cross-head correlation of KL",
        "",
        f"C_{a}, C_{b}: Pearson correlation over prompts between every two heads' kl_norm; C_diff = C_{a} - C_{b}. "
        f"C_diff off-diagonal range [{fmt(low)}, {fmt(high)}].",
        f"- **The posts' band**: sigma = SD of C_diff over ordered off-diagonal pairs involving at least one "
        f"non-circuit head = {fmt(x.sigma)}; {len(x.flagged)} pair(s) with |C_diff| > 5 sigma"
        + (": " + "; ".join(f"{pair(p, q)} C_diff {fmt(c_diff[p, q])} ({fmt(c_diff[p, q] / x.sigma)} sigma)"
                            for p, q in x.flagged) if x.flagged else "") + ". The band is a "
        "heuristic without a null model.",
        f"- **Max-statistic permutation null (one-sided on max |C_diff|, family-wise over all pairs)**: "
        f"observed max |C_diff| = {fmt(nm.statistic)}, null 95% quantile {fmt(nm.quantile_95)}, "
        f"p = {fmt(nm.pvalue)} ({nm.n_resamples} label shuffles). Family-wise p of the flagged pairs: "
        + ("; ".join(f"{pair(p, q)} {fmt(fw[p, q])}" for p, q in x.flagged) or "none flagged")
        + f". Pairs significant family-wise at 5%: {n_significant}.",
        "- Bootstrap 95% percentile CIs (prompts resampled within condition) of chosen entries: "
        + "; ".join(f"{pair(*p.pair)} {fmt(c_diff[p.pair])} [{fmt(p.confidence_interval.low)}, "
                    f"{fmt(p.confidence_interval.high)}]" for p in x.pair_intervals) + ".",
        "- Heads in dendrogram order (average linkage on 1 - C_diff) are in summary.json `c_diff.dendrogram_order`; "
        "`fig8_c_diff_clustered` draws C_diff in that order under its tree.",
    ]


def figures(an: Analysis) -> tuple[str, ...]:
    return FIGURES


def draw(name: str, an: Analysis):
    return {"fig5_correlation_matrices": correlation_matrices, "fig6_ca_vs_cb": band_scatter,
            "fig8_c_diff_clustered": clustered_c_diff}[name](an)


def correlation_matrices(an: Analysis):
    """Fig. 5: C_a, C_b and C_diff (heads x heads over prompts) with circuit heads ticked."""
    from analysis.figures import plt

    c, x = an.comparison, an.cross_head
    n_layers, n_heads = c.shape
    ticks = np.flatnonzero(c.mask.values.ravel())  # the flat head axis is layer-major, like mask.ravel()
    labels = list(x.units["unit"].values[ticks])
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.6))
    for ax, mat, title, lim in zip(axes, (x.c_a, x.c_b, x.c_diff),
                                   (f"C_{c.a}", f"C_{c.b}", f"C_diff = C_{c.a} - C_{c.b}"), (1, 1, 2)):
        im = ax.imshow(mat.values, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(title)
        ax.set_xticks(ticks, labels, rotation=90, fontsize=5)
        ax.set_yticks(ticks, labels, fontsize=5)
        for boundary in range(n_heads, n_layers * n_heads, n_heads):
            ax.axhline(boundary - 0.5, c="k", lw=0.2)
            ax.axvline(boundary - 0.5, c="k", lw=0.2)
        fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def band_scatter(an: Analysis):
    """Fig. 6: C_a vs C_b over head pairs with the posts' 5-sigma band around the diagonal."""
    from analysis.figures import legend_outside, plt

    c, x = an.comparison, an.cross_head
    c_a, c_b = x.c_a.values, x.c_b.values
    i, j = np.triu_indices(c_a.shape[0], 1)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(c_a[i, j], c_b[i, j], s=3, alpha=0.3, c=OKABE_ITO["grey"], lw=0, rasterized=True)
    grid = np.linspace(-1, 1, 3)
    width = N_SIGMA * x.sigma
    ax.plot(grid, grid, c="k", lw=0.8)
    ax.plot(grid, grid - width, c=OKABE_ITO["vermillion"], ls="--", lw=0.8, label=f"|C_diff| = {N_SIGMA:g} sigma ({width:.3f})")
    ax.plot(grid, grid + width, c=OKABE_ITO["vermillion"], ls="--", lw=0.8)
    for p, q in x.flagged:
        ax.scatter(c_a[p, q], c_b[p, q], s=25, c=OKABE_ITO["vermillion"], zorder=3)
        ax.annotate(pair_label(x.head(p), x.head(q)), (c_a[p, q], c_b[p, q]), fontsize=7)
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel(f"C_{c.a}")
    ax.set_ylabel(f"C_{c.b}")
    ax.set_title(f"{len(x.flagged)} pair(s) outside the band; max-|C_diff| null p = {x.max_null.pvalue:.2g}")
    legend_outside(ax, fontsize=8)
    return fig


def clustered_c_diff(an: Analysis):
    """Fig. 8: C_diff with heads in dendrogram order (average linkage on 1 - C_diff), the tree above.

    Blocks on the diagonal are groups of heads whose co-variation changes together between
    conditions; circuit heads are labelled in bold.
    """
    from analysis.figures import plt
    from scipy.cluster import hierarchy

    c, x = an.comparison, an.cross_head
    k = x.c_diff.shape[0]
    fig, (top, ax) = plt.subplots(2, 1, figsize=(9, 10.5), height_ratios=(1, 4), sharex=True)
    tree = hierarchy.dendrogram(x.linkage, ax=top, no_labels=True, color_threshold=0,
                                above_threshold_color="0.3")
    order = np.asarray(tree["leaves"])
    top.set_ylabel("1 - C_diff (average)")
    top.set_title(f"C_diff = C_{c.a} - C_{c.b}, heads clustered")
    for spine in ("top", "right"):
        top.spines[spine].set_visible(False)
    # dendrogram draws leaf i at x = 10 i + 5; the matrix below uses cell centres 10 i + 5 too
    extent = (0, 10 * k, 10 * k, 0)
    im = ax.imshow(x.c_diff.values[np.ix_(order, order)], cmap="RdBu_r", vmin=-2, vmax=2, interpolation="nearest",
                   extent=extent, aspect="auto")
    ax.set_title("C_diff in the dendrogram's leaf order" + ("" if c.circuit.absent else " (circuit heads bold)"),
                 fontsize=9)
    circuit = c.mask.values.ravel()
    if k <= 48:  # above that, head labels are unreadable; circuit heads still get ticks
        shown = np.arange(k)
    else:
        shown = np.flatnonzero(circuit[order])
    labels = list(x.units["unit"].values[order[shown]])
    ax.set_xticks(10 * shown + 5, labels, rotation=90, fontsize=6)
    ax.set_yticks(10 * shown + 5, labels, fontsize=6)
    for tick_labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        for i, label in zip(shown, tick_labels):
            if circuit[order[i]]:
                label.set_fontweight("bold")
    fig.colorbar(im, ax=[top, ax], fraction=0.04, label="C_diff")
    return fig
