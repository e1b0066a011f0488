"""Synthetic stores that follow CONTRACT.md's schema, with planted shifts and couplings.

Used by the tests (known truth) and by the example notebook (runs offline). Values are Gaussian
around per-head baselines, so the true delta of means of head (l, h) is exactly the planted shift.

    ds = make_dataset(n_layers=3, n_heads=8, shifts={"kl_norm": {(2, 3): 0.1}})
    write_store(ds, "synthetic.zarr")

Causal effects (CONTRACT.md schema 2) are planted the same way: ``effects={(2, 3): -1.0}`` gives every
effect kind of head (2, 3) a per-prompt mean of exactly -1.0 on the first condition (the only one with a
task target); every other head's mean effect is 0. Cheap estimates ride on them:
``cheap_kinds=("atp_patch", "atpstar_patch")`` adds AtP-like ``effect_atp_patch`` = effect_patch + noise
(signed) and AtP*-like ``effect_atpstar_patch`` = |effect_patch + noise| (an unsigned magnitude).

Head-taxonomy scores (CONTRACT.md schema 2) are planted by role: ``roles={"induction": [(1, 2)],
"sink": [(0, 0)]}`` gives those heads a mean score of exactly ROLE_SCORE on the role's variable and every
other head BACKGROUND_SCORE (see `plant_taxonomy`); dup_attn and induction_attn exist only on the
conditions with repeats (default: the first) and are NaN elsewhere.
"""

from __future__ import annotations

import datetime
import json
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import xarray as xr

from analysis.effects import cheap_family, effect_variable
from analysis.errors import AnalysisError
from jaxdiag.schema import DIAGNOSTICS, EFFECT_KINDS

VARIABLES = DIAGNOSTICS
EXACT_KINDS = tuple(k for k in EFFECT_KINDS if cheap_family(k) is None)  # planted by default; estimates on request
HeadShifts = Mapping[tuple[int, int], float]


def make_dataset(*, n_layers: int = 3, n_heads: int = 4, n_prompts: int | Sequence[int] = 50,
                 conditions: Sequence[str] = ("ioi", "non_ioi"), n_tokens: int = 15,
                 shifts: Mapping[str, HeadShifts] | None = None, noise: float = 0.05,
                 noise_by_head: np.ndarray | None = None, kl_chi_corr: float = 0.5,
                 couplings: Mapping[tuple[tuple[int, int], tuple[int, int]], float] | None = None,
                 seed: int = 0, circuit: str | dict | None = None, effects: HeadShifts | None = None,
                 effect_kinds: Sequence[str] = EXACT_KINDS, effect_noise: float = 0.05,
                 cheap_kinds: Sequence[str] = (), cheap_noise: float = 0.05,
                 roles: Mapping[str, Sequence[tuple[int, int]]] | None = None,
                 repeats: Sequence[str] | None = None, pair_corr: float | None = None,
                 dla: HeadShifts | None = None, lens: Sequence[float] | None = None,
                 patching: Mapping[str, Mapping[tuple, float]] | None = None, role_positions: bool = True
                 ) -> xr.Dataset:
    """A store-shaped Dataset with dims (condition, prompt, layer, head).

    shifts: {"kl_norm" | "chi": {(layer, head): delta}} added to the first condition only, so
      delta = mean(first) - mean(second) has expectation exactly delta.
    noise: SD of the per-prompt noise (or noise_by_head, a [layer, head] array of SDs).
    kl_chi_corr: per-prompt correlation between a head's kl_norm and chi noise.
    couplings: {((l1, h1), (l2, h2)): r} gives the two heads' kl_norm a shared prompt-level factor
      with correlation about r in the first condition only (a planted C_diff entry).
    n_prompts: one count, or one per condition (shorter conditions are NaN-filled, n_tokens 0).
    circuit: recorded in the run config (a name, a file path, or an inline circuit table).
    effects: {(layer, head): mean effect} planted in `metric` and `effect_<kind>` for every kind of
      effect_kinds (see `plant_effects`); None (the default) writes a store without effects, exactly as
      before (the effects draw from their own random stream, so the diagnostics are the same either way).
    effect_noise: SD of the per-prompt effect around its head's planted mean.
    cheap_kinds: AtP-family estimates of planted kinds ("atp_K", "atpstar_K"; see `plant_cheap`), drawn from
      their own random stream, so the exact effects are the same with or without them.
    cheap_noise: SD of a cheap estimate's per-prompt error (0: AtP equals the exact effect).
    roles: {role: heads} of analysis.taxonomy.ROLE_SCORES planted in the taxonomy variables (see
      `plant_taxonomy`; it rewrites bos_attn); None (the default) writes a store without them, exactly as
      before (they draw from their own random stream).
    repeats: the conditions whose prompts repeat tokens (dup_attn, induction_attn defined); default: the first.
    pair_corr: None (independent conditions, no `pair` coordinate) or r in [0, 1): a paired store. Prompt i of
      the first condition and prompt i of the second are a pair (`pair` coordinate "p<i>" on both; the two
      conditions need equal counts), and their per-prompt noise correlates with r on every head and variable
      (as matched IOI/ABC prompts share template and names). Shifts keep their exact expectation.
    dla, lens, patching, role_positions: issue 29's variables beyond per-head scores (see `plant_beyond`): dla
      {(layer, head): mean DLA on the first condition}; lens: the per-layer fraction of the metric the logit lens
      reads before the last layer; patching {"resid" | "attn_out" | "mlp_out": {(layer, ROLE | position): mean},
      "head_pos": {(layer, head, ROLE | position): mean}} on the first condition; role_positions: write
      `role_position` with the patching variables. None (the default) writes a store without them, exactly as
      before (they draw from their own random stream).
    """
    rng = np.random.default_rng(seed)
    conditions = [str(c) for c in conditions]
    counts = [int(n_prompts)] * len(conditions) if np.isscalar(n_prompts) else [int(n) for n in n_prompts]
    if len(counts) != len(conditions):
        raise AnalysisError("n_prompts needs one count per condition")
    n_max, shape = max(counts), (n_layers, n_heads)
    sd = np.broadcast_to(np.asarray(noise if noise_by_head is None else noise_by_head, dtype=float), shape)
    layer_trend = np.linspace(0.25, 0.55, n_layers)[:, None]
    base_kl = layer_trend + rng.uniform(-0.1, 0.1, size=shape)
    base_chi = 0.3 * layer_trend + rng.uniform(0.0, 0.1, size=shape)
    log_n = np.log(n_tokens)

    if pair_corr is not None and (len(counts) < 2 or counts[0] != counts[1] or not 0 <= pair_corr < 1):
        raise AnalysisError("pair_corr needs two conditions with equal prompt counts and 0 <= pair_corr < 1")
    data = {v: np.full((len(conditions), n_max, *shape), np.nan, dtype=np.float32) for v in VARIABLES}
    first_noise = None
    for c, n in enumerate(counts):
        e1 = rng.standard_normal((n, *shape))
        e2 = rng.standard_normal((n, *shape))
        if pair_corr is not None and c == 0:
            first_noise = (e1.copy(), e2.copy())
        if pair_corr is not None and c == 1:  # the partner's noise: correlation pair_corr, unit variance
            e1 = pair_corr * first_noise[0] + np.sqrt(1 - pair_corr**2) * e1
            e2 = pair_corr * first_noise[1] + np.sqrt(1 - pair_corr**2) * e2
        if c == 0:
            for ((l1, h1), (l2, h2)), r in (couplings or {}).items():
                shared = rng.standard_normal(n)
                for l, h in ((l1, h1), (l2, h2)):
                    e1[:, l, h] = np.sqrt(abs(r)) * shared * (np.sign(r) if (l, h) == (l2, h2) else 1) \
                        + np.sqrt(1 - abs(r)) * e1[:, l, h]
        kl_norm = base_kl + sd * e1
        chi = base_chi + sd * (kl_chi_corr * e1 + np.sqrt(1 - kl_chi_corr**2) * e2)
        if c == 0:
            for (l, h), d in (shifts or {}).get("kl_norm", {}).items():
                kl_norm[:, l, h] += d
            for (l, h), d in (shifts or {}).get("chi", {}).items():
                chi[:, l, h] += d
        kl = kl_norm * log_n
        values = {
            "kl_norm": kl_norm, "chi": chi, "kl": kl, "entropy": log_n - kl,
            "max_attn": np.clip(0.2 + 0.7 * kl_norm, 0, 1), "bos_attn": np.clip(0.5 * kl_norm, 0, 1),
            "z_excess": 2.0 * kl_norm + 0.1 * rng.standard_normal((n, *shape)),
        }
        for v in VARIABLES:
            data[v][c, :n] = values[v]

    tokens = np.full((len(conditions), n_max, n_tokens), -1, dtype=np.int32)
    lengths = np.zeros((len(conditions), n_max), dtype=np.int32)
    texts = np.full((len(conditions), n_max), "", dtype=object)
    for c, n in enumerate(counts):
        tokens[c, :n] = rng.integers(0, 50257, size=(n, n_tokens))
        lengths[c, :n] = n_tokens
        texts[c, :n] = [f"synthetic {conditions[c]} prompt {i}" for i in range(n)]
    config = {"conditions": conditions, "synthetic": True, "seed": seed}
    if circuit is not None:
        config["circuit"] = circuit
    dims = ("condition", "prompt", "layer", "head")
    ds = xr.Dataset(
        {v: (dims, data[v]) for v in VARIABLES},
        coords={
            "condition": np.asarray(conditions, dtype=str), "prompt": np.arange(n_max),
            "layer": np.arange(n_layers), "head": np.arange(n_heads),
            "text": (("condition", "prompt"), texts.astype(str)),
            "n_tokens": (("condition", "prompt"), lengths),
            "tokens": (("condition", "prompt", "position"), tokens),
        },
        attrs={
            "schema_version": 1, "jaxdiag_version": "synthetic", "model": "synthetic",
            "weights_sha256": "", "n_layers": n_layers, "n_heads": n_heads, "prepend_bos": True,
            "query_positions": "last", "precision": "highest", "seed": seed,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": json.dumps(config), "complete": True,
        },
    )
    if pair_corr is not None:
        ids = np.full((len(conditions), n_max), "", dtype=object)
        ids[0, :counts[0]] = ids[1, :counts[1]] = [f"p{i}" for i in range(counts[0])]
        ds = ds.assign_coords(pair=(("condition", "prompt"), ids.astype(str)))
    if roles is not None:
        ds = plant_taxonomy(ds, counts, roles, conditions[:1] if repeats is None else repeats,
                            np.random.default_rng([seed, 3]))
    if effects is None and cheap_kinds:
        raise AnalysisError("cheap_kinds estimate planted effects: pass effects too")
    if effects is not None:
        ds = plant_effects(ds, counts, effects, effect_kinds, effect_noise, np.random.default_rng([seed, 1]))
        if cheap_kinds:
            ds = plant_cheap(ds, cheap_kinds, cheap_noise, np.random.default_rng([seed, 2]))
    if dla is not None or lens is not None or patching is not None:
        ds = plant_beyond(ds, counts, dla=dla, lens=lens, patching=patching, role_positions=role_positions,
                          rng=np.random.default_rng([seed, 4]))
    return ds


METRIC_MEAN = 2.0  # planted mean metric of a condition with a target (plant_effects' too)
DLA_NOISE, PATCH_NOISE, LENS_NOISE = 0.1, 0.05, 0.05  # per-prompt SDs around the planted means
DLA_ATTN_BIAS, DLA_MLP, DLA_EMBED = 0.05, 0.2, 0.1  # planted mean DLA of each layer's attention bias, MLP; embedding
ROLES = ("IO", "S1", "S1+1", "S2", "END")


def synthetic_roles(length: int, prompt: int) -> list[int]:
    """Role positions of a synthetic prompt of `length` tokens: IO 1, S1 3, S1+1 4 (absent, -1, on every fifth
    prompt), S2 length - 4, END length - 1."""
    return [1, 3, -1 if prompt % 5 == 4 else 4, length - 4, length - 1]


def plant_beyond(ds: xr.Dataset, counts: Sequence[int], *, dla: HeadShifts | None, lens: Sequence[float] | None,
                 patching: Mapping[str, Mapping[tuple, float]] | None, role_positions: bool,
                 rng: np.random.Generator) -> xr.Dataset:
    """Add analysis.beyond_heads' variables. Where the store has no `metric`, every condition gets one
    (METRIC_MEAN + 0.5 N(0, 1)); prompts without a metric get NaN everywhere below.

    dla: dla = planted (first condition; 0 elsewhere) + DLA_NOISE N; dla_attn_bias, dla_mlp, dla_embed around
      DLA_ATTN_BIAS, DLA_MLP, DLA_EMBED; dla_norm_bias = metric minus the rest, so the sum rule holds to float32
      rounding.
    lens: lens_metric[l] = lens[l] x metric + LENS_NOISE N for l < n_layers - 1 (true mean lens[l] x METRIC_MEAN),
      the last layer's = metric; lens_rank = 100 (1 - lens[l]) + N, 0 at the last layer.
    patching: prompts get lengths n_tokens - (prompt % 3) (n_tokens, tokens rewritten: -1 past the end) and ROLES
      at synthetic_roles; effect_patch_<kind>[l, position] = planted (first condition, at the prompt's role
      position or at the absolute position) + PATCH_NOISE N, NaN past the prompt's end and on prompts without a
      pair id where the store has a `pair` coordinate. role_positions: write `role_position` and coordinate `role`.
    """
    n_c, n_max = ds.sizes["condition"], ds.sizes["prompt"]
    n_layers, n_heads = ds.sizes["layer"], ds.sizes["head"]
    out = ds.copy()
    if "metric" in ds:
        metric = ds["metric"].values.astype(np.float64)
    else:
        metric = np.full((n_c, n_max), np.nan)
        for c, n in enumerate(counts):
            metric[c, :n] = METRIC_MEAN + 0.5 * rng.standard_normal(n)
        out["metric"] = (("condition", "prompt"), metric.astype(np.float32))
        metric = out["metric"].values.astype(np.float64)
    has = np.isfinite(metric)
    nan_off = lambda x: np.where(has.reshape(has.shape + (1,) * (x.ndim - 2)), x, np.nan)  # noqa: E731
    if dla is not None:
        planted = np.zeros((n_layers, n_heads))
        for (layer, head), value in dla.items():
            planted[layer, head] = value
        heads = DLA_NOISE * rng.standard_normal((n_c, n_max, n_layers, n_heads))
        heads[0] += planted
        bias = DLA_ATTN_BIAS + 0.02 * rng.standard_normal((n_c, n_max, n_layers))
        mlp = DLA_MLP + DLA_NOISE * rng.standard_normal((n_c, n_max, n_layers))
        embed = DLA_EMBED + 0.05 * rng.standard_normal((n_c, n_max))
        heads, bias, mlp, embed = (nan_off(x).astype(np.float32) for x in (heads, bias, mlp, embed))
        rest = (heads.astype(np.float64).sum(axis=(2, 3)) + bias.astype(np.float64).sum(axis=2)
                + mlp.astype(np.float64).sum(axis=2) + embed)
        out["dla"] = (("condition", "prompt", "layer", "head"), heads)
        out["dla_attn_bias"] = (("condition", "prompt", "layer"), bias)
        out["dla_mlp"] = (("condition", "prompt", "layer"), mlp)
        out["dla_embed"] = (("condition", "prompt"), embed)
        out["dla_norm_bias"] = (("condition", "prompt"), (metric - rest).astype(np.float32))
    if lens is not None:
        frac = np.asarray(list(lens)[:n_layers - 1] + [1.0], dtype=np.float64)
        if frac.size != n_layers:
            raise AnalysisError(f"lens needs {n_layers - 1} fractions (one per layer but the last)")
        read = frac * metric[..., None] + LENS_NOISE * rng.standard_normal((n_c, n_max, n_layers))
        read[..., -1] = metric
        rank = 100.0 * (1.0 - frac) + rng.standard_normal((n_c, n_max, n_layers))
        rank[..., -1] = 0.0
        out["lens_metric"] = (("condition", "prompt", "layer"), nan_off(read).astype(np.float32))
        out["lens_rank"] = (("condition", "prompt", "layer"), nan_off(rank).astype(np.float32))
    if patching is not None:
        unknown = set(patching) - {"resid", "attn_out", "mlp_out", "head_pos"}
        if unknown:
            raise AnalysisError(f"unknown patching variable(s) {', '.join(sorted(unknown))}: resid, attn_out, "
                                "mlp_out, head_pos")
        width = ds.sizes["position"]
        lengths = np.zeros((n_c, n_max), dtype=np.int32)
        roles = np.full((n_c, n_max, len(ROLES)), -1, dtype=np.int32)
        tokens = ds["tokens"].values.copy()
        for c, n in enumerate(counts):
            for p in range(n):
                lengths[c, p] = width - p % 3
                roles[c, p] = synthetic_roles(int(lengths[c, p]), p)
                tokens[c, p, lengths[c, p]:] = -1
        out = out.assign_coords(n_tokens=(("condition", "prompt"), lengths),
                                tokens=(("condition", "prompt", "position"), tokens))
        inside = np.arange(width)[None, None, :] < lengths[..., None]  # (condition, prompt, position)
        paired = has.copy()
        if "pair" in ds.coords:
            paired &= np.asarray(ds["pair"].values).astype(str) != ""
        for kind in ("resid", "attn_out", "mlp_out", "head_pos"):
            if kind not in patching:
                continue
            shape = (n_c, n_max, n_layers, *((n_heads,) if kind == "head_pos" else ()), width)
            values = PATCH_NOISE * rng.standard_normal(shape)
            for key, value in patching[kind].items():
                *cell, where = key
                for p in range(counts[0]):
                    at = where if isinstance(where, (int, np.integer)) else int(roles[0, p, ROLES.index(where)])
                    if at >= 0:
                        values[(0, p, *cell, at)] += value
            keep = (inside & paired[..., None])
            keep = keep[:, :, None, None, :] if kind == "head_pos" else keep[:, :, None, :]
            values = np.where(keep, values, np.nan).astype(np.float32)
            dims = ("condition", "prompt", "layer", *(("head",) if kind == "head_pos" else ()), "position")
            out[f"effect_patch_{kind}"] = (dims, values)
        if role_positions:
            out = out.assign_coords(role=np.asarray(ROLES, dtype=str))
            out["role_position"] = (("condition", "prompt", "role"), np.where(has[..., None], roles, -1).astype(np.int32))
    out.attrs["schema_version"] = 2
    return out


ROLE_SCORE, BACKGROUND_SCORE = 0.7, 0.05  # planted mean score of a head with / without the role
ROLE_NOISE, BACKGROUND_NOISE = 0.05, 0.01  # per-prompt SDs: scores stay in (0, 1) without clipping
LOG_Z = 2.0  # planted mean log_z of every head (it has no role)


def plant_taxonomy(ds: xr.Dataset, counts: Sequence[int], roles: Mapping[str, Sequence[tuple[int, int]]],
                   repeats: Sequence[str], rng: np.random.Generator) -> xr.Dataset:
    """Add prev_attn, self_attn, dup_attn, induction_attn and log_z, and rewrite bos_attn: per prompt, a head
    with the role gets ROLE_SCORE + ROLE_NOISE x N(0, 1) on the role's variable, every other head
    BACKGROUND_SCORE + BACKGROUND_NOISE x N(0, 1), so the true means are exactly those two values. dup_attn
    and induction_attn are NaN on conditions not in repeats (no token has an earlier copy there)."""
    from analysis.taxonomy import ROLE_SCORES  # noqa: PLC0415 (taxonomy reads stores; synthetic writes them)

    unknown = set(roles) - set(ROLE_SCORES)
    if unknown:
        raise AnalysisError(f"unknown role(s) {', '.join(sorted(unknown))}: roles are {', '.join(ROLE_SCORES)}")
    names = [str(c) for c in ds["condition"].values]
    if set(repeats) - set(names):
        raise AnalysisError(f"repeats names unknown condition(s): {', '.join(sorted(set(repeats) - set(names)))}")
    shape = (ds.sizes["condition"], ds.sizes["prompt"], ds.sizes["layer"], ds.sizes["head"])
    out = ds.copy()
    for role, var in ROLE_SCORES.items():
        planted = np.zeros(shape[2:], dtype=bool)
        for layer, head in roles.get(role, ()):
            planted[layer, head] = True
        values = np.full(shape, np.nan, dtype=np.float32)
        for c, n in enumerate(counts):
            noise = rng.standard_normal((n, *shape[2:]))
            values[c, :n] = np.where(planted, ROLE_SCORE + ROLE_NOISE * noise, BACKGROUND_SCORE + BACKGROUND_NOISE * noise)
            if var in ("dup_attn", "induction_attn") and names[c] not in repeats:
                values[c, :n] = np.nan
        out[var] = (ds["bos_attn"].dims, values)
    log_z = np.full(shape, np.nan, dtype=np.float32)
    for c, n in enumerate(counts):
        log_z[c, :n] = LOG_Z + 0.1 * rng.standard_normal((n, *shape[2:]))
    out["log_z"] = (ds["bos_attn"].dims, log_z)
    out.attrs["schema_version"] = 2
    return out


def plant_cheap(ds: xr.Dataset, kinds: Sequence[str], noise: float, rng: np.random.Generator) -> xr.Dataset:
    """Add AtP-family estimates of the store's planted effects, per prompt: effect_atp_K = effect_K +
    noise * N(0, 1) (signed, like attribution patching) and effect_atpstar_K = |effect_K + noise * N(0, 1)|
    (an unsigned magnitude, like AtP*); NaN wherever effect_K is."""
    out = ds.copy()
    for kind in kinds:
        family = cheap_family(kind)
        if family is None or effect_variable(family[1]) not in ds:
            raise AnalysisError(f"cannot plant {kind!r}: it must be atp_K or atpstar_K of a planted kind K")
        exact = ds[effect_variable(family[1])].values.astype(np.float64)
        estimate = exact + noise * rng.standard_normal(exact.shape)
        if family[0] == "atpstar":
            estimate = np.abs(estimate)
        out[effect_variable(kind)] = (ds[effect_variable(family[1])].dims, estimate.astype(np.float32))
        out[effect_variable(kind)].attrs["description"] = (
            f"synthetic: {'|' if family[0] == 'atpstar' else ''}effect_{family[1]} + {noise:g} x N(0, 1)"
            f"{'|' if family[0] == 'atpstar' else ''} per prompt")
    out.attrs["effects"] = list(dict.fromkeys([*ds.attrs["effects"], *kinds]))
    return out


def plant_effects(ds: xr.Dataset, counts: Sequence[int], effects: HeadShifts, kinds: Sequence[str], noise: float,
                  rng: np.random.Generator, d_head: int = 4) -> xr.Dataset:
    """Add the schema-2 task and causal-effect variables: the first condition has a target on every
    prompt, the others none (their metric and effects are NaN, as for a "random" condition).

    effect_<kind>[first condition, prompt, l, h] = effects.get((l, h), 0) + noise * N(0, 1), so a head's
    true mean effect is exactly its planted value.
    """
    n_conditions, n_max = ds.sizes["condition"], ds.sizes["prompt"]
    shape = (ds.sizes["layer"], ds.sizes["head"])
    planted = np.zeros(shape)
    for (layer, head), value in effects.items():
        planted[layer, head] = value
    n = counts[0]  # prompts of the first condition: the only ones with a target
    metric = np.full((n_conditions, n_max), np.nan, dtype=np.float32)
    metric[0, :n] = 2.0 + 0.5 * rng.standard_normal(n)
    out = ds.assign(metric=(("condition", "prompt"), metric))
    for kind in kinds:
        values = np.full((n_conditions, n_max, *shape), np.nan, dtype=np.float32)
        values[0, :n] = planted + noise * rng.standard_normal((n, *shape))
        out[f"effect_{kind}"] = (("condition", "prompt", "layer", "head"), values)
    if "mean" in kinds:
        out["head_mean"] = (("layer", "head", "d_head"), rng.standard_normal((*shape, d_head)).astype(np.float32))
    target = np.full((n_conditions, n_max), -1, dtype=np.int32)
    target[0, :n] = rng.integers(0, 50257, size=n)
    foil = np.full((n_conditions, n_max), -1, dtype=np.int32)
    foil[0, :n] = rng.integers(0, 50257, size=n)
    pair = ds["pair"].values if "pair" in ds.coords else np.full((n_conditions, n_max), "", dtype=str)
    out = out.assign_coords(target=(("condition", "prompt"), target), foil=(("condition", "prompt"), foil),
                            pair=(("condition", "prompt"), pair))
    reference = str(ds["condition"].values[1 if n_conditions > 1 else 0])
    out.attrs.update(schema_version=2, effects=list(kinds), effects_reference=reference)
    return out


def write_store(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a Dataset as a Zarr v3 store with consolidated metadata (refuses to overwrite)."""
    path = Path(path)
    if path.exists():
        raise AnalysisError(f"{str(path)!r} already exists")
    with warnings.catch_warnings():  # zarr flags str coords and consolidated metadata as not-yet-spec v3
        warnings.filterwarnings("ignore", message=".*(Zarr V3 specification|Consolidated metadata).*")
        ds.to_zarr(path, zarr_format=3, consolidated=True, mode="w-")
    return path
