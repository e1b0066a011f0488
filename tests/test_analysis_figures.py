"""Every report figure is readable: drawn under analysis.figures.STYLE (constrained layout, Okabe-Ito colours),
every panel has its own title, and no legend covers a title, an axis label or any plot area (measured on the
drawn artists' bounding boxes, not by eye). One synthetic store carries every section's variables (a circuit,
exact and cheap effects, the taxonomy, DLA, the logit lens, patching by position), and the circuit-free report
(no circuit) is checked too."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.circuits import NO_CIRCUIT, from_mapping
from analysis.pipeline import run_analysis
from analysis.synthetic import make_dataset
from tests.figure_checks import assert_figures_readable

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


def test_every_figure_is_titled_and_no_legend_covers_a_title_a_label_or_data(analysis):
    assert_figures_readable(analysis, at_least=6 if analysis.comparison.circuit.absent else 12)


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
