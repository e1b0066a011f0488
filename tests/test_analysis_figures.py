"""Every report figure is readable: drawn under analysis.figures.STYLE (constrained layout, Okabe-Ito colours),
every panel has its own title, and no legend covers a title, an axis label or any plot area (measured on the
drawn artists' bounding boxes, not by eye). One synthetic store carries every section's variables (a circuit,
exact and cheap effects, the taxonomy, DLA, the logit lens, patching by position), and the circuit-free report
(no circuit) is checked too."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from analysis import sections
from analysis.circuits import NO_CIRCUIT, from_mapping
from analysis.pipeline import run_analysis
from analysis.synthetic import make_dataset

CIRCUIT = {"name": "toy", "roles": {"Induction": ["1.2", "2.1"], "Previous Token": ["0.1"]}}
TAXONOMY = {"previous_token": [(0, 1)], "induction": [(1, 2), (2, 1)], "duplicate_token": [(0, 3)]}


def full_store():
    return make_dataset(n_layers=3, n_heads=4, n_prompts=30, conditions=("repeated", "random"), pair_corr=0.3,
                        roles=TAXONOMY, circuit=CIRCUIT, seed=3, effects={(1, 2): -0.8, (2, 1): -0.5},
                        cheap_kinds=("atp_patch", "atpstar_patch"), dla={(1, 2): 0.6}, lens=[0.2, 0.6],
                        patching={"resid": {(1, "S2"): -1.0}, "head_pos": {(2, 1, "S2"): 0.8}})


@pytest.fixture(scope="module", params=["circuit", "no circuit"])
def analysis(request):
    ds = full_store()
    circuit = from_mapping(CIRCUIT, name="toy", source="test") if request.param == "circuit" else NO_CIRCUIT
    return run_analysis(ds, circuit, "repeated", "random", n_boot=50, n_perm=20, seed=0)


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


def test_every_figure_is_titled_and_no_legend_covers_a_title_a_label_or_data(analysis):
    from analysis.figures import figure, plt

    names = sections.figure_names(analysis)
    assert len(names) >= (6 if analysis.comparison.circuit.absent else 12), names
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a layout engine that gave up, a tight_layout over constrained...
            fig = figure(analysis, name)
            fig.canvas.draw()
        assert fig.get_layout_engine().__class__.__name__ == "ConstrainedLayoutEngine", name
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


def test_conditions_and_series_take_colour_blind_safe_colours(analysis):
    from matplotlib.colors import to_hex

    from analysis.figures import STYLE, figure, plt
    from analysis.palette import COLOR_A, COLOR_B, CYCLE, OKABE_ITO

    assert {COLOR_A, COLOR_B} <= set(OKABE_ITO.values())
    assert [to_hex(c) for c in STYLE["axes.prop_cycle"].by_key()["color"]] == [c.lower() for c in CYCLE]
    fig = figure(analysis, "fig3_noncircuit_heads")
    colours = {to_hex(c) for ax in fig.axes for col in ax.collections for c in np.atleast_2d(col.get_facecolor())}
    assert colours and colours <= {to_hex(c) for c in OKABE_ITO.values()}, colours
    plt.close(fig)
