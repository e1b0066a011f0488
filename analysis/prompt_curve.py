"""Significance vs prompt count: subsample n prompts per condition (10 up to all) and watch the
Mann-Whitney p-values, the AUC, the bootstrap CI widths and the lead test's permutation p-value move.

Paired designs subsample pairs (the same rows of a and b). The lead test's permutation p (U of |delta_z|
against label permutations, as in the report) is computed on the first `perm_repeats` subsamples of each
size with `n_perm` permutations each (few, to stay cheap: its smallest value is 1 / (n_perm + 1))."""

from __future__ import annotations

import numpy as np
from scipy import stats

from analysis.circuit_tests import circuit_permutation_test, u_statistics
from analysis.shifts import bootstrap_mean, percentile_interval
from analysis.standardised import INDEPENDENT, PAIRED, permutation_null, prompt_samples, standardised


def curve_sizes(n_max: int, smallest: int = 10, points: int = 8) -> list[int]:
    """Roughly geometric prompt counts from `smallest` up to n_max, always ending at n_max."""
    if n_max <= smallest:
        return [n_max]
    sizes = np.unique(np.round(np.geomspace(smallest, n_max, points)).astype(int))
    return [int(s) for s in sizes]


def prompt_curve(xa: dict[str, np.ndarray], xb: dict[str, np.ndarray], mask: np.ndarray, *,
                 rng: np.random.Generator, repeats: int = 20, n_boot: int = 200, paired: bool = False,
                 perm_rng: np.random.Generator | None = None, n_perm: int = 99, perm_repeats: int = 5
                 ) -> dict[str, list]:
    """Table (column name -> list over sizes) of medians over `repeats` random subsamples.

    xa, xb: variable -> [n, layer, head] for the two conditions (must hold "kl_norm" and "chi"); paired: row i
    of xa and of xb are a pair (subsamples then take whole pairs).
    Columns: n (prompts per condition), mw_p_<var> (one-sided Mann-Whitney p on raw |delta|, the posts'
    test), auc_<var> with auc_<var>_q25/_q75, ci_width_<var> (mean over heads of the 95% percentile CI
    width), auc_z_<var> and mw_p_z_<var> (the same rank test on |delta_z|), perm_p_<var> (the lead test: U of
    |delta_z| against label permutations; median over the first perm_repeats subsamples, n_perm permutations
    each; None when perm_rng is None).
    """
    n_a, n_b = xa["kl_norm"].shape[0], xb["kl_norm"].shape[0]
    flat_mask = np.ravel(mask)
    design = PAIRED if paired else INDEPENDENT
    table: dict[str, list] = {"n": []}
    for n in curve_sizes(min(n_a, n_b)):
        reps = 1 if n == n_a == n_b else repeats
        if paired:
            picks = [(ia, ia) for ia in (rng.choice(n_a, n, replace=False) for _ in range(reps))]
        else:
            picks = [(rng.choice(n_a, n, replace=False), rng.choice(n_b, n, replace=False)) for _ in range(reps)]
        table["n"].append(n)
        for var in ("kl_norm", "chi"):
            # each subsample's units of one prompt (independent samples for delta and its interval, the design's
            # for delta_z and the lead test)
            units = [prompt_samples(xa[var][ia], xb[var][ib], INDEPENDENT) for ia, ib in picks]
            independent = [standardised(u) for u in units]  # its delta is the raw shift in either design
            deltas = np.stack([np.ravel(s["delta"]) for s in independent])
            absd = np.abs(deltas)
            keep = np.isfinite(absd).all(axis=0)
            m = flat_mask[keep]
            p = stats.mannwhitneyu(absd[:, keep][:, m], absd[:, keep][:, ~m], axis=1, alternative="greater").pvalue
            auc = u_statistics(absd[:, keep], m) / (m.sum() * (~m).sum())
            widths = []
            for u in units[: max(1, reps // 4)]:  # CI width is smooth in n; a few repeats suffice
                ci = percentile_interval(bootstrap_mean(u.a, n_boot, rng) - bootstrap_mean(u.b, n_boot, rng), 0.95)
                widths.append(np.nanmean(ci.high - ci.low))
            table.setdefault(f"mw_p_{var}", []).append(float(np.median(p)))
            table.setdefault(f"auc_{var}", []).append(float(np.median(auc)))
            table.setdefault(f"auc_{var}_q25", []).append(float(np.quantile(auc, 0.25)))
            table.setdefault(f"auc_{var}_q75", []).append(float(np.quantile(auc, 0.75)))
            table.setdefault(f"ci_width_{var}", []).append(float(np.median(widths)))
            samples = units if design == INDEPENDENT else [prompt_samples(xa[var][ia], xb[var][ib], design)
                                                             for ia, ib in picks]
            points = independent if design == INDEPENDENT else [standardised(u) for u in samples]
            z = np.stack([np.ravel(s["t"]) for s in points])
            absz = np.abs(z)
            keep = np.isfinite(absz).all(axis=0)
            m = flat_mask[keep]
            pz = stats.mannwhitneyu(absz[:, keep][:, m], absz[:, keep][:, ~m], axis=1, alternative="greater").pvalue
            table.setdefault(f"mw_p_z_{var}", []).append(float(np.median(pz)))
            table.setdefault(f"auc_z_{var}", []).append(float(np.median(u_statistics(absz[:, keep], m)
                                                                         / (m.sum() * (~m).sum()))))
            if perm_rng is None:
                table.setdefault(f"perm_p_{var}", []).append(None)
                continue
            perm = []
            for u, row in zip(samples[:perm_repeats], z):
                _, null_z = permutation_null(u, n_perm, perm_rng)
                perm.append(circuit_permutation_test(row, null_z.reshape(n_perm, -1), flat_mask).pvalue)
            table.setdefault(f"perm_p_{var}", []).append(float(np.median(perm)))
    return table
