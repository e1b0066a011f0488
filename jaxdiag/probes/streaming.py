"""Flash-style causal attention that also streams the seven diagnostics, one block of keys at a time.

The direct path (:class:`jaxdiag.models.gpt2.Attention`) materialises a layer's scores ``[b, h, q, k]``:
fine for short prompts, quadratic in memory for long ones (64 prompts x 12 heads x 1024^2 keys is
3 GiB per temporary). Here the keys are visited in blocks of ``block`` and each query row keeps only
running statistics of its scores, merged block by block:

- ``m``   the running maximum (for a stable softmax, as in FlashAttention),
- ``l``   sum of ``exp(z - m)`` (the softmax normaliser, relative to ``m``),
- ``mu``  the softmax-weighted mean of the scores, ``<z>_pi``,
- ``m2``  the softmax-weighted sum of squared deviations from ``mu`` (so ``Var_pi(z) = m2 / l``),
- ``n``, ``mean_u``  the number and plain mean of the visible scores,

plus the attention output accumulated against the same ``exp(z - m)``. Means and squared
deviations are merged with Chan et al.'s pairwise update (weighted Welford), never as
``E[z^2] - E[z]^2``, so no cancellation; and every score is taken relative to the same row's BOS
score (key 0, which every query sees), so the sums do not carry the scores' overall offset.
From those, with ``lse = m + log l`` (in those shifted units):

  entropy = lse - <z>_pi,   kl = log n - entropy,   chi = (m2 / l) / (log n)^2,
  max_attn = exp(m - lse) = 1 / l,   bos_attn = exp(0 - lse),   z_excess = <z>_pi - mean_u.

Memory per layer is O(batch x heads x queries x block) instead of O(batch x heads x queries x keys).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdiag.probes.diagnostics import finish_diagnostics
from jaxdiag.probes.taxonomy import SUBSETS, finish_taxonomy, key_subsets, previous_tokens

DEFAULT_BLOCK = 128


class RowStats(NamedTuple):
    """Running statistics of each query row's visible scores (shifted by the row's BOS score)."""

    m: jax.Array  # max visible score; -inf while none seen
    l: jax.Array  # sum exp(z - m)
    mu: jax.Array  # <z>_pi
    m2: jax.Array  # sum exp(z - m) (z - mu)^2
    n: jax.Array  # visible keys seen (float32)
    mean_u: jax.Array  # plain mean of the visible scores
    # with token ids (the taxonomy): per key subset (jaxdiag.probes.taxonomy.SUBSETS) the sum exp(z - m) over
    # its visible keys and their number, and the BOS score the row's scores were shifted by
    subset_l: dict[str, jax.Array] | None = None
    subset_n: dict[str, jax.Array] | None = None
    z_bos: jax.Array | None = None
    # with a sliding window: whether each row sees key 0 (None: every row does)
    bos_seen: jax.Array | None = None


def soft_cap(scores: jax.Array, cap: float | None) -> jax.Array:
    """``cap tanh(scores / cap)`` (Gemma 2's attention-logit and final-logit soft-capping); ``None``: as is."""
    if cap is None:
        return scores
    return jnp.tanh(scores / jnp.float32(cap)) * jnp.float32(cap)


def empty_stats(shape: tuple[int, ...]) -> RowStats:
    zeros = jnp.zeros(shape, jnp.float32)
    return RowStats(jnp.full(shape, -jnp.inf, jnp.float32), zeros, zeros, zeros, zeros, zeros)


def block_stats(z: jax.Array, visible: jax.Array) -> tuple[RowStats, jax.Array]:
    """Statistics of one block of scores ``z [..., k]`` over its visible keys, and ``exp(z - m)``.

    The weights are returned so the caller can reuse them for the attention output. A row with no
    visible key in the block gives ``m = -inf`` and ``l = n = 0``, which :func:`merge` treats as empty.
    """
    m = jnp.max(jnp.where(visible, z, -jnp.inf), axis=-1)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    weights = jnp.where(visible, jnp.exp(z - m_safe[..., None]), 0.0)
    l = jnp.sum(weights, axis=-1)
    mu = jnp.sum(weights * z, axis=-1) / jnp.where(l > 0, l, 1.0)
    m2 = jnp.sum(weights * jnp.square(z - mu[..., None]), axis=-1)
    n = jnp.sum(visible, axis=-1).astype(jnp.float32)
    mean_u = jnp.sum(jnp.where(visible, z, 0.0), axis=-1) / jnp.maximum(n, 1.0)
    return RowStats(m, l, mu, m2, n, mean_u), weights


def merge_scales(a: RowStats, b: RowStats) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The common maximum and the factors that rescale ``a``'s and ``b``'s ``exp`` sums onto it."""
    m = jnp.maximum(a.m, b.m)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    # An empty side (m = -inf) gets factor 0: exp(-inf - m) is 0, but exp(-inf - -inf) would be NaN.
    alpha = jnp.where(jnp.isfinite(a.m), jnp.exp(a.m - m_safe), 0.0)
    beta = jnp.where(jnp.isfinite(b.m), jnp.exp(b.m - m_safe), 0.0)
    return m, alpha, beta


def merge(a: RowStats, b: RowStats, alpha: jax.Array, beta: jax.Array, m: jax.Array) -> RowStats:
    """Combine two disjoint sets of keys (Chan et al.'s parallel update, softmax-weighted)."""
    la, lb = a.l * alpha, b.l * beta
    l = la + lb
    safe_l = jnp.where(l > 0, l, 1.0)
    delta = b.mu - a.mu
    mu = a.mu + delta * (lb / safe_l)
    m2 = a.m2 * alpha + b.m2 * beta + jnp.square(delta) * (la * lb / safe_l)
    n = a.n + b.n
    mean_u = a.mean_u + (b.mean_u - a.mean_u) * (b.n / jnp.maximum(n, 1.0))
    return RowStats(m, l, mu, m2, n, mean_u)


def stats_diagnostics(stats: RowStats) -> dict[str, jax.Array]:
    """The seven diagnostics from a row's final statistics (scores shifted so that BOS is 0)."""
    safe_l = jnp.where(stats.l > 0, stats.l, 1.0)
    lse = jnp.where(stats.n > 0, stats.m, 0.0) + jnp.log(safe_l)
    entropy = lse - stats.mu
    kl = jnp.maximum(jnp.log(jnp.maximum(stats.n, 1.0)) - entropy, 0.0)
    return finish_diagnostics(
        stats.n, kl=kl, entropy=entropy, var_z=stats.m2 / safe_l, max_attn=1.0 / safe_l,
        bos_attn=jnp.exp(-lse) if stats.bos_seen is None else jnp.where(stats.bos_seen, jnp.exp(-lse), 0.0),
        z_excess=stats.mu - stats.mean_u,
    )


def stats_taxonomy(stats: RowStats) -> dict[str, jax.Array]:
    """The five taxonomy scores from a row's final statistics (needs the subset sums: ``tokens``)."""
    safe_l = jnp.where(stats.l > 0, stats.l, 1.0)
    lse = jnp.where(stats.n > 0, stats.m, 0.0) + jnp.log(safe_l)
    shares = {name: value / safe_l for name, value in stats.subset_l.items()}
    return finish_taxonomy(stats.n, lse + stats.z_bos, shares, stats.subset_n)


def streaming_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    lengths: jax.Array,
    *,
    scale: float,
    precision: jax.lax.Precision | None = None,
    block: int = DEFAULT_BLOCK,
    row_stats: bool = False,
    tokens: jax.Array | None = None,
    window: int | None = None,
    softcap: float | None = None,
) -> tuple[jax.Array, RowStats | None]:
    """Causal, right-padded attention over key blocks, with every query row's diagnostics on request.

    Args:
      q, k, v: ``[batch, seq, head, d_head]`` (any float dtype; scores and statistics are float32).
      lengths: ``[batch]`` true prompt lengths: key ``j`` is visible to query ``i`` iff
        ``j <= i`` and ``j < lengths[b]`` (exactly the direct path's mask).
      scale: the score scale (``1 / sqrt(d_head)``, possibly divided by the layer index).
      block: keys per step; the sequence is padded up to a multiple of it internally.
      row_stats: also return every query row's final statistics, ``[batch, head, seq]`` each,
        with rows at or beyond ``lengths`` marked empty (``n = 0``), so that
        :func:`stats_diagnostics` gives NaN there, as the direct path does.
      tokens: ``[batch, seq]`` token ids; with ``row_stats``, the statistics also carry the
        taxonomy's key-subset sums (:func:`stats_taxonomy`).
      window: a sliding window ``w`` (Mistral, Gemma's local layers): query ``i`` sees keys
        ``i - w < j <= i`` only, as the direct path's mask.
      softcap: Gemma 2's ``c tanh(z / c)`` on every score (BOS's included) before anything else,
        as the direct path.

    Returns:
      The attention output ``[batch, seq, head, d_head]`` in ``v``'s dtype, and the statistics
      (or ``None``).
    """
    batch, seq, n_head, d_head = q.shape
    block = min(block, seq)
    n_blocks = math.ceil(seq / block)
    padded = n_blocks * block
    if padded != seq:
        pad = ((0, 0), (0, padded - seq), (0, 0), (0, 0))
        k, v = jnp.pad(k, pad), jnp.pad(v, pad)
    # [n_blocks, batch, block, head, d]: the scan's leading axis.
    k_blocks = k.reshape(batch, n_blocks, block, n_head, d_head).swapaxes(0, 1)
    v_blocks = v.reshape(batch, n_blocks, block, n_head, d_head).swapaxes(0, 1)

    fscale = jnp.float32(scale)
    query_pos = jnp.arange(seq)
    # Key 0's score is each row's reference point: every query sees it (causal, lengths >= 1)
    # unless a sliding window has moved past it, where it is still a finite per-row constant.
    def scores(q_: jax.Array, k_: jax.Array, spec: str) -> jax.Array:
        z = jnp.einsum(spec, q_, k_, precision=precision, preferred_element_type=jnp.float32) * fscale
        return soft_cap(z, softcap)

    z_bos = scores(q, k[:, 0], "bqhd,bhd->bhq")

    with_subsets = row_stats and tokens is not None
    if with_subsets:
        padded_tokens = jnp.pad(tokens, ((0, 0), (0, padded - seq)), constant_values=-1)
        token_blocks = padded_tokens.reshape(batch, n_blocks, block).swapaxes(0, 1)
        prev_blocks = previous_tokens(padded_tokens).reshape(batch, n_blocks, block).swapaxes(0, 1)
        rows = jnp.broadcast_to(query_pos, (batch, seq))
    else:  # unused placeholders, so the scan has one shape of inputs
        token_blocks = prev_blocks = jnp.zeros((n_blocks, batch, block), jnp.int32)

    def step(carry, xs):
        stats, acc, subset_l, subset_n = carry
        k_blk, v_blk, start, tok_blk, prev_blk = xs
        key_pos = start + jnp.arange(block)
        visible = (key_pos[None, None, :] <= query_pos[None, :, None]) & (key_pos[None, None, :] < lengths[:, None, None])
        if window is not None:
            visible = visible & (key_pos[None, None, :] > query_pos[None, :, None] - window)
        visible = visible[:, None]  # [b, 1, q, block]
        z = scores(q, k_blk, "bqhd,bkhd->bhqk")
        new, weights = block_stats(z - z_bos[..., None], visible)
        m, alpha, beta = merge_scales(stats, new)
        block_out = jnp.einsum(
            "bhqk,bkhd->bhqd", weights.astype(v.dtype), v_blk, precision=precision, preferred_element_type=jnp.float32
        )
        acc = acc * alpha[..., None] + block_out * beta[..., None]
        if with_subsets:  # the same rescaling as l: sums of exp(z - m) over each subset's visible keys
            masks = key_subsets(rows, tokens, key_pos, tok_blk, prev_blk)
            subset_l = {name: subset_l[name] * alpha + jnp.sum(jnp.where(mask, weights, 0.0), axis=-1) * beta
                        for name, mask in masks.items()}
            subset_n = {name: subset_n[name] + jnp.sum(mask & visible, axis=-1) for name, mask in masks.items()}
        return (merge(stats, new, alpha, beta, m), acc, subset_l, subset_n), None

    zeros = jnp.zeros((batch, n_head, seq), jnp.float32)
    subset_init = ({name: zeros for name in SUBSETS}, {name: jnp.zeros((batch, 1, seq), jnp.int32) for name in SUBSETS})
    init = (empty_stats((batch, n_head, seq)), jnp.zeros((batch, n_head, seq, d_head), jnp.float32), *subset_init)
    starts = jnp.arange(n_blocks) * block
    (stats, acc, subset_l, subset_n), _ = jax.lax.scan(
        step, init, (k_blocks, v_blocks, starts, token_blocks, prev_blocks))

    out = (acc / stats.l[..., None]).astype(v.dtype).transpose(0, 2, 1, 3)  # every row has l >= 1
    if not row_stats:
        return out, None
    query_real = query_pos[None, None, :] < lengths[:, None, None]
    stats = stats._replace(n=jnp.where(query_real, stats.n, 0.0))  # padded queries: NaN, as direct
    if window is not None:  # rows past the window do not see BOS: bos_attn is 0 there, as direct
        stats = stats._replace(bos_seen=jnp.broadcast_to(query_pos < window, stats.n.shape))
    if with_subsets:
        stats = stats._replace(subset_l=subset_l, subset_n=subset_n, z_bos=z_bos)
    return out, stats
