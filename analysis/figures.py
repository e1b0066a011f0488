"""The report's figures (matplotlib, Agg): the posts' six, the prompt-count curve and C_diff clustered.

Every function takes the report object (an Analysis) and returns a Figure; `save` writes PNG and
SVG; `write_figures(an, out_dir)` draws them all. Scatter plots
draw at most MAX_POINTS prompts per condition (a random subset, seeded) so huge stores stay light.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy.cluster import hierarchy  # noqa: E402

from analysis._util import quiet  # noqa: E402
from analysis.findings import N_SIGMA, TESTED, Analysis, figure_names  # noqa: E402
from analysis.labels import head_label, pair_label  # noqa: E402
from analysis.summary import magnitude_label  # noqa: E402
from analysis.taxonomy import ROLE_SCORES  # noqa: E402

MAX_POINTS = 200
COLOR_A, COLOR_B = "tab:red", "tab:blue"


def save(fig: Figure, out_dir: Path, name: str) -> list[str]:
    """Write name.png and name.svg; return the file names."""
    files = []
    for ext in ("png", "svg"):
        fig.savefig(out_dir / f"{name}.{ext}", dpi=110 if ext == "png" else None)
        files.append(f"{name}.{ext}")
    plt.close(fig)
    return files


def _points(an: Analysis, layer: int, head: int) -> tuple[np.ndarray, ...]:
    (ka, kb), (ca, cb) = _arrays(an)
    rng = np.random.default_rng(an.comparison.seed)
    pick_a = rng.permutation(ka.shape[0])[:MAX_POINTS]
    pick_b = rng.permutation(kb.shape[0])[:MAX_POINTS]
    return ka[pick_a, layer, head], ca[pick_a, layer, head], kb[pick_b, layer, head], cb[pick_b, layer, head]


def _arrays(an: Analysis) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """[prompt, layer, head] values of kl_norm and chi for both conditions."""
    return tuple((xa.values, xb.values) for xa, xb in (an.comparison.values[v] for v in ("kl_norm", "chi")))


def _means(an: Analysis, layer: int, head: int) -> tuple[float, float, float, float]:
    means = an.comparison.head_means
    if means is not None:  # a streamed report: the exact means of every prompt, not of the subsample
        (ka, kb), (ca, cb) = means["kl_norm"], means["chi"]
        return tuple(float(v[layer, head]) for v in (ka, ca, kb, cb))
    (ka, kb), (ca, cb) = _arrays(an)
    with quiet():
        return tuple(float(np.nanmean(v[:, layer, head])) for v in (ka, ca, kb, cb))


def _head_panel(ax, an: Analysis, layer: int, head: int, *, arrow: bool, small: bool) -> None:
    xa, ya, xb, yb = _points(an, layer, head)
    size = 4 if small else 14
    ax.scatter(xa, ya, s=size, c=COLOR_A, alpha=0.35, lw=0, rasterized=True)
    ax.scatter(xb, yb, s=size, c=COLOR_B, alpha=0.35, lw=0, rasterized=True)
    ma, mca, mb, mcb = _means(an, layer, head)
    if arrow:
        ax.annotate("", xy=(mb, mcb), xytext=(ma, mca), arrowprops=dict(arrowstyle="->", color="k", lw=1.2))
    ax.plot([ma], [mca], marker="o", ms=4 if small else 9, mec="k", c=COLOR_A)
    ax.plot([mb], [mcb], marker="s", ms=4 if small else 9, mec="k", c=COLOR_B)


def one_head(an: Analysis) -> Figure:
    """Fig. 1: the circuit head with the largest |delta kl_norm| in the (KL, chi) plane."""
    delta = np.where(an.comparison.mask.values, np.abs(np.nan_to_num(an.delta("kl_norm").values)), -1)
    layer, head = np.unravel_index(int(np.argmax(delta)), delta.shape)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    _head_panel(ax, an, layer, head, arrow=True, small=False)
    ax.set_xlabel("KL / log n  (kl_norm)")
    ax.set_ylabel("chi")
    role = an.comparison.circuit.role_of(layer, head) or "non-circuit"
    ax.set_title(f"head {head_label(layer, head)} ({role}): delta KL = {float(an.delta('kl_norm')[layer, head]):+.3f}")
    ax.legend(handles=_legend(an), loc="best", fontsize=8)
    return fig


def _legend(an: Analysis):
    from matplotlib.lines import Line2D

    return [Line2D([], [], ls="", marker="o", c=COLOR_A, label=f"{an.comparison.a} (mean: circle)"),
            Line2D([], [], ls="", marker="s", c=COLOR_B, label=f"{an.comparison.b} (mean: square)")]


def _grid(an: Analysis, heads: list[tuple[int, int]], titles: list[str], suptitle: str, arrow: bool) -> Figure:
    n = max(1, len(heads))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    small = n > 30
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols + 1, 1.8 * rows + 1), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (layer, head), title in zip(axes.ravel(), heads, titles):
        _head_panel(ax, an, layer, head, arrow=arrow, small=small)
        ax.set_title(title, fontsize=6 if small else 8, pad=2)
        if small:  # dozens of panels: tick labels would cost more than they tell
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.tick_params(labelsize=5, length=2, pad=1)
    fig.suptitle(suptitle)
    fig.supxlabel("kl_norm")
    fig.supylabel("chi")
    fig.legend(handles=_legend(an), loc="upper right", fontsize=7)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.06, top=0.92, hspace=0.45, wspace=0.35)
    return fig


def circuit_grid(an: Analysis) -> Figure:
    """Fig. 2: every circuit head by role, arrow from condition a's mean to condition b's."""
    c = an.comparison
    heads, titles = [], []
    for role, members in c.circuit.roles.items():
        for layer, head in sorted(members):
            if (layer, head) not in heads:
                heads.append((layer, head))
                titles.append(f"{role} {head_label(layer, head)}")
    return _grid(an, heads, titles, f"circuit heads ({c.circuit.name}): {c.a} -> {c.b}", arrow=True)


def other_grid(an: Analysis) -> Figure:
    """Fig. 3: every non-circuit head."""
    heads = [(int(l), int(h)) for l, h in zip(*np.nonzero(~an.comparison.mask.values))]
    return _grid(an, heads, [head_label(l, h) for l, h in heads], "non-circuit heads", arrow=True)


def delta_distributions(an: Analysis) -> Figure:
    """Fig. 4: |delta| of circuit vs non-circuit heads, with the test results in the titles."""
    fig, axes = plt.subplots(1, len(TESTED), figsize=(5.2 * len(TESTED), 4))
    rng = np.random.default_rng(an.comparison.seed)
    mask = an.comparison.mask.values
    for ax, var in zip(np.atleast_1d(axes), TESTED):
        absd = np.abs(an.delta(var).values)
        groups = [absd[mask], absd[~mask]]
        ax.boxplot([g[np.isfinite(g)] for g in groups], showfliers=False)
        for i, g in enumerate(groups):
            ax.scatter(i + 1 + rng.uniform(-0.15, 0.15, g.size), g, s=10, alpha=0.6,
                       c="tab:orange" if i == 0 else "tab:gray", zorder=3)
        ax.set_xticks([1, 2], [f"circuit ({groups[0].size})", f"other ({groups[1].size})"])
        ax.set_ylabel(f"|delta {var}|")
        mw, pm = an.circuit_tests[var].mann_whitney, an.circuit_tests[var].permutation
        lead = an.circuit_tests[var].permutation_z
        ax.set_title(f"raw |delta| (posts'): MW U={mw.statistic:.0f}, p={mw.pvalue:.2g} (one-sided)\n"
                     f"AUC={mw.auc:.2f}, permutation p={pm.pvalue:.2g}; lead |delta_z| permutation "
                     f"p={lead.pvalue:.2g}", fontsize=8)
    fig.tight_layout()
    return fig


def correlation_matrices(an: Analysis) -> Figure:
    """Fig. 5: C_a, C_b and C_diff (heads x heads over prompts) with circuit heads ticked."""
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
    fig.tight_layout()
    return fig


def clustered_c_diff(an: Analysis) -> Figure:
    """Fig. 8: C_diff with heads in dendrogram order (average linkage on 1 - C_diff), the tree above.

    Blocks on the diagonal are groups of heads whose co-variation changes together between
    conditions; circuit heads are labelled in bold.
    """
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


def band_scatter(an: Analysis) -> Figure:
    """Fig. 6: C_a vs C_b over head pairs with the posts' 5-sigma band around the diagonal."""
    c, x = an.comparison, an.cross_head
    c_a, c_b = x.c_a.values, x.c_b.values
    i, j = np.triu_indices(c_a.shape[0], 1)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.scatter(c_a[i, j], c_b[i, j], s=3, alpha=0.3, c="tab:gray", lw=0, rasterized=True)
    grid = np.linspace(-1, 1, 3)
    width = N_SIGMA * x.sigma
    ax.plot(grid, grid, c="k", lw=0.8)
    ax.plot(grid, grid - width, c="tab:red", ls="--", lw=0.8, label=f"|C_diff| = {N_SIGMA:g} sigma ({width:.3f})")
    ax.plot(grid, grid + width, c="tab:red", ls="--", lw=0.8)
    for p, q in x.flagged:
        ax.scatter(c_a[p, q], c_b[p, q], s=25, c="tab:red", zorder=3)
        ax.annotate(pair_label(x.head(p), x.head(q)), (c_a[p, q], c_b[p, q]), fontsize=7)
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel(f"C_{c.a}")
    ax.set_ylabel(f"C_{c.b}")
    ax.set_title(f"{len(x.flagged)} pair(s) outside the band; max-|C_diff| null p = {x.max_null.pvalue:.2g}")
    ax.legend(fontsize=8)
    return fig


def prompt_count_curve(an: Analysis) -> Figure:
    """Fig. 7: the lead test's permutation p and the posts' Mann-Whitney p, AUC and CI width against prompts
    per condition (subsampling)."""
    t = an.curve
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for var, c in zip(TESTED, ("tab:purple", "tab:green")):
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
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("prompts per condition")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def causal_effects(an: Analysis) -> Figure:
    """Fig. 9: per head, |delta kl_norm| against |mean effect|, one panel per effect kind. Colours: the
    report's circuit roles (grey: other heads); black outline: the kind's causal circuit."""
    c = an.comparison
    kinds = list(an.causal)
    cols = min(3, len(kinds))
    rows = math.ceil(len(kinds) / cols)
    roles = list(c.circuit.roles)
    ncol = 2 * cols  # legend: the roles, "other heads" and "causal circuit"
    legend_height = 0.22 * math.ceil((len(roles) + 2) / ncol) + 0.1  # inches
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.6 * rows + legend_height), squeeze=False)
    for ax in axes.ravel()[len(kinds):]:
        ax.axis("off")
    colours = {role: plt.get_cmap("tab10")(i % 10) for i, role in enumerate(roles)}
    abs_delta = np.abs(an.delta("kl_norm").values)
    # label the causal circuit and the five most shifted heads; labelling every circuit head would pile
    # names on the unshifted, non-causal corner
    most_shifted = {np.unravel_index(k, abs_delta.shape) for k in np.argsort(-np.nan_to_num(abs_delta), axis=None)[:5]}
    for ax, kind in zip(axes.ravel(), kinds):
        e = an.causal[kind]
        abs_effect = np.abs(e.mean.statistic.values)
        causal = set(e.circuit)
        for (layer, head), x in np.ndenumerate(abs_effect):
            role = c.circuit.role_of(layer, head)
            outlined = (layer, head) in causal
            ax.scatter(x, abs_delta[layer, head], s=40 if outlined else 16, c=[colours.get(role, "0.6")],
                       edgecolors="k" if outlined else "none", linewidths=1.2, zorder=3 if role else 2)
            if outlined or (layer, head) in most_shifted:
                ax.annotate(head_label(layer, head), (x, abs_delta[layer, head]), fontsize=6,
                            xytext=(3, 2), textcoords="offset points")
        ax.axvline(e.threshold, c="k", ls=":", lw=0.8)
        sp = e.spearman["kl_norm"]
        ax.set_title(f"effect_{kind}: Spearman rho = {sp.statistic:.2f} "
                     f"[{sp.confidence_interval.low:.2f}, {sp.confidence_interval.high:.2f}]\n"
                     f"causal circuit {len(e.circuit)} heads (outlined; dotted: size cut)", fontsize=9)
        ax.set_xlabel(f"|mean effect| (effect_{kind}, metric units)")
        ax.set_ylabel(f"|delta kl_norm| ({c.a} - {c.b})")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", c=colours[r], label=r) for r in roles]
    handles += [Line2D([], [], ls="", marker="o", c="0.6", label="other heads"),
                Line2D([], [], ls="", marker="o", mfc="none", mec="k", label="causal circuit")]
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7)
    fig.tight_layout(rect=(0, legend_height / fig.get_figheight(), 1, 1))
    return fig


CHEAP_MARKERS = {"atp": "o", "atpstar": "^", "diagnostic": "s"}  # one marker style per method family
CHEAP_COLOURS = {"atp": "tab:blue", "atpstar": "tab:orange", "diagnostic": "tab:green"}
RANKED_DIAGNOSTIC = "delta_kl_norm"  # the diagnostic drawn against the effect estimates (all are in the table)


def _outlined_scatter(ax, x: np.ndarray, y: np.ndarray, outlined: np.ndarray, *, marker: str, colour: str,
                      label: str) -> None:
    """Points of one method; the outlined ones (causal-circuit heads) larger, with a black edge."""
    ax.scatter(x[~outlined], y[~outlined], s=18, marker=marker, c=colour, edgecolors="none", alpha=0.8, label=label)
    ax.scatter(x[outlined], y[outlined], s=40, marker=marker, c=colour, edgecolors="k", linewidths=1.2, zorder=3)


def cheap_vs_exact(an: Analysis) -> Figure:
    """Fig. 10: per exact kind (one row), cheap estimates against the exact mean effect per head. Left: mean
    AtP against the mean effect, both signed, with the y = x line a perfect first-order estimate lies on.
    Right: rank of each method's value (|mean AtP|, mean AtP*, |delta kl_norm|) against the rank of
    |mean effect| (1 = largest), since AtP* and |delta| are on other scales. Black outline: causal circuit."""
    from analysis.circuit_tests import descending_ranks
    from matplotlib.lines import Line2D

    kinds = list(an.cheap)
    fig, axes = plt.subplots(len(kinds), 2, figsize=(10.4, 4.4 * len(kinds) + 0.4), squeeze=False)
    for (signed_ax, rank_ax), kind in zip(axes, kinds):
        x, e = an.cheap[kind], an.causal[kind]
        effect = e.mean.statistic.values
        circuit = set(e.circuit)
        outlined = np.array([(int(l), int(h)) in circuit  # layer-major, like .ravel()
                             for l in e.mean.statistic["layer"].values for h in e.mean.statistic["head"].values])
        atp = [a for a in x.methods.values() if a.family == "atp"]
        for a in atp:
            _outlined_scatter(signed_ax, effect.ravel(), a.signed.values.ravel(), outlined, marker=CHEAP_MARKERS["atp"],
                              colour=CHEAP_COLOURS["atp"], label=a.name)
        if atp:
            with quiet():
                values = np.concatenate([effect.ravel()] + [a.signed.values.ravel() for a in atp])
                low, high = np.nanmin(values), np.nanmax(values)
            signed_ax.plot([low, high], [low, high], c="k", lw=0.8, ls="--", label="y = x")
            signed_ax.axhline(0, c="0.7", lw=0.5)
            signed_ax.axvline(0, c="0.7", lw=0.5)
            signed_ax.set_xlabel(f"mean effect_{kind} (exact, signed)")
            signed_ax.set_ylabel("mean AtP estimate (signed)")
            signed_ax.legend(fontsize=7, loc="best")
            signed_ax.set_title(f"effect_{kind}: AtP against exact", fontsize=9)
        else:
            signed_ax.axis("off")
            signed_ax.text(0.5, 0.5, f"no AtP estimate of effect_{kind}", ha="center", va="center")
        exact_rank = descending_ranks(np.abs(effect)).ravel()
        shown = [a for a in x.methods.values() if a.family != "diagnostic" or a.name == RANKED_DIAGNOSTIC]
        for a in shown:
            _outlined_scatter(rank_ax, exact_rank, descending_ranks(a.magnitude.values).ravel(), outlined,
                              marker=CHEAP_MARKERS[a.family], colour=CHEAP_COLOURS[a.family],
                              label=f"{magnitude_label(a)}: rho {a.spearman.statistic:.2f}")
        n = effect.size
        rank_ax.plot([1, n], [1, n], c="k", lw=0.8, ls="--")
        rank_ax.set_xlabel(f"rank of |mean effect_{kind}| (1 = largest)")
        rank_ax.set_ylabel("rank of the method's value (1 = largest)")
        rank_ax.set_title(f"effect_{kind}: ranks; causal circuit ({len(e.circuit)} heads) outlined", fontsize=9)
        handles, _ = rank_ax.get_legend_handles_labels()
        handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec="k", label="causal circuit"))
        rank_ax.legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def head_taxonomy(an: Analysis) -> Figure:
    """Fig. 11: per condition (rows) and score (columns), each head's mean score as a layer x head map (grey:
    undefined, e.g. induction_attn without repeats); outlined: heads with the role that score decides."""
    from matplotlib.patches import Rectangle

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
    fig.tight_layout()
    return fig


FIGURES = {
    "fig1_one_head": one_head,
    "fig2_circuit_heads": circuit_grid,
    "fig3_noncircuit_heads": other_grid,
    "fig4_delta_distributions": delta_distributions,
    "fig5_correlation_matrices": correlation_matrices,
    "fig6_ca_vs_cb": band_scatter,
    "fig7_prompt_count": prompt_count_curve,
    "fig8_c_diff_clustered": clustered_c_diff,
    "fig9_causal_effects": causal_effects,
    "fig10_cheap_vs_exact": cheap_vs_exact,
    "fig11_head_taxonomy": head_taxonomy,
}


def write_figures(an: Analysis, out_dir: Path) -> list[str]:
    """Draw every figure of the report into out_dir (PNG + SVG); return the file names."""
    files = []
    for name in figure_names(an):
        files += save(FIGURES[name](an), out_dir, name)
    return files
