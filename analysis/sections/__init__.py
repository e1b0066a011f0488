"""The report's sections as plug-ins: one module per section, each with its computation, its summary.json
entries, its report.md text and its figures.

A section module defines

    NAME: str                                   the key of its result in `Analysis.sections`
    compute(ctx: Context) -> Any                its result, from the comparison's units (ctx.streamed) and the
                                                results of the sections before it (ctx.results); return SKIP when
                                                the section does not apply to this store (it is then absent from
                                                Analysis.sections, summary.json and report.md)
    summary(an: Analysis) -> dict[str, Any]     its summary.json entries, in order (numpy values and NaN are
                                                left to analysis._util.to_jsonable)

and, when it has them,

    markdown(an: Analysis) -> list[str]         its report.md lines
    figures(an: Analysis) -> tuple[str, ...]    the names of the figures it draws for this report ("figN_what":
                                                report.md lists every section's figures in N order)
    draw(name: str, an: Analysis) -> Figure     one of them (import matplotlib inside: analysis.figures)

and SUMMARY_AFTER / MARKDOWN_AFTER: the NAME of the section after whose entries / text its own go
(default: registry order; kept for the report's historical layout). A section reads the results of earlier
sections through `an` (e.g. an.shifts) or `ctx.results`, puts what it streamed in `ctx.scale[NAME]` (a streamed
report's summary.json `scale`), and may leave intermediate data that a later section reuses in `ctx.shared`
(e.g. the causal section's effect units, which cheap_vs_exact bootstraps again).

A new section is one module here plus one line in SECTIONS below. Sections compute in SECTIONS' order.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any, Mapping

import xarray as xr

if TYPE_CHECKING:
    from analysis.causal import CircuitRule
    from analysis.findings import Analysis, Comparison
    from analysis.streaming import Streamed

# the registry, in computation order
SECTIONS = (
    "shifts",
    "standardised",
    "circuit_tests",
    "independent_shifts",
    "circuit_heads",
    "correlations",
    "cross_head",
    "taxonomy",
    "causal",
    "cheap",
    "prompt_curve",
    "position_patching",
    "dla",
    "logit_lens",
)

SKIP = object()  # what compute returns when its section does not apply to the store


@dataclasses.dataclass
class Context:
    """What a section's computation reads: the store, the comparison, its units and the settings."""

    ds: xr.Dataset  # the store (lazy when streamed)
    comparison: Comparison  # values: the prompts kept for the curve and the figures (a subsample past SAMPLE_MAX)
    streamed: Streamed  # both conditions' units (analysis.streaming.stream_store)
    heads: dict[str, xr.DataArray]  # variable -> a (layer, head) template the per-head results are labelled like
    rule: CircuitRule
    thresholds: Mapping[str, float] | None
    curve: bool
    memory: int  # the --memory budget
    in_flight: int  # blocks computed at once
    g_max: int | None  # units per condition at most (None: units of one prompt)
    scale: dict[str, Any]  # the streamed report's `scale` entry; a section that streams more adds scale[NAME]
    results: dict[str, Any] = dataclasses.field(default_factory=dict)  # NAME -> result, the sections so far
    shared: dict[str, Any] = dataclasses.field(default_factory=dict)  # intermediate data for later sections

    @property
    def shape(self) -> tuple[int, ...]:
        return self.comparison.shape

    def flat_shape(self, var: str) -> tuple[int, ...]:
        return self.heads[var].shape


def module(name: str) -> ModuleType:
    return importlib.import_module(f"analysis.sections.{name}")


def modules() -> list[ModuleType]:
    """Every section module, in registry (computation) order."""
    return [module(name) for name in SECTIONS]


def compute(ctx: Context) -> dict[str, Any]:
    """Run every section in registry order; NAME -> result of the sections that apply."""
    for m in modules():
        result = m.compute(ctx)
        if result is not SKIP:
            ctx.results[m.NAME] = result
    return ctx.results


def layout(attribute: str) -> list[ModuleType]:
    """The section modules in output order: registry order, each module with `attribute` (SUMMARY_AFTER or
    MARKDOWN_AFTER) moved right after the section it names."""
    order = [m for m in modules() if not getattr(m, attribute, None)]
    for m in modules():
        after = getattr(m, attribute, None)
        if after:
            order.insert(next(i for i, x in enumerate(order) if x.NAME == after) + 1, m)
    return order


def drawn(an: Analysis) -> dict[str, ModuleType]:
    """Figure name -> the section module that draws it, for the sections that ran and have figures."""
    return {name: m for m in modules() if m.NAME in an.sections and hasattr(m, "figures") for name in m.figures(an)}


def summary_entries(an: Analysis) -> dict[str, Any]:
    """Every section's summary.json entries, in layout order."""
    out: dict[str, Any] = {}
    for m in layout("SUMMARY_AFTER"):
        if m.NAME in an.sections:
            out.update(m.summary(an))
    return out


def markdown_lines(an: Analysis) -> list[str]:
    """Every section's report.md lines, in layout order."""
    lines: list[str] = []
    for m in layout("MARKDOWN_AFTER"):
        if m.NAME in an.sections and hasattr(m, "markdown"):
            lines += m.markdown(an)
    return lines


def figure_names(an: Analysis) -> list[str]:
    """The figures drawn for this report, in their number order ("fig7_..." before "fig10_...")."""
    return sorted(drawn(an), key=lambda name: int(name[3:].split("_")[0]))
