"""The attention core every family shares: scores, softmax, the probes' view, the edit.

One layer's attention, whatever the family, is: scores ``q.k * scale`` in float32 -> softmax over
the keys ``ctx.visible`` allows (float32) -> the probes read the probed rows' scores and weights ->
the optional edit replaces heads' outputs -> the outputs go to the family's output projection.
Which keys a query sees is the family's mask rule (causal, causal within a sliding window, or
bidirectional over the real tokens), and the diagnostics' n is exactly that set, so a sliding
window or an encoder is a change of masks and nothing else. Grouped-query attention repeats each
key/value head for its group of query heads before the core, so probes see one row per query head.

Gemma 2 soft-caps the scores, ``z -> c tanh(z / c)``, before the mask and softmax: the capped scores
are the ones the softmax sees, so they are the ones the probes read (every diagnostic in score
units, ``z_excess`` and ``log_z``, is in capped units; see the store's variable attrs).

Two paths give the same values to float32 rounding: ``direct`` forms the layer's ``[b, h, q, k]``
scores; ``streaming`` (:mod:`jaxdiag.probes.streaming`) visits keys in blocks and never does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiag.models.edits import apply_edit
from jaxdiag.models.family import Context
from jaxdiag.probes import AttentionView, read_probes
from jaxdiag.probes.streaming import soft_cap, streaming_attention


def direct_attention(q: jax.Array, k: jax.Array, v: jax.Array, ctx: Context, layer: int, *, scale: float,
                     precision, softcap: float | None = None) -> tuple[jax.Array, AttentionView | None]:
    """Heads' outputs ``[b, q, h, d]`` of ``q, k, v [b, s, h, d]`` and the probes' view of the layer.

    The layer's ``[b, h, q, k]`` scores are formed; the view holds the probed rows' scores and weights.
    """
    scores = soft_cap(jnp.einsum(
        "bqhd,bkhd->bhqk", q, k, precision=precision, preferred_element_type=jnp.float32
    ) * jnp.float32(scale), softcap)
    # finfo.min rather than -inf, as transformers does: a row stays finite even if fully masked.
    probs = jax.nn.softmax(jnp.where(ctx.visible, scores, jnp.finfo(jnp.float32).min), axis=-1)
    heads = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v, precision=precision)
    if not ctx.probes:
        return heads, None
    # [batch, 1, n_rows, 1] indices pick each prompt's probed rows out of [b, h, q, k]. Kept for
    # "all" too, where it is the identity: without it XLA fuses z_excess's sums differently and
    # the stores of earlier versions would no longer be reproduced bit for bit.
    row_scores = jnp.take_along_axis(scores, ctx.rows[:, None, :, None], axis=2)
    row_probs = jnp.take_along_axis(probs, ctx.rows[:, None, :, None], axis=2)
    return heads, ctx.view(layer, heads, scores=row_scores, probs=row_probs)


def row_attention(q_rows: jax.Array, k: jax.Array, ctx: Context, *, scale: float,
                  precision, softcap: float | None = None) -> tuple[jax.Array, jax.Array]:
    """Scores and weights ``[b, h, r, k]`` of the probed rows' queries ``[b, r, h, d]`` alone."""
    rows = soft_cap(jnp.einsum(
        "brhd,bkhd->bhrk", q_rows, k, precision=precision, preferred_element_type=jnp.float32
    ) * jnp.float32(scale), softcap)
    return rows, jax.nn.softmax(jnp.where(ctx.row_visible, rows, jnp.finfo(jnp.float32).min), axis=-1)


def streamed_attention(q: jax.Array, k: jax.Array, v: jax.Array, ctx: Context, layer: int, *, scale: float,
                       precision, softcap: float | None = None) -> tuple[jax.Array, AttentionView | None]:
    """As :func:`direct_attention` with O(b h q) memory: the ``[b, h, q, k]`` pattern is never formed."""
    all_rows = bool(ctx.probes) and ctx.query == "all"
    heads, stats = streaming_attention(
        q, k, v, ctx.lengths, scale=scale, precision=precision, row_stats=all_rows,
        tokens=ctx.tokens if all_rows else None, window=ctx.window, softcap=softcap,
    )
    if not ctx.probes:
        return heads, None
    if ctx.query == "all":
        return heads, ctx.view(layer, heads, row_stats=stats)
    # Only one row per prompt: its scores against every key are O(b h k), formed directly.
    rows, probs = row_attention(jnp.take_along_axis(q, ctx.rows[:, :, None, None], axis=1), k, ctx,
                                scale=scale, precision=precision, softcap=softcap)
    return heads, ctx.view(layer, heads, scores=rows, probs=probs)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, ctx: Context, layer: int, *, scale: float,
           precision, softcap: float | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The shared core: ``q [b, s, h, d]``, ``k, v [b, s, h_kv, d]`` (``h`` a multiple of ``h_kv``) ->
    (heads' outputs ``[b, s, h, d]`` after the edit, the probes' arrays of this layer). ``softcap``:
    the scores are soft-capped (:func:`soft_cap`) before the mask, the softmax and the probes. A
    layer with its own sliding window passes ``ctx.with_window(window)``."""
    groups = q.shape[2] // k.shape[2]
    if groups > 1:  # grouped-query attention: query head i reads key/value head i // groups
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    core = streamed_attention if ctx.impl == "streaming" else direct_attention
    heads, view = core(q, k, v, ctx, layer, scale=scale, precision=precision, softcap=softcap)
    probed = read_probes(ctx.probes, view) if ctx.probes else {}
    if ctx.edit is not None:
        heads = apply_edit(heads, *ctx.edit.layer(layer))
    return heads, probed
