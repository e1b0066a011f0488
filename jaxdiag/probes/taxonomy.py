"""Head-taxonomy scores: where a query row's attention goes, and the softmax normaliser.

For query position t with visible keys V, pi = softmax(z) over V and tokens x (docs/CONTRACT.md,
schema 2):

- ``prev_attn``       pi_{t-1}                                                  (NaN at t = 0)
- ``self_attn``       pi_t
- ``dup_attn``        sum of pi_j over j in V, j < t, x_j = x_t (earlier copies)  (NaN if none)
- ``induction_attn``  sum of pi_j over j in V, 1 <= j <= t, x_{j-1} = x_t        (NaN if none)
                      (tokens that followed an earlier copy: TransformerLens's induction pattern)
- ``log_z``           log sum_{j in V} exp z_j, z as the model scales it

A row with no visible key (a padded query) is NaN throughout. Pure functions of scores, masks and
token ids; the direct path reduces whole rows here, the streaming path accumulates the same key
subsets block by block (:mod:`jaxdiag.probes.streaming`) and finishes with :func:`finish_taxonomy`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SUBSETS: tuple[str, ...] = ("prev", "self", "dup", "induction")


def previous_tokens(tokens: jax.Array) -> jax.Array:
    """``tokens`` shifted right by one along the last axis, -1 (no token) at position 0."""
    return jnp.concatenate([jnp.full(tokens.shape[:-1] + (1,), -1, tokens.dtype), tokens[..., :-1]], axis=-1)


def key_subsets(rows: jax.Array, row_tokens: jax.Array, key_pos: jax.Array, key_tokens: jax.Array,
                key_prev_tokens: jax.Array) -> dict[str, jax.Array]:
    """Boolean ``[b, 1, r, k]`` masks of each subset's keys (before visibility).

    rows, row_tokens: ``[b, r]`` query positions and their tokens; key_pos ``[k]`` key positions;
    key_tokens, key_prev_tokens: ``[b, k]`` the keys' tokens and the tokens before them.
    """
    t = rows[:, :, None]
    j = key_pos[None, None, :]
    same = key_tokens[:, None, :] == row_tokens[:, :, None]
    follows = key_prev_tokens[:, None, :] == row_tokens[:, :, None]
    masks = {"prev": j == t - 1, "self": j == t, "dup": (j < t) & same, "induction": (j >= 1) & (j <= t) & follows}
    return {name: mask[:, None] for name, mask in masks.items()}


def finish_taxonomy(n: jax.Array, log_z: jax.Array, shares: dict[str, jax.Array],
                    counts: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The five scores from per-row totals: visible keys ``n``, ``log_z``, each subset's attention
    ``shares`` and number of visible keys ``counts`` (shapes broadcastable to ``[b, h, r]``)."""
    nan = jnp.float32(jnp.nan)
    defined = n >= 1
    out = {
        "prev_attn": jnp.where(counts["prev"] >= 1, shares["prev"], nan),
        "self_attn": shares["self"],
        "dup_attn": jnp.where(counts["dup"] >= 1, shares["dup"], nan),
        "induction_attn": jnp.where(counts["induction"] >= 1, shares["induction"], nan),
        "log_z": log_z,
    }
    return {name: jnp.where(defined, value, nan).astype(jnp.float32) for name, value in out.items()}


def taxonomy_scores(scores: jax.Array, visible: jax.Array, rows: jax.Array, tokens: jax.Array) -> dict[str, jax.Array]:
    """The five scores of query rows from their full score rows.

    Args:
      scores: ``[b, h, r, k]`` pre-softmax scores of the probed rows against every key (float32).
      visible: ``[b, 1, r, k]`` which keys each row sees.
      rows: ``[b, r]`` the rows' positions; tokens: ``[b, k]`` the prompt's token ids.
    """
    z = scores.astype(jnp.float32)
    visible = jnp.broadcast_to(visible, z.shape)
    masked = jnp.where(visible, z, -jnp.inf)
    log_z = jax.nn.logsumexp(masked, axis=-1)
    pi = jnp.where(visible, jnp.exp(masked - jnp.where(jnp.isfinite(log_z), log_z, 0.0)[..., None]), 0.0)
    row_tokens = jnp.take_along_axis(tokens, rows, axis=1)
    subsets = key_subsets(rows, row_tokens, jnp.arange(z.shape[-1]), tokens, previous_tokens(tokens))
    shares = {name: jnp.sum(jnp.where(mask, pi, 0.0), axis=-1) for name, mask in subsets.items()}
    counts = {name: jnp.sum(mask & visible, axis=-1) for name, mask in subsets.items()}
    return finish_taxonomy(jnp.sum(visible, axis=-1), log_z, shares, counts)
