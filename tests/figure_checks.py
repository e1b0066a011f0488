"""The report figures' readability check (tests/test_analysis_figures.py on synthetic stores with every section,
and the shipped models' end-to-end reports): measured on the drawn artists' bounding boxes."""

from __future__ import annotations

import warnings


def _boxes(fig, renderer):
    """(legend boxes, [(what, box)] of every title, axis label and plot area the legends must stay off)."""
    legends = [leg for leg in fig.legends] + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    keep_off = []
    for text, what in ((fig._suptitle, "suptitle"), (fig._supxlabel, "supxlabel"), (fig._supylabel, "supylabel")):
        if text is not None and text.get_text():
            keep_off.append((what, text.get_window_extent(renderer)))
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible() or not ax.axison:
            continue
        keep_off.append((f"axes {i} plot area", ax.get_window_extent(renderer)))
        for text, what in ((ax.title, "title"), (ax.xaxis.label, "xlabel"), (ax.yaxis.label, "ylabel")):
            if text.get_text():
                keep_off.append((f"axes {i} {what} {text.get_text()[:30]!r}", text.get_window_extent(renderer)))
    return [leg.get_window_extent(renderer) for leg in legends], keep_off


def assert_figures_readable(analysis, at_least: int = 1) -> None:
    """Draw every figure of ``analysis``'s report under the report's style and check it: no layout warning, the
    constrained (or the head grids' fixed) layout, a title on every panel, every legend inside the figure and off every title, axis
    label and plot area."""
    from analysis import sections
    from analysis.figures import figure, plt

    names = sections.figure_names(analysis)
    assert len(names) >= at_least, names
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a layout engine that gave up, a tight_layout over constrained...
            fig = figure(analysis, name)
            fig.canvas.draw()
        # constrained layout, or the head grids' fixed one (analysis.figures.head_grid): the checks below hold either way
        assert fig.get_layout_engine().__class__.__name__ in ("ConstrainedLayoutEngine", "NoneType"), name
        renderer = fig.canvas.get_renderer()
        panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison and ax.get_label() != "<colorbar>"]
        assert panels, name
        for ax in panels:
            assert ax.get_title(), f"{name}: a panel without a title"
        legends, keep_off = _boxes(fig, renderer)
        for box in legends:
            for what, other in keep_off:
                overlap = min(box.x1, other.x1) - max(box.x0, other.x0), min(box.y1, other.y1) - max(box.y0, other.y0)
                assert min(overlap) <= 1.0, f"{name}: a legend covers the {what}"
            assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= fig.bbox.x1 + 1 and box.y1 <= fig.bbox.y1 + 1, \
                f"{name}: a legend outside the figure"
        plt.close(fig)
