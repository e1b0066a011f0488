"""Head shifts: delta = mean(a) - mean(b) per head with a 95% BCa bootstrap interval (pairs resampled in a paired
design), for every variable; the report's largest shifts; the (KL, chi) scatter figures of single heads."""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.findings import Analysis
from analysis.labels import head_label
from analysis.resampling import rng_for
from analysis.results import ShiftResult
from analysis.seeds import SEED_BOOT
from analysis.shifts import shift_units

NAME = "shifts"
FIGURES = ("fig1_one_head", "fig2_circuit_heads", "fig3_noncircuit_heads")


def compute(ctx) -> dict[str, ShiftResult]:
    """Every variable's shift: the pair differences' mean (paired) or a's mean minus b's; the same bootstrap
    draws for every variable."""
    s, c = ctx.streamed, ctx.comparison
    return {v: shift_units(s.diff[v], None, c.n_boot, rng_for(c.seed, SEED_BOOT), h) if c.paired
            else shift_units(s.a[v], s.b[v], c.n_boot, rng_for(c.seed, SEED_BOOT), h) for v, h in ctx.heads.items()}


def summary(an: Analysis) -> dict[str, Any]:
    return {
        "delta": {v: s.statistic.values for v, s in an.shifts.items()},
        "delta_ci": {v: {"low": s.confidence_interval.low.values, "high": s.confidence_interval.high.values,
                         "method": s.method, "level": s.confidence_level} for v, s in an.shifts.items()},
        "delta_se": {v: s.standard_error.values for v, s in an.shifts.items()},
    }


def markdown(an: Analysis) -> list[str]:
    from analysis.markdown import fmt
    from analysis.summary import STANDARDISATION

    c = an.comparison
    a, b = c.a, c.b
    lines = [
        "",
        "## Head shifts",
        "",
        f"delta = mean over `{a}` prompts - mean over `{b}` prompts, per head, with 95% BCa bootstrap "
        "intervals (summary.json `delta`, `delta_ci`, arrays indexed [layer][head]). A raw delta mixes how far a "
        "head moves with how noisy it is, so every shift is also given standardised: "
        f"{STANDARDISATION[c.design]} (summary.json `delta_z`, `effect_size`, with `delta_z_ci` = the delta "
        "interval in SE units and `effect_size_ci`, a percentile interval over the same bootstrap). delta_z grows "
        "with the prompt count, d does not. Min-effect q: the per-head test of |delta kl_norm| > "
        f"{fmt(c.min_effect['kl_norm'])} (below). Largest |delta kl_norm|:",
        "",
        "| head | role | delta kl_norm | 95% CI | delta_z | d [95% CI] | delta chi | 95% CI | per-head p | BH q "
        "| min-effect q |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    dk, dc = an.shifts["kl_norm"], an.shifts["chi"]
    tk = an.circuit_tests["kl_norm"]
    zk = an.standardised["kl_norm"]
    flat = dk.statistic.stack(unit=("layer", "head"))  # layer-major, labelled by (layer, head)
    for k in np.argsort(-np.nan_to_num(np.abs(flat.values)))[:10]:
        at = {"layer": int(flat["layer"].values[k]), "head": int(flat["head"].values[k])}

        def value(x) -> float:
            return float(x.sel(at))

        lines.append(
            f"| {head_label(**at)} | {c.circuit.role_of(**at) or '-'} | {value(dk.statistic):+.4f} | "
            f"[{value(dk.confidence_interval.low):+.4f}, {value(dk.confidence_interval.high):+.4f}] | "
            f"{fmt(value(zk.statistic))} | {fmt(value(zk.effect_size))} [{fmt(value(zk.effect_size_interval.low))}, "
            f"{fmt(value(zk.effect_size_interval.high))}] | "
            f"{value(dc.statistic):+.4f} | [{value(dc.confidence_interval.low):+.4f}, "
            f"{value(dc.confidence_interval.high):+.4f}] | {fmt(value(tk.per_head.pvalue))} | {fmt(value(tk.q_bh))} | "
            f"{fmt(value(tk.min_effect.q_bh))} |"
        )
    return lines


def figures(an: Analysis) -> tuple[str, ...]:
    return FIGURES[2:] if an.comparison.circuit.absent else FIGURES  # without a circuit: every head in fig3


def draw(name: str, an: Analysis):
    return {"fig1_one_head": one_head, "fig2_circuit_heads": circuit_grid, "fig3_noncircuit_heads": other_grid}[name](an)


def one_head(an: Analysis):
    """Fig. 1: the circuit head with the largest |delta kl_norm| in the (KL, chi) plane."""
    from analysis.figures import head_panel, legend, legend_outside, plt

    delta = np.where(an.comparison.mask.values, np.abs(np.nan_to_num(an.delta("kl_norm").values)), -1)
    layer, head = np.unravel_index(int(np.argmax(delta)), delta.shape)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    head_panel(ax, an, layer, head, arrow=True, small=False)
    ax.set_xlabel("KL / log n  (kl_norm)")
    ax.set_ylabel("chi")
    role = an.comparison.circuit.role_of(layer, head) or "non-circuit"
    ax.set_title(f"head {head_label(layer, head)} ({role}): delta KL = {float(an.delta('kl_norm')[layer, head]):+.3f}")
    legend_outside(ax, handles=legend(an), fontsize=8)
    return fig


def circuit_grid(an: Analysis):
    """Fig. 2: every circuit head by role, arrow from condition a's mean to condition b's."""
    from analysis.figures import head_grid

    c = an.comparison
    heads, titles = [], []
    for role, members in c.circuit.roles.items():
        for layer, head in sorted(members):
            if (layer, head) not in heads:
                heads.append((layer, head))
                titles.append(f"{role} {head_label(layer, head)}")
    return head_grid(an, heads, titles, f"circuit heads ({c.circuit.name}): {c.a} -> {c.b}", arrow=True)


def other_grid(an: Analysis):
    """Fig. 3: every non-circuit head."""
    from analysis.figures import head_grid

    heads = [(int(l), int(h)) for l, h in zip(*np.nonzero(~an.comparison.mask.values))]
    title = "every head (no circuit)" if an.comparison.circuit.absent else "non-circuit heads"
    return head_grid(an, heads, [head_label(l, h) for l, h in heads], title, arrow=True)
