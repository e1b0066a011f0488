"""Beyond whole-head effects: direct logit attribution, the logit lens, and patching the residual stream,
attention and MLP outputs and heads position by position, all from one clean run (:func:`clean_trace`).

**Direct logit attribution.** At a prompt's metric position p the final residual is the sum of its
components: the embeddings, and per layer each head's output through its rows of the output projection,
the projection's bias and the MLP's output. With the final norm's scale frozen at the clean run's
``x[p]`` the norm is affine, ``gain * (x - centred * mean(x)) + bias``, so the logit difference
``final(x[p]) . u`` (``u = W_U[target] - W_U[foil]``, or ``W_U[target]`` without a foil) is exactly
``sum_c c . w + bias . u`` with ``w = P(gain * u)`` (``P``: the centring, symmetric, so it moves onto
``u``). A normalised attention output (Gemma) has its norm's scale frozen too
(:meth:`jaxdiag.models.family.Block.attention_gain`); the logits are the raw ones, before a soft cap.

**Logit lens.** The metric read from each block's output through the final norm (recomputed there)
and the unembedding's rows of the target and foil; without a foil (log p(target)) or for the rank, a
full unembedding per layer.

**Patching by position.** The metric's change when one activation at one position takes the pair
partner's value: the residual entering layer l (``resid``), layer l's attention output (``attn_out``),
its MLP's contribution to the residual (``mlp_out``), or head (l, h)'s output (``head_pos``). As for
whole-head effects nothing below the edit is recomputed: ``resid`` restarts at block l, ``attn_out`` and
``head_pos`` resume block l from its carry with a shift (:meth:`Block.resume`), ``mlp_out`` restarts at
block l + 1 from the clean block output moved at p. Every (layer[, head], position) of a kind is one
``jax.lax.map`` per layer, ``per_step`` edits at a time, inside one compiled step.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxdiag.causal.effects import Readout, Trace, at_position, run_from, task_metric
from jaxdiag.errors import JaxdiagError
from jaxdiag.models.family import Family, norm_gain
from jaxdiag.schema import POSITION_KINDS


def logit_direction(model: Family, target: jax.Array, foil: jax.Array) -> jax.Array:
    """``u [b, d]``: ``W_U[target] - W_U[foil]``, or ``W_U[target]`` where there is no foil (``foil < 0``)."""
    rows = model.unembed_rows(jnp.maximum(target, 0))
    return rows - jnp.where((foil >= 0)[:, None], model.unembed_rows(jnp.maximum(foil, 0)), 0.0)


def _gains(model: Family, trace: Trace) -> list[jax.Array]:
    """Per layer, the factor ``[b, s, d]`` (or 1) by which its attention output joins the residual."""
    gains = [block.attention_gain(out) for block, out in zip(model.blocks(), trace.attn_out)]
    return [jnp.float32(1.0) if g is None else g for g in gains]


def mlp_contributions(model: Family, trace: Trace) -> list[jax.Array]:
    """Each layer's MLP contribution to the residual ``[b, s, d]``: the block's update less its attention part."""
    return [(after - before - gain * out).astype(jnp.float32) for before, after, out, gain
            in zip(trace.residual[:-1], trace.residual[1:], trace.attn_out, _gains(model, trace))]


def direct_logit_attribution(model: Family, trace: Trace, target: jax.Array, foil: jax.Array,
                             position: jax.Array) -> dict[str, jax.Array]:
    """``dla [b, layer, head]``, ``dla_attn_bias`` / ``dla_mlp [b, layer]``, ``dla_embed`` / ``dla_norm_bias [b]``:
    each component's direct contribution to the raw logit difference (the target's logit without a foil)
    at ``position [b]``; they sum to it exactly. NaN without a target."""
    u = logit_direction(model, target, foil)
    gain, beta, centred = norm_gain(model.final_norm(), at_position(trace.residual[-1], position))
    w = gain * u
    if centred:  # (P c) . (gain u) = c . P(gain u): the centring moves onto the direction
        w = w - jnp.mean(w, axis=-1, keepdims=True)
    read = lambda values: jnp.einsum("bd,bd->b", at_position(values, position).astype(jnp.float32), w)
    heads, biases = [], []
    for block, out, acts, g in zip(model.blocks(), trace.attn_out, trace.heads, _gains(model, trace)):
        wl = w * (at_position(g, position) if jnp.ndim(g) else g)  # the direction before a normalised attention output
        w_out = block.out_weights().astype(jnp.float32)  # [h, d_head, d]
        heads.append(jnp.einsum("bhk,hkd,bd->bh", at_position(acts, position).astype(jnp.float32), w_out, wl))
        bias = block.project(jnp.zeros((1, 1) + acts.shape[2:], acts.dtype))[0, 0]  # the projection of nothing
        biases.append(jnp.einsum("d,bd->b", bias.astype(jnp.float32), wl))
    mlps = [read(m) for m in mlp_contributions(model, trace)]
    defined = (target >= 0)
    nan = lambda v: jnp.where(defined.reshape((-1,) + (1,) * (v.ndim - 1)), v, jnp.nan)
    norm_bias = jnp.zeros_like(target, jnp.float32) if beta is None else u @ beta
    return {"dla": nan(jnp.stack(heads, 1)), "dla_attn_bias": nan(jnp.stack(biases, 1)),
            "dla_mlp": nan(jnp.stack(mlps, 1)), "dla_embed": nan(read(trace.residual[0])),
            "dla_norm_bias": nan(norm_bias)}


def logit_lens(model: Family, trace: Trace, target: jax.Array, foil: jax.Array, position: jax.Array,
               *, rank: bool = False) -> dict[str, jax.Array]:
    """``lens_metric [b, layer]``: the task metric read from each block's output at ``position [b]``
    through the final norm; with ``rank``, also ``lens_rank [b, layer]``, the target's rank among all
    tokens (0: the top logit). The last layer's lens_metric is the metric."""
    streams = jnp.stack([at_position(x, position) for x in trace.residual[1:]])  # [layer, b, d]
    hidden = model.final(streams)

    def rows() -> jax.Array:  # every prompt has a foil: the logit difference needs two rows
        ids = jnp.stack([jnp.maximum(target, 0), jnp.maximum(foil, 0)], -1)  # [b, 2]
        logits = model.cap_logits(jnp.einsum("lbd,bkd->lbk", hidden.astype(jnp.float32), model.unembed_rows(ids)))
        pick = jnp.where(target >= 0, 0, -1)
        return jax.vmap(lambda z: task_metric(z, pick, jnp.ones_like(pick)))(logits)

    def full() -> jax.Array:
        return jax.vmap(lambda h: task_metric(model.unembed(h), target, foil))(hidden)

    # a traced predicate: only the taken branch runs, so a foil everywhere never unembeds every token
    out = {"lens_metric": jax.lax.cond(jnp.all(foil >= 0), rows, full).T}
    if rank:
        logits = jax.vmap(model.unembed)(hidden)  # [layer, b, vocab]
        own = jnp.take_along_axis(logits, jnp.maximum(target, 0)[None, :, None], axis=-1)
        ranks = jnp.sum(logits > own, axis=-1).astype(jnp.float32)
        out["lens_rank"] = jnp.where(target >= 0, ranks, jnp.nan).T
    return out


def position_patches(model: Family, tokens: jax.Array, lengths: jax.Array, trace: Trace, partner: Trace,
                     readout: Readout, clean: jax.Array, kinds: Sequence[str], *, per_step: int | None = None,
                     ) -> dict[str, jax.Array]:
    """``effect_<kind>`` for position kinds (:data:`POSITION_KINDS`): the readout with one activation at one
    position set to the ``partner`` trace's (the pair partners' clean run, same lengths) minus ``clean``;
    ``[b, layer, position]`` (``head_pos``: ``[b, layer, head, position]``), NaN at positions past a
    prompt's end."""
    if model.mask != "causal":
        raise JaxdiagError(f"patching by position is for decoders; {model.family!r} attends bidirectionally")
    unknown = [k for k in kinds if k not in POSITION_KINDS]
    if unknown:
        raise JaxdiagError(f"unknown position-patching kind {unknown[0]!r} (choose from {', '.join(POSITION_KINDS)})")
    ctx = model.context(tokens, lengths)  # the edited runs need no probe
    blocks = model.blocks()
    batch, seq = trace.residual[0].shape[:2]
    n_layer, n_head = model.config.n_layer, model.config.n_head
    real = jnp.arange(seq)[None, :] < lengths[:, None]  # [b, s]
    at = lambda delta, p: delta * (jnp.arange(seq) == p)[None, :, None].astype(delta.dtype)  # delta at p alone

    def sweep(edited, count: int) -> jax.Array:  # [b, count]: readout of each of `count` edits minus clean
        step = min(per_step or count, count)
        return jax.lax.map(edited, jnp.arange(count), batch_size=step).T - clean[:, None]

    mlps = mlp_contributions(model, trace) if "patch_mlp_out" in kinds else None
    partner_mlps = mlp_contributions(model, partner) if "patch_mlp_out" in kinds else None
    out = {}
    for kind in kinds:
        per_layer = []
        for layer in range(n_layer):
            if kind == "patch_resid":
                x, delta = trace.residual[layer], partner.residual[layer] - trace.residual[layer]
                edited = lambda p, x=x, delta=delta, layer=layer: readout(run_from(model, layer, x + at(delta, p), ctx))
            elif kind == "patch_mlp_out":
                x, delta = trace.residual[layer + 1], (partner_mlps[layer] - mlps[layer]).astype(trace.residual[0].dtype)
                edited = lambda p, x=x, delta=delta, layer=layer: readout(run_from(model, layer + 1, x + at(delta, p), ctx))
            elif kind == "patch_attn_out":
                delta = partner.attn_out[layer] - trace.attn_out[layer]
                edited = lambda p, delta=delta, layer=layer: readout(run_from(
                    model, layer + 1, blocks[layer].resume(trace.carries[layer], at(delta, p)), ctx))
            else:  # head_pos: edit index h * seq + p
                change = partner.heads[layer] - trace.heads[layer]  # [b, s, h, d]
                w_out = blocks[layer].out_weights()

                def edited(i, change=change, w_out=w_out, layer=layer):
                    head, p = i // seq, i % seq
                    shift = jnp.einsum("bd,de->be", change[:, p, head], w_out[head], precision=model.matmul_precision)
                    shift = shift[:, None, :] * (jnp.arange(seq) == p)[None, :, None].astype(shift.dtype)
                    return readout(run_from(model, layer + 1, blocks[layer].resume(trace.carries[layer], shift), ctx))
            count = seq * (n_head if kind == "patch_head_pos" else 1)
            values = sweep(edited, count)
            if kind == "patch_head_pos":
                values = jnp.where(real[:, None, :], values.reshape(batch, n_head, seq), jnp.nan)
            else:
                values = jnp.where(real, values, jnp.nan)
            per_layer.append(values)
        out[f"effect_{kind}"] = jnp.stack(per_layer, axis=1)
    return out
