"""Causal effects against the diagnostics (stores with effect variables): per exact effect kind, the per-head mean
effect with a BCa interval and a one-sample t-test, the causal circuit, Spearman of |delta| with |mean effect|
(joint bootstrap interval) and the precision and recall of the diagnostics' flagged heads; its figure.

One pass per condition reduces every effect kind (and its AtP estimates) to units; condition a's and b's units
have the diagnostics' unit boundaries, so the joint bootstraps move every effect unit with its diagnostics. The
units stay in ctx.shared["effect_units"] for the cheap-vs-exact section."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from analysis import causal as ca
from analysis import circuit_tests as ct
from analysis.effects import cheap_kinds, effect_variable, exact_kinds
from analysis.errors import AnalysisError
from analysis.findings import FLAG_LEVEL, TESTED, Analysis, CausalEffects
from analysis.labels import head_label, like
from analysis.resampling import rng_for
from analysis.sections import SKIP
from analysis.seeds import SEED_EFFECT, SEED_JOINT
from analysis.store import condition_prompts, conditions
from analysis.streaming import held_bytes, stream_effects
from analysis.units import Units, unit_size

NAME = "causal"


def compute(ctx) -> dict[str, CausalEffects]:
    """Every exact kind (an AtP estimate gets the cheap-vs-exact section, AtP* is a magnitude), from the effect
    variables' units: one pass per condition over every kind, conditions other than a only when a kind's effects
    are not on a. Units of a and b have the diagnostics' size; others unit_size(prompts, g_max). Every kind gets
    the same bootstrap draws (same seeds)."""
    ds, c, s, rule = ctx.ds, ctx.comparison, ctx.streamed, ctx.rule
    shifts, tests = ctx.results["shifts"], ctx.results["circuit_tests"]
    kinds = exact_kinds(ds)
    if not kinds:
        return SKIP
    estimates = {k: cheap_kinds(ds, k) for k in kinds}
    every = [*kinds, *(e for k in kinds for e in estimates[k])]
    heads = like(c.mask, np.zeros(c.shape))
    streamed: dict[str, dict[str, tuple[Units, int]]] = {}
    sizes: dict[str, int] = {}

    def of(condition: str) -> dict[str, tuple[Units, int]]:
        if condition not in streamed:
            n = int(condition_prompts(ds, condition, effect_variable(kinds[0])).sizes["prompt"])
            sizes[condition] = s.size if condition in (c.a, c.b) else unit_size(n, ctx.g_max)
            left = ctx.memory - held_bytes(streamed, s, ctx.results)
            streamed[condition] = stream_effects(ds, condition, every, sizes[condition], left, ctx.in_flight)
        return streamed[condition]

    causal, samples = {}, {}
    for kind in kinds:
        variable = effect_variable(kind)
        targets = lambda cond: of(cond)[kind][1] if of(cond) else 0  # noqa: E731
        used = [c.a] if targets(c.a) else [x for x in conditions(ds) if targets(x)]
        if not used:
            raise AnalysisError(f"{variable} has no finite value: no prompt of the store has a task target")
        parts = {name: {x: of(x)[name][0] for x in used} for name in [kind, *estimates[kind]]}
        samples[kind] = (used, parts)
        mean = ca.mean_effect(Units.concat(list(parts[kind].values())), sum(targets(x) for x in used), heads,
                              c.n_boot, rng_for(c.seed, SEED_EFFECT))
        diagnostics = {v: (s.a[v], s.b[v]) for v in TESTED}
        boot_deltas, boot_means = ca.joint_bootstrap(diagnostics, c.a, c.b, used, {kind: parts[kind]}, c.n_boot,
                                                     rng_for(c.seed, SEED_JOINT), c.shape)
        abs_mean = np.abs(mean.statistic.values)
        spearman = {v: ca.effect_spearman(np.abs(shifts[v].statistic.values), abs_mean, np.abs(boot_deltas[v]),
                                          np.abs(boot_means[kind])) for v in TESTED}
        circuit = ca.select_heads(mean.statistic, mean.pvalue, rule)
        flagged = {v: tests[v].flagged(FLAG_LEVEL) for v in TESTED}
        scores = {v: ca.precision_recall(flagged[v], circuit) for v in TESTED}
        causal[kind] = CausalEffects(kind, tuple(used), mean, ct.benjamini_hochberg(mean.pvalue), rule, circuit,
                                     spearman, flagged, {v: p for v, (p, _) in scores.items()},
                                     {v: r for v, (_, r) in scores.items()})
    ctx.shared["effect_units"] = samples  # kind -> (conditions averaged over, name -> condition -> units)
    ctx.scale[NAME] = {
        "streamed": True, "unit_prompts": sizes,
        "resampling": ("prompts resampled one by one (units of one prompt)" if max(sizes.values()) == 1
                       else "bootstrap over units of consecutive prompts (unit_prompts per condition; a and b: "
                            "the diagnostics' units, so the joint bootstraps move both together)"),
        "exact": "mean effects, t-tests and p-values, the causal circuit, the AtP means"}
    return causal


def summary(an: Analysis) -> dict[str, Any]:
    return {"effects": list(an.causal), "causal": {kind: causal_entry(e) for kind, e in an.causal.items()}}


def causal_entry(e: CausalEffects) -> dict[str, Any]:
    m = e.mean
    return {
        "conditions": list(e.conditions), "n_prompts": m.n,
        "mean": m.statistic.values,
        "ci": {"low": m.confidence_interval.low.values, "high": m.confidence_interval.high.values,
               "method": m.method, "level": m.confidence_level},
        "se": m.standard_error.values,
        "test": {"t": m.t.values, "p": m.pvalue.values, "q_bh": e.q_bh.values, "alternative": m.alternative,
                 "method": "one-sample t-test against 0 (scipy.stats.ttest_1samp)"},
        "circuit": [list(h) for h in e.circuit],
        "rule": e.rule.text(), "level": e.rule.level, "fraction": e.rule.fraction, "threshold": e.threshold,
        "spearman": {v: {"rho": r.statistic, "low": r.confidence_interval.low, "high": r.confidence_interval.high,
                         "p": r.pvalue, "n_heads": r.n, "alternative": r.alternative,
                         "x": f"|delta {v}|", "y": "|mean effect|",
                         "ci": "percentile, prompts resampled within each condition"} for v, r in e.spearman.items()},
        "flagged": {v: [list(h) for h in heads] for v, heads in e.flagged.items()},
        "flag_rule": f"per-head minimum-effect test of |delta| > x (summary `min_effect`), Benjamini-Hochberg "
                     f"q <= {FLAG_LEVEL:g}",
        "precision": e.precision, "recall": e.recall,
    }


def markdown(an: Analysis) -> list[str]:
    """The "Causal effects" section: per effect kind, the mean effects, the causal circuit and how well the
    diagnostics' shifts find it."""
    from analysis.markdown import section, streamed_note

    return section("Causal effects",
                   "An effect is the task metric with one head's output intervened on (zero: set to 0; mean: replaced "
                   "by its mean on the reference condition; patch: replaced by its pair partner's; atp_*: attribution-"
                   "patching estimates of these) minus the clean "
                   "metric, per prompt; negative = the task relies on the head. Means over the prompts with a task "
                   "target, with 95% BCa bootstrap intervals (prompts resampled with replacement); summary.json "
                   "`causal`, arrays indexed [layer][head]."
                   + streamed_note(an.comparison.scale, "causal", "mean effects, t-tests, the causal circuit"),
                   [causal_kind_lines(an, kind, e) for kind, e in an.causal.items()])


def causal_kind_lines(an: Analysis, kind: str, e: CausalEffects) -> list[str]:
    from analysis.markdown import fmt, heads_text

    c, m = an.comparison, e.mean
    lines = [
        f"### effect_{kind}",
        "",
        f"- Averaged over {m.n} prompt(s) of {', '.join(f'`{x}`' for x in e.conditions)}.",
        f"- **Per-head test (two-sided)**: one-sample t-test of the per-prompt effects against 0 "
        f"(`scipy.stats.ttest_1samp`), Benjamini-Hochberg q over all {c.mask.size} heads.",
        f"- **Causal circuit** (rule: {e.rule.text()}; cut |mean effect| >= {fmt(e.threshold)}): "
        f"{len(e.circuit)} head(s): {heads_text(e.circuit) or 'none'}. Use it as the report's circuit with "
        f"`--circuit effects:{kind}`.",
    ]
    for v in TESTED:
        r = e.spearman[v]
        lines.append(f"- **Spearman (two-sided p)** of |delta {v}| with |mean effect| across {r.n} heads: rho = "
                     f"{fmt(r.statistic)}, 95% CI [{fmt(r.confidence_interval.low)}, {fmt(r.confidence_interval.high)}] "
                     f"(percentile; prompts resampled within each condition, both quantities recomputed), "
                     f"p = {fmt(r.pvalue)}.")
    for v in TESTED:
        lines.append(f"- **Diagnostics vs causal circuit ({v})**: heads flagged by the per-head permutation test "
                     f"of |delta {v}| (two-sided, BH q <= {FLAG_LEVEL:g}): {len(e.flagged[v])} "
                     f"({heads_text(e.flagged[v]) or 'none'}); precision {fmt(e.precision[v])}, "
                     f"recall {fmt(e.recall[v])}.")
    lines += ["", "| head | role | mean effect | 95% CI | t-test p | BH q | causal circuit |",
              "|---|---|---|---|---|---|---|"]
    flat = m.statistic.stack(unit=("layer", "head"))
    in_circuit = set(e.circuit)
    for k in np.argsort(-np.nan_to_num(np.abs(flat.values)))[:10]:
        at = {"layer": int(flat["layer"].values[k]), "head": int(flat["head"].values[k])}
        lines.append(
            f"| {head_label(**at)} | {c.circuit.role_of(**at) or '-'} | {float(m.statistic.sel(at)):+.4f} | "
            f"[{float(m.confidence_interval.low.sel(at)):+.4f}, {float(m.confidence_interval.high.sel(at)):+.4f}] | "
            f"{fmt(float(m.pvalue.sel(at)))} | {fmt(float(e.q_bh.sel(at)))} | "
            f"{'yes' if (at['layer'], at['head']) in in_circuit else '-'} |")
    return lines


def figures(an: Analysis) -> tuple[str, ...]:
    return ("fig9_causal_effects",)


def draw(name: str, an: Analysis):
    return causal_effects(an)


def causal_effects(an: Analysis):
    """Fig. 9: per head, |delta kl_norm| against |mean effect|, one panel per effect kind. Colours: the
    report's circuit roles (grey: other heads); black outline: the kind's causal circuit."""
    from analysis.figures import plt
    from analysis.palette import CYCLE

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
    colours = {role: CYCLE[i % len(CYCLE)] for i, role in enumerate(roles)}
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
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=7)
    return fig
