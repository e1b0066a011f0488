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

from typing import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiag.errors import JaxdiagError
from jaxdiag.interventions import shift_heads
from jaxdiag.model import GPT2, Context
from jaxdiag.probes import HEAD_OUTPUT_PROBE
from jaxdiag.runner import Unit, diagnostics_step
from jaxdiag.schema import EXACT_KINDS, QueryMode, edit_of


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


def require_gpt2(model) -> None:
    """Effects and attribution patching read GPT-2's blocks; other families: a one-line error."""
    if not isinstance(model, GPT2):
        raise JaxdiagError(f"causal effects and attribution patching are GPT-2 only for now; this model is "
                           f"{getattr(model.config, 'model_type', type(model).__name__)!r}")


def clean_run(model: GPT2, tokens: jax.Array, lengths: jax.Array) -> tuple[jax.Array, list, jax.Array]:
    """The unedited pass: final hidden states, per layer ``(residual after attention, head outputs [b, s, h, d])``, context."""
    require_gpt2(model)
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


Readout = Callable[[jax.Array], jax.Array]  # final hidden states [b, seq, n_embd] -> a value per prompt [b]


def task_readout(model: GPT2, lengths: jax.Array, target: jax.Array, foil: jax.Array) -> Readout:
    """The sweep's metric as a readout: :func:`task_metric` at each prompt's last real position."""
    return lambda hidden: task_metric(model.unembed(last_position(hidden, lengths)), target, foil)


def head_effects(
    model: GPT2,
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

    effects = {}
    for kind, replacement in replacements.items():
        replacement = jnp.broadcast_to(replacement, (batch, config.n_layer, seq, n_head, d_head))
        per_layer = []
        for layer, (middle, heads) in enumerate(layers):
            chosen = list(range(n_head)) if only is None else sorted(h for l, h in only if l == layer)
            if not chosen:
                per_layer.append(jnp.full((batch, n_head), jnp.nan, jnp.float32))
                continue
            attn = model.h[layer].attn
            w_out = attn.c_proj.kernel[...].reshape(n_head, d_head, config.n_embd)
            change = (replacement[:, layer] - heads).astype(heads.dtype)  # [b, s, h, d]

            def edited_metric(head: jax.Array, layer=layer, middle=middle, change=change, w_out=w_out) -> jax.Array:
                shift = jnp.einsum("bsd,de->bse", change[:, :, head], w_out[head], precision=attn.precision)
                return readout(_finish_from(model, layer, middle + shift.astype(middle.dtype), ctx))

            metrics = jax.lax.map(edited_metric, jnp.asarray(chosen), batch_size=min(heads_per_step or n_head, len(chosen)))
            values = metrics.T - clean[:, None]  # [b, chosen]
            if only is not None:
                values = jnp.full((batch, n_head), jnp.nan, values.dtype).at[:, jnp.asarray(chosen)].set(values)
            per_layer.append(values)
        effects[kind] = jnp.stack(per_layer, axis=1)
    return clean, effects


def _graddrop_forward(model: GPT2, tokens: jax.Array, ctx: Context, drop: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Final hidden states and the heads' outputs ``[b, layer, seq, head, d]`` (``ctx`` probes them);
    the gradient through layer l's residual update is scaled by ``1 - drop[l]``.

    The forward values do not depend on ``drop`` (``u - d (u - stop_gradient(u))`` is ``u``), so
    every GradDrop variant differentiates the same clean run.
    """
    x = model.embed(tokens)
    heads = []
    for layer, block in enumerate(model.h):
        attn_out, probed = block.attn(block.ln_1(x), ctx)
        heads.append(probed["head_out"])
        attn_out = attn_out - drop[layer] * (attn_out - jax.lax.stop_gradient(attn_out))
        middle = x + attn_out
        mlp_out = block.mlp(block.ln_2(middle))
        x = middle + (mlp_out - drop[layer] * (mlp_out - jax.lax.stop_gradient(mlp_out)))
    return model.ln_f(x), jnp.stack(heads, axis=1)


def head_gradients(model: GPT2, tokens: jax.Array, lengths: jax.Array, readout: Readout,
                   drop: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(readout [b], head outputs [b, layer, seq, head, d], d readout / d head outputs, same shape)``.

    One forward and one backward pass; each prompt's gradient is of its own readout (prompts do not
    interact; a NaN readout contributes nothing). ``drop [layer]`` drops (scales) the gradient through
    layers' residual updates (GradDrop), ``None`` for plain gradients.
    """
    require_gpt2(model)
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
    model: GPT2,
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


def head_outputs(model: GPT2, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
    """Every head's output at every position, ``[b, layer, seq, head, d_head]`` (patch sources)."""
    return model(tokens, lengths, probes=(HEAD_OUTPUT_PROBE,)).probes["head_out"]


def head_output_sums(model: GPT2, tokens: jax.Array, lengths: jax.Array) -> dict[str, jax.Array]:
    """Per prompt: ``head_sum [b, layer, head, d_head]``, every head's output summed over the prompt's
    real positions, and ``n_real [b]``, their number (see :func:`reference_means`)."""
    outputs = head_outputs(model, tokens, lengths).astype(jnp.float32)
    real = (jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(jnp.float32)  # [b, s]
    return {"head_sum": jnp.einsum("blshd,bs->blhd", outputs, real), "n_real": jnp.sum(real, axis=1)}


def edit_replacement(model: GPT2, edit: str, lengths: jax.Array, *, head_mean: np.ndarray | None = None,
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


def sweep_step(graphdef, query: QueryMode, kinds: Sequence[str], *, head_mean: np.ndarray | None = None,
               heads_per_step: int | None = None):
    """A sweep step: the diagnostics, the clean ``metric`` and ``effect_<kind>`` for ``kinds``.

    ``step(state, tokens, lengths, target, foil[, partner])`` -> ``{name: [b, ...]}``; ``partner``
    (the pair partners' tokens, same shape) is needed for ``patch``, ``head_mean`` for ``mean``.
    The diagnostics are the runner's own compiled step, not fused into the effects' program, so a
    run with effects stores the same diagnostics, bit for bit, as one without.
    """
    edits = sorted({edit_of(kind) for kind in kinds}, key=EXACT_KINDS.index)
    if "mean" in edits and head_mean is None:
        raise ValueError("mean-ablation effects need the reference condition's head_mean")
    exact = [kind for kind in kinds if kind in EXACT_KINDS]
    attribution = [kind for kind in kinds if kind not in EXACT_KINDS]

    diagnose = diagnostics_step(graphdef, query)

    @jax.jit
    def effects(state, tokens, lengths, target, foil, partner):
        model = nnx.merge(graphdef, state)
        replacements = {edit: edit_replacement(model, edit, lengths, head_mean=head_mean, partner=partner)
                        for edit in edits}
        readout = task_readout(model, lengths, target, foil)
        metric, per_kind = head_effects(model, tokens, lengths, readout, {k: replacements[k] for k in exact},
                                        heads_per_step=heads_per_step)
        if attribution:
            needed = {edit_of(kind) for kind in attribution}
            estimates = attribution_effects(model, tokens, lengths, readout, {k: replacements[k] for k in needed},
                                            graddrop=any(kind.startswith("atpstar_") for kind in attribution))
            per_kind |= {kind: estimates[kind] for kind in attribution}
        return {"metric": metric} | {f"effect_{kind}": per_kind[kind] for kind in kinds}

    def step(state, tokens, lengths, target, foil, partner=None):
        return diagnose(state, tokens, lengths) | effects(state, tokens, lengths, target, foil, partner)

    return step


def head_sums_step(graphdef):
    """A jitted ``(state, tokens, lengths) -> {"head_sum": [b, layer, head, d], "n_real": [b]}`` per prompt."""
    @jax.jit
    def step(state, tokens, lengths):
        return head_output_sums(nnx.merge(graphdef, state), tokens, lengths)

    return step


def reference_means(results: Iterable[tuple[Unit, dict[str, np.ndarray]]]) -> np.ndarray:
    """``head_mean [layer, head, d_head]`` over every real position of the units' real prompts.

    Summed on the host in float64 in unit order, so the mean is the same however units are batched
    onto devices.
    """
    total, count = None, 0.0
    for unit, result in results:
        rows = len(unit.keys)
        sums = result["head_sum"][:rows].astype(np.float64).sum(axis=0)
        total = sums if total is None else total + sums
        count += float(result["n_real"][:rows].sum())
    if total is None:
        raise ValueError("no reference prompts for the mean head outputs")
    return (total / count).astype(np.float32)
