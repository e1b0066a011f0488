"""Significance vs prompt count: subsample n prompts per condition (10 up to all) and watch the
Mann-Whitney p-values, the AUC and the bootstrap CI widths move."""

from __future__ import annotations

import numpy as np
from scipy import stats

from analysis.circuit_tests import u_statistics
from analysis.shifts import bootstrap_delta, mean_delta, percentile_interval


def curve_sizes(n_max: int, smallest: int = 10, points: int = 8) -> list[int]:
    """Roughly geometric prompt counts from `smallest` up to n_max, always ending at n_max."""
    if n_max <= smallest:
        return [n_max]
    sizes = np.unique(np.round(np.geomspace(smallest, n_max, points)).astype(int))
    return [int(s) for s in sizes]


def prompt_curve(xa: dict[str, np.ndarray], xb: dict[str, np.ndarray], mask: np.ndarray, *,
                 rng: np.random.Generator, repeats: int = 20, n_boot: int = 200) -> dict[str, list]:
    """Table (column name -> list over sizes) of medians over `repeats` random subsamples.

    xa, xb: variable -> [n, layer, head] for the two conditions (must hold "kl_norm" and "chi").
    Columns: n (prompts per condition), mw_p_<var> (one-sided Mann-Whitney p, circuit greater),
    auc_<var> with auc_<var>_q25/_q75, ci_width_<var> (mean over heads of the 95% percentile CI width).
    """
    n_a, n_b = xa["kl_norm"].shape[0], xb["kl_norm"].shape[0]
    flat_mask = np.ravel(mask)
    table: dict[str, list] = {"n": []}
    for n in curve_sizes(min(n_a, n_b)):
        reps = 1 if n == n_a == n_b else repeats
        picks = [(rng.choice(n_a, n, replace=False), rng.choice(n_b, n, replace=False)) for _ in range(reps)]
        table["n"].append(n)
        for var in ("kl_norm", "chi"):
            deltas = np.stack([np.ravel(mean_delta(xa[var][ia], xb[var][ib])) for ia, ib in picks])
            absd = np.abs(deltas)
            keep = np.isfinite(absd).all(axis=0)
            m = flat_mask[keep]
            p = stats.mannwhitneyu(absd[:, keep][:, m], absd[:, keep][:, ~m], axis=1, alternative="greater").pvalue
            auc = u_statistics(absd[:, keep], m) / (m.sum() * (~m).sum())
            widths = []
            for ia, ib in picks[: max(1, reps // 4)]:  # CI width is smooth in n; a few repeats suffice
                ci = percentile_interval(bootstrap_delta(xa[var][ia], xb[var][ib], n_boot, rng), 0.95)
                widths.append(np.nanmean(ci.high - ci.low))
            table.setdefault(f"mw_p_{var}", []).append(float(np.median(p)))
            table.setdefault(f"auc_{var}", []).append(float(np.median(auc)))
            table.setdefault(f"auc_{var}_q25", []).append(float(np.quantile(auc, 0.25)))
            table.setdefault(f"auc_{var}_q75", []).append(float(np.quantile(auc, 0.75)))
            table.setdefault(f"ci_width_{var}", []).append(float(np.median(widths)))
    return table
