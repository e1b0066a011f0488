"""Beyond whole-head effects: direct logit attribution and the logit lens, read at the metric position from
the diagnostics' own forward pass (``Family.__call__(keep=position)``, :class:`jaxdiag.models.family.Kept`), and
patching the residual stream, attention and MLP outputs and heads position by position from one clean run
(:func:`clean_trace`).

**Direct logit attribution.** At a prompt's metric position p the final residual is the sum of its
components: the embeddings, and per layer each head's output through its rows of the output projection,
the projection's bias and the MLP's output. With the final norm's scale frozen at the clean run's
``x[p]`` the norm is affine, ``gain * (x - centred * mean(x)) + bias``, so the logit difference
``final(x[p]) . u`` (``u = W_U[target] - W_U[foil]``, or ``W_U[target]`` without a foil) is exactly
``sum_c c . w + bias . u`` with ``w = P(gain * u)`` (``P``: the centring, symmetric, so it moves onto
``u``). A normalised attention output (Gemma) has its norm's scale frozen too
(:meth:`jaxdiag.models.family.Block.attention_gain`); the logits are the raw ones, before a soft cap.
Everything is read at p alone: ``[b, d]`` vectors, each head's ``[b, d_head]`` output folded with its
rows of ``W_O`` and ``w``; no per-head ``[b, d]`` contribution at every position is ever formed.

**Logit lens.** The metric read from each block's output at p through the final norm (recomputed there)
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

from jaxdiag.causal.effects import Readout, Trace, run_from, task_metric
from jaxdiag.errors import JaxdiagError
from jaxdiag.models.family import Family, Kept, norm_gain
from jaxdiag.schema import METRIC_KINDS, POSITION_KINDS


def logit_direction(model: Family, target: jax.Array, foil: jax.Array) -> jax.Array:
    """``u [b, d]``: ``W_U[target] - W_U[foil]``, or ``W_U[target]`` where there is no foil (``foil < 0``)."""
    rows = model.unembed_rows(jnp.maximum(target, 0))
    return rows - jnp.where((foil >= 0)[:, None], model.unembed_rows(jnp.maximum(foil, 0)), 0.0)


def _gains(model: Family, attn_out: Sequence[jax.Array]) -> list[jax.Array]:
    """Per layer, the factor (``attn_out``'s shape, or 1) by which its attention output joins the residual."""
    gains = [block.attention_gain(out) for block, out in zip(model.blocks(), attn_out)]
    return [jnp.float32(1.0) if g is None else g for g in gains]


def mlp_contributions(model: Family, residual: Sequence[jax.Array], attn_out: Sequence[jax.Array]) -> list[jax.Array]:
    """Each layer's MLP contribution to the residual (``[b, s, d]``, or ``[b, d]`` at one position): the block's
    update less its attention part (``residual``: the blocks' inputs and the last one's output)."""
    return [(after - before - gain * out).astype(jnp.float32) for before, after, out, gain
            in zip(residual[:-1], residual[1:], attn_out, _gains(model, attn_out))]


def read_metric(model: Family, hidden: jax.Array, target: jax.Array, foil: jax.Array) -> jax.Array:
    """The task metric (:func:`task_metric`) of final hidden states at the metric position, ``[n, b, d]`` ->
    ``[n, b]``. When every prompt has a foil it is a logit difference, so only the target's and the foil's
    unembedding rows are read, never the whole unembedding."""
    def rows() -> jax.Array:
        ids = jnp.stack([jnp.maximum(target, 0), jnp.maximum(foil, 0)], -1)  # [b, 2]
        logits = model.cap_logits(jnp.einsum("nbd,bkd->nbk", hidden.astype(jnp.float32), model.unembed_rows(ids),
                                             precision=model.matmul_precision))
        pick = jnp.where(target >= 0, 0, -1)
        return jax.vmap(lambda z: task_metric(z, pick, jnp.ones_like(pick)))(logits)

    def full() -> jax.Array:
        return jax.vmap(lambda h: task_metric(model.unembed(h), target, foil))(hidden)

    # a traced predicate: only the taken branch runs, so a foil everywhere never unembeds every token
    return jax.lax.cond(jnp.all(foil >= 0), rows, full)


def direct_logit_attribution(model: Family, kept: Kept, target: jax.Array, foil: jax.Array) -> dict[str, jax.Array]:
    """``dla [b, layer, head]``, ``dla_attn_bias`` / ``dla_mlp [b, layer]``, ``dla_embed`` / ``dla_norm_bias [b]``:
    each component's direct contribution to the raw logit difference (the target's logit without a foil)
    at the position ``kept`` holds (the metric position); they sum to it exactly. NaN without a target.

    Only ``[b, d]`` vectors at that position are read: each head's term folds its rows of the output
    projection with the direction, ``sum_k heads[b, h, k] (W_O[h, k, :] . w[b, :])``."""
    u = logit_direction(model, target, foil)
    gain, beta, centred = norm_gain(model.final_norm(), kept.residual[-1])
    w = gain * u
    if centred:  # (P c) . (gain u) = c . P(gain u): the centring moves onto the direction
        w = w - jnp.mean(w, axis=-1, keepdims=True)
    read = lambda values: jnp.einsum("bd,bd->b", values.astype(jnp.float32), w)
    heads, biases = [], []
    for block, acts, g in zip(model.blocks(), kept.heads, _gains(model, kept.attn_out)):
        wl = w * g  # the direction before a normalised attention output
        w_out = block.out_weights()  # [h, d_head, d]
        # W_O folded with the direction first, as one [b, d] x [d, h d_head] product: the three-operand einsum
        # "bhk,hkd,bd->bh" compiled to a product XLA:CPU ran 4x slower alone and that cost +50% of the
        # diagnostics inside the step (benchmarks/BEYOND_HEADS.md)
        folded = jnp.matmul(wl, w_out.reshape(-1, w_out.shape[-1]).T.astype(jnp.float32),
                            precision=model.matmul_precision).reshape(acts.shape)
        heads.append(jnp.sum(acts.astype(jnp.float32) * folded, axis=-1))
        bias = block.out_bias()
        biases.append(jnp.zeros_like(target, jnp.float32) if bias is None
                      else jnp.einsum("d,bd->b", bias.astype(jnp.float32), wl))
    mlps = [read(m) for m in mlp_contributions(model, kept.residual, kept.attn_out)]
    defined = (target >= 0)
    nan = lambda v: jnp.where(defined.reshape((-1,) + (1,) * (v.ndim - 1)), v, jnp.nan)
    norm_bias = jnp.zeros_like(target, jnp.float32) if beta is None else u @ beta
    return {"dla": nan(jnp.stack(heads, 1)), "dla_attn_bias": nan(jnp.stack(biases, 1)),
            "dla_mlp": nan(jnp.stack(mlps, 1)), "dla_embed": nan(read(kept.residual[0])),
            "dla_norm_bias": nan(norm_bias)}


def logit_lens(model: Family, kept: Kept, target: jax.Array, foil: jax.Array, *, rank: bool = False,
               ) -> dict[str, jax.Array]:
    """``metric [b]`` and ``lens_metric [b, layer]``: the task metric read from each block's output at the
    position ``kept`` holds through the final norm (the last layer's is the final hidden state there, so
    it is the metric, bit for bit); with ``rank``, also ``lens_rank [b, layer]``, the target's rank among
    all tokens (0: the top logit)."""
    hidden = jnp.concatenate([model.final(jnp.stack(kept.residual[1:-1])), kept.hidden[None]])  # [layer, b, d]
    values = read_metric(model, hidden, target, foil)
    out = {"metric": values[-1], "lens_metric": values.T}
    if rank:
        logits = jax.vmap(model.unembed)(hidden)  # [layer, b, vocab]
        own = jnp.take_along_axis(logits, jnp.maximum(target, 0)[None, :, None], axis=-1)
        ranks = jnp.sum(logits > own, axis=-1).astype(jnp.float32)
        out["lens_rank"] = jnp.where(target >= 0, ranks, jnp.nan).T
    return out


def metric_components(model: Family, kept: Kept, target: jax.Array, foil: jax.Array,
                      kinds: Sequence[str]) -> dict[str, jax.Array]:
    """What a sweep step reads at the metric position for ``kinds`` (of :data:`METRIC_KINDS`): the clean
    ``metric [b]`` (:func:`read_metric` of the final hidden state there), DLA for ``dla`` and the logit lens
    for ``lens`` / ``lens_rank``."""
    unknown = [k for k in kinds if k not in METRIC_KINDS]
    if unknown:
        raise JaxdiagError(f"unknown metric-position kind {unknown[0]!r} (choose from {', '.join(METRIC_KINDS)})")
    if "lens" in kinds or "lens_rank" in kinds:
        out = logit_lens(model, kept, target, foil, rank="lens_rank" in kinds)
    else:
        out = {"metric": read_metric(model, kept.hidden[None], target, foil)[0]}
    if "dla" in kinds:
        out |= direct_logit_attribution(model, kept, target, foil)
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

    mlps = mlp_contributions(model, trace.residual, trace.attn_out) if "patch_mlp_out" in kinds else None
    partner_mlps = mlp_contributions(model, partner.residual, partner.attn_out) if "patch_mlp_out" in kinds else None
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
