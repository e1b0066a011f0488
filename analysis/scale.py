"""The report at sweep scale: one streamed pass over the store's chunks, bounded memory, any dask scheduler.

`run_analysis_streamed(path, circuit, a, b, ...)` returns the same `analysis.findings.Analysis` as
`analysis.pipeline.run_analysis` without loading the store:

1. Stream. The store is opened with `xr.open_zarr` (dask arrays over its chunks); each condition's variables are
   rechunked along `prompt` into blocks of `rows` prompts (a multiple of the unit size; `rows` follows the
   `--memory` budget) and one dask task per block reduces it to per-unit sufficient statistics
   (analysis.units: count, mean, M2, M3 per head; the cross-head cross-products of kl_norm; the kl-chi point
   moments). Blocks are computed a few at a time (memory stays bounded) on whatever scheduler is active: the
   local threads by default, a `dask.distributed` cluster when one is given. Units never straddle a block and the
   client adds units up in their order, so the result does not depend on the chunking or the scheduler.
2. Point estimates (delta, SE, df, t, d, C_a, C_b, C_diff, head means, correlations) come exactly from the
   units' moments.
3. Resampling runs on the units (analysis.units): the multinomial bootstrap over units with BCa intervals whose
   acceleration is the prompt-level jackknife's, computed exactly from the streamed second and third central
   moments (for a mean, the jackknife's influence values are x_i - mean, so a = sum u^3 / (6 (sum u^2)^1.5)
   needs only M2 and M3: no second pass); permutation nulls are products of [n_perm, units] label matrices with
   the units' sums (GEMMs), the C_diff null from the units' cross-product matrices.
4. The prompt-count curve and the figures' scatter clouds use a seeded random subsample of at most SAMPLE_MAX
   prompts per condition (all prompts when there are fewer), stated in summary.json's `scale` entry.

5. The head taxonomy (every real store has its variables) streams the same way: one pass per (condition, score)
   forms each prompt's score inside the block task (the last-token value, or the mean over the defined query
   positions of a query="all" store) and reduces it to units of unit_size(prompts, G_MAX) prompts; means, defined
   counts, source conditions and labels come exactly from them, the BCa intervals and the sink rate's from the
   units' bootstrap (analysis.taxonomy.assemble_taxonomy builds the section for both paths).
6. Causal effects and cheap-vs-exact (stores with effect variables): one pass per condition reduces every effect
   kind to units (an AtP estimate only where its exact kind has a value); condition a's and b's units have the
   diagnostics' unit boundaries, so the joint bootstraps (analysis.causal.joint_bootstrap_many) run on the units'
   multinomial draws and move every effect unit with its diagnostics. Mean effects, t-tests, p-values, the causal
   circuit and AtP means are exact from the units' totals.

No section loads the store: memory holds units (which do not grow past G_MAX per condition), a few blocks and the
results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import xarray as xr
from scipy import stats

from analysis import causal as ca
from analysis import cheap
from analysis import circuit_tests as ct
from analysis import correlation as corr
from analysis import pipeline as pl
from analysis import standardised as st
from analysis._util import quiet
from analysis.circuits import Circuit
from analysis.effects import cheap_family, cheap_kinds, effect_variable, exact_kinds
from analysis.errors import AnalysisError
from analysis.findings import (CURVE_N_PERM, FLAG_LEVEL, N_SIGMA, TESTED, Analysis, CausalEffects, CheapVsExact,
                               CircuitTests, Comparison, CrossHead, MinEffectResult, PairInterval)
from analysis.labels import HEAD_DIMS, head_matrix, like, units_of
from analysis.prompt_curve import prompt_curve
from analysis.resampling import bootstrap_counts, permutation_members, permutation_pvalue, rng_for
from analysis.results import (ConfidenceInterval, CorrelationResult, MaxNullResult, MeanEffectResult, ShiftResult,
                              StandardisedShiftResult)
from analysis.shifts import bca_interval, percentile_interval
from analysis.store import DIMS, condition_prompts, conditions
from analysis.taxonomy import SCORES, SEED_TAXONOMY, ConditionMean, HeadTaxonomy, assemble_taxonomy, has_taxonomy
from analysis.units import (G_MAX, GC_MAX, CrossUnits, PointUnits, Units, cross_moments, point_moments,
                            unit_moments, unit_size)
from jaxdiag.paths import StoreLocation

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
        elif kind == "rows":  # the subsample's rows that fall in this block (op[3]: sorted row indices)
            picks = op[3]
            lo, hi = np.searchsorted(picks, [start, start + x[op[2]].shape[0]])
            out[name] = x[op[2]][picks[lo:hi] - start]
    return out


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


def _moments(w: np.ndarray, count: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, ...]:
    """(count, mean, variance ddof 1) under each row of unit weights w [c, G] (analysis.standardised._moments on
    units: the same arithmetic when units are prompts)."""
    with quiet():
        n = w @ count
        mean = (w @ s1) / n
        var = np.maximum(w @ s2 - n * mean * mean, 0.0) / (n - 1.0)
    return n, mean, var


def _weighted_mean(w: np.ndarray, u: Units) -> np.ndarray:
    with quiet():
        return (w @ (u.count * u.mean)) / (w @ u.count)


def bootstrap_mean_units(u: Units, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([_weighted_mean(w, u) for w in bootstrap_counts(u.n_units, n_boot, rng)])


def acceleration(*samples: tuple[Units, float]) -> np.ndarray:
    """BCa acceleration of sum(sign * mean(sample)) from the prompt-level jackknife, exactly, from the units'
    M2 and M3: leave-one-prompt-out means give influence values u_i = sign (x_i - mean)."""
    nums, dens = 0.0, 0.0
    for u, sign in samples:
        t = u.totals()
        n = t["n"]
        with quiet():
            nums = nums + sign * t["m3"] / n**3
            dens = dens + t["m2"] / n**2
    with quiet():
        return nums / (6.0 * dens**1.5)


def shift_units(ua: Units, ub: Units | None, n_boot: int, rng: np.random.Generator, heads: xr.DataArray,
                level: float = 0.95) -> ShiftResult:
    """analysis.shifts.shift on units: ub None means ua holds the pair differences (paired design)."""
    if ub is None:
        theta = ua.totals()["mean"]
        boot = bootstrap_mean_units(ua, n_boot, rng)
        accel = acceleration((ua, 1.0))
    else:
        theta = ua.totals()["mean"] - ub.totals()["mean"]
        boot = bootstrap_mean_units(ua, n_boot, rng) - bootstrap_mean_units(ub, n_boot, rng)
        accel = acceleration((ua, 1.0), (ub, -1.0))
    shape = heads.shape
    theta, boot = theta.reshape(shape), boot.reshape((n_boot, *shape))
    ci = bca_interval(boot, theta, accel.reshape(shape), level)
    with quiet():
        se = np.nanstd(boot, axis=0, ddof=1)
    return ShiftResult(like(heads, theta), ConfidenceInterval(like(heads, ci.low), like(heads, ci.high)),
                       like(heads, se), like(heads, boot, ("resample",)), "BCa", level)


def standardised_units(s: Streamed, var: str) -> dict[str, np.ndarray]:
    """analysis.standardised.standardised (flat heads), exactly, from the units' totals."""
    with quiet():
        if s.design == st.PAIRED:
            d, ta, tb = s.diff[var].totals(), s.keep_a[var].totals(), s.keep_b[var].totals()
            n = d["n"]
            se = np.sqrt(d["var"]) / np.sqrt(n)
            return {"delta": d["mean"], "se": se, "df": n - 1.0, "t": d["mean"] / se,
                    "d": d["mean"] / np.sqrt((ta["var"] + tb["var"]) / 2)}
        ta, tb = s.a[var].totals(), s.b[var].totals()
        na, nb, va, vb = ta["n"], tb["n"], ta["var"], tb["var"]
        delta = ta["mean"] - tb["mean"]
        ua, ub = va / na, vb / nb
        se = np.sqrt(ua + ub)
        df = (ua + ub) ** 2 / (ua**2 / (na - 1) + ub**2 / (nb - 1))
        return {"delta": delta, "se": se, "df": df, "t": delta / se, "d": delta / np.sqrt((va + vb) / 2)}


def bootstrap_standardised_units(s: Streamed, var: str, n_boot: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """analysis.standardised.bootstrap_standardised on units ([n_boot, k] delta, t, d)."""
    out: dict[str, list] = {"delta": [], "t": [], "d": []}
    if s.design == st.PAIRED:
        ud, ua, ub = s.diff[var], s.keep_a[var], s.keep_b[var]
        cd = ud.centre()
        d_, a_, b_ = ud.centred(cd), ua.centred(ua.centre()), ub.centred(ub.centre())
        for w in bootstrap_counts(ud.n_units, n_boot, rng):
            n, md, vd = _moments(w, *d_)
            _, _, va = _moments(w, *a_)
            _, _, vb = _moments(w, *b_)
            with quiet():
                delta = md + np.nan_to_num(cd)
                out["delta"].append(delta)
                out["t"].append(delta / np.sqrt(vd / n))
                out["d"].append(delta / np.sqrt((va + vb) / 2))
    else:
        ua, ub = s.a[var], s.b[var]
        centre_a, centre_b = ua.centre(), ub.centre()
        a_, b_ = ua.centred(centre_a), ub.centred(centre_b)
        with quiet():
            shift = np.nan_to_num(centre_a - centre_b)
        for wa, wb in zip(bootstrap_counts(ua.n_units, n_boot, rng), bootstrap_counts(ub.n_units, n_boot, rng)):
            na, ma, va = _moments(wa, *a_)
            nb, mb, vb = _moments(wb, *b_)
            with quiet():
                delta = ma - mb + shift
                out["delta"].append(delta)
                out["t"].append(delta / np.sqrt(va / na + vb / nb))
                out["d"].append(delta / np.sqrt((va + vb) / 2))
    return {k: np.concatenate(v) for k, v in out.items()}


def permutation_null_units(s: Streamed, var: str, n_perm: int, rng: np.random.Generator
                           ) -> tuple[np.ndarray, np.ndarray]:
    """analysis.standardised.permutation_null on units: whole units relabelled (independent) or whole units of
    pairs sign-flipped (paired). Returns ([n_perm, k] delta, [n_perm, k] t)."""
    deltas, ts = [], []
    if s.design == st.PAIRED:
        u = s.diff[var]
        count, s1, s2 = u.centred(np.zeros(u.mean.shape[1]))
        n, ss = count.sum(axis=0), s2.sum(axis=0)
        for flips in st.sign_flips(u.n_units, n_perm, rng):
            with quiet():
                mean = (flips @ s1) / n
                var_ = np.maximum(ss - n * mean * mean, 0.0) / (n - 1.0)
                deltas.append(mean)
                ts.append(mean / np.sqrt(var_ / n))
    else:
        ua, ub = s.a[var], s.b[var]
        pooled = Units.concat([ua, ub])
        centre = pooled.centre()
        sums = pooled.centred(centre)
        for members in permutation_members(ua.n_units, ub.n_units, n_perm, rng):
            na, ma, va = _moments(members, *sums)
            nb, mb, vb = _moments(1.0 - members, *sums)
            with quiet():
                deltas.append(ma - mb)
                ts.append((ma - mb) / np.sqrt(va / na + vb / nb))
    return np.concatenate(deltas), np.concatenate(ts)


def c_diff_max_null_units(xa: CrossUnits, xb: CrossUnits, observed: float, n_perm: int,
                          rng: np.random.Generator) -> MaxNullResult:
    """analysis.correlation.c_diff_max_null on cross units: whole units relabelled, C_a and C_b of every
    relabelling from [chunk, units] x [units, k*k] products of the units' cross-product matrices."""
    xa, xb = xa.nonempty(), xb.nonempty()
    count = np.concatenate([xa.count, xb.count])
    mean = np.concatenate([xa.mean, xb.mean])
    centre = (count[:, None] * mean).sum(axis=0) / count.sum()
    d = mean - centre
    k = d.shape[1]
    sums = count[:, None] * d
    cross = (np.concatenate([xa.m2, xb.m2]) + sums[:, :, None] * d[:, None, :]).reshape(-1, k * k)
    total_n, total_sum, total_cross = count.sum(), sums.sum(axis=0), cross.sum(axis=0)
    iu = corr.upper_pairs(k)
    null = []
    for members in permutation_members(xa.count.size, xb.count.size, n_perm, rng, chunk=64):
        n_a = members @ count
        cross_a = members @ cross
        sum_a = members @ sums
        c_a = corr.correlation_from_moments(sum_a, cross_a.reshape(-1, k, k), n_a[:, None, None])
        c_b = corr.correlation_from_moments(total_sum - sum_a, (total_cross - cross_a).reshape(-1, k, k),
                                            (total_n - n_a)[:, None, None])
        with quiet():
            null.append(np.nanmax(np.abs((c_a - c_b)[:, iu[0], iu[1]]), axis=1))
    null = np.concatenate(null)
    return MaxNullResult(observed, float(permutation_pvalue(observed, null)), null, float(np.quantile(null, 0.95)),
                         int(null.size))


def bootstrap_c_diff_units(xa: CrossUnits, xb: CrossUnits, pairs: list[tuple[int, int]], n_boot: int,
                           rng: np.random.Generator, level: float = 0.95) -> np.ndarray:
    """analysis.correlation.bootstrap_c_diff on cross units (units resampled within each condition)."""
    if not pairs:
        return np.zeros((0, 2))
    i = np.array([p[0] for p in pairs])
    j = np.array([p[1] for p in pairs])
    boot = _pair_corr(xa.nonempty(), i, j, n_boot, rng) - _pair_corr(xb.nonempty(), i, j, n_boot, rng)
    alpha = (1 - level) / 2
    with quiet():
        return np.nanquantile(boot, [alpha, 1 - alpha], axis=0).T


def _pair_corr(x: CrossUnits, i: np.ndarray, j: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    si, sj = x.count * x.mean[:, i].T, x.count * x.mean[:, j].T  # [pairs, G] unit sums
    sij = x.m2[:, i, j].T + x.count * x.mean[:, i].T * x.mean[:, j].T
    sii = x.m2[:, i, i].T + x.count * x.mean[:, i].T ** 2
    sjj = x.m2[:, j, j].T + x.count * x.mean[:, j].T ** 2
    out = []
    for w in bootstrap_counts(x.count.size, n_boot, rng):
        n = w @ x.count if x.size > 1 else float(x.count.sum())
        n = n[:, None] if np.ndim(n) else n
        mi, mj = w @ si.T / n, w @ sj.T / n
        cov = w @ sij.T / n - mi * mj
        vi, vj = w @ sii.T / n - mi**2, w @ sjj.T / n - mj**2
        with quiet():
            out.append(cov / np.sqrt(vi * vj))
    return np.concatenate(out)


def pearson_from(r: float, n: int) -> CorrelationResult:
    """scipy.stats.pearsonr's two-sided p and 95% Fisher-z interval from r and n."""
    if n < 3 or not np.isfinite(r):
        return CorrelationResult(np.nan, np.nan, ConfidenceInterval(np.nan, np.nan), int(n))
    r = float(np.clip(r, -1.0, 1.0))
    ab = n / 2 - 1
    p = float(2 * stats.beta.sf(abs(r), ab, ab, loc=-1, scale=2))
    with quiet():
        z, se = np.arctanh(r), 1 / np.sqrt(n - 3)
        zc = stats.norm.ppf(0.975)
        low, high = float(np.tanh(z - zc * se)), float(np.tanh(z + zc * se))
    return CorrelationResult(r, p, ConfidenceInterval(low, high), int(n))


# ---------------------------------------------------------------------------------------------- head taxonomy


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


def score_rows(ds: xr.Dataset, condition: str, variable: str) -> tuple[xr.DataArray, int]:
    """One condition's taxonomy score as lazy [prompt, layer x head (x query)] rows, padding prompts dropped and
    the query positions innermost (analysis.taxonomy.prompt_scores' order), and the query positions per head (0:
    a query="last" store)."""
    da = condition_prompts(ds, condition, variable)
    query = "query" in da.dims
    da = da.transpose("prompt", *HEAD_DIMS, *(("query",) if query else ()))
    data = da.data.reshape(da.shape[0], -1)
    return xr.DataArray(data, dims=("prompt", "unit")), (int(da.sizes["query"]) if query else 0)


def stream_score(rows: xr.DataArray, query: int, size: int, memory: int, in_flight: int) -> tuple[Units, int, int]:
    """(units of the per-prompt scores, defined entries, prompts per block) of one condition's score in one pass:
    the prompt scores are formed inside each block task, so only blocks are ever in memory."""
    k = rows.shape[1] // max(query, 1)
    fixed = 4 * 8 * k * G_MAX  # the score's units
    for flight in dict.fromkeys((in_flight, 1)):  # wide query="all" rows: fewer blocks at once before giving up
        try:
            block = block_rows(1, rows.shape[1], size, memory, fixed, flight)
            break
        except AnalysisError:
            if flight == 1:
                raise
    block = max(size, block // size * size)  # whole units per block: the units never depend on the block size
    out = stream({"x": rows}, (("score", "units", "x", query), ("finite", "defined", "x")), size, size, block, {},
                 flight)
    return out["units"], int(out["defined"].sum()), block


def condition_mean_units(u: Units | None, n_prompts: int, heads: xr.DataArray, n_boot: int,
                         rng: np.random.Generator, confidence_level: float) -> ConditionMean:
    """analysis.taxonomy.condition_mean from one condition's units of a score: the mean exactly (bit for bit with
    units of one prompt), the BCa interval of the units' bootstrap (shift_units of one sample: the draws of the
    in-memory bootstrap with units of one prompt). All NaN but the mean under 2 prompts, as in memory."""
    shape = heads.shape
    count = (u.count.sum(axis=0) if u is not None else np.zeros(int(np.prod(shape)))).astype(np.int64).reshape(shape)
    if n_prompts < 2:
        with quiet():
            mean = u.totals()["mean"].reshape(shape) if n_prompts else np.full(shape, np.nan)
        nan = np.full(shape, np.nan)
        return mean, ConfidenceInterval(nan, nan), nan, np.full((n_boot, *shape), np.nan), count
    r = shift_units(u, None, n_boot, rng, heads, confidence_level)
    ci = ConfidenceInterval(np.asarray(r.confidence_interval.low), np.asarray(r.confidence_interval.high))
    return (np.asarray(r.statistic), ci, np.asarray(r.standard_error), np.asarray(r.bootstrap_distribution), count)


def stream_taxonomy(ds: xr.Dataset, *, n_boot: int, seed: int, memory: int, in_flight: int,
                    thresholds: Mapping[str, float] | None = None, confidence_level: float = 0.95
                    ) -> tuple[HeadTaxonomy, dict[str, int], int]:
    """analysis.taxonomy.head_taxonomy over the lazy store: one pass per (condition, score) reduces the per-prompt
    scores to units of unit_size(prompts, G_MAX) prompts, from which the means (exact), the 'defined' counts
    (exact), the BCa intervals (the units' bootstrap with SEED_TAXONOMY's draws per condition) and hence the sink
    rate, source conditions and labels follow (analysis.taxonomy.assemble_taxonomy). Memory holds one score's
    units and a few blocks, never the prompts. Returns (taxonomy, condition -> prompts per unit, blocks)."""
    if "bos_attn" not in ds.data_vars:
        raise AnalysisError("store lacks variable bos_attn (the sink score)")
    names = conditions(ds)
    layers, head_ids = ds["layer"].values, ds["head"].values
    heads = xr.DataArray(np.zeros((layers.size, head_ids.size)), dims=HEAD_DIMS,
                         coords={"layer": layers, "head": head_ids})
    variables = [v for v in SCORES if v in ds.data_vars]
    parts: dict[str, list[ConditionMean]] = {v: [] for v in variables}
    defined: dict[str, dict[str, int]] = {v: {} for v in variables}
    sizes, n_blocks = {}, 0
    for i, c in enumerate(names):
        for v in variables:
            rows, query = score_rows(ds, c, v)
            n = int(rows.shape[0])
            sizes[c] = unit_size(n, G_MAX)
            units, count, block = stream_score(rows, query, sizes[c], memory, in_flight) if n else (None, 0, 1)
            n_blocks += -(-n // block)
            mean = condition_mean_units(units, n, heads, n_boot, rng_for(seed, SEED_TAXONOMY, i), confidence_level)
            if v != "bos_attn":  # only the sink rate reads replicates: keep memory to one score's
                mean = (*mean[:3], None, mean[4])
            parts[v].append(mean)
            defined[v][c] = count
    taxonomy = assemble_taxonomy(parts, defined, names, ds, thresholds=thresholds, confidence_level=confidence_level)
    return taxonomy, sizes, n_blocks


# ------------------------------------------------------------------------------------ causal effects, cheap methods


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


def mean_effect_units(u: Units, n_rows: int, heads: xr.DataArray, n_boot: int, rng: np.random.Generator,
                      confidence_level: float = 0.95) -> MeanEffectResult:
    """analysis.causal.mean_effect from the units of the effect sample: the mean and the one-sample t-test exactly
    from the units' totals (scipy.stats.ttest_1samp's t = mean / (sd / sqrt(n)), two-sided p from t with n - 1
    df, per head over its finite prompts), the BCa interval of the units' bootstrap."""
    t = u.totals()
    with quiet():
        tstat = t["mean"] / np.sqrt(t["var"] / t["n"])
        p = 2.0 * stats.t.sf(np.abs(tstat), t["n"] - 1.0)
    r = shift_units(u, None, n_boot, rng, heads, confidence_level)
    return MeanEffectResult(r.statistic, r.confidence_interval, r.standard_error, r.bootstrap_distribution,
                            like(heads, p.reshape(heads.shape)), like(heads, tstat.reshape(heads.shape)), int(n_rows),
                            "BCa", confidence_level)


def joint_bootstrap_units(diagnostics: Mapping[str, tuple[Units, Units]], a: str, b: str, used: list[str],
                          parts: Mapping[str, Mapping[str, Units]], n_boot: int, rng: np.random.Generator,
                          shape: tuple[int, ...]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """analysis.causal.joint_bootstrap_many on units: one multinomial draw over the units of each condition per
    replicate (a, b, then the effect sample's other conditions: the in-memory draw order) moves every
    diagnostic's delta and every effect's mean together; an effect unit of a or b has the diagnostics' unit
    boundaries, so it gets their draw count. parts: effect name -> condition -> units (conditions in `used`)."""
    sizes = {a: diagnostics[TESTED[0]][0].n_units, b: diagnostics[TESTED[0]][1].n_units}
    sizes |= {c: parts[next(iter(parts))][c].n_units for c in used if c not in sizes}
    pooled = {name: Units.concat([by[c] for c in used]) for name, by in parts.items()}
    draws = {c: bootstrap_counts(n, n_boot, rng) for c, n in sizes.items()}
    deltas: dict[str, list[np.ndarray]] = {v: [] for v in diagnostics}
    means: dict[str, list[np.ndarray]] = {k: [] for k in parts}
    for chunk in zip(*draws.values()):
        counts = dict(zip(draws, chunk))
        for v, (ua, ub) in diagnostics.items():
            deltas[v].append(_weighted_mean(counts[a], ua) - _weighted_mean(counts[b], ub))
        weights = np.concatenate([counts[c] for c in used], axis=1)
        for name, u in pooled.items():
            means[name].append(_weighted_mean(weights, u))
    full = (n_boot, *shape)
    return ({v: np.concatenate(d).reshape(full) for v, d in deltas.items()},
            {k: np.concatenate(m).reshape(full) for k, m in means.items()})


def stream_causal(ds: xr.Dataset, c: Comparison, s: Streamed, shifts: dict[str, ShiftResult],
                  tests: dict[str, CircuitTests], rule: ca.CircuitRule, memory: int, in_flight: int
                  ) -> tuple[dict[str, CausalEffects], dict[str, CheapVsExact], dict[str, int]]:
    """analysis.pipeline.causal_effects for every exact kind and analysis.cheap.cheap_vs_exact, from the effect
    variables' units (one pass per condition over every kind; conditions other than a only when a kind's effects
    are not on a). Units of a and b have the diagnostics' size, so the joint bootstraps pair each effect unit with
    its diagnostics' draw count; others have unit_size(prompts, G_MAX). Returns (causal, cheap, condition -> unit
    prompts of the conditions streamed)."""
    kinds = exact_kinds(ds)
    estimates = {k: cheap_kinds(ds, k) for k in kinds}
    every = [*kinds, *(e for k in kinds for e in estimates[k])]
    heads = like(c.mask, np.zeros(c.shape))
    streamed: dict[str, dict[str, tuple[Units, int]]] = {}
    sizes: dict[str, int] = {}

    def of(condition: str) -> dict[str, tuple[Units, int]]:
        if condition not in streamed:
            n = int(condition_prompts(ds, condition, effect_variable(kinds[0])).sizes["prompt"])
            sizes[condition] = s.size if condition in (c.a, c.b) else unit_size(n, G_MAX)
            left = memory - held_bytes(streamed, s, shifts, tests)
            streamed[condition] = stream_effects(ds, condition, every, sizes[condition], left, in_flight)
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
        mean = mean_effect_units(Units.concat(list(parts[kind].values())), sum(targets(x) for x in used), heads,
                                 c.n_boot, rng_for(c.seed, pl.SEED_EFFECT))
        diagnostics = {v: (s.a[v], s.b[v]) for v in TESTED}
        boot_deltas, boot_means = joint_bootstrap_units(diagnostics, c.a, c.b, used, {kind: parts[kind]}, c.n_boot,
                                                        rng_for(c.seed, pl.SEED_JOINT), c.shape)
        abs_mean = np.abs(mean.statistic.values)
        spearman = {v: ca.effect_spearman(np.abs(shifts[v].statistic.values), abs_mean, np.abs(boot_deltas[v]),
                                          np.abs(boot_means[kind])) for v in TESTED}
        circuit = ca.select_heads(mean.statistic, mean.pvalue, rule)
        flagged = {v: tests[v].flagged(FLAG_LEVEL) for v in TESTED}
        scores = {v: ca.precision_recall(flagged[v], circuit) for v in TESTED}
        causal[kind] = CausalEffects(kind, tuple(used), mean, ct.benjamini_hochberg(mean.pvalue), rule, circuit,
                                     spearman, flagged, {v: p for v, (p, _) in scores.items()},
                                     {v: r for v, (_, r) in scores.items()})

    cheap_methods = {}
    if any(estimates[k] for k in kinds):  # analysis.cheap.cheap_vs_exact: every exact kind, once any has an estimate
        for kind in kinds:
            used, parts = samples[kind]
            exact = causal[kind]
            diagnostics = {v: (s.a[v], s.b[v]) for v in shifts}
            boot_deltas, boot_means = joint_bootstrap_units(diagnostics, c.a, c.b, used, parts, c.n_boot,
                                                            rng_for(c.seed, pl.SEED_JOINT), c.shape)
            boot_abs_effect = np.abs(boot_means[kind])
            methods = {}
            for estimate in estimates[kind]:
                family, _ = cheap_family(estimate)
                mean = like(exact.mean.statistic,
                            Units.concat(list(parts[estimate].values())).totals()["mean"].reshape(c.shape))
                description = str(ds[effect_variable(estimate)].attrs.get("description", ""))
                methods[estimate] = cheap.agreement(estimate, family, description, abs(mean),
                                                    np.abs(boot_means[estimate]), exact, boot_abs_effect,
                                                    signed=mean if family == "atp" else None)
            for v, shifted in shifts.items():
                description = str(ds[v].attrs.get("long_name", "")) if v in ds else ""
                methods[cheap.diagnostic_method(v)] = cheap.agreement(
                    cheap.diagnostic_method(v), cheap.DIAGNOSTIC, description, abs(shifted.statistic),
                    np.abs(boot_deltas[v]), exact, boot_abs_effect)
            cheap_methods[kind] = CheapVsExact(kind, len(exact.circuit), methods)
    return causal, cheap_methods, sizes


# ------------------------------------------------------------------------------------------------- the report


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


def _in_flight() -> int:
    """Blocks computed at once: the active scheduler's worker threads (a distributed cluster's, when one is the
    default client), at least 2."""

    try:
        from distributed import default_client

        client = default_client()
        return max(2, min(64, sum(client.nthreads().values())))
    except (ImportError, ValueError):
        return max(2, min(16, os.cpu_count() or 2))


def stream_store(comparison: Comparison, variables: tuple[str, ...], memory: int, in_flight: int | None = None,
                 picks: tuple[np.ndarray, np.ndarray] | None = None, plain: tuple[str, ...] = TESTED) -> Streamed:
    """Reduce both conditions of the comparison (lazy values) to units in one pass over the store; the same pass
    gathers the rows picks (sorted prompt indices of a and of b) of the TESTED variables. plain: the variables
    whose per-condition units a paired design keeps too (besides the pair differences): TESTED for the
    independent-samples comparison, every variable for the cheap-vs-exact section's joint bootstrap."""
    c = comparison
    in_flight = in_flight or _in_flight()
    xa, xb = c.values["kl_norm"]
    n_a, n_b = xa.sizes["prompt"], xb.sizes["prompt"]
    k = int(np.prod(c.shape))
    n_max = max(n_a, n_b)
    size = unit_size(n_max, G_MAX)
    csize = size * unit_size(unit_size(n_max, cross_units_max(k)), size)
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
        result = Streamed(st.PAIRED, size, csize, units_a, units_b, pick("d"), pick("ka"), pick("kb"),
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
        result = Streamed(st.INDEPENDENT, size, csize, ua, ub, {}, {}, {}, parts[0]["cross"], parts[1]["cross"],
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


def run_analysis_streamed(store: str | Path | StoreLocation, circuit: Circuit, a: str, b: str, *, n_boot: int = 1000,
                          n_perm: int = 1000, seed: int = 0, variables: tuple[str, ...] | None = None,
                          curve: bool = True, store_path: str | Path | None = None,
                          rule: ca.CircuitRule = ca.CircuitRule(), thresholds: Mapping[str, float] | None = None,
                          min_effect: Mapping[str, float] | None = None, design: str | None = None,
                          memory: int | str | None = None, in_flight: int | None = None) -> Analysis:
    """analysis.pipeline.run_analysis, streamed over the store at `store` (a path) in bounded memory."""
    with single_thread_blas():
        return _run_streamed(store, circuit, a, b, n_boot=n_boot, n_perm=n_perm, seed=seed, variables=variables,
                             curve=curve, store_path=store_path, rule=rule, thresholds=thresholds,
                             min_effect=min_effect, design=design, memory=memory, in_flight=in_flight)


def _run_streamed(store, circuit, a, b, *, n_boot, n_perm, seed, variables, curve, store_path, rule, thresholds,
                  min_effect, design, memory, in_flight) -> Analysis:
    memory = parse_memory(memory)
    ds = open_lazy(store)
    c = pl.compare(ds, circuit, a, b, n_boot=n_boot, n_perm=n_perm, seed=seed, variables=variables,
                   store_path=store_path if store_path is not None else store, min_effect=min_effect, design=design)
    variables = tuple(c.values)
    xa, xb = c.values["kl_norm"]
    n_a, n_b = xa.sizes["prompt"], xb.sizes["prompt"]
    picks = []
    for k_, n in enumerate((n_a, n_b)):
        if n <= SAMPLE_MAX:
            picks.append(np.arange(n))
        elif c.paired and k_ == 1:
            picks.append(picks[0])
        else:
            picks.append(np.sort(rng_for(seed, SEED_SAMPLE, k_).choice(n, SAMPLE_MAX, replace=False)))
    # the cheap-vs-exact section's joint bootstrap needs every variable's per-condition units, paired or not
    s = stream_store(c, variables, memory, in_flight, picks=(picks[0], picks[1]),
                     plain=variables if exact_kinds(ds) else TESTED)
    heads = {v: c.values[v][0].isel(prompt=0, drop=True) for v in variables}
    flat_heads = {v: h.shape for v, h in heads.items()}
    paired = c.paired

    # shifts, standardised shifts
    shifts = {v: shift_units(s.diff[v], None, n_boot, rng_for(seed, pl.SEED_BOOT), heads[v]) if paired
              else shift_units(s.a[v], s.b[v], n_boot, rng_for(seed, pl.SEED_BOOT), heads[v]) for v in variables}
    independent = {v: shift_units(s.a[v], s.b[v], n_boot, rng_for(seed, pl.SEED_BOOT), heads[v])
                   for v in TESTED} if paired else {}
    standard = {}
    for v in variables:
        point = {k: x.reshape(flat_heads[v]) for k, x in standardised_units(s, v).items()}
        boot = {k: x.reshape((n_boot, *flat_heads[v])) for k, x in
                bootstrap_standardised_units(s, v, n_boot, rng_for(seed, pl.SEED_STD)).items()}
        h, shifted = heads[v], shifts[v]
        with quiet():
            z_ci = ConfidenceInterval(like(h, np.asarray(shifted.confidence_interval.low) / point["se"]),
                                      like(h, np.asarray(shifted.confidence_interval.high) / point["se"]))
            d_ci = percentile_interval(boot["d"], shifted.confidence_level)
        standard[v] = StandardisedShiftResult(
            like(h, point["t"]), z_ci, like(h, point["se"]), like(h, point["df"]), like(h, point["d"]),
            ConfidenceInterval(like(h, d_ci.low), like(h, d_ci.high)), like(h, boot["t"], ("resample",)), c.design,
            shifted.confidence_level)

    # circuit tests (analysis.pipeline.circuit_tests with the nulls from units)
    tests = {}
    mask = c.mask.values
    for v in TESTED:
        delta = shifts[v].statistic
        shape = flat_heads[v]
        null, null_z = (x.reshape((n_perm, *shape)) for x in permutation_null_units(s, v, n_perm,
                                                                                      rng_for(seed, pl.SEED_PERM)))
        per_head_test = ct.per_head_permutation(delta, null)
        z = standard[v].statistic
        se, df = standard[v].standard_error.values, standard[v].df.values
        x = c.min_effect[v]
        p_x, p_0 = (st.min_effect_pvalue(delta.values, se, df, value) for value in (x, 0.0))
        min_eff = MinEffectResult(x, like(delta, p_x), ct.benjamini_hochberg(like(delta, p_x)), like(delta, p_0),
                                  ct.benjamini_hochberg(like(delta, p_0)), standard[v].df)
        tests[v] = CircuitTests(
            mann_whitney=ct.mann_whitney(np.abs(delta).values, mask),
            auc_interval=ct.auc_interval(shifts[v].bootstrap_distribution.values, mask),
            permutation=ct.circuit_permutation_test(delta.values, null, mask),
            stratified=ct.layer_stratified_test(np.abs(delta).values, mask, n_perm, rng_for(seed, pl.SEED_STRAT)),
            per_head=per_head_test, q_bh=ct.benjamini_hochberg(per_head_test.pvalue),
            rank=ct.descending_ranks(np.abs(delta)),
            mann_whitney_z=ct.mann_whitney(np.abs(z).values, mask),
            auc_interval_z=ct.auc_interval(standard[v].bootstrap_statistic.values, mask),
            permutation_z=ct.circuit_permutation_test(z.values, null_z, mask),
            stratified_z=ct.layer_stratified_test(np.abs(z).values, mask, n_perm, rng_for(seed, pl.SEED_STRAT_Z)),
            rank_z=ct.descending_ranks(np.abs(z)), min_effect=min_eff)

    # diagnostic correlations (analysis.pipeline.diagnostic_correlations, exactly from the units)
    kl_mean = s.a["kl_norm"].totals()["mean"].reshape(c.shape)
    chi_mean = s.a["chi"].totals()["mean"].reshape(c.shape)
    other = ~mask
    layer = c.mask["layer"].broadcast_like(c.mask).values
    correlations = {
        "kl_chi_head_means": corr.pearson(kl_mean, chi_mean),
        "kl_chi_points": pearson_from(*s.points_a.pearson_r()),
        "dkl_dchi": corr.pearson(shifts["kl_norm"].statistic, shifts["chi"].statistic),
        "layer_kl_noncircuit": corr.pearson(layer[other], kl_mean[other]),
        "layer_chi_noncircuit": corr.pearson(layer[other], chi_mean[other]),
    }

    # cross-head structure (analysis.pipeline.cross_head_structure from the cross units)
    unit_axis = units_of(heads["kl_norm"])
    c_a, c_b = s.cross_a.correlation(), s.cross_b.correlation()
    for cu, units in ((c_a, s.a), (c_b, s.b)):
        dead = units["kl_norm"].count.sum(axis=0) == 0
        cu[dead, :] = np.nan
        cu[:, dead] = np.nan
    c_diff = c_a - c_b
    sigma = corr.sigma_band(c_diff, mask.ravel())
    flagged = corr.flagged_pairs(c_diff, sigma, N_SIGMA)
    observed = corr.max_abs_offdiag(c_diff)
    max_null = c_diff_max_null_units(s.cross_a, s.cross_b, observed, n_perm, rng_for(seed, pl.SEED_CNULL))
    i, j = corr.upper_pairs(c_diff.shape[0])
    family_wise = np.full(c_diff.shape, np.nan)
    family_wise[i, j] = family_wise[j, i] = corr.family_wise_p(c_diff[i, j], max_null)
    top = np.argsort(-np.nan_to_num(np.abs(c_diff[i, j])))[:5]
    chosen = list(dict.fromkeys(flagged + [(int(i[t]), int(j[t])) for t in top]))
    intervals = bootstrap_c_diff_units(s.cross_a, s.cross_b, chosen, n_boot, rng_for(seed, pl.SEED_CBOOT))
    cross_head = CrossHead(
        c_a=head_matrix(c_a, unit_axis, f"C_{a}"), c_b=head_matrix(c_b, unit_axis, f"C_{b}"),
        c_diff=head_matrix(c_diff, unit_axis, "C_diff"), sigma=sigma, flagged=flagged, max_null=max_null,
        family_wise_p=head_matrix(family_wise, unit_axis, "family_wise_p"),
        pair_intervals=[PairInterval(p, ConfidenceInterval(float(lo), float(hi))) for p, (lo, hi) in
                        zip(chosen, intervals)],
        linkage=corr.head_linkage(c_diff))

    ablation = None
    if circuit.ablation is not None and np.isfinite(circuit.ablation).sum() >= 3:
        ablation = ct.ablation_spearman(np.abs(shifts["kl_norm"].statistic.values), circuit.ablation)

    # the bounded subsample (prompt-count curve, figures), gathered by the same pass over the store
    sample = {v: tuple(xr.DataArray(rows.reshape(-1, *c.shape), dims=("prompt", "layer", "head"),
                                    coords={"layer": c.mask["layer"].values, "head": c.mask["head"].values}, name=v)
                       for rows in s.sample[v]) for v in TESTED}
    table = {}
    if curve:
        table = prompt_curve({v: sample[v][0].values for v in TESTED}, {v: sample[v][1].values for v in TESTED},
                             mask, rng=rng_for(seed, pl.SEED_CURVE), n_boot=min(n_boot, 200), paired=paired,
                             perm_rng=rng_for(seed, pl.SEED_CURVE_PERM), n_perm=min(n_perm, CURVE_N_PERM))
    whole = all(len(p) == n for p, n in zip(picks, (n_a, n_b)))
    scale = {
        "streamed": True,
        # how this run was cut up: not in summary.json, which is the same whatever the memory or the scheduler
        "execution": {"memory_bytes": int(memory), "block_prompts": int(s.rows), "n_blocks": int(s.n_blocks)},
        "unit_prompts": int(s.size), "cross_unit_prompts": int(s.csize),
        "resampling": ("prompts resampled and permuted one by one (units of one prompt)" if s.size == 1 else
                       f"bootstrap and permutations over units of {s.size} consecutive prompts"
                       + (" (pairs)" if paired else "")),
        "c_diff_resampling": ("prompts permuted one by one" if s.csize == 1 else
                              f"C_diff null and intervals over units of {s.csize} consecutive prompts"),
        "bca_acceleration": "prompt-level jackknife, exact from streamed second and third central moments",
        "subsample": {"prompts": {a: int(len(picks[0])), b: int(len(picks[1]))}, "of": {a: int(n_a), b: int(n_b)},
                      "all_prompts": bool(whole), "used_for": ["prompt_curve", "figure scatter clouds"]},
    }
    head_means = {}
    for v in TESTED:
        ua, ub = (s.a[v], s.b[v])
        head_means[v] = (ua.totals()["mean"].reshape(c.shape), ub.totals()["mean"].reshape(c.shape))
    comparison = dataclasses.replace(c, values=sample, counts={a: int(n_a), b: int(n_b)}, head_means=head_means,
                                     scale=scale)

    # the head taxonomy (every real store has it): streamed, in the memory the results above leave
    taxonomy = None
    in_memory: list[str] = []  # sections computed from the loaded store: none left (kept in the key for readers)
    if has_taxonomy(ds):
        taxonomy, tax_sizes, tax_blocks = stream_taxonomy(
            ds, n_boot=n_boot, seed=seed, memory=memory - held_bytes(s, shifts, standard, tests, independent),
            in_flight=in_flight or _in_flight(), thresholds=thresholds)
        scale["taxonomy"] = {
            "streamed": True, "unit_prompts": tax_sizes,
            "resampling": ("prompts resampled one by one (units of one prompt)" if max(tax_sizes.values()) == 1 else
                           "bootstrap over units of consecutive prompts (unit_prompts per condition)"),
            "exact": "means, defined counts, source conditions and labels (float64 rounding with units of several "
                     "prompts)"}
        scale["execution"]["taxonomy_blocks"] = int(tax_blocks)

    # causal effects and cheap-vs-exact (stores with effects): streamed from the effect variables' units
    causal, cheap_methods = {}, {}
    if exact_kinds(ds):
        causal, cheap_methods, effect_sizes = stream_causal(
            ds, c, s, shifts, tests, rule, memory - held_bytes(standard, independent, taxonomy),
            in_flight or _in_flight())
        scale["causal"] = {
            "streamed": True, "unit_prompts": effect_sizes,
            "resampling": ("prompts resampled one by one (units of one prompt)" if max(effect_sizes.values()) == 1
                           else "bootstrap over units of consecutive prompts (unit_prompts per condition; a and b: "
                                "the diagnostics' units, so the joint bootstraps move both together)"),
            "exact": "mean effects, t-tests and p-values, the causal circuit, the AtP means"}
    scale["execution"]["in_memory"] = in_memory
    return Analysis(comparison, shifts, tests, correlations, cross_head, ablation, table, causal, cheap_methods,
                    taxonomy, standard, independent)
