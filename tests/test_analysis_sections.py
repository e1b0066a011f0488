"""The report's sections as plug-ins (analysis.sections): the registry's modules keep the interface, and a new
section is one module plus one registry line: its result, summary.json entries, report.md text and figure reach
the report without touching any other module."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from analysis import sections
from analysis.circuits import from_mapping
from analysis.markdown import markdown
from analysis.pipeline import run_analysis
from analysis.summary import summary
from analysis.synthetic import make_dataset

CIRCUIT = from_mapping({"roles": {"x": [[2, 3], [1, 1]]}}, name="c", source="test")


def test_every_registered_section_has_the_interface():
    names = [m.NAME for m in sections.modules()]
    assert names == list(sections.SECTIONS) and len(set(names)) == len(names)
    for m in sections.modules():
        assert callable(m.compute) and callable(m.summary)
        assert hasattr(m, "figures") == hasattr(m, "draw")
        for attribute in ("SUMMARY_AFTER", "MARKDOWN_AFTER"):
            assert getattr(m, attribute, None) in (None, *names)
    for attribute in ("SUMMARY_AFTER", "MARKDOWN_AFTER"):  # the layouts are orderings of every section
        assert sorted(m.NAME for m in sections.layout(attribute)) == sorted(names)


@pytest.fixture
def toy_section(monkeypatch):
    """A section module `toy`: the per-head mean of chi on condition b, one figure."""
    toy = types.ModuleType("analysis.sections.toy")
    toy.NAME = "toy"
    toy.compute = lambda ctx: ctx.streamed.b["chi"].totals()["mean"].reshape(ctx.shape)
    toy.summary = lambda an: {"toy_mean_chi_b": an.sections["toy"]}
    toy.markdown = lambda an: ["", "## Toy", "", f"mean chi on b, head 0.0: {an.sections['toy'][0, 0]:.6f}"]
    toy.figures = lambda an: ("fig12_toy",)

    def draw(name, an):
        from analysis.figures import plt

        fig, ax = plt.subplots()
        ax.imshow(an.sections["toy"])
        return fig

    toy.draw = draw
    monkeypatch.setitem(sys.modules, "analysis.sections.toy", toy)
    monkeypatch.setattr(sections, "SECTIONS", (*sections.SECTIONS, "toy"))  # the one registry line
    return toy


def test_a_new_section_is_one_module_and_one_line(toy_section, tmp_path):
    ds = make_dataset(n_layers=3, n_heads=4, n_prompts=30, seed=2)
    an = run_analysis(ds, CIRCUIT, "ioi", "non_ioi", n_boot=20, n_perm=20, seed=1, curve=False)
    expected = np.nanmean(ds["chi"].sel(condition="non_ioi").values.astype(np.float64), axis=0)
    np.testing.assert_allclose(an.sections["toy"], expected, rtol=1e-12)
    s = summary(an)
    keys = list(s)
    assert keys.index("toy_mean_chi_b") == keys.index("settings") - 1  # after every built-in section's entries
    text = markdown(an)
    assert "## Toy" in text and text.index("## Toy") < text.index("## Figures")
    assert "![fig12_toy.png](fig12_toy.png)" in text
    assert sections.figure_names(an)[-1] == "fig12_toy"
    from analysis.figures import write_figures

    files = write_figures(an, tmp_path)
    assert "fig12_toy.png" in files and (tmp_path / "fig12_toy.png").read_bytes()[:4] == b"\x89PNG"


def test_sections_that_do_not_apply_are_absent():
    """No effects, no taxonomy variables, independent design: those sections did not run and left no keys."""
    ds = make_dataset(n_layers=3, n_heads=4, n_prompts=30, seed=2)
    an = run_analysis(ds, CIRCUIT, "ioi", "non_ioi", n_boot=20, n_perm=20, seed=1, curve=False)
    assert not {"causal", "cheap", "taxonomy", "independent_shifts"} & set(an.sections)
    s = summary(an)
    assert not {"causal", "cheap_vs_exact", "taxonomy", "paired_vs_independent"} & set(s)
    assert s["prompt_curve"] == {}  # the curve section ran, with nothing asked of it
