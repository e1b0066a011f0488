"""Causal effects of single heads on a task metric, for every head of every prompt in one step.

The task metric of a prompt is read at its last real position: ``logit(target) - logit(foil)`` when
a foil is given, else ``log_softmax(logits)[target]`` (float32); NaN when the prompt has no target
(``target < 0``). A head's effect of kind K is the metric with that head's output replaced (its
``d_head`` slice of the attention output before ``c_proj``, at every position) minus the clean
metric: by zeros (``zero``), by its mean output on reference prompts (``mean``), or by its output
on the prompt's pair partner (``patch``).

Only what an edit of head ``(l, h)`` can change is recomputed. Layers below ``l`` run once (the
clean pass), and so does layer ``l``'s attention: replacing one head's output ``a`` by ``r`` moves
the layer's attention output by exactly ``(r - a) @ W_O[h]`` (that head's rows of ``c_proj``), so
each edited run restarts from the clean residual plus that term, at layer ``l``'s MLP. Every head
then costs ``L - l`` layer-forwards instead of ``L``: ``H L (L + 1) / 2`` for the model instead of
``H L^2`` (GPT-2 small: 936 vs 1,728 layer-forwards per prompt). Heads of one layer run together,
``heads_per_step`` at a time (``jax.lax.map``), so memory stays bounded.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from jaxdiag.model import GPT2, Context
from jaxdiag.probes import HEAD_OUTPUT_PROBE



def task_metric(logits: jax.Array, target: jax.Array, foil: jax.Array) -> jax.Array:
    """``[b]`` metric from last-position ``logits [b, vocab]``; ``target``/``foil`` ``[b]`` ids, -1 for none."""
    logits = logits.astype(jnp.float32)
    pick = lambda values, ids: jnp.take_along_axis(values, jnp.maximum(ids, 0)[:, None], axis=-1)[:, 0]
    difference = pick(logits, target) - pick(logits, foil)
    log_prob = pick(jax.nn.log_softmax(logits, axis=-1), target)
    value = jnp.where(foil >= 0, difference, log_prob)
    return jnp.where(target >= 0, value, jnp.float32(jnp.nan))


def last_position(values: jax.Array, lengths: jax.Array) -> jax.Array:
    """``values [b, seq, ...]`` at each prompt's last real position: ``[b, ...]``."""
    index = (lengths - 1).reshape((-1,) + (1,) * (values.ndim - 1))
    return jnp.take_along_axis(values, index, axis=1)[:, 0]


def clean_run(model: GPT2, tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, list, jax.Array]:
    """The unedited pass: final hidden states, per layer ``(residual after attention, head outputs [b, s, h, d])``, context."""
    ctx = model.context(tokens, lengths, probes=(HEAD_OUTPUT_PROBE,))
    x = model.embed(tokens)
    layers = []
    for block in model.h:
        attn_out, probed = block.attn(block.ln_1(x), ctx)
        middle = x + attn_out
        layers.append((middle, probed["head_out"]))
        x = block.feed_forward(middle)
    return model.ln_f(x), layers, ctx


def _finish_from(model: GPT2, layer: int, middle: jax.Array, ctx: Context) -> jax.Array:
    """Final hidden states of a run resumed at layer ``layer``'s MLP from the residual ``middle``."""
    x = model.h[layer].feed_forward(middle)
    for block in model.h[layer + 1:]:
        x, _ = block(x, ctx)
    return model.ln_f(x)


def head_effects(
    model: GPT2,
    tokens: jax.Array,
    lengths: jax.Array,
    target: jax.Array,
    foil: jax.Array,
    replacements: Mapping[str, jax.Array],
    *,
    heads_per_step: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clean metric ``[b]`` and, per kind, every head's effect ``[b, layer, head]``.

    Args:
      tokens, lengths: right-padded prompts ``[b, seq]`` and their lengths ``[b]``.
      target, foil: ``[b]`` token ids (-1: no target / no foil); see :func:`task_metric`.
      replacements: kind name -> what each head's output becomes, broadcastable to
        ``[b, layer, seq, head, d_head]``: zeros ``[layer, 1, head, d_head]`` for ``zero``, the
        reference means ``head_mean[:, None]`` for ``mean``, the partners' head outputs
        ``[b, layer, seq, head, d_head]`` (from :func:`head_outputs`) for ``patch``.
      heads_per_step: heads of one layer run together (``None``: all of a layer's heads at once).
    """
    hidden, layers, ctx = clean_run(model, tokens, lengths)
    ctx = model.context(tokens, lengths)  # the edited runs need no probe
    clean = task_metric(model.unembed(last_position(hidden, lengths)), target, foil)
    config = model.config
    n_head, d_head = config.n_head, config.d_head
    batch, seq = tokens.shape

    effects = {}
    for kind, replacement in replacements.items():
        replacement = jnp.broadcast_to(replacement, (batch, config.n_layer, seq, n_head, d_head))
        per_layer = []
        for layer, (middle, heads) in enumerate(layers):
            attn = model.h[layer].attn
            w_out = attn.c_proj.kernel[...].reshape(n_head, d_head, config.n_embd)
            change = (replacement[:, layer] - heads).astype(heads.dtype)  # [b, s, h, d]

            def edited_metric(head: jax.Array, layer=layer, middle=middle, change=change, w_out=w_out) -> jax.Array:
                shift = jnp.einsum("bsd,de->bse", change[:, :, head], w_out[head], precision=attn.precision)
                final = _finish_from(model, layer, middle + shift.astype(middle.dtype), ctx)
                return task_metric(model.unembed(last_position(final, lengths)), target, foil)

            metrics = jax.lax.map(edited_metric, jnp.arange(n_head), batch_size=heads_per_step or n_head)
            per_layer.append(metrics.T - clean[:, None])  # [b, head]
        effects[kind] = jnp.stack(per_layer, axis=1)
    return clean, effects


def head_outputs(model: GPT2, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """Every head's output at every position, ``[b, layer, seq, head, d_head]`` (patch sources)."""
    return model(tokens, lengths, probes=(HEAD_OUTPUT_PROBE,)).probes["head_out"]


def head_output_sums(model: GPT2, tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sum over real positions of every head's output [layer, head, d_head], number of positions)``.

    Summed over chunks of the reference condition, then divided, these give ``head_mean``.
    """
    outputs = head_outputs(model, tokens, lengths).astype(jnp.float32)
    real = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)  # [b, s]
    return jnp.einsum("blshd,bs->lhd", outputs, real), jnp.sum(real)
