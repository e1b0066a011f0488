"""Causal effects of single heads on a task metric, for every head of every prompt in one step.

The task metric of a prompt is read at its metric position (by default its last real position; a
masked-LM task reads the masked position): ``logit(target) - logit(foil)`` when
a foil is given, else ``log_softmax(logits)[target]`` (float32); NaN when the prompt has no target
(``target < 0``). A head's effect of kind K is the metric with that head's output replaced (its
``d_head`` slice of the attention output before ``c_proj``, at every position) minus the clean
metric: by zeros (``zero``), by its mean output on reference prompts (``mean``), or by its output
on the prompt's pair partner (``patch``).

Only what an edit of head ``(l, h)`` can change is recomputed. Layers below ``l`` run once (the
clean pass), and so does layer ``l``'s attention: replacing one head's output ``a`` by ``r`` moves
the layer's attention output by exactly ``(r - a) @ W_O[h]`` (that head's rows of the output
projection), so each edited run resumes layer ``l`` from its clean carry with that shift
(:meth:`jaxdiag.models.family.Block.resume`: at the MLP for a sequential residual, with the clean
MLP output for NeoX's parallel one, through the norm for a normalised attention output). Every head
then costs ``L - l`` layer-forwards instead of ``L``: ``H L (L + 1) / 2`` for the model instead of
``H L^2`` (GPT-2 small: 936 vs 1,728 layer-forwards per prompt). Heads of one layer run together,
``heads_per_step`` at a time (``jax.lax.map``), so memory stays bounded.

Everything here is written against the block interface of :mod:`jaxdiag.models.family` and works
on every family whose blocks implement it; no family module is imported.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiag.models.edits import shift_heads
from jaxdiag.models.family import Context, Family, graddrop, require_causal_effects
from jaxdiag.probes import HEAD_OUTPUT_PROBE


def task_metric(logits: jax.Array, target: jax.Array, foil: jax.Array) -> jax.Array:
    """``[b]`` metric from last-position ``logits [b, vocab]``; ``target``/``foil`` ``[b]`` ids, -1 for none."""
    logits = logits.astype(jnp.float32)
    pick = lambda values, ids: jnp.take_along_axis(values, jnp.maximum(ids, 0)[:, None], axis=-1)[:, 0]
    difference = pick(logits, target) - pick(logits, foil)
    log_prob = pick(jax.nn.log_softmax(logits, axis=-1), target)
    value = jnp.where(foil >= 0, difference, log_prob)
    return jnp.where(target >= 0, value, jnp.float32(jnp.nan))


def at_position(values: jax.Array, position: jax.Array) -> jax.Array:
    """``values [b, seq, ...]`` at each prompt's ``position [b]``: ``[b, ...]``."""
    index = position.reshape((-1,) + (1,) * (values.ndim - 1))
    return jnp.take_along_axis(values, index, axis=1)[:, 0]



@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Trace:
    """The unedited pass, kept for the edits that restart inside it: per layer its input ``residual[l]``
    (``residual[n_layer]``: the last block's output, before the final norm), its attention output, the
    block's carry and the heads' outputs ``[b, s, h, d]``; and the final hidden states."""

    residual: list
    attn_out: list
    carries: list
    heads: list
    hidden: jax.Array


def clean_trace(model: Family, tokens: jax.Array, lengths: jax.Array) -> Trace:
    """The unedited pass with everything a restart needs (:class:`Trace`)."""
    require_causal_effects(model)
    ctx = model.context(tokens, lengths, probes=(HEAD_OUTPUT_PROBE,))
    x = model.embed(tokens)
    residual, attn_out, carries, heads = [x], [], [], []
    for i, block in enumerate(model.blocks()):
        attended, probed = block.attention_heads(x, ctx, i)
        attn_out.append(block.project(attended))
        carries.append(block.carry(x, attn_out[-1]))
        heads.append(probed["head_out"])
        x = block.resume(carries[-1])
        residual.append(x)
    return Trace(residual, attn_out, carries, heads, model.final(x))


def clean_run(model: Family, tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, list, Context]:
    """The unedited pass: final hidden states, per layer ``(the block's carry, head outputs [b, s, h, d])``, context."""
    trace = clean_trace(model, tokens, lengths)
    ctx = model.context(tokens, lengths, probes=(HEAD_OUTPUT_PROBE,))
    return trace.hidden, list(zip(trace.carries, trace.heads)), ctx


def run_from(model: Family, layer: int, x: jax.Array, ctx: Context) -> jax.Array:
    """Final hidden states of a run whose residual stream enters layer ``layer`` as ``x``."""
    blocks = model.blocks()
    for i in range(layer, len(blocks)):
        x, _ = blocks[i](x, ctx, i)
    return model.final(x)


def _finish_from(model: Family, layer: int, carry, shift: jax.Array, ctx: Context) -> jax.Array:
    """Final hidden states of a run that resumes layer ``layer`` from its clean ``carry`` with its
    attention output moved by ``shift``."""
    return run_from(model, layer + 1, model.blocks()[layer].resume(carry, shift), ctx)


Readout = Callable[[jax.Array], jax.Array]  # final hidden states [b, seq, n_embd] -> a value per prompt [b]


def task_readout(model: Family, lengths: jax.Array, target: jax.Array, foil: jax.Array,
                 position: jax.Array | None = None) -> Readout:
    """The sweep's metric as a readout: :func:`task_metric` at each prompt's ``position [b]`` (a token
    index, BOS / [CLS] counted as 0), by default its last real position. Only that row is unembedded."""
    where = lengths - 1 if position is None else position
    return lambda hidden: task_metric(model.unembed(at_position(hidden, where)), target, foil)


def head_effects(
    model: Family,
    tokens: jax.Array,
    lengths: jax.Array,
    readout: Readout,
    replacements: Mapping[str, jax.Array],
    *,
    heads_per_step: int | None = None,
    only: Sequence[tuple[int, int]] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clean readout ``[b]`` and, per kind, every head's effect on it ``[b, layer, head]``.

    Args:
      tokens, lengths: right-padded prompts ``[b, seq]`` and their lengths ``[b]``.
      readout: what is measured from the final hidden states, one value per prompt (e.g.
        :func:`task_readout`; the induction model's identification counts correct copies).
      replacements: kind name -> what each head's output becomes, broadcastable to
        ``[b, layer, seq, head, d_head]``: zeros ``[layer, 1, head, d_head]`` for ``zero``, the
        reference means ``head_mean[:, None]`` for ``mean``, the partners' head outputs
        ``[b, layer, seq, head, d_head]`` (from :func:`head_outputs`) for ``patch``.
      heads_per_step: heads of one layer run together (``None``: all of a layer's heads at once).
      only: compute just these ``(layer, head)``s (the others' effects are NaN): verifying a few
        heads costs those heads' layer-forwards, not every head's.
    """
    hidden, layers, ctx = clean_run(model, tokens, lengths)
    ctx = model.context(tokens, lengths)  # the edited runs need no probe
    clean = readout(hidden)
    config = model.config
    n_head, d_head = config.n_head, config.d_head
    batch, seq = tokens.shape

    blocks = model.blocks()
    effects = {}
    for kind, replacement in replacements.items():
        replacement = jnp.broadcast_to(replacement, (batch, config.n_layer, seq, n_head, d_head))
        per_layer = []
        for layer, (carry, heads) in enumerate(layers):
            chosen = list(range(n_head)) if only is None else sorted(h for l, h in only if l == layer)
            if not chosen:
                per_layer.append(jnp.full((batch, n_head), jnp.nan, jnp.float32))
                continue
            w_out = blocks[layer].out_weights()  # [h, d_head, d_model]
            change = (replacement[:, layer] - heads).astype(heads.dtype)  # [b, s, h, d]

            def edited_metric(head: jax.Array, layer=layer, carry=carry, change=change, w_out=w_out) -> jax.Array:
                shift = jnp.einsum("bsd,de->bse", change[:, :, head], w_out[head], precision=model.matmul_precision)
                return readout(_finish_from(model, layer, carry, shift, ctx))

            metrics = jax.lax.map(edited_metric, jnp.asarray(chosen), batch_size=min(heads_per_step or n_head, len(chosen)))
            values = metrics.T - clean[:, None]  # [b, chosen]
            if only is not None:
                values = jnp.full((batch, n_head), jnp.nan, values.dtype).at[:, jnp.asarray(chosen)].set(values)
            per_layer.append(values)
        effects[kind] = jnp.stack(per_layer, axis=1)
    return clean, effects


def _graddrop_forward(model: Family, tokens: jax.Array, ctx: Context, drop: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Final hidden states and the heads' outputs ``[b, layer, seq, head, d]`` (``ctx`` probes them);
    the gradient through layer l's residual updates (its attention output and its MLP's) is scaled
    by ``1 - drop[l]`` (:func:`jaxdiag.models.family.graddrop`), so with ``drop[l] = 1`` the
    gradient passes layer l by the residual stream alone, as GradDrop asks.

    The forward values do not depend on ``drop``, so every GradDrop variant differentiates the same
    clean run.
    """
    x = model.embed(tokens)
    heads = []
    for layer, block in enumerate(model.blocks()):
        attended, probed = block.attention_heads(x, ctx, layer)
        heads.append(probed["head_out"])
        attn_out = graddrop(block.project(attended), drop[layer])
        x = block.resume(block.carry(x, attn_out), drop=drop[layer])
    return model.final(x), jnp.stack(heads, axis=1)


def head_gradients(model: Family, tokens: jax.Array, lengths: jax.Array, readout: Readout,
                   drop: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(readout [b], head outputs [b, layer, seq, head, d], d readout / d head outputs, same shape)``.

    One forward and one backward pass; each prompt's gradient is of its own readout (prompts do not
    interact; a NaN readout contributes nothing). ``drop [layer]`` drops (scales) the gradient through
    layers' residual updates (GradDrop), ``None`` for plain gradients.
    """
    require_causal_effects(model)
    config = model.config
    batch, seq = tokens.shape
    drop = jnp.zeros((config.n_layer,), jnp.float32) if drop is None else drop

    def total(shift):
        ctx = model.context(tokens, lengths, probes=(HEAD_OUTPUT_PROBE,), edit=shift_heads(shift))
        hidden, heads = _graddrop_forward(model, tokens, ctx, drop)
        values = readout(hidden)
        return jnp.sum(jnp.where(jnp.isfinite(values), values, 0.0)), (values, heads)

    zero = jnp.zeros((config.n_layer, batch, seq, config.n_head, config.d_head), jnp.float32)
    # the heads' outputs come from the same forward (read before the zero shift is added)
    grads, (values, heads) = jax.grad(total, has_aux=True)(zero)
    return values, heads, jnp.moveaxis(grads, 0, 1)


def attribution_effects(
    model: Family,
    tokens: jax.Array,
    lengths: jax.Array,
    readout: Readout,
    replacements: Mapping[str, jax.Array],
    *,
    graddrop: bool = False,
) -> dict[str, jax.Array]:
    """Attribution patching: each head's first-order estimate of its exact effect, ``[b, layer, head]``.

    ``atp_<kind>`` = sum over positions and the head's d_head slice of ``(a_ref - a) * d metric / d a``
    with ``a`` and the gradient from this prompt's own run and ``a_ref`` the kind's replacement (as
    for :func:`head_effects`). With ``graddrop``, also ``atpstar_<kind>``: AtP* for head outputs
    (Kramar et al. 2024, GradDrop), the mean over layers l of ``|AtP with the gradient through layer
    l's residual update dropped|``, over the L - 1 layers other than the head's own (dropping its
    own layer removes every path from the head, so that term is 0): an unsigned magnitude.
    """
    config = model.config
    batch, seq = tokens.shape
    values, heads, grads = head_gradients(model, tokens, lengths, readout)
    defined = jnp.isfinite(values)[:, None, None]
    estimates = {}
    references = {kind: jnp.broadcast_to(r, (batch, config.n_layer, seq, config.n_head, config.d_head))
                  for kind, r in replacements.items()}
    for kind, reference in references.items():
        atp = jnp.einsum("blshd,blshd->blh", reference - heads, grads)
        estimates[f"atp_{kind}"] = jnp.where(defined, atp, jnp.nan)
    if graddrop:
        drops = jnp.eye(config.n_layer, dtype=jnp.float32)
        dropped = jax.lax.map(lambda d: head_gradients(model, tokens, lengths, readout, d)[2], drops)  # [L, b, ...]
        for kind, reference in references.items():
            per_drop = jnp.einsum("blshd,kblshd->kblh", reference - heads, dropped)
            star = jnp.sum(jnp.abs(per_drop), axis=0) / max(config.n_layer - 1, 1)
            estimates[f"atpstar_{kind}"] = jnp.where(defined, star, jnp.nan)
    return estimates


def head_outputs(model: Family, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """Every head's output at every position, ``[b, layer, seq, head, d_head]`` (patch sources)."""
    return model(tokens, lengths, probes=(HEAD_OUTPUT_PROBE,)).probes["head_out"]


def head_output_sums(model: Family, tokens: jax.Array, lengths: jax.Array) -> dict[str, jax.Array]:
    """Per prompt: ``head_sum [b, layer, head, d_head]``, every head's output summed over the prompt's
    real positions, and ``n_real [b]``, their number (see :func:`reference_means`)."""
    outputs = head_outputs(model, tokens, lengths).astype(jnp.float32)
    real = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)  # [b, s]
    return {"head_sum": jnp.einsum("blshd,bs->blhd", outputs, real), "n_real": jnp.sum(real, axis=1)}


def edit_replacement(model: Family, edit: str, lengths: jax.Array, *, head_mean: np.ndarray | None = None,
                     partner: jax.Array | None = None) -> jax.Array:
    """What a head's output becomes under ``edit``, broadcastable to ``[b, layer, seq, head, d_head]``:
    zeros (``zero``), the reference means ``head_mean [layer, head, d_head]`` (``mean``), or the same
    head's outputs on the ``partner`` prompts, which have the same lengths (``patch``)."""
    config = model.config
    if edit == "zero":
        return jnp.zeros((config.n_layer, 1, config.n_head, config.d_head), jnp.float32)
    if edit == "mean":
        return jnp.asarray(head_mean, jnp.float32)[:, None]
    return head_outputs(model, partner, lengths)
