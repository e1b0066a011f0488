"""Streaming mechanics: open a store lazily, cut it into blocks that fit the memory budget, reduce every block to
per-unit sufficient statistics (analysis.units) in one dask task, on whatever scheduler is active.

Each input is a [rows, k] array (one row per prompt or pair, read lazily from the store's chunks, or an in-memory
array); `stream` rechunks it along the rows into blocks of `rows` prompts (a multiple of the unit size; `rows`
follows the `--memory` budget, `block_rows`) and one task per block applies a list of ops (unit moments of a
variable, of a pair difference, cross-head cross-products, point moments, taxonomy scores, the rows of a
subsample...). Blocks are computed a few at a time (memory stays bounded) on the local threads by default or a
`dask.distributed` cluster (`scheduler_context`). Units never straddle a block and the client concatenates the
blocks' units in order, so the result does not depend on the chunking or the scheduler.

`stream_store` reduces both conditions of a comparison to its units in one pass (`Streamed`), `stream_effects`
one condition's effect variables. The statistics computed from units live in the modules named for them
(analysis.shifts, analysis.standardised, analysis.correlation, analysis.causal, analysis.taxonomy); the report
built from them in analysis.pipeline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np
import xarray as xr

from analysis._util import quiet
from analysis.effects import cheap_family, effect_variable
from analysis.errors import AnalysisError
from analysis.labels import HEAD_DIMS
from analysis.standardised import PAIRED, INDEPENDENT, TwoSamples
from analysis.store import DIMS, condition_prompts
from analysis.units import (G_MAX, GC_MAX, CrossUnits, PointUnits, Units, cross_moments, point_moments,
                            unit_moments, unit_size)
from jaxdiag.paths import StoreLocation

if TYPE_CHECKING:
    from analysis.findings import Comparison

DEFAULT_MEMORY = 2 * 2**30  # the --memory default: 2 GiB
SAMPLE_MAX = 2048  # prompts per condition kept for the prompt-count curve and the figures (= G_MAX: below it, all)
SEED_SAMPLE = 12
BYTES_PER_VALUE = 8 * 8  # float64 working copies per streamed value in a block task (input, masks, centred, ...)


def parse_memory(text: str | int | None) -> int:
    """'2GB', '512MB', '1.5G', '800M' or a number of bytes -> bytes (None -> DEFAULT_MEMORY)."""
    if text is None:
        return DEFAULT_MEMORY
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise AnalysisError(f"--memory {text!r}: give a size such as 2GB, 512MB or a number of bytes")
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    value = int(float(m.group(1)) * scale)
    if value < 64 * 2**20:
        raise AnalysisError(f"--memory {text!r}: the streamed report needs at least 64 MB")
    return value


def open_lazy(path: str | Path | StoreLocation) -> xr.Dataset:
    """The store (a path or an fsspec URL) as dask arrays over its own chunks (nothing loaded)."""
    path = StoreLocation.of(path, error=AnalysisError)
    if not path.exists():
        raise AnalysisError(f"store {str(path)!r} does not exist")
    try:
        ds = xr.open_zarr(path.zarr_store(read_only=True), chunks={})
    except Exception as e:  # noqa: BLE001 -- zarr raises several types for "not a store"
        raise AnalysisError(f"cannot open {str(path)!r} as a Zarr store: {type(e).__name__}: {e}".splitlines()[0]) from None
    missing = [d for d in DIMS if d not in ds.dims]
    if missing:
        raise AnalysisError(f"store {str(path)!r} lacks dimension(s) {', '.join(missing)}")
    return ds


# ---------------------------------------------------------------------------------------------------- streaming


def single_thread_blas():
    """A context in which BLAS runs on one thread (threadpoolctl; a no-op context without it). The streamed report
    runs in it: blocks run in parallel already, multi-threaded OpenBLAS on a busy machine spins (measured 40x
    slower on this project's loaded 2-core machine), and one thread makes every product independent of the
    thread count."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


_WORKER_LIMITED = False


def _block_stats(blocks: dict[str, np.ndarray], ops: tuple, size: int, csize: int,
                 active: dict[str, np.ndarray], start: int = 0, client_pid: int | None = None) -> dict[str, Any]:
    """One dask task: per-unit statistics of one block of rows (every input [rows, k]; the block's first row is
    row `start` of the inputs)."""
    global _WORKER_LIMITED
    if client_pid is not None and os.getpid() != client_pid and not _WORKER_LIMITED:  # a worker process of ours
        single_thread_blas()  # (dask.distributed's nanny sets the same through OPENBLAS_NUM_THREADS=1)
        _WORKER_LIMITED = True
    x = {name: np.asarray(v, dtype=np.float64) for name, v in blocks.items()}
    out: dict[str, Any] = {}
    for op in ops:
        kind, name = op[0], op[1]
        if kind == "plain":
            out[name] = unit_moments(x[op[2]], size)
        elif kind == "diff":
            out[name] = unit_moments(x[op[2]] - x[op[3]], size)
        elif kind == "keep":
            out[name] = unit_moments(np.where(np.isfinite(x[op[2]] - x[op[3]]), x[op[2]], np.nan), size)
        elif kind == "cross":
            out[name] = cross_moments(x[op[2]], csize, active[op[2]])
        elif kind == "points":
            out[name] = point_moments(x[op[2]], x[op[3]], size)
        elif kind == "score":  # a taxonomy score per prompt (analysis.taxonomy.prompt_scores); op[3] query positions
            v = x[op[2]]
            if op[3]:  # a query="all" store: the prompt's score is its mean over the defined query positions
                with quiet():
                    v = np.nanmean(v.reshape(v.shape[0], -1, op[3]), axis=2)
            out[name] = unit_moments(v, size)
        elif kind == "finite":  # the block's defined entries (what decides a role's source condition)
            out[name] = np.array([np.isfinite(x[op[2]]).sum()], dtype=np.int64)
        elif kind == "masked":  # an AtP estimate on exactly the prompts where its exact kind (op[3]) has a value
            keep = np.isfinite(x[op[3]]).any(axis=1)
            out[name] = unit_moments(np.where(keep[:, None], x[op[2]], np.nan), size)
        elif kind == "targets":  # prompts with a task target: any finite effect
            out[name] = np.array([np.isfinite(x[op[2]]).any(axis=1).sum()], dtype=np.int64)
        elif kind == "at":  # values at each prompt's role positions (analysis.beyond_heads.at_roles); op[3] the
            out[name] = unit_moments(at_roles(x[op[2]], x[op[3]], op[4]), size)  # positions, op[4] positions per row
        elif kind == "residual":  # max |sum of the inputs op[2] - op[3]| over the block's prompts, and how many
            out[name] = sum_residual([x[v] for v in op[2]], x[op[3]])
        elif kind == "rows":  # the subsample's rows that fall in this block (op[3]: sorted row indices)
            picks = op[3]
            lo, hi = np.searchsorted(picks, [start, start + x[op[2]].shape[0]])
            out[name] = x[op[2]][picks[lo:hi] - start]
    return out


def at_roles(values: np.ndarray, positions: np.ndarray, n_positions: int) -> np.ndarray:
    """[r, A x n_positions] values (position innermost) at each row's role positions [r, R] (float; -1 where the
    role is absent) -> [r, A x R] (role innermost), NaN where the role is absent or past the row."""
    r = values.shape[0]
    v = values.reshape(r, -1, n_positions)
    with quiet():
        valid = np.isfinite(positions) & (positions >= 0) & (positions < n_positions)
    index = np.where(valid, positions, 0).astype(np.int64)
    picked = np.take_along_axis(v, np.broadcast_to(index[:, None, :], (r, v.shape[1], index.shape[1])), axis=2)
    return np.where(valid[:, None, :], picked, np.nan).reshape(r, -1)


def sum_residual(parts: list[np.ndarray], target: np.ndarray) -> np.ndarray:
    """[[max |sum over every column of parts - target|, prompts checked]] over the rows where both are finite
    (NaN max when none is): a sum rule checked block by block (e.g. the DLA components against the metric)."""
    total = sum(p.sum(axis=1) for p in parts)
    gap = np.abs(total - target[:, 0])
    finite = np.isfinite(gap)
    return np.array([[gap[finite].max() if finite.any() else np.nan, float(finite.sum())]])


def _combine(parts: list[Any]) -> Any:
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return type(parts[0]).concat(parts)


def stream(inputs: dict[str, xr.DataArray], ops: tuple, size: int, csize: int, rows: int,
           active: dict[str, np.ndarray], in_flight: int = 4) -> dict[str, Any]:
    """Reduce the [n, k] inputs (one row per prompt or pair, lazily read) to their units, block by block."""
    import dask

    arrays = {name: da.data.rechunk({0: rows, 1: -1}) if hasattr(da.data, "rechunk") else da.data
              for name, da in inputs.items()}
    if not all(hasattr(a, "to_delayed") for a in arrays.values()):
        import dask.array as dsa

        arrays = {name: dsa.from_array(np.asarray(a), chunks=(rows, -1)) for name, a in arrays.items()}
    blocks = {name: a.to_delayed().ravel() for name, a in arrays.items()}
    n_blocks = len(next(iter(blocks.values())))
    task = dask.delayed(_block_stats, pure=True)
    tasks = [task({name: b[i] for name, b in blocks.items()}, ops, size, csize, active, i * rows, os.getpid())
             for i in range(n_blocks)]
    results: list[dict[str, Any]] = []
    for start in range(0, n_blocks, in_flight):  # a few blocks at a time: memory stays bounded
        results.extend(dask.compute(*tasks[start:start + in_flight]))
    return {op[1]: _combine([r[op[1]] for r in results]) for op in ops}


def block_rows(n_inputs: int, k: int, csize: int, memory: int, fixed: int, in_flight: int) -> int:
    """Prompts per block: what `in_flight` blocks of n_inputs x k values fit in the memory left after `fixed`
    (the unit statistics, which do not grow with the prompt count)."""
    per_row = in_flight * n_inputs * k * BYTES_PER_VALUE
    free = memory - fixed
    if free < per_row * csize:
        raise AnalysisError(f"--memory {memory / 2**20:.0f} MB is too small for this store: the unit statistics take "
                            f"~{fixed / 2**20:.0f} MB and {in_flight} blocks of {csize} prompts "
                            f"~{per_row * csize / 2**20:.0f} MB; give at least {(fixed + per_row * csize) / 2**30:.2f} GB")
    rows = free // per_row
    return int(max(csize, rows // csize * csize))


# --------------------------------------------------------------------------------------------- unit statistics


@dataclasses.dataclass
class Streamed:
    """Everything the streamed report keeps of the prompts."""

    design: str
    size: int  # prompts (pairs) per unit of the per-head statistics
    csize: int  # prompts per unit of the cross-head statistics
    a: dict[str, Units]  # var -> units of condition a (all its finite values)
    b: dict[str, Units]
    diff: dict[str, Units]  # paired only: units of the pair differences
    keep_a: dict[str, Units]  # paired only: a's values where the pair's difference is defined
    keep_b: dict[str, Units]
    cross_a: CrossUnits
    cross_b: CrossUnits
    points_a: PointUnits
    rows: int  # prompts per streamed block
    n_blocks: int
    sample: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # TESTED var -> picked rows of a, of b [m, k]

    def samples(self, var: str, shape: tuple[int, ...]) -> TwoSamples:
        """One variable's units for the two-sample statistics (analysis.standardised)."""
        if self.design == PAIRED:
            return TwoSamples(PAIRED, shape, self.a.get(var), self.b.get(var), self.diff[var], self.keep_a[var],
                              self.keep_b[var])
        return TwoSamples(INDEPENDENT, shape, self.a[var], self.b[var])


def held_bytes(*objs: Any) -> int:
    """numpy bytes held by objs (through dataclasses, mappings and sequences): what the --memory budget has already
    spent on results that stay alive while a later section streams."""
    total, stack, seen = 0, list(objs), set()
    while stack:
        o = stack.pop()
        if id(o) in seen or o is None:
            continue
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            total += o.nbytes
        elif isinstance(o, xr.DataArray):  # results: loaded (a lazy one would count its nominal size)
            total += int(o.nbytes)
        elif dataclasses.is_dataclass(o) and not isinstance(o, type):
            stack.extend(getattr(o, f.name) for f in dataclasses.fields(o))
        elif isinstance(o, Mapping):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
    return int(total)


def effect_rows(ds: xr.Dataset, condition: str, variable: str) -> xr.DataArray:
    """One condition's effects as lazy [prompt, layer x head] rows in analysis.effects' row order (condition_array's:
    padding prompts dropped, store order)."""
    da = condition_prompts(ds, condition, variable).transpose("prompt", *HEAD_DIMS)
    return xr.DataArray(da.data.reshape(da.shape[0], -1), dims=("prompt", "unit"))


def stream_effects(ds: xr.Dataset, condition: str, kinds: list[str], size: int, memory: int, in_flight: int
                   ) -> dict[str, tuple[Units, int]]:
    """kind -> (units of size prompts, prompts with a target) of every effect kind on one condition, in one pass.
    An AtP estimate keeps only the prompts where its exact kind has a value (analysis.effects.aligned_effects: both
    average over the same prompts)."""
    inputs = {kind: effect_rows(ds, condition, effect_variable(kind)) for kind in kinds}
    n, k = next(iter(inputs.values())).shape
    if n == 0:
        return {}
    ops = []
    for kind in kinds:
        family = cheap_family(kind)
        if family is not None and family[1] in inputs:
            ops.append(("masked", f"u:{kind}", kind, family[1]))
        else:
            ops.append(("plain", f"u:{kind}", kind))
        ops.append(("targets", f"n:{kind}", kind))
    block = block_rows(len(inputs), k, size, memory, 4 * 8 * k * G_MAX * len(kinds), in_flight)
    block = max(size, block // size * size)  # whole units per block
    out = stream(inputs, tuple(ops), size, size, block, {}, in_flight)
    return {kind: (out[f"u:{kind}"], int(out[f"n:{kind}"].sum())) for kind in kinds}


@contextlib.contextmanager
def scheduler_context(scheduler: str | None) -> Iterator[None]:
    """Run the streamed blocks on `scheduler`: None (dask's default: local threads, or the active distributed
    client), "threads", "processes", "synchronous", or a dask.distributed scheduler address (tcp://host:port)."""
    import dask

    if scheduler is None:
        yield
    elif "://" in scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise AnalysisError("--scheduler with an address needs dask.distributed (pip install 'dask[distributed]')"
                                ) from None
        with Client(scheduler, set_as_default=True):
            yield
    elif scheduler in ("threads", "processes", "synchronous"):
        with dask.config.set(scheduler=scheduler):
            yield
    else:
        raise AnalysisError(f"--scheduler {scheduler!r}: use threads, processes, synchronous or tcp://HOST:PORT")


CROSS_BYTES = 512 * 2**20  # the cross-head units' budget: GC_MAX units per condition at 144 heads, fewer above


def cross_units_max(k: int) -> int:
    """Cross units per condition for k heads: GC_MAX, fewer when k x k cross-products would pass CROSS_BYTES
    (e.g. 72 at 384 heads); a function of k alone, so results never depend on --memory."""
    return int(min(GC_MAX, max(16, CROSS_BYTES // (48 * k * k))))


def default_in_flight() -> int:
    """Blocks computed at once: the active scheduler's worker threads (a distributed cluster's, when one is the
    default client), at least 2."""

    try:
        from distributed import default_client

        client = default_client()
        return max(2, min(64, sum(client.nthreads().values())))
    except (ImportError, ValueError):
        return max(2, min(16, os.cpu_count() or 2))


def stream_store(comparison: Comparison, variables: tuple[str, ...], memory: int, in_flight: int | None = None,
                 picks: tuple[np.ndarray, np.ndarray] | None = None, plain: tuple[str, ...] = ("kl_norm", "chi"),
                 g_max: int | None = G_MAX) -> Streamed:
    """Reduce both conditions of the comparison (lazy values) to units in one pass over the store; the same pass
    gathers the rows picks (sorted prompt indices of a and of b) of the TESTED variables. plain: the variables
    whose per-condition units a paired design keeps too (besides the pair differences): TESTED for the
    independent-samples comparison, every variable for the cheap-vs-exact section's joint bootstrap. g_max: units
    per condition at most (None: units of one prompt, per-head and cross-head: the in-memory report)."""
    from analysis.findings import TESTED  # noqa: PLC0415 (findings imports the statistics that import this module)

    c = comparison
    in_flight = in_flight or default_in_flight()
    xa, xb = c.values["kl_norm"]
    n_a, n_b = xa.sizes["prompt"], xb.sizes["prompt"]
    k = int(np.prod(c.shape))
    n_max = max(n_a, n_b)
    size = unit_size(n_max, g_max)
    csize = 1 if g_max is None else size * unit_size(unit_size(n_max, cross_units_max(k)), size)
    flat = {v: tuple(x.data.reshape(x.shape[0], -1) for x in c.values[v]) for v in variables}
    wrap = lambda data: xr.DataArray(data, dims=("prompt", "unit"))  # noqa: E731
    all_heads = {"kl_norm": np.ones(k, dtype=bool), "a:kl_norm": np.ones(k, dtype=bool),
                 "b:kl_norm": np.ones(k, dtype=bool)}
    unit_bytes = 4 * 8 * k * G_MAX  # one Units
    cross_bytes = 3 * 8 * k * k * cross_units_max(k) * 2  # both conditions' cross units, the null's pooled matrix
    if c.paired:
        inputs = {f"{side}:{v}": wrap(flat[v][i]) for v in variables for i, side in enumerate("ab")}
        ops = [("points", "points", "a:kl_norm", "a:chi"), ("cross", "cross_a", "a:kl_norm"),
               ("cross", "cross_b", "b:kl_norm")]
        if picks is not None:
            ops += [("rows", f"rows_{side}:{v}", f"{side}:{v}", picks[i]) for v in TESTED for i, side in enumerate("ab")]
        for v in variables:
            ops += [("diff", f"d:{v}", f"a:{v}", f"b:{v}"), ("keep", f"ka:{v}", f"a:{v}", f"b:{v}"),
                    ("keep", f"kb:{v}", f"b:{v}", f"a:{v}")]
            if v in TESTED or v in plain:
                ops += [("plain", f"a:{v}", f"a:{v}"), ("plain", f"b:{v}", f"b:{v}")]
        fixed = unit_bytes * (3 * len(variables) + 2 * len(set(TESTED) | set(plain))) + cross_bytes
        rows = block_rows(len(inputs), k, csize, memory, fixed, in_flight)
        out = stream(inputs, tuple(ops), size, csize, rows, all_heads, in_flight)
        pick = lambda prefix: {v: out[f"{prefix}:{v}"] for v in variables if f"{prefix}:{v}" in out}  # noqa: E731
        units_a, units_b = pick("a"), pick("b")
        result = Streamed(PAIRED, size, csize, units_a, units_b, pick("d"), pick("ka"), pick("kb"),
                          out["cross_a"], out["cross_b"], out["points"], rows, -(-n_a // rows))
        if picks is not None:
            result.sample = {v: (out[f"rows_a:{v}"], out[f"rows_b:{v}"]) for v in TESTED}
        inactive = [(units_a, "a:kl_norm", "cross_a"), (units_b, "b:kl_norm", "cross_b")]
        sources = {"cross_a": {"a:kl_norm": inputs["a:kl_norm"]}, "cross_b": {"b:kl_norm": inputs["b:kl_norm"]}}
    else:
        fixed = unit_bytes * 2 * len(variables) + cross_bytes
        rows = block_rows(len(variables), k, csize, memory, fixed, in_flight)
        parts = []
        for i in range(2):
            ops = [("plain", v, v) for v in variables] + [("cross", "cross", "kl_norm")]
            if i == 0:
                ops.append(("points", "points", "kl_norm", "chi"))
            if picks is not None:
                ops += [("rows", f"rows:{v}", v, picks[i]) for v in TESTED]
            parts.append(stream({v: wrap(flat[v][i]) for v in variables}, tuple(ops), size, csize, rows, all_heads,
                                in_flight))
        ua, ub = ({v: p[v] for v in variables} for p in parts)
        result = Streamed(INDEPENDENT, size, csize, ua, ub, {}, {}, {}, parts[0]["cross"], parts[1]["cross"],
                          parts[0]["points"], rows, -(-n_a // rows) + -(-n_b // rows))
        if picks is not None:
            result.sample = {v: (parts[0][f"rows:{v}"], parts[1][f"rows:{v}"]) for v in TESTED}
        inactive = [(ua, "kl_norm", "cross_a"), (ub, "kl_norm", "cross_b")]
        sources = {"cross_a": {"kl_norm": wrap(flat["kl_norm"][0])}, "cross_b": {"kl_norm": wrap(flat["kl_norm"][1])}}
    # heads with no finite kl_norm value at all take no part in the complete-row rule (analysis.correlation.
    # complete_rows): rare, and then only the cross-products are streamed again
    for units, name, field in inactive:
        active = units["kl_norm"].count.sum(axis=0) > 0
        if not active.all():
            again = stream(sources[field], (("cross", field, name),), size, csize, rows, {name: active}, in_flight)
            cu = again[field]
            setattr(result, field, cu)
    return result


