"""Rotary position embeddings (RoPE) and their settings from ``config.json``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiag.errors import JaxdiagError


def rotary(x: jax.Array, positions: jax.Array, *, dims: int, theta: float) -> jax.Array:
    """Rotary position embedding on the first ``dims`` of each head of ``x [b, s, h, d]`` (HF's
    rotate-half convention, angles in float32 as transformers computes them); the rest passes."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dims, 2, dtype=jnp.float32) / dims))
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([freqs, freqs], axis=-1)  # [s, dims]
    cos = jnp.cos(angles)[None, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[None, :, None, :].astype(x.dtype)
    rot, rest = x[..., :dims], x[..., dims:]
    half = dims // 2
    rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return jnp.concatenate([rot * cos + rotated * sin, rest], axis=-1)


def rope_settings(raw: dict, *, source: str, default_theta: float = 10000.0,
                  default_fraction: float = 1.0) -> tuple[float, float]:
    """(theta, rotary fraction of each head) from a ``config.json`` (transformers 4 or 5 spelling);
    a clear error for any rope scaling, which jaxdiag does not implement."""
    params = dict(raw.get("rope_parameters") or {})
    scaling = raw.get("rope_scaling")
    if scaling:
        params = {**scaling, **params}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", None):
        raise JaxdiagError(f"{source}: rope type {rope_type!r} is not supported (only the default rotary embedding)")
    def first(*values, default):
        return next((v for v in values if v is not None), default)

    theta = first(params.get("rope_theta"), raw.get("rope_theta"), raw.get("rotary_emb_base"), default=default_theta)
    fraction = first(params.get("partial_rotary_factor"), raw.get("partial_rotary_factor"), raw.get("rotary_pct"),
                     default=default_fraction)
    return float(theta), float(fraction)
