"""Reading a store's causal effects (CONTRACT.md schema 2): which kinds it holds, and the per-prompt
effects of one kind on the prompts that have a task target.

Store names relied on: attribute ``effects`` (the kinds computed, a list), variables ``effect_<kind>``
(condition, prompt, layer, head) = metric with that head intervened on minus the clean metric, NaN
where the prompt has no target (so the clean ``metric`` itself is not needed here).

Cheap kinds: ``atp_K`` (attribution patching, a signed first-order estimate of exact kind K) and
``atpstar_K`` (AtP* with GradDrop, an unsigned magnitude estimate of |K|); every other kind is exact.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import xarray as xr

from analysis.errors import AnalysisError
from analysis.labels import per_head
from analysis.store import condition_array, conditions

EFFECT_PREFIX = "effect_"  # store variable of effect kind K: effect_K


def effect_variable(kind: str) -> str:
    return f"{EFFECT_PREFIX}{kind}"


def is_effect_variable(name: str) -> bool:
    """Effects are per-head like the diagnostics but are not compared between conditions."""
    return str(name).startswith(EFFECT_PREFIX)


def effect_kinds(ds: xr.Dataset) -> list[str]:
    """The kinds the store's ``effects`` attribute lists whose ``effect_<kind>`` variable is present."""
    raw = ds.attrs.get("effects")
    if raw is None:
        return []
    if isinstance(raw, str):  # tolerate a JSON list or "zero,patch" written as text
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raw = raw.split(",")
    kinds = [str(k).strip() for k in np.atleast_1d(raw) if str(k).strip()]
    # per-head effects only: the (layer, position) patching variables (effect_patch_resid, ...) have a section of
    # their own (analysis.sections.position_patching) even when a run lists them among its effects
    return [k for k in dict.fromkeys(kinds) if effect_variable(k) in ds.data_vars
            and set(ds[effect_variable(k)].dims) == {"condition", "prompt", "layer", "head"}]


# prefix of a cheap kind -> its family; longest first, so "atpstar_" is never read as "atp_"
CHEAP_FAMILIES = {"atpstar_": "atpstar", "atp_": "atp"}


def cheap_family(kind: str) -> tuple[str, str] | None:
    """(family, exact kind estimated) of a cheap kind ('atp_patch' -> ('atp', 'patch')); None for exact kinds."""
    for prefix, family in CHEAP_FAMILIES.items():
        if kind.startswith(prefix):
            return family, kind[len(prefix):]
    return None


def exact_kinds(ds: xr.Dataset) -> list[str]:
    """The store's exact effect kinds (every kind that is not an AtP-family estimate), in store order."""
    return [k for k in effect_kinds(ds) if cheap_family(k) is None]


def cheap_kinds(ds: xr.Dataset, exact: str) -> list[str]:
    """The store's cheap estimates of exact kind ``exact`` (atp before atpstar)."""
    found = {cheap_family(k): k for k in effect_kinds(ds)}
    return [found[(family, exact)] for family in ("atp", "atpstar") if (family, exact) in found]


def check_kind(ds: xr.Dataset, kind: str) -> None:
    kinds = effect_kinds(ds)
    if kind not in kinds:
        held = f"it has {', '.join(kinds)}" if kinds else "it has none (run with --effects)"
        raise AnalysisError(f"store has no causal effects of kind {kind!r} (variable {effect_variable(kind)}); {held}")


@dataclasses.dataclass(frozen=True)
class EffectSample:
    """One kind's per-prompt effects on the prompts with a target, and where each prompt came from.

    Row i is prompt ``index[i]`` of ``condition_array(ds, condition[i], ...)``: the same row order the
    diagnostics of that condition have, so one bootstrap resample can drive both.
    """

    kind: str
    values: xr.DataArray  # (prompt, layer, head) float64
    condition: np.ndarray  # condition name of each row
    index: np.ndarray  # row's prompt position within its condition's diagnostics
    conditions: tuple[str, ...]  # the conditions used, in store order

    @property
    def n_prompts(self) -> int:
        return int(self.values.sizes["prompt"])


def effect_sample(ds: xr.Dataset, kind: str, prefer: str | None = None) -> EffectSample:
    """Effects of one kind on condition ``prefer`` when it has any finite effect, else on every condition
    that has one (e.g. condition a is "random" and only the other condition has targets)."""
    check_kind(ds, kind)
    variable = effect_variable(kind)
    per_condition = {c: condition_array(ds, c, variable) for c in conditions(ds)}
    with_target = {c: np.flatnonzero(np.isfinite(x.values).any(axis=(1, 2))) for c, x in per_condition.items()}
    if prefer is not None and with_target.get(prefer, np.array([])).size:
        used = [prefer]
    else:
        used = [c for c in per_condition if with_target[c].size]
    if not used:
        raise AnalysisError(f"{variable} has no finite value: no prompt of the store has a task target")
    values = np.concatenate([per_condition[c].values[with_target[c]] for c in used])
    condition = np.concatenate([np.full(with_target[c].size, c, dtype=object) for c in used])
    index = np.concatenate([with_target[c] for c in used])
    labelled = per_head(values, ds, name=variable).rename({"dim_0": "prompt"})
    return EffectSample(kind, labelled, condition, index, tuple(used))


def aligned_effects(ds: xr.Dataset, kind: str, sample: EffectSample) -> xr.DataArray:
    """Effects of ``kind`` on exactly the prompts (rows, in order) of another kind's sample, so two kinds'
    per-head means and bootstrap replicates average over the same prompts."""
    check_kind(ds, kind)
    variable = effect_variable(kind)
    per_condition = {c: condition_array(ds, c, variable).values for c in sample.conditions}
    rows = [per_condition[c][i] for c, i in zip(sample.condition, sample.index)]
    return per_head(np.asarray(rows, dtype=np.float64), ds, name=variable).rename({"dim_0": "prompt"})
