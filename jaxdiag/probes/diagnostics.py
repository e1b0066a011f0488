"""Per-head attention diagnostics reduced from raw attention scores.

Everything here is a pure function of the scores ``z`` of one query row over its keys and of which
keys that query may see. The model calls it inside the same ``jit`` as the forward pass, so only
the reduced values ever leave the device.

Definitions (n = number of visible keys, pi = softmax of the visible scores):

- ``entropy``  H(pi), nats
- ``kl``       KL(pi || uniform) = log n - H(pi), nats
- ``kl_norm``  kl / log n, in [0, 1]           (NaN when n = 1: log n = 0)
- ``chi``      Var_pi(log pi) / (log n)^2       (NaN when n = 1)
- ``max_attn`` max_j pi_j
- ``bos_attn`` pi at source position 0
- ``z_excess`` <z>_pi - mean of the visible z

A row with no visible key at all (a padded query) gives NaN for every diagnostic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiag.schema import DIAGNOSTICS



def attention_diagnostics(scores: jax.Array, visible: jax.Array) -> dict[str, jax.Array]:
    """Reduce attention scores over the key axis (the last one) to the seven diagnostics.

    Args:
      scores: raw pre-softmax scores ``q.k / sqrt(d_head)``, shape ``[..., keys]``; computed in
        float32 whatever the input dtype.
      visible: boolean mask of the same shape (or broadcastable to it): which keys the query sees.

    Returns:
      A dict from each name in :data:`DIAGNOSTICS` to a float32 array of shape ``scores.shape[:-1]``.
    """
    z = scores.astype(jnp.float32)
    visible = jnp.broadcast_to(visible, z.shape)
    n = jnp.sum(visible, axis=-1).astype(jnp.float32)
    log_n = jnp.log(n)

    # log-softmax over the visible keys only; masked keys get log pi = -inf and pi = 0 exactly.
    log_pi = jax.nn.log_softmax(jnp.where(visible, z, -jnp.inf), axis=-1)
    pi = jnp.where(visible, jnp.exp(log_pi), 0.0)
    log_pi = jnp.where(visible, log_pi, 0.0)  # 0 * -inf would poison the sums below

    # KL as sum_j pi_j log(n pi_j) keeps each term small near uniform, where log n - H would
    # cancel; the clip removes only rounding below the bound KL >= 0.
    kl = jnp.maximum(jnp.sum(pi * (log_pi + log_n[..., None]), axis=-1), 0.0)
    entropy = 0.0 - jnp.sum(pi * log_pi, axis=-1)  # not -sum: no -0.0 at n = 1
    # Var_pi(log pi) = Var_pi(z); the centred two-pass form avoids E[x^2] - E[x]^2 cancellation.
    mean_log_pi = jnp.sum(pi * log_pi, axis=-1, keepdims=True)
    var_log_pi = jnp.sum(pi * jnp.square(log_pi - mean_log_pi) * visible, axis=-1)
    # <z>_pi - <z>_u, with z measured from its visible maximum and then centred on <z>_u: the
    # result does not depend on the scores' overall offset, and is exactly 0 for uniform scores.
    z_top = jnp.max(jnp.where(visible, z, -jnp.inf), axis=-1, keepdims=True)
    z_rel = jnp.where(visible, z - z_top, 0.0)
    z_rel = z_rel - jnp.sum(z_rel, axis=-1, keepdims=True) / n[..., None]
    z_excess = jnp.sum(pi * z_rel, axis=-1)

    return finish_diagnostics(
        n, kl=kl, entropy=entropy, var_z=var_log_pi, max_attn=jnp.max(pi, axis=-1), bos_attn=pi[..., 0],
        z_excess=z_excess,
    )


def finish_diagnostics(
    n: jax.Array, *, kl: jax.Array, entropy: jax.Array, var_z: jax.Array, max_attn: jax.Array,
    bos_attn: jax.Array, z_excess: jax.Array,
) -> dict[str, jax.Array]:
    """Normalise and NaN-mask per-row quantities into the seven diagnostics.

    Shared by the direct reduction above and the streaming one (:mod:`jaxdiag.probes.streaming`), so both
    apply the same definitions of "undefined": every value is NaN for a row with no visible key
    (``n = 0``), and ``kl_norm`` and ``chi`` are NaN at ``n = 1`` (``log n = 0``).
    """
    n = n.astype(jnp.float32)
    defined = n >= 1
    normalisable = n >= 2
    nan = jnp.float32(jnp.nan)
    safe_log_n = jnp.where(normalisable, jnp.log(n), 1.0)
    out = {
        "kl": kl,
        "kl_norm": jnp.where(normalisable, kl / safe_log_n, nan),
        "chi": jnp.where(normalisable, var_z / jnp.square(safe_log_n), nan),
        "entropy": entropy,
        "max_attn": max_attn,
        "bos_attn": bos_attn,
        "z_excess": z_excess,
    }
    return {name: jnp.where(defined, value, nan).astype(jnp.float32) for name, value in out.items()}
