"""Reading a jaxdiag store (CONTRACT.md schema) lazily: only the variables an analysis needs are loaded.

A store is a local path or an fsspec URL (``file://``, ``memory://``, ``s3://``, ...), as for ``jaxdiag run``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from analysis.errors import AnalysisError
from jaxdiag.paths import StoreLocation

DIMS = ("condition", "prompt", "layer", "head")


def open_store(path: str | Path | StoreLocation) -> xr.Dataset:
    """Open a Zarr store (a path or URL) lazily (dask-free: variables load on access) and check its dimensions."""
    path = StoreLocation.of(path, error=AnalysisError)
    if not path.exists():
        raise AnalysisError(f"store {str(path)!r} does not exist")
    try:
        ds = xr.open_zarr(path.zarr_store(read_only=True), chunks=None)
    except Exception as e:  # zarr raises several types for "not a store"
        raise AnalysisError(f"cannot open {str(path)!r} as a Zarr store: {type(e).__name__}: {e}".splitlines()[0]) from None
    missing = [d for d in DIMS if d not in ds.dims]
    if missing:
        raise AnalysisError(f"store {str(path)!r} lacks dimension(s) {', '.join(missing)}")
    return ds


def run_config(ds: xr.Dataset) -> dict[str, Any]:
    """The run config kept in the store's ``config`` attribute (JSON text or a mapping); {} if absent."""
    raw = ds.attrs.get("config")
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        raise AnalysisError("store attribute 'config' is not JSON") from None
    return value if isinstance(value, dict) else {}


def provenance(ds: xr.Dataset) -> dict[str, Any]:
    """The store attributes a report repeats (model, version, precision, ...), those present."""
    keys = ("model", "model_revision", "weights_sha256", "jaxdiag_version", "query_positions", "precision",
            "created", "complete")
    return {k: ds.attrs[k] for k in keys if k in ds.attrs}


def conditions(ds: xr.Dataset) -> list[str]:
    return [str(c) for c in ds["condition"].values]


def check_variables(ds: xr.Dataset, names: list[str]) -> None:
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        raise AnalysisError(f"store lacks variable(s) {', '.join(missing)}")


def check_condition(ds: xr.Dataset, condition: str) -> None:
    known = conditions(ds)
    if condition not in known:
        raise AnalysisError(f"unknown condition {condition!r}: the store has {', '.join(known)}")


def condition_values(ds: xr.Dataset, condition: str, variable: str) -> np.ndarray:
    """float64 [n_prompts, layer, head] of one condition (condition_array without its labels)."""
    return condition_array(ds, condition, variable).values


def condition_array(ds: xr.Dataset, condition: str, variable: str) -> xr.DataArray:
    """float64 (prompt, layer, head) DataArray of one condition, NaN-filled padding prompts dropped.

    Stores written with ``--query all`` are read at each prompt's last real token (query position
    n_tokens - 1), the position the posts analyse, or, in a store with a task metric, at the
    prompt's ``metric_position`` (the row whose prediction the metric reads: a masked token).
    """
    da = condition_prompts(ds, condition, variable)
    valid = _valid_prompts(ds, condition, ds[variable].sel(condition=condition))
    if "query" in da.dims:
        if "n_tokens" not in ds.coords:
            raise AnalysisError("store has a query dimension but no n_tokens coordinate to find the last token")
        last = ds["n_tokens"].sel(condition=condition).values[valid] - 1
        if "metric_position" in ds.coords:
            last = ds["metric_position"].sel(condition=condition).values[valid]
        positions = ds["query"].values
        index = np.searchsorted(positions, last)
        if np.any(index >= positions.size) or np.any(positions[np.minimum(index, positions.size - 1)] != last):
            raise AnalysisError("store's query positions do not include every prompt's last token")
        da = da.isel(query=xr.DataArray(index, dims="prompt"))
    return da.transpose("prompt", "layer", "head").astype(np.float64)


def condition_prompts(ds: xr.Dataset, condition: str, variable: str) -> xr.DataArray:
    """One condition's (prompt, layer, head[, query]) values as stored (float32, lazy), NaN-filled padding
    prompts dropped; every query position kept."""
    check_condition(ds, condition)
    check_variables(ds, [variable])
    da = ds[variable].sel(condition=condition)
    return da.isel(prompt=_valid_prompts(ds, condition, da))


def _valid_prompts(ds: xr.Dataset, condition: str, da: xr.DataArray) -> np.ndarray:
    if "n_tokens" in ds.coords:
        return np.flatnonzero(ds["n_tokens"].sel(condition=condition).values > 0)
    values = np.asarray(da.values)
    flat = values.reshape(values.shape[0], -1)
    return np.flatnonzero(~np.all(np.isnan(flat), axis=1))


def default_conditions(ds: xr.Dataset, config: dict[str, Any]) -> tuple[str, str]:
    """Run config's two conditions, else ioi/non_ioi when present, else the store's first two."""
    known = conditions(ds)
    configured = config.get("conditions")
    if isinstance(configured, (list, tuple)) and len(configured) >= 2:
        # a list of names, or of tables with a "name" key
        names = [str(c.get("name", "")) if isinstance(c, dict) else str(c) for c in configured[:2]]
        if all(names):
            return names[0], names[1]
    if "ioi" in known and "non_ioi" in known:
        return "ioi", "non_ioi"
    if len(known) < 2:
        raise AnalysisError(f"store has {len(known)} condition(s); a comparison needs two")
    return known[0], known[1]


def pair_order(ds: xr.Dataset, a: str, b: str) -> tuple[np.ndarray | None, str]:
    """How condition b's prompts line up with condition a's as matched pairs, from the `pair` coordinate.

    Returns (order, reason): order[i] is the position (among b's stored prompts, padding dropped) of the
    partner of a's i-th prompt, when every prompt of both conditions has a pair id, the ids are unique
    within each condition and the two conditions hold the same ids (a paired design); else (None, why not).
    """
    if "pair" not in ds.coords:
        return None, "the store has no `pair` coordinate"
    ids = {}
    for c in (a, b):
        valid = _valid_prompts(ds, c, ds["kl_norm"].sel(condition=c))  # the prompts condition_array keeps
        raw = np.asarray(ds["pair"].sel(condition=c).values)[valid]
        values = [str(v) for v in raw.tolist()]
        if any(v in ("", "None", "nan", "-1") for v in values):
            return None, f"some `{c}` prompts have no pair id"
        if len(set(values)) != len(values):
            return None, f"pair ids repeat within `{c}`"
        ids[c] = values
    if set(ids[a]) != set(ids[b]):
        return None, f"the pair ids of `{a}` and `{b}` differ"
    where = {v: i for i, v in enumerate(ids[b])}
    return np.asarray([where[v] for v in ids[a]], dtype=int), "every prompt's pair partner is in the other condition"
