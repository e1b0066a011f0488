"""The attention core every family shares, and the forward pass of the non-GPT-2 families.

One layer's attention, whatever the family, is: scores ``q.k * scale`` in float32 -> softmax over
the keys ``ctx.visible`` allows (float32) -> the probes read the probed rows' scores and weights ->
the optional edit replaces heads' outputs -> the outputs go to the family's output projection.
Which keys a query sees is the family's mask rule (causal, causal within a sliding window, or
bidirectional over the real tokens), and the diagnostics' n is exactly that set, so a sliding
window or an encoder is a change of masks and nothing else. Grouped-query attention repeats each
key/value head for its group of query heads before the core, so probes see one row per query head.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiag.errors import JaxdiagError
from jaxdiag.interventions import HeadEdit, apply_edit
from jaxdiag.probes import AttentionView, Probe, read_probes, stack_layers
from jaxdiag.schema import QUERIES, QueryMode


@dataclasses.dataclass(frozen=True)
class Context:
    """Everything every layer shares in one forward pass (masks, probed rows, probes, edit)."""

    impl: Literal["direct", "streaming"]
    query: QueryMode
    probes: tuple[Probe, ...]
    edit: HeadEdit | None
    tokens: jax.Array
    lengths: jax.Array
    visible: jax.Array  # [b, 1, q, k] the keys each query sees (causal and real keys, for GPT-2)
    rows: jax.Array  # [b, r] probed query positions
    row_visible: jax.Array  # [b, 1, r, k] keys each probed row sees (none for padded rows)

    def view(self, layer: int, head_out: jax.Array, *, scores=None, probs=None, row_stats=None) -> AttentionView:
        return AttentionView(layer, self.rows, self.row_visible, scores, probs, row_stats, head_out,
                             self.tokens, self.lengths)


def direct_attention(q: jax.Array, k: jax.Array, v: jax.Array, ctx: Context, layer: int, *, scale: float,
                     precision) -> tuple[jax.Array, AttentionView | None]:
    """Heads' outputs ``[b, q, h, d]`` of ``q, k, v [b, s, h, d]`` and the probes' view of the layer.

    The layer's ``[b, h, q, k]`` scores are formed; the view holds the probed rows' scores and weights.
    """
    scores = jnp.einsum(
        "bqhd,bkhd->bhqk", q, k, precision=precision, preferred_element_type=jnp.float32
    ) * jnp.float32(scale)
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


def attend(q: jax.Array, k: jax.Array, v: jax.Array, ctx: Context, layer: int, *, scale: float,
           precision) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The shared core: ``q [b, s, h, d]``, ``k, v [b, s, h_kv, d]`` (``h`` a multiple of ``h_kv``) ->
    (heads' outputs ``[b, s, h, d]`` after the edit, the probes' arrays of this layer)."""
    groups = q.shape[2] // k.shape[2]
    if groups > 1:  # grouped-query attention: query head i reads key/value head i // groups
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    heads, view = direct_attention(q, k, v, ctx, layer, scale=scale, precision=precision)
    probed = read_probes(ctx.probes, view) if ctx.probes else {}
    if ctx.edit is not None:
        heads = apply_edit(heads, *ctx.edit.layer(layer))
    return heads, probed


# --- masks ---------------------------------------------------------------------------------------

MaskRule = Literal["causal", "bidirectional"]


def make_context(tokens: jax.Array, lengths: jax.Array, *, mask: MaskRule, window: int | None = None,
                 n_positions: int, probes: Sequence[Probe] = (), query: QueryMode = "last",
                 edit: HeadEdit | None = None, attention: str = "auto", family: str = "this family") -> Context:
    """Masks and probed rows of a batch of right-padded prompts.

    ``causal``: query t sees keys j <= t (and, with ``window`` w, only j > t - w, as Mistral);
    ``bidirectional``: every query sees every real token. The probed rows for ``query="last"`` are
    each prompt's last real token, for encoders too (they have no causal "last" semantics: the
    last real token is simply the row read).
    """
    batch, seq = tokens.shape
    if seq > n_positions:
        raise JaxdiagError(f"sequence length {seq} exceeds the model's context window of {n_positions}")
    if query not in QUERIES:
        raise JaxdiagError(f"unknown query mode {query!r} (choose 'last' or 'all')")
    if attention not in ("auto", "direct"):
        raise JaxdiagError(f"attention={attention!r} is not supported for {family}: only the direct path "
                           "(attention='direct' or 'auto'); the streaming path is GPT-2 only")
    positions = jnp.arange(seq)
    key_real = positions[None, :] < lengths[:, None]  # [b, k]
    q_pos, k_pos = positions[:, None], positions[None, :]
    if mask == "causal":
        allowed = k_pos <= q_pos
        if window is not None:
            allowed = allowed & (k_pos > q_pos - window)
    elif mask == "bidirectional":
        allowed = jnp.ones((seq, seq), bool)
    else:
        raise JaxdiagError(f"unknown mask rule {mask!r}")
    visible = (allowed[None] & key_real[:, None, :])[:, None]  # [b, 1, q, k]
    if query == "last":
        rows = (lengths - 1)[:, None]
        row_visible = jnp.take_along_axis(visible, rows[:, None, :, None], axis=2)  # [b, 1, 1, k]
    else:
        rows = jnp.broadcast_to(positions, (batch, seq))
        row_visible = visible & key_real[:, None, :, None]  # padded query rows see nothing
    return Context("direct", query, tuple(probes), edit, tokens, lengths, visible, rows, row_visible)


# --- rotary embeddings ---------------------------------------------------------------------------

def rotary(x: jax.Array, positions: jax.Array, *, dims: int, theta: float) -> jax.Array:
    """Rotary position embedding on the first ``dims`` of each head of ``x [b, s, h, d]`` (HF's
    rotate-half convention, angles in float32 as transformers computes them); the rest passes."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, dims, 2, dtype=jnp.float32) / dims))
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([freqs, freqs], axis=-1)  # [s, dims]
    cos = jnp.cos(angles)[None, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[None, :, None, :].astype(x.dtype)
    rot, rest = x[..., :dims], x[..., dims:]
    half = dims // 2
    rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return jnp.concatenate([rot * cos + rotated * sin, rest], axis=-1)


def rope_settings(raw: dict, *, source: str, default_theta: float = 10000.0,
                  default_fraction: float = 1.0) -> tuple[float, float]:
    """(theta, rotary fraction of each head) from a ``config.json`` (transformers 4 or 5 spelling);
    a clear error for any rope scaling, which jaxdiag does not implement."""
    params = dict(raw.get("rope_parameters") or {})
    scaling = raw.get("rope_scaling")
    if scaling:
        params = {**scaling, **params}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", None):
        raise JaxdiagError(f"{source}: rope type {rope_type!r} is not supported (only the default rotary embedding)")
    def first(*values, default):
        return next((v for v in values if v is not None), default)

    theta = first(params.get("rope_theta"), raw.get("rope_theta"), raw.get("rotary_emb_base"), default=default_theta)
    fraction = first(params.get("partial_rotary_factor"), raw.get("partial_rotary_factor"), raw.get("rotary_pct"),
                     default=default_fraction)
    return float(theta), float(fraction)


# --- the forward pass shared by the families -----------------------------------------------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Forward:
    """What a forward pass returns: ``hidden`` and ``logits`` if asked; each probe's arrays."""

    hidden: jax.Array | None
    logits: jax.Array | None
    probes: dict[str, jax.Array]


class Family(nnx.Module):
    """The forward pass of a family's model. A subclass sets ``config`` and ``family`` and defines
    ``embed(tokens)``, ``blocks()`` (the layers in order; ALBERT gives its one shared layer
    ``n_layer`` times), ``final(x)`` (the last norm, or the identity), ``unembed(hidden)`` and
    ``mask`` / ``window`` (its mask rule). Each block is called ``block(x, ctx, layer)``."""

    family: str = "?"
    mask: MaskRule = "causal"
    window: int | None = None
    supports_effects = False

    def __call__(self, tokens: jax.Array, lengths: jax.Array, *, probes: Sequence[Probe] = (),
                 query: QueryMode = "last", edit: HeadEdit | None = None, logits: bool = False,
                 hidden: bool = True, attention: str = "auto") -> Forward:
        """As :meth:`jaxdiag.model.GPT2.__call__` (direct attention only)."""
        ctx = self.context(tokens, lengths, probes=probes, query=query, edit=edit, attention=attention)
        x = self.embed(tokens)
        per_layer = []
        for i, block in enumerate(self.blocks()):
            x, probed = block(x, ctx, i)
            per_layer.append(probed)
        if not (hidden or logits):
            return Forward(None, None, stack_layers(per_layer))
        final = self.final(x)
        return Forward(final if hidden else None, self.unembed(final) if logits else None, stack_layers(per_layer))

    def context(self, tokens, lengths, *, probes=(), query="last", edit=None, attention="auto") -> Context:
        return make_context(tokens, lengths, mask=self.mask, window=self.window, n_positions=self.config.n_positions,
                            probes=probes, query=query, edit=edit, attention=attention, family=self.family)
