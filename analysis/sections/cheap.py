"""Cheap methods against exact patching (stores with AtP or AtP* estimates of an exact effect kind): per exact
kind, every cheap method's per-head ranking against |mean effect|, its top-k heads against the causal circuit,
and the verdict; its figure (analysis.cheap computes it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis import cheap
from analysis._util import quiet
from analysis.findings import Analysis, CausalEffects, CheapVsExact, MethodAgreement
from analysis.labels import head_label
from analysis.resampling import rng_for
from analysis.sections import SKIP
from analysis.seeds import SEED_JOINT
from analysis.palette import OKABE_ITO

NAME = "cheap"
CHEAP_MARKERS = {"atp": "o", "atpstar": "^", "diagnostic": "s"}  # one marker style per method family
CHEAP_COLOURS = {"atp": OKABE_ITO["blue"], "atpstar": OKABE_ITO["orange"], "diagnostic": OKABE_ITO["green"]}
RANKED_DIAGNOSTIC = "delta_kl_norm"  # the diagnostic drawn against the effect estimates (all are in the table)


def compute(ctx) -> dict[str, CheapVsExact]:
    """From the causal section's effect units, with its joint-bootstrap stream (the same draws)."""
    if "causal" not in ctx.results:
        return SKIP
    c = ctx.comparison
    methods = cheap.cheap_vs_exact(ctx.ds, c, ctx.streamed, ctx.results["causal"], ctx.shared["effect_units"],
                                   ctx.results["shifts"], lambda: rng_for(c.seed, SEED_JOINT))
    return methods or SKIP


def summary(an: Analysis) -> dict[str, Any]:
    return {"cheap_vs_exact": {kind: {m: method_entry(a, an.causal[kind]) for m, a in x.methods.items()}
                               for kind, x in an.cheap.items()},
            "cheap_vs_exact_verdict": {kind: verdict_entry(x) for kind, x in an.cheap.items()}}


def method_entry(m: MethodAgreement, exact: CausalEffects) -> dict[str, Any]:
    """One cheap method against one exact kind; missed heads carry their exact mean effect."""
    r = m.spearman
    effect = exact.mean.statistic
    return {
        "family": m.family, "estimate": m.magnitude.values,
        "spearman": {"rho": r.statistic, "low": r.confidence_interval.low, "high": r.confidence_interval.high,
                     "p": r.pvalue, "n_heads": r.n, "alternative": r.alternative,
                     "x": magnitude_label(m), "y": "|mean effect|",
                     "ci": "percentile, prompts resampled within each condition"},
        "precision": m.precision, "recall": m.recall, "top_k": len(exact.circuit),
        "method_top_k": [list(h) for h in m.top_k],
        "missed": [[*h, effect.sel(layer=h[0], head=h[1]).item()] for h in m.missed],
    }


def verdict_entry(x: CheapVsExact) -> dict[str, Any]:
    return {"best": x.best, "ties": x.ties,
            "rule": "highest Spearman rho; ties: methods whose 95% interval overlaps the best one's"}


def magnitude_label(m: MethodAgreement) -> str:
    """What a method ranks, in words (summary.json and report.md share it)."""
    if m.family == "diagnostic":
        return f"|delta {m.name.removeprefix('delta_')}|"
    return f"|mean {m.name}|" if m.family == "atp" else f"mean {m.name} (unsigned)"


def markdown(an: Analysis) -> list[str]:
    """The "Cheap methods against exact patching" section: per exact kind, how each cheap method ranks the
    heads against the exact |mean effect| and which causal-circuit heads its top k misses."""
    from analysis.markdown import section

    return section("Cheap methods against exact patching",
                   "Cheap methods: `atp_K`, attribution patching, a signed first-order estimate of exact effect K "
                   "from one forward and one backward pass (ranked by |mean|); `atpstar_K`, AtP* with GradDrop, an "
                   "unsigned estimate of |K| (ranked by its mean); and every diagnostic's |delta| between the two "
                   "conditions. Effect estimates are averaged over the same prompts as the exact effect. "
                   "**Spearman (two-sided p)** of each method's per-head value with |mean exact effect| across "
                   "heads, 95% percentile interval from the causal section's prompt bootstrap (prompts resampled "
                   "within each condition, the same draws, every quantity recomputed). **Top k**: the method's k "
                   "largest heads, k = the exact kind's causal-circuit size, scored against that circuit "
                   "(precision = share of the top k in the circuit, recall = share of the circuit in the top k; "
                   "equal unless the method has fewer than k finite heads); missed = circuit heads outside the top "
                   "k, with their exact mean effect. summary.json `cheap_vs_exact`, `cheap_vs_exact_verdict`.",
                   [cheap_kind_lines(an, kind, x) for kind, x in an.cheap.items()])


def cheap_kind_lines(an: Analysis, kind: str, x: CheapVsExact) -> list[str]:
    from analysis.markdown import fmt, heads_text, table_cell

    e = an.causal[kind]
    effect = e.mean.statistic
    lines = [f"### effect_{kind}", "",
             f"Causal circuit ({x.k} head(s)): {heads_text(e.circuit) or 'none'}."]
    lines += [f"- `{m}`: {a.description}" for m, a in x.methods.items() if a.family != "diagnostic" and a.description]
    lines += ["", "| method | ranks | Spearman rho | 95% CI | p | precision | recall | missed (exact mean effect) |",
              "|---|---|---|---|---|---|---|---|"]
    for m, a in x.methods.items():
        r = a.spearman
        missed = "; ".join(f"{head_label(*h)} ({float(effect.sel(layer=h[0], head=h[1])):+.4f})"
                           for h in a.missed) or ("none" if x.k else "n/a (empty circuit)")
        lines.append(f"| `{m}` | {table_cell(magnitude_label(a))} | {fmt(r.statistic)} | "
                     f"[{fmt(r.confidence_interval.low)}, {fmt(r.confidence_interval.high)}] | {fmt(r.pvalue)} | "
                     f"{fmt(a.precision)} | {fmt(a.recall)} | {missed} |")
    lines += ["", verdict_line(kind, x)]
    return lines


def verdict_line(kind: str, x: CheapVsExact) -> str:
    """Which method agrees best with the exact effects, and which the intervals cannot rank below it."""
    from analysis.markdown import fmt

    best = x.best
    if best is None:
        return (f"**Verdict (effect_{kind})**: no method's Spearman rho is defined (too few finite heads or "
                "constant values).")
    r = x.methods[best].spearman
    said = (f"**Verdict (effect_{kind})**: `{best}` agrees best with the exact effects (rho = {fmt(r.statistic)}, "
            f"95% CI [{fmt(r.confidence_interval.low)}, {fmt(r.confidence_interval.high)}])")
    if x.ties:
        return said + (f"; but the intervals of {', '.join(f'`{m}`' for m in x.ties)} overlap its interval, so these "
                       f"data do not rank {'it' if len(x.ties) == 1 else 'them'} below `{best}`.")
    return said + "; no other method's interval overlaps its interval."


def figures(an: Analysis) -> tuple[str, ...]:
    return ("fig10_cheap_vs_exact",)


def draw(name: str, an: Analysis):
    return cheap_vs_exact(an)


def _outlined_scatter(ax, x: np.ndarray, y: np.ndarray, outlined: np.ndarray, *, marker: str, colour: str,
                      label: str) -> None:
    """Points of one method; the outlined ones (causal-circuit heads) larger, with a black edge."""
    ax.scatter(x[~outlined], y[~outlined], s=18, marker=marker, c=colour, edgecolors="none", alpha=0.8, label=label)
    ax.scatter(x[outlined], y[outlined], s=40, marker=marker, c=colour, edgecolors="k", linewidths=1.2, zorder=3)


def cheap_vs_exact(an: Analysis):
    """Fig. 10: per exact kind (one row), cheap estimates against the exact mean effect per head. Left: mean
    AtP against the mean effect, both signed, with the y = x line a perfect first-order estimate lies on.
    Right: rank of each method's value (|mean AtP|, mean AtP*, |delta kl_norm|) against the rank of
    |mean effect| (1 = largest), since AtP* and |delta| are on other scales. Black outline: causal circuit."""
    from matplotlib.lines import Line2D

    from analysis.circuit_tests import descending_ranks
    from analysis.figures import legend_outside, plt

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
            legend_outside(signed_ax, fontsize=7)
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
        legend_outside(rank_ax, handles=handles, fontsize=7)
    return fig
