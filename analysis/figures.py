"""The report's figures (matplotlib, Agg): the plotting helpers the sections share, and `write_figures`, which
draws every section's figures (analysis.sections: each section module draws its own).

`save` writes PNG and SVG. Scatter plots draw at most MAX_POINTS prompts per condition (a random subset,
seeded) so huge stores stay light.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from analysis import sections  # noqa: E402
from analysis._util import quiet  # noqa: E402
from analysis.findings import Analysis  # noqa: E402
from analysis.palette import COLOR_A, COLOR_B, CYCLE  # noqa: E402

MAX_POINTS = 200
# every figure is drawn under this style: constrained layout makes room for titles, colour bars and the legends,
# which legend_outside puts beside the plot area (never over a title or the data)
STYLE = {
    "figure.constrained_layout.use": True,
    "axes.prop_cycle": matplotlib.cycler(color=list(CYCLE)),
    "image.cmap": "viridis",
}


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


def head_panel(ax, an: Analysis, layer: int, head: int, *, arrow: bool, small: bool) -> None:
    xa, ya, xb, yb = _points(an, layer, head)
    size = 4 if small else 14
    ax.scatter(xa, ya, s=size, c=COLOR_A, alpha=0.35, lw=0, rasterized=True)
    ax.scatter(xb, yb, s=size, c=COLOR_B, alpha=0.35, lw=0, rasterized=True)
    ma, mca, mb, mcb = _means(an, layer, head)
    if arrow:
        ax.annotate("", xy=(mb, mcb), xytext=(ma, mca), arrowprops=dict(arrowstyle="->", color="k", lw=1.2))
    ax.plot([ma], [mca], marker="o", ms=4 if small else 9, mec="k", c=COLOR_A)
    ax.plot([mb], [mcb], marker="s", ms=4 if small else 9, mec="k", c=COLOR_B)


def legend(an: Analysis):
    from matplotlib.lines import Line2D

    return [Line2D([], [], ls="", marker="o", c=COLOR_A, label=f"{an.comparison.a} (mean: circle)"),
            Line2D([], [], ls="", marker="s", c=COLOR_B, label=f"{an.comparison.b} (mean: square)")]


def head_grid(an: Analysis, heads: list[tuple[int, int]], titles: list[str], suptitle: str, arrow: bool) -> Figure:
    n = max(1, len(heads))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    small = n > 30
    # a fixed layout, margins in inches: constrained layout costs ~2x the drawing time on a grid of a hundred
    # panels (GPT-2 small's fig3), and the grid needs no more than fixed room for the suptitle, the shared
    # labels and the legend at the right (tests/figure_checks.py measures that nothing overlaps)
    width, height = 2.0 * cols + 2.6, 1.8 * rows + 1.0
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False, layout="none")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (layer, head), title in zip(axes.ravel(), heads, titles):
        head_panel(ax, an, layer, head, arrow=arrow, small=small)
        ax.set_title(title, fontsize=6 if small else 8, pad=2)
        if small:  # dozens of panels: tick labels would cost more than they tell
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.tick_params(labelsize=5, length=2, pad=1)
    fig.suptitle(suptitle, y=1 - 0.12 / height, va="top")
    fig.supxlabel("kl_norm", y=0.08 / height, va="bottom")
    fig.supylabel("chi", x=0.08 / width, ha="left")
    fig.legend(handles=legend(an), loc="center right", bbox_to_anchor=(1 - 0.08 / width, 0.5), fontsize=7)
    fig.subplots_adjust(left=0.5 / width, right=1 - 2.2 / width, bottom=0.45 / height, top=1 - 0.55 / height,
                        hspace=0.45, wspace=0.35)
    return fig


def legend_outside(ax, **kwargs) -> None:
    """The axes' legend to the right of its plot area (constrained layout makes the room): a legend inside
    covers data wherever matplotlib's "best" puts it once the data fill the panel."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


def figure(an: Analysis, name: str) -> Figure:
    """Report figure ``name`` (one of analysis.sections.figure_names(an)), drawn by its section under STYLE."""
    with matplotlib.rc_context(STYLE):
        return sections.drawn(an)[name].draw(name, an)


def write_figures(an: Analysis, out_dir: Path) -> list[str]:
    """Draw every figure of the report into out_dir (PNG + SVG); return the file names."""
    files: list[str] = []
    for name in sections.figure_names(an):
        files += save(figure(an, name), out_dir, name)
    return files
