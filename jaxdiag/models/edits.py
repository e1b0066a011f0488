"""Interventions: edits of heads' outputs inside the forward pass (zero, mean and patch).

A :class:`HeadEdit` acts on each head's output ``a`` (its ``d_head`` slice of the attention output,
before the layer's output projection) at every position::

    a  <-  keep * a + (1 - keep) * replacement  [+ shift]

``keep = 1`` leaves a head alone; ``keep = 0`` replaces it (zeros: zero-ablation; its mean output
over reference prompts: mean-ablation; the same head's output on another prompt: patching).
Intermediate ``keep`` interpolates; an optional ``shift`` is added on top (steering, and the
point at which attribution patching takes the metric's gradient with respect to ``a``). The edit
is a pytree of arrays, so a step can ``jax.vmap`` over many edits (one per head) or differentiate
with respect to any of them.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiag.errors import JaxdiagError

Head = tuple[int, int]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class HeadEdit:
    """Per-layer edit of head outputs; leading axis ``layer`` on both arrays.

    keep: ``[layer, ..., head]``, broadcastable per layer to ``[batch, seq, head]``.
    replacement: ``[layer, ..., head, d_head]``, broadcastable per layer to ``[batch, seq, head, d_head]``.
    shift: None, or like ``replacement``: added after the replacement.
    """

    keep: jax.Array
    replacement: jax.Array
    shift: jax.Array | None = None

    def layer(self, i: int) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        return self.keep[i], self.replacement[i], None if self.shift is None else self.shift[i]


def shifted(x: jax.Array, shift: jax.Array | None) -> jax.Array:
    """``x + shift`` in ``x``'s dtype, or ``x`` itself when there is no shift: how an edit's shift is added to a
    head's output or to the stream ``Block.resume`` restarts from (no add at all keeps an unedited run bit-exact)."""
    return x if shift is None else x + shift.astype(x.dtype)


def apply_edit(heads: jax.Array, keep: jax.Array, replacement: jax.Array, shift: jax.Array | None = None) -> jax.Array:
    """``heads [b, s, h, d]`` with each head's output replaced (and shifted) as the edit says."""
    heads = heads * keep[..., None].astype(heads.dtype)
    heads = heads + ((1 - keep)[..., None] * replacement).astype(heads.dtype)
    return shifted(heads, shift)


def shift_heads(shift: jax.Array) -> HeadEdit:
    """Add ``shift [layer, ..., seq, head, d_head]`` to every head's output and replace nothing."""
    n_layer, n_head = shift.shape[0], shift.shape[-2]
    return HeadEdit(jnp.ones((n_layer, n_head), shift.dtype), jnp.zeros((n_layer, n_head, shift.shape[-1]), shift.dtype),
                    shift)


def keep_mask(shape: tuple[int, int], heads: Iterable[Head]) -> np.ndarray:
    """``[layer, head]`` float32: 0 on ``heads``, 1 elsewhere."""
    keep = np.ones(shape, dtype=np.float32)
    for layer, head in heads:
        if not (0 <= layer < shape[0] and 0 <= head < shape[1]):
            raise JaxdiagError(f"head {layer}.{head} is not in a model of {shape[0]} layers x {shape[1]} heads")
        keep[layer, head] = 0.0
    return keep


def zero_heads(shape: tuple[int, int, int], heads: Iterable[Head]) -> HeadEdit:
    """Zero-ablate ``heads`` of a model with ``shape = (layer, head, d_head)``."""
    n_layer, n_head, d_head = shape
    return HeadEdit(jnp.asarray(keep_mask((n_layer, n_head), heads)),
                    jnp.zeros((n_layer, n_head, d_head), jnp.float32))


def mean_heads(means: np.ndarray, heads: Iterable[Head]) -> HeadEdit:
    """Replace ``heads``' outputs by their mean outputs ``means [layer, head, d_head]``."""
    means = np.asarray(means, dtype=np.float32)
    return HeadEdit(jnp.asarray(keep_mask(means.shape[:2], heads)), jnp.asarray(means))


def patch_heads(source: jax.Array, heads: Iterable[Head]) -> HeadEdit:
    """Replace ``heads``' outputs at every position by their outputs on other prompts.

    ``source [batch, layer, seq, head, d_head]`` is what :data:`jaxdiag.probes.HEAD_OUTPUT_PROBE`
    gives for the source prompts (row ``b`` patches prompt ``b``; same ``seq`` as the edited batch).
    """
    source = jnp.asarray(source)
    keep = jnp.asarray(keep_mask((source.shape[1], source.shape[3]), heads))
    return HeadEdit(keep[:, None, None, :], jnp.moveaxis(source, 1, 0))
