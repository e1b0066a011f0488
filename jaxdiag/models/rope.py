"""Rotary position embeddings (RoPE): the frequency rules and their settings from ``config.json``.

A :class:`Rope` is one layer's rule: the base ``theta``, how many dims of a head rotate, and a
scaling type, each computed as transformers' ``ROPE_INIT_FUNCTIONS`` compute it (float32):

- ``default``: ``inv_freq_i = theta^(-2i/dims)``;
- ``linear``: ``inv_freq / factor`` (position interpolation);
- ``dynamic`` (NTK): for a prompt of length L beyond ``max_positions``, the base becomes
  ``theta ((factor L / max_positions) - (factor - 1))^(dims / (dims - 2))``. transformers rescales by
  the longest position of the batch it is given; jaxdiag by each prompt's own length, so that a
  prompt's diagnostics do not depend on the batch it was put in;
- ``llama3``: long wavelengths (beyond ``original_max / low_freq_factor``) divided by ``factor``,
  short ones (below ``original_max / high_freq_factor``) kept, a smooth blend between;
- ``yarn``: interpolated and extrapolated frequencies blended by a linear ramp over the
  ``beta_fast .. beta_slow`` rotation range, and cos and sin scaled by ``attention_factor``
  (default ``0.1 ln(factor) + 1``), so every rotated score grows by its square.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxdiag.errors import JaxdiagError

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


@dataclasses.dataclass(frozen=True)
class Rope:
    """One layer's rotary embedding (see the module docstring for each ``rope_type``)."""

    theta: float
    dims: int  # rotated dims of each head (the rest pass unchanged)
    rope_type: str = "default"
    factor: float = 1.0
    attention_factor: float = 1.0  # scales cos and sin (yarn)
    max_positions: int = 0  # dynamic: the length beyond which the base grows
    original_max_positions: int = 0  # llama3, yarn: the pretraining context
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    truncate: bool = True  # yarn: integer bounds of the correction range

    @property
    def per_prompt(self) -> bool:
        """Whether the frequencies depend on the prompt's length (``dynamic``)."""
        return self.rope_type == "dynamic"


def _exponents(dims: int) -> jax.Array:
    return jnp.arange(0, dims, 2, dtype=jnp.float32) / dims


def default_inv_freq(theta: float | jax.Array, dims: int) -> jax.Array:
    return 1.0 / (theta ** _exponents(dims))


def llama3_inv_freq(rope: Rope) -> jax.Array:
    inv_freq = default_inv_freq(rope.theta, rope.dims)
    old = rope.original_max_positions
    low_wavelen, high_wavelen = old / rope.low_freq_factor, old / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def yarn_inv_freq(rope: Rope) -> jax.Array:
    dims, base = rope.dims, rope.theta

    def correction_dim(rotations: float) -> float:  # the dim that turns ``rotations`` times in the context
        return dims * math.log(rope.original_max_positions / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dims - 1)
    if low == high:
        high += 0.001  # as transformers: no zero-width ramp
    pos_freqs = base ** _exponents(dims)
    extrapolated, interpolated = 1.0 / pos_freqs, 1.0 / (rope.factor * pos_freqs)
    ramp = jnp.clip((jnp.arange(dims // 2, dtype=jnp.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # the share of the extrapolated (unscaled) frequency
    return interpolated * (1 - keep) + extrapolated * keep


def dynamic_inv_freq(rope: Rope, lengths: jax.Array) -> jax.Array:
    """``[b, dims / 2]``: each prompt's frequencies from its own length (the default ones up to
    ``max_positions``, exactly as transformers' cached ones)."""
    seq = jnp.maximum(lengths, rope.max_positions).astype(jnp.float32)
    base = rope.theta * ((rope.factor * seq / rope.max_positions) - (rope.factor - 1)) ** (rope.dims / (rope.dims - 2))
    grown = 1.0 / (base[:, None] ** _exponents(rope.dims)[None, :])
    short = (lengths <= rope.max_positions)[:, None]
    return jnp.where(short, default_inv_freq(rope.theta, rope.dims)[None, :], grown)


def inv_freq(rope: Rope, lengths: jax.Array | None = None) -> jax.Array:
    """The inverse frequencies ``[dims / 2]`` (``[b, dims / 2]`` for ``dynamic``, from ``lengths``)."""
    if rope.rope_type == "default":
        return default_inv_freq(rope.theta, rope.dims)
    if rope.rope_type == "linear":
        return default_inv_freq(rope.theta, rope.dims) / rope.factor
    if rope.rope_type == "llama3":
        return llama3_inv_freq(rope)
    if rope.rope_type == "yarn":
        return yarn_inv_freq(rope)
    if rope.rope_type == "dynamic":
        return dynamic_inv_freq(rope, lengths)
    raise JaxdiagError(f"rope type {rope.rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})")


def rotary(x: jax.Array, positions: jax.Array, rope: Rope, lengths: jax.Array | None = None) -> jax.Array:
    """Rotary position embedding on the first ``rope.dims`` of each head of ``x [b, s, h, d]`` (HF's
    rotate-half convention, angles in float32 as transformers computes them); the rest passes."""
    dims = rope.dims
    freqs_of = inv_freq(rope, lengths)
    if freqs_of.ndim == 1:
        freqs = positions.astype(jnp.float32)[:, None] * freqs_of[None, :]
        angles = jnp.concatenate([freqs, freqs], axis=-1)[None, :, None, :]  # [1, s, 1, dims]
    else:  # one set of frequencies per prompt
        freqs = positions.astype(jnp.float32)[None, :, None] * freqs_of[:, None, :]
        angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [b, s, 1, dims]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    if rope.attention_factor != 1.0:
        cos, sin = cos * rope.attention_factor, sin * rope.attention_factor
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    rot, rest = x[..., :dims], x[..., dims:]
    half = dims // 2
    rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return jnp.concatenate([rot * cos + rotated * sin, rest], axis=-1)


def _first(*values, default):
    return next((v for v in values if v is not None), default)


def rope_parameters(raw: dict[str, Any]) -> dict[str, Any]:
    """The rope settings of a ``config.json`` as one dict, whichever transformers wrote it: 5's
    ``rope_parameters`` (read first), 4's ``rope_scaling`` (``type`` or ``rope_type``)."""
    params = dict(raw.get("rope_parameters") or {})
    scaling = raw.get("rope_scaling")
    if scaling:
        params = {**scaling, **params}
    return params


def rope_settings(raw: dict[str, Any], *, source: str, head_dim: int, default_theta: float = 10000.0,
                  default_fraction: float = 1.0, params: dict[str, Any] | None = None) -> Rope:
    """The :class:`Rope` of a ``config.json`` (transformers 4 or 5 spelling); ``params``: one layer
    type's own rope dict (Gemma 3), else the config's. A one-line error names any other rope type."""
    params = rope_parameters(raw) if params is None else dict(params)
    rope_type = _first(params.get("rope_type"), params.get("type"), default="default")
    if rope_type not in ROPE_TYPES:
        raise JaxdiagError(f"{source}: rope type {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    theta = float(_first(params.get("rope_theta"), raw.get("rope_theta"), raw.get("rotary_emb_base"), default=default_theta))
    fraction = float(_first(params.get("partial_rotary_factor"), raw.get("partial_rotary_factor"), raw.get("rotary_pct"),
                            default=default_fraction))
    dims = int(head_dim * fraction)
    if rope_type == "default":
        return Rope(theta, dims)
    max_positions = int(raw.get("max_position_embeddings") or 2048)
    original = int(_first(raw.get("original_max_position_embeddings"), params.get("original_max_position_embeddings"),
                          default=max_positions))
    factor = params.get("factor")
    if factor is None and rope_type == "yarn":
        factor = max_positions / original
    if factor is None:
        raise JaxdiagError(f"{source}: rope type {rope_type!r} needs a 'factor', which this config lacks")
    factor = float(factor)
    if rope_type in ("linear", "dynamic"):
        return Rope(theta, dims, rope_type, factor, max_positions=max_positions)
    if rope_type == "llama3":
        try:
            low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
        except KeyError as exc:
            raise JaxdiagError(f"{source}: rope type 'llama3' needs {exc.args[0]!r}, which this config lacks") from None
        return Rope(theta, dims, rope_type, factor, original_max_positions=original, low_freq_factor=low,
                    high_freq_factor=high)
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)
    return Rope(theta, dims, rope_type, factor, float(attention_factor), original_max_positions=original,
                beta_fast=float(params.get("beta_fast") or 32), beta_slow=float(params.get("beta_slow") or 1),
                truncate=bool(params.get("truncate", True)))


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention scale, ``0.1 mscale ln(scale) + 1`` (1 for no scaling)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def context_length(rope: Rope, max_positions: int) -> int:
    """The longest prompt a model with ``rope`` is run on: its ``max_position_embeddings``, or for
    ``dynamic`` (whose point is to extrapolate past it) ``factor`` times that."""
    return int(max_positions * rope.factor) if rope.per_prompt else max_positions
