"""Reading a store's causal effects (CONTRACT.md schema 2): which kinds it holds, and the per-prompt
effects of one kind on the prompts that have a task target.

Store names relied on: attribute ``effects`` (the kinds computed, a list), variables ``effect_<kind>``
(condition, prompt, layer, head) = metric with that head intervened on minus the clean metric, NaN
where the prompt has no target (so the clean ``metric`` itself is not needed here).
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
    return [k for k in dict.fromkeys(kinds) if effect_variable(k) in ds.data_vars]


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
