"""report.md: every test in words, with its sidedness and its numbers: a pure function of the report
object. The header is written here, every section's text by its module (analysis.sections, in their layout
order; summary.json's derived rows come from the same helpers, so the two always agree), then the figures."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from analysis import sections
from analysis.findings import Analysis
from analysis.labels import head_label
from analysis.summary import BOOTSTRAP, PERMUTATION


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, (float, np.floating)) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if x.is_integer() and 1 <= abs(x) < 1e12:  # U statistics, counts
        return str(int(x))
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}"


def table_cell(text: str) -> str:
    """text safe inside a Markdown table row (a bare | would end the cell)."""
    return text.replace("|", r"\|")


def heads_text(heads) -> str:
    return " ".join(head_label(*h) for h in heads)


def scale_lines(c) -> list[str]:
    """What a streamed report (analysis.pipeline.run_analysis_streamed) resampled over and subsampled (summary.json `scale`)."""
    if c.scale is None:
        return []
    sub = c.scale["subsample"]
    shown = ", ".join(f"{sub['prompts'][k]:,} of {sub['of'][k]:,} `{k}`" for k in sub["prompts"])
    return [f"Streamed over the store's chunks: point estimates exact; {c.scale['resampling']}; "
            f"{c.scale['c_diff_resampling']}; BCa acceleration: {c.scale['bca_acceleration']}. "
            f"Prompt-count curve and figure scatter clouds: "
            + ("all prompts." if sub["all_prompts"] else f"a seeded random subsample ({shown} prompts).")]


def streamed_note(scale: Mapping[str, Any] | None, key: str, exact: str) -> str:
    """How a streamed report (summary.json `scale.<key>`) computed a section: '' for in-memory reports."""
    if not scale or key not in scale:
        return ""
    units = scale[key]["unit_prompts"]
    how = ("prompts resampled one by one" if max(units.values()) == 1 else
           "resampled over units of " + ", ".join(f"{n} `{k}`" for k, n in units.items()) + " consecutive prompts")
    return f" Streamed from the store's chunks ({exact} exact; intervals {how}; summary.json `scale.{key}`)."


def markdown(an: Analysis) -> str:
    c = an.comparison
    a, b = c.a, c.b
    n = c.n_prompts
    n_heads_total = c.mask.size
    lines = [
        f"# jaxdiag report: {a} vs {b}",
        "",
        f"Store `{c.store['path']}` (model `{c.store.get('model', '?')}`), "
        f"{c.shape[0]} layers x {c.shape[1]} heads; {n[a]} `{a}` prompts, {n[b]} `{b}` prompts "
        + (f"(**paired design**: {n[a]} matched pairs, from the store's `pair` coordinate)" if c.paired else
           f"(**independent design**: {c.design_reason or 'independent samples'})")
        + ". Diagnostics are read at each prompt's last token.",
        ("No circuit (pass `--circuit FILE` or `--circuit effects:KIND` for the circuit tests): the sections below "
         "need none." if c.circuit.absent else
         f"Circuit `{c.circuit.name}`: {len(c.circuit.heads)} of {n_heads_total} heads "
         f"({'; '.join(f'{r}: ' + heads_text(hs) for r, hs in c.circuit.roles.items())})."),
        f"Bootstrap: {c.n_boot} resamples ({BOOTSTRAP[c.design]}); permutations: {c.n_perm} "
        f"({PERMUTATION[c.design]}); seed {c.seed}.",
        *scale_lines(c),
    ]
    lines += sections.markdown_lines(an)
    lines += ["", "## Figures", ""] + [f"![{f}.png]({f}.png)" for f in sections.figure_names(an)] + [""]
    return "\n".join(lines)


def section(title: str, intro: str, parts: list[list[str]]) -> list[str]:
    """A report section: its heading, one paragraph, then each part after a blank line."""
    lines = ["", f"## {title}", "", intro]
    for part in parts:
        lines += [""] + part
    return lines
