"""Cheap methods against exact patching: do attribution patching (AtP), AtP* and the diagnostics' shifts
rank heads the way the exact effects do, and do they find the causal circuit?

Per exact kind K (analysis.causal's mean effect and causal circuit), each method gives a per-head
magnitude: |mean AtP_K| (a signed first-order estimate of K), the mean of AtP*_K (unsigned already, an
estimate of |K|; its absolute value changes nothing) and |delta var| of every diagnostic. Means of the
effect estimates run over exactly the prompts K's mean runs over. Spearman of magnitude with
|mean effect| gets a percentile interval from the same joint prompt bootstrap as the causal section
(analysis.causal.joint_bootstrap, the same draws), and each method's top-k heads (k = the causal
circuit's size) are scored against the circuit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np
import xarray as xr

from analysis import causal as ca
from analysis.effects import cheap_family, cheap_kinds, effect_variable, exact_kinds
from analysis.findings import CausalEffects, CheapVsExact, Comparison, MethodAgreement
from analysis.labels import like
from analysis.results import ShiftResult
from analysis.units import Units

if TYPE_CHECKING:
    from analysis.streaming import Streamed

Head = tuple[int, int]
DIAGNOSTIC = "diagnostic"  # family of the methods that are a diagnostic's shift


def diagnostic_method(var: str) -> str:
    """Method name of a diagnostic's |delta|."""
    return f"delta_{var}"


def top_heads(magnitude: xr.DataArray, k: int) -> list[Head]:
    """The k heads with the largest finite magnitude, largest first (ties: layer-major order)."""
    flat = np.asarray(magnitude, dtype=float).ravel()
    order = [i for i in np.argsort(-np.nan_to_num(flat, nan=-np.inf), kind="stable") if np.isfinite(flat[i])]
    n_heads = magnitude.sizes["head"]
    return [(int(magnitude["layer"].values[i // n_heads]), int(magnitude["head"].values[i % n_heads]))
            for i in order[:k]]


def missed_heads(circuit: list[Head], nominated: list[Head], effect: xr.DataArray) -> list[Head]:
    """Circuit heads the method did not nominate, largest |mean effect| first."""
    left = [h for h in circuit if h not in set(nominated)]
    return sorted(left, key=lambda h: -abs(float(effect.sel(layer=h[0], head=h[1]))))


def agreement(name: str, family: str, description: str, magnitude: xr.DataArray, boot_magnitude: np.ndarray,
              exact: CausalEffects, boot_abs_effect: np.ndarray, signed: xr.DataArray | None = None) -> MethodAgreement:
    """One method against one exact kind: Spearman with interval, top-k precision/recall, the misses."""
    spearman = ca.effect_spearman(magnitude.values, np.abs(exact.mean.statistic.values), boot_magnitude,
                                  boot_abs_effect)
    nominated = top_heads(magnitude, len(exact.circuit))
    precision, recall = ca.precision_recall(nominated, exact.circuit)
    return MethodAgreement(name, family, description, magnitude, signed, spearman, nominated, precision, recall,
                           missed_heads(exact.circuit, nominated, exact.mean.statistic))


def methods_against(ds: xr.Dataset, comparison: Comparison, streamed: Streamed, exact: CausalEffects,
                    used: list[str], parts: Mapping[str, Mapping[str, Units]], shifts: dict[str, ShiftResult],
                    rng: np.random.Generator) -> CheapVsExact:
    """Every cheap method against exact kind `exact.kind`, from the units of the exact kind and of its estimates
    on the conditions `used` (parts: name -> condition -> units). rng must be the causal section's joint-bootstrap
    stream: the draws are then the same, so a diagnostic's interval here equals the one reported there."""
    c = comparison
    diagnostics = {v: (streamed.a[v], streamed.b[v]) for v in shifts}
    boot_deltas, boot_means = ca.joint_bootstrap(diagnostics, c.a, c.b, used, parts, c.n_boot, rng, c.shape)
    boot_abs_effect = np.abs(boot_means[exact.kind])
    methods = {}
    for kind in cheap_kinds(ds, exact.kind):
        family, _ = cheap_family(kind)
        # a head with no finite estimate stays NaN and is never ranked
        mean = like(exact.mean.statistic, Units.concat(list(parts[kind].values())).centre().reshape(c.shape))
        description = str(ds[effect_variable(kind)].attrs.get("description", ""))
        methods[kind] = agreement(kind, family, description, abs(mean), np.abs(boot_means[kind]), exact,
                                  boot_abs_effect, signed=mean if family == "atp" else None)
    for v, shifted in shifts.items():
        description = str(ds[v].attrs.get("long_name", "")) if v in ds else ""
        methods[diagnostic_method(v)] = agreement(diagnostic_method(v), DIAGNOSTIC, description,
                                                  abs(shifted.statistic), np.abs(boot_deltas[v]), exact,
                                                  boot_abs_effect)
    return CheapVsExact(exact.kind, len(exact.circuit), methods)


def cheap_vs_exact(ds: xr.Dataset, comparison: Comparison, streamed: Streamed, causal: dict[str, CausalEffects],
                   samples: Mapping[str, tuple[list[str], Mapping[str, Mapping[str, Units]]]],
                   shifts: dict[str, ShiftResult],
                   rng_of_kind: Callable[[], np.random.Generator]) -> dict[str, CheapVsExact]:
    """Every exact kind against its cheap methods, when the store holds at least one AtP or AtP* estimate
    of an exact kind it also holds (else {}: the diagnostics alone are the causal section's business).
    samples: kind -> (conditions averaged over, name -> condition -> units of the kind and its estimates).
    rng_of_kind(): a fresh generator of the causal section's joint-bootstrap stream for each kind."""
    exact = [k for k in exact_kinds(ds) if k in causal]
    if not any(cheap_kinds(ds, k) for k in exact):
        return {}
    return {k: methods_against(ds, comparison, streamed, causal[k], *samples[k], shifts, rng_of_kind()) for k in exact}
