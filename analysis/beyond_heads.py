"""Beyond per-head scores: the store variables of issue 29 (direct logit attribution, the logit lens, activation
patching by layer and position) reduced to per-condition cell means with bootstrap intervals, streamed.

Store variables (float32, NaN where undefined; any subset may be present):

- `dla` (condition, prompt, layer, head): a head's direct logit attribution; `dla_attn_bias`, `dla_mlp`
  (condition, prompt, layer); `dla_embed`, `dla_norm_bias` (condition, prompt). Their sum is `metric`.
- `lens_metric` (condition, prompt, layer): the metric read after layer l (the last layer's is `metric`);
  optional `lens_rank` (condition, prompt, layer).
- `effect_patch_resid`, `effect_patch_attn_out`, `effect_patch_mlp_out` (condition, prompt, layer, position) and
  `effect_patch_head_pos` (condition, prompt, layer, head, position): patched minus clean metric, NaN past a
  prompt's end and for unpaired prompts.
- `role_position` (condition, prompt, role) int32, -1 where the role is absent; coordinate `role` (strings).

A cell is one entry of a variable's non-prompt dims (e.g. (layer, position)); its mean is over the prompts of a
condition where it is defined, with a BCa interval (analysis.taxonomy.condition_mean_units: the units'
bootstrap, the report's one engine for a one-sample mean) and the count of prompts behind it. The role view of a
patching variable reads every prompt's value at its role's position (prompts without the role drop out of that
cell). Each condition is one pass over the store (analysis.streaming.stream: the gather by role and the sum-rule
check run inside the block tasks), with units of unit_size(prompts, g_max) prompts; every cell of a condition
gets the same bootstrap draws (rng_for(seed, purpose, condition index)).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from analysis._util import quiet
from analysis.errors import AnalysisError
from analysis.resampling import rng_for
from analysis.store import condition_prompts, conditions
from analysis import streaming
from analysis.taxonomy import condition_mean_units
from analysis.units import G_MAX, Units, unit_size

DLA_HEADS = "dla"
DLA_COMPONENTS = ("dla_attn_bias", "dla_mlp", "dla_embed", "dla_norm_bias")
DLA_VARIABLES = (DLA_HEADS, *DLA_COMPONENTS)
LENS_VARIABLES = ("lens_metric", "lens_rank")
PATCH_VARIABLES = ("effect_patch_resid", "effect_patch_attn_out", "effect_patch_mlp_out", "effect_patch_head_pos")
HEAD_POS = "effect_patch_head_pos"
ROLE_POSITION = "role_position"
BEYOND_VARIABLES = (*DLA_VARIABLES, *LENS_VARIABLES, *PATCH_VARIABLES, ROLE_POSITION)
LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class CellMeans:
    """One variable's (or view's) mean per cell per condition, with a BCa interval and the prompts per cell."""

    variable: str
    dims: tuple[str, ...]  # the cell dims, e.g. ("layer", "role")
    coords: dict[str, list]  # dim -> labels
    mean: dict[str, np.ndarray]  # condition -> cell-shaped float64
    low: dict[str, np.ndarray]
    high: dict[str, np.ndarray]
    n: dict[str, np.ndarray]  # condition -> prompts with a value per cell (int)
    level: float = LEVEL
    method: str = "BCa"

    @property
    def conditions(self) -> list[str]:
        return list(self.mean)

    def excludes_zero(self, condition: str) -> np.ndarray:
        """Cells whose interval lies wholly above or below 0."""
        with quiet():
            return (self.low[condition] > 0) | (self.high[condition] < 0)

    def top(self, condition: str, k: int) -> list[tuple[tuple, float, float, float, int]]:
        """The k cells of largest |mean| (defined cells only): (labels, mean, low, high, n)."""
        m = self.mean[condition]
        flat = np.abs(m).ravel()
        order = [i for i in np.argsort(-np.nan_to_num(flat, nan=-1.0), kind="stable") if np.isfinite(flat[i])][:k]
        out = []
        for i in order:
            at = np.unravel_index(i, m.shape)
            labels = tuple(self.coords[d][j] for d, j in zip(self.dims, at))
            out.append((labels, float(m[at]), float(self.low[condition][at]), float(self.high[condition][at]),
                        int(self.n[condition][at])))
        return out

    def entry(self) -> dict[str, Any]:
        """summary.json: per condition the cell arrays (indexed like dims)."""
        return {"dims": list(self.dims), "coords": {d: list(v) for d, v in self.coords.items() if d != "layer"},
                **{c: {"mean": self.mean[c], "low": self.low[c], "high": self.high[c], "n": self.n[c],
                       "ci_excludes_0": self.excludes_zero(c)} for c in self.mean},
                "method": self.method, "level": self.level}


@dataclasses.dataclass(frozen=True)
class View:
    """What one pass streams of one variable: its rows and the cells they make."""

    name: str  # key of the result (the variable, or "<variable>@role")
    variable: str
    dims: tuple[str, ...]  # cell dims
    by_role: bool = False


def cell_dims(ds: xr.Dataset, variable: str) -> tuple[str, ...]:
    """The variable's dims other than condition and prompt, in the contract's order."""
    order = ("layer", "head", "position", "role")
    return tuple(sorted((d for d in ds[variable].dims if d not in ("condition", "prompt")), key=order.index))


def coordinate(ds: xr.Dataset, dim: str) -> list:
    values = ds[dim].values if dim in ds.coords else np.arange(ds.sizes[dim])
    return [str(v) if dim == "role" else int(v) for v in values]


def rows(ds: xr.Dataset, condition: str, variable: str) -> xr.DataArray:
    """One condition's values as lazy [prompt, cells] rows (padding prompts dropped, cell dims in cell_dims order,
    the last innermost)."""
    da = condition_prompts(ds, condition, variable)
    da = da.transpose("prompt", *cell_dims(ds, variable))
    return xr.DataArray(da.data.reshape(da.shape[0], -1), dims=("prompt", "unit"))


def views(ds: xr.Dataset, variables: Sequence[str], by_role: bool) -> list[View]:
    """The plain view of every variable and, when by_role and the store has role_position, the role view of
    every variable with a position dim."""
    out = []
    for v in variables:
        dims = cell_dims(ds, v)
        out.append(View(v, v, dims))
        if by_role and ROLE_POSITION in ds.data_vars and "position" in dims:
            out.append(View(f"{v}@role", v, tuple("role" if d == "position" else d for d in dims), True))
    return out


def stream_condition(ds: xr.Dataset, condition: str, chosen: list[View], size: int, memory: int, in_flight: int,
                     residual: tuple[list[str], str] | None = None) -> tuple[dict[str, Units], np.ndarray | None, int]:
    """One pass over one condition: the units of every view and, with residual = (parts, target), the sum rule's
    [max |sum(parts) - target|, prompts checked]. Returns (view name -> units, residual or None, blocks)."""
    variables = list(dict.fromkeys([w.variable for w in chosen] + (list(residual[0]) + [residual[1]] if residual
                                                                  else [])))
    if residual and "foil" in ds.variables:  # without a foil the DLA terms sum to the target's logit, not the metric
        ds = ds.assign({residual[1]: ds[residual[1]].where(ds["foil"] >= 0)})  # (a log-probability): not checked
    inputs = {v: rows(ds, condition, v) for v in variables}
    if any(w.by_role for w in chosen):
        inputs[ROLE_POSITION] = rows(ds, condition, ROLE_POSITION)
    n = int(next(iter(inputs.values())).shape[0])
    if n == 0:
        return {}, None, 0
    n_positions = int(ds.sizes["position"]) if "position" in ds.dims else 0
    ops: list[tuple] = []
    for w in chosen:
        ops.append(("at", w.name, w.variable, ROLE_POSITION, n_positions) if w.by_role else ("plain", w.name, w.variable))
    if residual:
        ops.append(("residual", "residual", tuple(residual[0]), residual[1]))
    k = max(int(x.shape[1]) for x in inputs.values())
    fixed = 4 * 8 * sum(int(inputs[w.variable].shape[1]) for w in chosen) * G_MAX
    for flight in dict.fromkeys((in_flight, 1)):  # wide rows: fewer blocks at once before giving up
        try:
            block = streaming.block_rows(len(inputs), k, size, memory, fixed, flight)
            break
        except AnalysisError:
            if flight == 1:
                raise
    block = max(size, block // size * size)  # whole units per block: the units never depend on the block size
    out = streaming.stream(inputs, tuple(ops), size, size, block, {}, flight)
    return ({w.name: out[w.name] for w in chosen}, out["residual"] if residual else None, -(-n // block))


def cell_means(units: Mapping[str, Mapping[str, Units]], prompts: Mapping[str, int], chosen: list[View],
               shapes: Mapping[str, tuple[int, ...]], coords: Mapping[str, dict[str, list]], names: list[str],
               n_boot: int, seed: int, purpose: int) -> dict[str, CellMeans]:
    """View name -> CellMeans over the conditions `names` (condition -> view -> units); condition i's cells all get
    rng_for(seed, purpose, i)'s draws. A condition none of whose prompts has a value is left out."""
    out = {}
    for w in chosen:
        parts: dict[str, tuple] = {}
        for i, c in enumerate(names):
            u = units.get(c, {}).get(w.name)
            if u is None or not u.count.sum():
                continue
            shape = shapes[w.name]
            mean, ci, _, _, count = condition_mean_units(u, prompts[c], np.zeros(shape), n_boot,
                                                         rng_for(seed, purpose, i), LEVEL)
            parts[c] = (mean, ci.low, ci.high, count)
        if parts:
            out[w.name] = CellMeans(w.variable, w.dims, dict(coords[w.name]), *({c: p[j] for c, p in parts.items()}
                                                                                for j in range(4)))
    return out


def run(ctx, name: str, variables: Sequence[str], purpose: int, by_role: bool = False,
        residual: tuple[list[str], str] | None = None) -> tuple[dict[str, CellMeans], dict[str, Any], dict[str, Any]]:
    """A section's streamed computation: every condition of the store (a cell's value is a property of the model
    on that condition), one pass each. Returns (view -> CellMeans, condition -> sum-rule check, scale entry)."""
    ds, c = ctx.ds, ctx.comparison
    chosen = views(ds, variables, by_role)
    names = conditions(ds)
    shapes, coords = {}, {}
    for w in chosen:
        dims = cell_dims(ds, w.variable)
        labels = {d: coordinate(ds, d) for d in dims}
        if w.by_role:
            labels = {("role" if d == "position" else d): (coordinate(ds, "role") if d == "position" else v)
                      for d, v in labels.items()}
        coords[w.name] = labels
        shapes[w.name] = tuple(len(labels[d]) for d in w.dims) or (1,)
    units, prompts, checks, sizes, blocks = {}, {}, {}, {}, 0
    held = streaming.held_bytes(ctx.streamed, ctx.results)
    for cond in names:
        n = int(condition_prompts(ds, cond, chosen[0].variable).sizes["prompt"])
        sizes[cond], prompts[cond] = unit_size(n, ctx.g_max), n
        units[cond], check, b = stream_condition(ds, cond, chosen, sizes[cond], ctx.memory - held, ctx.in_flight,
                                                 residual)
        blocks += b
        if check is not None and np.isfinite(check[:, 1]).any() and check[:, 1].sum() > 0:
            with quiet():
                checks[cond] = {"max_abs_residual": float(np.nanmax(check[:, 0])),
                                "n_prompts": int(check[:, 1].sum())}
    means = cell_means(units, prompts, chosen, shapes, coords, names, c.n_boot, c.seed, purpose)
    ctx.scale[name] = {
        "streamed": True, "unit_prompts": sizes,
        "resampling": ("prompts resampled one by one (units of one prompt)" if max(sizes.values()) == 1 else
                       "bootstrap over units of consecutive prompts (unit_prompts per condition)"),
        "exact": "cell means and prompt counts" + (", the sum-rule check" if residual else "")}
    ctx.scale["execution"][f"{name}_blocks"] = int(blocks)
    return means, checks, ctx.scale[name]


def present(ds: xr.Dataset, variables: Sequence[str]) -> list[str]:
    return [v for v in variables if v in ds.data_vars]


def cell_label(labels: tuple, dims: Sequence[str]) -> str:
    """'L1 @ S2', 'L1 @ pos 7', '1.2 @ S2', '1.2' (a DLA head), 'L3'."""
    from analysis.labels import head_label

    at = dict(zip(dims, labels))
    where = f"L{at['layer']}" if "head" not in at else head_label(at["layer"], at["head"])
    if "role" in at:
        return f"{where} @ {at['role']}"
    if "position" in at:
        return f"{where} @ pos {at['position']}"
    return where
