"""What every family shares: precision, the per-batch :class:`Context`, the :class:`Forward` result,
and the :class:`Family` forward pass written against one block interface.

A family is a variant of shared parts (penzai's rule): its file under :mod:`jaxdiag.models` defines a
config, an embedding, blocks and a head; the attention core (:mod:`jaxdiag.models.attention`), masks,
probes and edits are these. A block of any family answers four questions, and the causal-effects
code (:mod:`jaxdiag.causal.effects`) is written against them alone:

``block.attention_heads(x, ctx, layer) -> (heads, probed)``
    the heads' outputs ``[b, s, h, d_head]`` before the output projection (after ``ctx.edit``),
    and the probes' arrays of this layer;
``block.project(heads) -> attn_out``
    the output projection (with its bias): the attention part's contribution ``[b, s, d_model]``;
``block.out_weights() -> [h, d_head, d_model]``
    each head's rows of the output projection (grouped-query attention included: the projection
    reads query heads), so replacing head ``i``'s output ``a`` by ``r`` moves ``attn_out`` by
    exactly ``(r - a) @ W_O[i]``;
``block.carry(x, attn_out)`` / ``block.resume(carry, shift=None, drop=None) -> x_next``
    the rest of the block from its input and attention output, split so that what an edit cannot
    change is computed once: a sequential residual carries ``x + attn_out`` and resumes at the MLP
    (GPT-2, Llama); NeoX's parallel residual carries the MLP's output, which reads the block input
    only; a normalised attention output (Gemma) or a post-LN encoder carries ``(x, attn_out)`` and
    recomputes the norm, since there the shift is not linear in the block's output. ``shift`` is a
    change of ``attn_out``; ``resume(carry(x, project(heads)))`` is the block's forward. ``drop``
    (AtP*'s GradDrop) scales the gradient through the block's MLP update by ``1 - drop``
    (:func:`graddrop`), as the effects code does to ``attn_out``; the values are unchanged.

``block(x, ctx, layer)`` is that composition, so the clean forward and the edited restarts are the
same code.

Direct logit attribution (:mod:`jaxdiag.causal.components`) asks two more questions, with defaults
for the usual case: ``block.attention_gain(attn_out)`` is the factor by which the attention output
joins the residual with a normalising norm's scale frozen (``None``: it joins as is; Gemma's
post-attention norm), and a model's ``final_norm()`` / ``unembed_rows(ids)`` / ``cap_logits`` are the
last norm module, the unembedding's rows of some token ids ``[..., d_model]``, and what the model does
to raw logits (Gemma 2's soft cap).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiag.errors import JaxdiagError
from jaxdiag.models.edits import HeadEdit
from jaxdiag.probes import AttentionView, Probe, stack_layers
from jaxdiag.schema import PRECISIONS, QUERIES, Precision, QueryMode

AttentionImpl = Literal["auto", "direct", "streaming"]
ATTENTION_IMPLS: tuple[str, ...] = ("auto", "direct", "streaming")
# "auto" streams (jaxdiag.probes.streaming) when one layer's [batch, head, query, key] float32 scores
# would exceed this many bytes, or the prompts are at least STREAMING_MIN_SEQ long, where the
# quadratic scores dominate memory (direct vs streaming speed and memory: benchmarks/RESULTS.md).
STREAMING_SCORE_BYTES = 256 * 2**20
STREAMING_MIN_SEQ = 512

MaskRule = Literal["causal", "bidirectional"]

# Activation names as config.json spells them (HF's ACT2FN), one table for every family.
ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def precision_settings(precision: Precision) -> tuple[jnp.dtype, jax.lax.Precision]:
    """Compute dtype and matmul precision for a precision name.

    ``highest`` is true float32; ``default`` lets the backend use TF32 (GPU) or bf16 passes (TPU)
    inside float32 matmuls; ``bf16`` runs the matmuls in bfloat16. Scores, softmax and every
    diagnostic stay float32 in all three.
    """
    if precision == "highest":
        return jnp.float32, jax.lax.Precision.HIGHEST
    if precision == "default":
        return jnp.float32, jax.lax.Precision.DEFAULT
    if precision == "bf16":
        return jnp.bfloat16, jax.lax.Precision.DEFAULT
    raise JaxdiagError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")


def choose_attention(impl: AttentionImpl, *, batch: int, n_head: int, seq: int) -> Literal["direct", "streaming"]:
    """Resolve ``"auto"`` from the (static) shapes: direct for short prompts, streaming for long ones."""
    if impl not in ATTENTION_IMPLS:
        raise JaxdiagError(f"unknown attention implementation {impl!r} (choose from {', '.join(ATTENTION_IMPLS)})")
    if impl != "auto":
        return impl
    score_bytes = 4 * batch * n_head * seq * seq
    return "streaming" if score_bytes > STREAMING_SCORE_BYTES or seq >= STREAMING_MIN_SEQ else "direct"


@dataclasses.dataclass(frozen=True)
class Context:
    """Everything every layer shares in one forward pass (masks, probed rows, probes, edit)."""

    impl: Literal["direct", "streaming"]
    query: QueryMode
    probes: tuple[Probe, ...]
    edit: HeadEdit | None
    tokens: jax.Array
    lengths: jax.Array
    visible: jax.Array  # [b, 1, q, k] the keys each query sees (the family's mask rule and real keys)
    rows: jax.Array  # [b, r] probed query positions
    row_visible: jax.Array  # [b, 1, r, k] keys each probed row sees (none for padded rows)
    window: int | None = None  # sliding window of causal attention (None: every earlier key)
    mask: MaskRule = "causal"

    def with_window(self, window: int | None) -> "Context":
        """This context for a layer with its own sliding window (Gemma's and Qwen's local layers, or
        their global ones in a model whose default is local): the masks of that window."""
        if window == self.window:
            return self
        visible, _, row_visible = attention_masks(self.lengths, self.tokens.shape[1], mask=self.mask, window=window,
                                                  query=self.query)
        return dataclasses.replace(self, visible=visible, row_visible=row_visible, window=window)

    def view(self, layer: int, head_out: jax.Array | None, *, scores=None, probs=None,
             row_stats=None) -> AttentionView:
        return AttentionView(layer, self.rows, self.row_visible, scores, probs, row_stats, head_out,
                             self.tokens, self.lengths)


def make_context(tokens: jax.Array, lengths: jax.Array, *, mask: MaskRule, window: int | None = None,
                 n_positions: int, n_head: int, probes: Sequence[Probe] = (), query: QueryMode = "last",
                 edit: HeadEdit | None = None, attention: AttentionImpl = "auto",
                 family: str = "this family") -> Context:
    """Masks, probed rows and the attention path of a batch of right-padded prompts.

    ``causal``: query t sees keys j <= t (and, with ``window`` w, only j > t - w, as Mistral);
    ``bidirectional``: every query sees every real token. The probed rows for ``query="last"`` are
    each prompt's last real token, for encoders too (they have no causal "last" semantics: the
    last real token is simply the row read). ``attention="auto"`` streams long prompts unless a
    probe needs the pattern of every row; encoders always take the direct path.
    """
    batch, seq = tokens.shape
    if seq > n_positions:
        raise JaxdiagError(f"sequence length {seq} exceeds the model's context window of {n_positions}")
    if query not in QUERIES:
        raise JaxdiagError(f"unknown query mode {query!r} (choose 'last' or 'all')")
    probes = tuple(probes)
    impl = choose_attention(attention, batch=batch, n_head=n_head, seq=seq)
    if impl == "streaming" and mask != "causal":
        if attention == "streaming":
            raise JaxdiagError(f"attention='streaming' is for decoders; {family} attends bidirectionally "
                               "(use attention='direct' or 'auto')")
        impl = "direct"
    pattern_probes = [p.name for p in probes if not p.streams]
    if pattern_probes and query == "all" and impl == "streaming":
        if attention == "streaming":
            raise JaxdiagError(f"probe {pattern_probes[0]!r} needs attention='direct': "
                               "the streaming path never forms the pattern")
        impl = "direct"
    visible, rows, row_visible = attention_masks(lengths, seq, mask=mask, window=window, query=query)
    return Context(impl, query, probes, edit, tokens, lengths, visible, rows, row_visible, window, mask)


def attention_masks(lengths: jax.Array, seq: int, *, mask: MaskRule, window: int | None,
                    query: QueryMode) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(visible ``[b, 1, q, k]``, probed rows ``[b, r]``, their visible keys ``[b, 1, r, k]``) of
    right-padded prompts of ``lengths`` under a mask rule (:func:`make_context`)."""
    batch = lengths.shape[0]
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
    return visible, rows, row_visible


@dataclasses.dataclass(frozen=True)
class WeightNames:
    """How a family's HF tensor names map to its nnx parameter paths: strip the first matching
    ``prefixes``; drop tensor names ending with ``ignored`` or starting with ``ignored_prefixes``
    (buffers, heads jaxdiag does not load); ``tied_heads`` may be stored although the model ties
    them; ``transpose_kernels``: linear weights are stored ``[out, in]`` (``nn.Linear``), not
    ``[in, out]`` (GPT-2's ``Conv1D``); ``aliases``: ``(stored, ours)`` pairs, a tensor stored under
    the first name alone is read as the second (a tied tensor that HF saves under either name)."""

    prefixes: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    ignored_prefixes: tuple[str, ...] = ()
    tied_heads: tuple[str, ...] = ()
    transpose_kernels: bool = True
    aliases: tuple[tuple[str, str], ...] = ()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Forward:
    """What a forward pass returns: ``hidden`` and ``logits`` if asked; each probe's arrays."""

    hidden: jax.Array | None
    logits: jax.Array | None
    probes: dict[str, jax.Array]


class Family(nnx.Module):
    """The forward pass of a family's model. A subclass sets ``config`` (with ``n_layer``, ``n_head``,
    ``d_head``, ``n_embd``, ``n_positions``, ``vocab_size``, ``model_type``), ``family``,
    ``matmul_precision`` and ``mask`` / ``window`` (its mask rule), and defines ``embed(tokens)``,
    ``blocks()`` (the layers in order; ALBERT gives its one shared layer ``n_layer`` times),
    ``final(x)`` (the last norm, or the identity) and ``unembed(hidden)``; its blocks follow the
    interface of this module's docstring.

    ``causal_effects``: whether the family has what effects need (a task metric from logits, and
    blocks with ``carry``/``resume``); ``None`` when it has, else the reason it has not. A family
    where that depends on the checkpoint (an encoder with or without its MLM head) overrides
    :meth:`effects_reason` and :meth:`configure`.
    """

    family: str = "?"
    weights_dtype: str = "float32"  # the dtype the checkpoint stored its parameters in (set by the loader)
    mask: MaskRule = "causal"
    window: int | None = None
    causal_effects: str | None = None

    @classmethod
    def configure(cls, config: Any, names: Sequence[str]) -> Any:
        """The config of a model built from weights with these (family-mapped) ``names``."""
        return config

    @classmethod
    def effects_reason(cls, config: Any) -> str | None:
        """``None`` when a model of ``config`` can measure causal effects, else why it cannot."""
        return cls.causal_effects

    def __call__(self, tokens: jax.Array, lengths: jax.Array, *, probes: Sequence[Probe] = (),
                 query: QueryMode = "last", edit: HeadEdit | None = None, logits: bool = False,
                 hidden: bool = True, attention: AttentionImpl = "auto") -> Forward:
        """Run the model on right-padded ``tokens [batch, seq]`` with true ``lengths [batch]``.

        Args:
          probes: per-layer reductions to return (:mod:`jaxdiag.probes`), e.g. ``DIAGNOSTICS_PROBE``.
          query: the rows probes read: ``"last"`` (each prompt's last real token) or ``"all"``
            (every position; padded positions see no key, so row-wise probes give NaN there).
          edit: head-output interventions (:mod:`jaxdiag.models.edits`).
          logits: also compute the LM head.
          hidden: compute the final hidden states. With ``hidden=False``, ``logits=False`` and
            ``query="last"``, the pass ends at the last layer's probes, and a family whose last
            block can probe its rows alone (``probe_rows``) projects only the keys and the probed
            rows' queries there, unless a probe reads head outputs.
          attention: ``"direct"`` forms each layer's ``[b, h, q, k]`` scores; ``"streaming"``
            visits keys in blocks with O(b h q) memory (:mod:`jaxdiag.probes.streaming`);
            ``"auto"`` (default) picks streaming for long prompts or large score tensors unless a
            probe needs the pattern. Both give the same values to float32 rounding.
        """
        ctx = self.context(tokens, lengths, probes=probes, query=query, edit=edit, attention=attention)
        probes_only = not (hidden or logits)
        blocks = self.blocks()
        # The last layer's output feeds only the final norm: a probes-only pass of the last rows
        # reads its attention alone.
        rows_only = (probes_only and query == "last" and not any(p.reads_outputs for p in ctx.probes)
                     and hasattr(blocks[-1], "probe_rows"))
        x = self.embed(tokens)
        per_layer = []
        for i, block in enumerate(blocks):
            if rows_only and i == len(blocks) - 1:
                per_layer.append(block.probe_rows(x, ctx, i))
                break
            x, probed = block(x, ctx, i)
            per_layer.append(probed)
        if probes_only:
            return Forward(None, None, stack_layers(per_layer))
        final = self.final(x)
        return Forward(final if hidden else None, self.unembed(final) if logits else None, stack_layers(per_layer))

    def final_norm(self) -> nnx.Module:
        """The norm :meth:`final` applies (an ``nnx.LayerNorm`` or an RMSNorm with ``eps`` / ``unit_offset``)."""
        raise NotImplementedError

    def unembed_rows(self, ids: jax.Array) -> jax.Array:
        """The unembedding's rows of token ``ids`` ``[...]``: ``[..., d_model]`` float32 (no logit bias in any family)."""
        raise NotImplementedError

    def cap_logits(self, logits: jax.Array) -> jax.Array:
        """What the model does to raw logits after the unembedding (identity; Gemma 2 soft-caps them)."""
        return logits

    def _precision(self, config, precision: Precision) -> tuple[jnp.dtype, jax.lax.Precision]:
        """Record ``config`` and the precision on the model; the compute dtype and matmul precision."""
        dtype, matmul_precision = precision_settings(precision)
        self.config = config
        self.precision_name = precision
        self.matmul_precision = matmul_precision
        return dtype, matmul_precision

    def context(self, tokens: jax.Array, lengths: jax.Array, *, probes: Sequence[Probe] = (),
                query: QueryMode = "last", edit: HeadEdit | None = None,
                attention: AttentionImpl = "auto") -> Context:
        """Masks, probed rows and the attention path for a batch (arguments as for ``__call__``)."""
        return make_context(tokens, lengths, mask=self.mask, window=self.window, n_positions=self.config.n_positions,
                            n_head=self.config.n_head, probes=probes, query=query, edit=edit, attention=attention,
                            family=self.family)


def graddrop(update: jax.Array, drop: jax.Array | None) -> jax.Array:
    """``update`` with its gradient scaled by ``1 - drop`` and its value unchanged
    (``u - d (u - stop_gradient(u))`` is ``u``): GradDrop's cut of a residual update."""
    if drop is None:
        return update
    return update - drop * (update - jax.lax.stop_gradient(update))


def require_causal_effects(family: "Family | type[Family]", what: str = "causal effects and attribution patching",
                           config: Any = None) -> None:
    """A one-line error when ``family`` (a model, or its class and ``config``) cannot measure ``what``."""
    cls = family if isinstance(family, type) else type(family)
    reason = cls.effects_reason(config if isinstance(family, type) else family.config)
    if reason is not None:
        raise JaxdiagError(f"{what} need a task metric from the model's logits; {family.family!r}: {reason}")


class Block(nnx.Module):
    """A block's forward as the composition of the interface's parts (this module's docstring)."""

    def __call__(self, x: jax.Array, ctx: Context, layer: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        heads, probed = self.attention_heads(x, ctx, layer)
        return self.resume(self.carry(x, self.project(heads))), probed

    def attention_heads(self, x: jax.Array, ctx: Context, layer: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        raise NotImplementedError

    def project(self, heads: jax.Array) -> jax.Array:
        raise NotImplementedError

    def out_weights(self) -> jax.Array:
        raise NotImplementedError

    def carry(self, x: jax.Array, attn_out: jax.Array) -> Any:
        """Sequential residual: the stream after the attention part, ``x + attn_out``."""
        return x + attn_out

    def resume(self, carry: Any, shift: jax.Array | None = None, drop: jax.Array | None = None) -> jax.Array:
        raise NotImplementedError

    def attention_gain(self, attn_out: jax.Array) -> jax.Array | None:
        """The attention output joins the residual as ``gain * attn_out`` with a normalising norm's scale
        frozen at ``attn_out`` (``[b, s, d_model]``); ``None``: it joins unnormalised."""
        return None


def tied_unembed(hidden: jax.Array, embed: nnx.Embed) -> jax.Array:
    """Float32 logits of ``hidden [..., d_model]`` through an LM head tied to ``embed``."""
    return jnp.einsum("...e,ve->...v", hidden, embed.embedding[...].astype(hidden.dtype),
                      preferred_element_type=jnp.float32)


def linear_heads(linear: nnx.Linear, heads: jax.Array) -> jax.Array:
    """An output projection of ``heads [b, s, h, d]`` (flattened to ``[b, s, h d]``)."""
    batch, seq = heads.shape[:2]
    return linear(heads.reshape(batch, seq, -1))


def head_rows(linear: nnx.Linear, n_head: int) -> jax.Array:
    """Each head's rows of an output projection's ``[h d, d_model]`` kernel: ``[h, d, d_model]``."""
    kernel = linear.kernel[...]
    return kernel.reshape(n_head, kernel.shape[0] // n_head, kernel.shape[1])


def norm_gain(norm: nnx.Module, x: jax.Array) -> tuple[jax.Array, jax.Array | None, bool]:
    """A norm at ``x [..., d]`` with its scale frozen, as an affine map: ``(gain [..., d], bias [d] or None,
    centred)`` with ``norm(y) ~ gain * (y - centred * mean(y)) + bias`` for ``y`` near ``x`` (exact at ``x``):
    LayerNorm's ``gamma / sigma(x)``, RMSNorm's ``gamma / rms(x)`` (Gemma's ``1 + gamma``), in float32."""
    x32 = x.astype(jnp.float32)
    if isinstance(norm, nnx.LayerNorm):
        variance = jnp.mean(jnp.square(x32 - jnp.mean(x32, axis=-1, keepdims=True)), axis=-1, keepdims=True)
        scale = 1.0 if norm.scale is None else norm.scale[...].astype(jnp.float32)
        bias = None if norm.bias is None else norm.bias[...].astype(jnp.float32)
        return scale * jax.lax.rsqrt(variance + norm.epsilon), bias, True
    weight = norm.scale[...].astype(jnp.float32)
    weight = 1.0 + weight if norm.unit_offset else weight
    return weight * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + norm.eps), None, False
