"""GPT-2 in Flax NNX: the forward pass, with probes that read each layer's attention and edits of heads.

Module and parameter names follow the Hugging Face checkpoint (``h.3.attn.c_attn`` ...), so loading
is a rename of ``weight`` to ``kernel``/``scale``/``embedding`` and nothing else. Linear kernels are
stored ``[in, out]`` exactly as HF's ``Conv1D`` stores them.

Two extension points, both pure data passed to ``GPT2.__call__``:

- probes (:mod:`jaxdiag.probes`) read a layer's scores, weights and head outputs for the chosen
  query rows and return reductions (the attention diagnostics are one probe); a layer's full
  ``[batch, head, query, key]`` pattern lives only while that layer runs;
- an edit (:mod:`jaxdiag.interventions`) replaces heads' outputs before the output projection
  (zero-, mean-ablation, patching from another run).

Prompts are right-padded: prompt ``b`` occupies positions ``0 .. lengths[b]-1``, so position ids
need no shifting, and keys at or beyond ``lengths[b]`` are masked out exactly.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiag.config import GPT2Config
from jaxdiag.errors import JaxdiagError
from jaxdiag.interventions import HeadEdit, apply_edit
from jaxdiag.models.attention import Context, Forward, direct_attention
from jaxdiag.probes import AttentionView, Probe, read_probes, stack_layers  # noqa: F401
from jaxdiag.schema import PRECISIONS, QUERIES, Precision, QueryMode
from jaxdiag.streaming import streaming_attention

AttentionImpl = Literal["auto", "direct", "streaming"]
ATTENTION_IMPLS: tuple[str, ...] = ("auto", "direct", "streaming")
# "auto" streams (jaxdiag.streaming) when one layer's [batch, head, query, key] float32 scores would
# exceed this many bytes, or the prompts are at least STREAMING_MIN_SEQ long, where the quadratic
# scores dominate memory (direct vs streaming speed and memory: benchmarks/RESULTS.md).
STREAMING_SCORE_BYTES = 256 * 2**20
STREAMING_MIN_SEQ = 512


def choose_attention(impl: AttentionImpl, *, batch: int, n_head: int, seq: int) -> Literal["direct", "streaming"]:
    """Resolve ``"auto"`` from the (static) shapes: direct for short prompts, streaming for long ones."""
    if impl not in ATTENTION_IMPLS:
        raise JaxdiagError(f"unknown attention implementation {impl!r} (choose from {', '.join(ATTENTION_IMPLS)})")
    if impl != "auto":
        return impl
    score_bytes = 4 * batch * n_head * seq * seq
    return "streaming" if score_bytes > STREAMING_SCORE_BYTES or seq >= STREAMING_MIN_SEQ else "direct"


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


_ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def _linear(n_in: int, n_out: int, dtype, precision, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        n_in, n_out, dtype=dtype, precision=precision, rngs=rngs,
        kernel_init=nnx.initializers.normal(0.02),
    )


def _layer_norm(config: GPT2Config, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # use_fast_variance=False: E[(x - mean)^2], as torch computes it, not E[x^2] - mean^2.
    return nnx.LayerNorm(
        config.n_embd, epsilon=config.layer_norm_epsilon, dtype=dtype, use_fast_variance=False, rngs=rngs
    )


class Attention(nnx.Module):
    def __init__(self, config: GPT2Config, layer_idx: int, *, dtype, precision, rngs: nnx.Rngs):
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.d_head = config.d_head
        self.precision = precision
        scale = 1.0 / math.sqrt(config.d_head) if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        self.scale = scale
        self.c_attn = _linear(config.n_embd, 3 * config.n_embd, dtype, precision, rngs)
        self.c_proj = _linear(config.n_embd, config.n_embd, dtype, precision, rngs)

    def __call__(self, x: jax.Array, ctx: Context) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The layer's attention output and its probes' arrays (``{}`` when no probe is asked for)."""
        batch, seq, _ = x.shape
        q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
        q, k, v = (t.reshape(batch, seq, self.n_head, self.d_head) for t in (q, k, v))
        if ctx.impl == "streaming":
            heads, view = self._streaming(q, k, v, ctx)
        else:
            heads, view = self._direct(q, k, v, ctx)
        probed = read_probes(ctx.probes, view) if ctx.probes else {}
        if ctx.edit is not None:
            heads = apply_edit(heads, *ctx.edit.layer(self.layer_idx))
        return self.c_proj(heads.reshape(batch, seq, self.n_head * self.d_head)), probed

    def _scores(self, q: jax.Array, k: jax.Array) -> jax.Array:
        return jnp.einsum(
            "bqhd,bkhd->bhqk", q, k, precision=self.precision, preferred_element_type=jnp.float32
        ) * jnp.float32(self.scale)

    def _direct(self, q, k, v, ctx: Context) -> tuple[jax.Array, AttentionView | None]:
        """Attention that forms the layer's ``[b, h, q, k]`` scores (the core all families share)."""
        return direct_attention(q, k, v, ctx, self.layer_idx, scale=self.scale, precision=self.precision)

    def probe_rows(self, x: jax.Array, ctx: Context) -> dict[str, jax.Array]:
        """The probes of ``ctx.rows`` alone, when nothing reads this layer's output (the last layer of
        a diagnostics-only pass with ``query="last"``): the keys of every position and the probed
        rows' queries are projected, never the values, the other rows' queries or the output."""
        batch, seq, _ = x.shape
        width = self.n_head * self.d_head
        q = _columns(self.c_attn, jnp.take_along_axis(x, ctx.rows[:, :, None], axis=1), 0, width)
        k = _columns(self.c_attn, x, width, 2 * width)
        scores, probs = self._row_attention(q.reshape(batch, -1, self.n_head, self.d_head),
                                            k.reshape(batch, seq, self.n_head, self.d_head), ctx)
        return read_probes(ctx.probes, ctx.view(self.layer_idx, None, scores=scores, probs=probs))

    def _row_attention(self, q_rows: jax.Array, k: jax.Array, ctx: Context) -> tuple[jax.Array, jax.Array]:
        """Scores and weights ``[b, h, r, k]`` of the probed rows' queries ``[b, r, h, d]`` alone."""
        rows = jnp.einsum(
            "brhd,bkhd->bhrk", q_rows, k, precision=self.precision, preferred_element_type=jnp.float32
        ) * jnp.float32(self.scale)
        return rows, jax.nn.softmax(jnp.where(ctx.row_visible, rows, jnp.finfo(jnp.float32).min), axis=-1)

    def _streaming(self, q, k, v, ctx: Context) -> tuple[jax.Array, AttentionView | None]:
        """Blockwise attention (O(b h q) memory); the ``[b, h, q, k]`` pattern is never formed."""
        all_rows = bool(ctx.probes) and ctx.query == "all"
        heads, stats = streaming_attention(
            q, k, v, ctx.lengths, scale=self.scale, precision=self.precision, row_stats=all_rows,
            tokens=ctx.tokens if all_rows else None,
        )
        if not ctx.probes:
            return heads, None
        if ctx.query == "all":
            return heads, ctx.view(self.layer_idx, heads, row_stats=stats)
        # Only one row per prompt: its scores against every key are O(b h k), formed directly.
        rows, probs = self._row_attention(jnp.take_along_axis(q, ctx.rows[:, :, None, None], axis=1), k, ctx)
        return heads, ctx.view(self.layer_idx, heads, scores=rows, probs=probs)


def _columns(linear: nnx.Linear, x: jax.Array, start: int, stop: int) -> jax.Array:
    """``linear(x)[..., start:stop]`` computed from those output columns alone, as ``nnx.Linear`` does."""
    x, kernel, bias = linear.promote_dtype((x, linear.kernel[..., start:stop], linear.bias[start:stop]),
                                           dtype=linear.dtype)
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=linear.precision)
    return y + bias


class MLP(nnx.Module):
    def __init__(self, config: GPT2Config, *, dtype, precision, rngs: nnx.Rngs):
        self.c_fc = _linear(config.n_embd, config.d_mlp, dtype, precision, rngs)
        self.c_proj = _linear(config.d_mlp, config.n_embd, dtype, precision, rngs)
        self.activation = config.activation_function

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(_ACTIVATIONS[self.activation](self.c_fc(x)))


class Block(nnx.Module):
    def __init__(self, config: GPT2Config, layer_idx: int, *, dtype, precision, rngs: nnx.Rngs):
        self.ln_1 = _layer_norm(config, dtype, rngs)
        self.attn = Attention(config, layer_idx, dtype=dtype, precision=precision, rngs=rngs)
        self.ln_2 = _layer_norm(config, dtype, rngs)
        self.mlp = MLP(config, dtype=dtype, precision=precision, rngs=rngs)

    def __call__(self, x: jax.Array, ctx: Context) -> tuple[jax.Array, dict[str, jax.Array]]:
        attn_out, probed = self.attn(self.ln_1(x), ctx)
        return self.feed_forward(x + attn_out), probed

    def feed_forward(self, x: jax.Array) -> jax.Array:
        """The MLP's residual update, from the residual stream after this layer's attention."""
        return x + self.mlp(self.ln_2(x))


class GPT2(nnx.Module):
    """GPT-2 trunk (``transformer.*`` in HF) with the LM head tied to ``wte``, computed on request."""

    def __init__(self, config: GPT2Config, *, precision: Precision = "highest", rngs: nnx.Rngs):
        dtype, matmul_precision = precision_settings(precision)
        self.config = config
        self.precision_name = precision
        self.wte = nnx.Embed(config.vocab_size, config.n_embd, dtype=dtype, rngs=rngs,
                             embedding_init=nnx.initializers.normal(0.02))
        self.wpe = nnx.Embed(config.n_positions, config.n_embd, dtype=dtype, rngs=rngs,
                             embedding_init=nnx.initializers.normal(0.01))
        self.h = nnx.List(
            [Block(config, i, dtype=dtype, precision=matmul_precision, rngs=rngs) for i in range(config.n_layer)]
        )
        self.ln_f = _layer_norm(config, dtype, rngs)

    def __call__(
        self,
        tokens: jax.Array,
        lengths: jax.Array,
        *,
        probes: Sequence[Probe] = (),
        query: QueryMode = "last",
        edit: HeadEdit | None = None,
        logits: bool = False,
        hidden: bool = True,
        attention: AttentionImpl = "auto",
    ) -> Forward:
        """Run the model on right-padded ``tokens [batch, seq]`` with true ``lengths [batch]``.

        Args:
          probes: per-layer reductions to return (:mod:`jaxdiag.probes`), e.g. ``DIAGNOSTICS_PROBE``.
          query: the rows probes read: ``"last"`` (each prompt's last real token) or ``"all"``
            (every position; padded positions see no key, so row-wise probes give NaN there).
          edit: head-output interventions (:mod:`jaxdiag.interventions`).
          logits: also compute the tied LM head.
          hidden: compute the final hidden states. With ``hidden=False``, ``logits=False`` and
            ``query="last"``, the pass ends at the last layer's probes and that layer projects
            only the keys and the probed rows' queries (its values, output projection and MLP,
            and ``ln_f``, feed nothing the probes read), unless a probe reads head outputs.
          attention: ``"direct"`` forms each layer's ``[b, h, q, k]`` scores; ``"streaming"``
            visits keys in blocks with O(b h q) memory (:mod:`jaxdiag.streaming`); ``"auto"``
            (default) picks streaming for long prompts or large score tensors unless a probe
            needs the pattern. Both give the same values to float32 rounding.
        """
        ctx = self.context(tokens, lengths, probes=probes, query=query, edit=edit, attention=attention)
        probes_only = not (hidden or logits)
        # The last layer's output feeds only ln_f: a probes-only pass of the last rows reads its attention alone.
        rows_only = probes_only and query == "last" and not any(p.reads_outputs for p in ctx.probes)
        x = self.embed(tokens)
        per_layer = []
        for i, block in enumerate(self.h):
            if rows_only and i == len(self.h) - 1:
                per_layer.append(block.attn.probe_rows(block.ln_1(x), ctx))
                break
            x, probed = block(x, ctx)
            per_layer.append(probed)
        if probes_only:
            return Forward(None, None, stack_layers(per_layer))
        final = self.ln_f(x)
        return Forward(final if hidden else None, self.unembed(final) if logits else None, stack_layers(per_layer))

    def context(self, tokens: jax.Array, lengths: jax.Array, *, probes: Sequence[Probe] = (),
                query: QueryMode = "last", edit: HeadEdit | None = None,
                attention: AttentionImpl = "auto") -> Context:
        """Masks, probed rows and the attention path for a batch (arguments as for ``__call__``)."""
        batch, seq = tokens.shape
        if seq > self.config.n_positions:
            raise JaxdiagError(f"sequence length {seq} exceeds the model's context window of {self.config.n_positions}")
        if query not in QUERIES:
            raise JaxdiagError(f"unknown query mode {query!r} (choose 'last' or 'all')")
        probes = tuple(probes)
        impl = choose_attention(attention, batch=batch, n_head=self.config.n_head, seq=seq)
        pattern_probes = [p.name for p in probes if not p.streams]
        if pattern_probes and query == "all" and impl == "streaming":
            if attention == "streaming":
                raise JaxdiagError(f"probe {pattern_probes[0]!r} needs attention='direct': "
                                   "the streaming path never forms the pattern")
            impl = "direct"
        positions = jnp.arange(seq)
        key_real = positions[None, :] < lengths[:, None]
        visible = (positions[None, :, None] >= positions[None, None, :]) & key_real[:, None, :]
        visible = visible[:, None]  # [b, 1, q, k]
        if query == "last":
            rows = (lengths - 1)[:, None]
            row_visible = (positions[None, None, :] <= rows[:, :, None])[:, None]  # [b, 1, 1, k]
        else:
            rows = jnp.broadcast_to(positions, (batch, seq))
            row_visible = visible & key_real[:, None, :, None]  # padded query rows see nothing
        return Context(impl, query, probes, edit, tokens, lengths, visible, rows, row_visible)

    def embed(self, tokens: jax.Array) -> jax.Array:
        """The residual stream entering layer 0: token plus position embeddings ``[b, seq, n_embd]``."""
        return self.wte(tokens) + self.wpe(jnp.arange(tokens.shape[1]))[None]

    def unembed(self, hidden: jax.Array) -> jax.Array:
        """Float32 logits ``[..., vocab]`` of final hidden states ``[..., n_embd]`` (LM head tied to ``wte``)."""
        return jnp.einsum("...e,ve->...v", hidden, self.wte.embedding[...].astype(hidden.dtype),
                          preferred_element_type=jnp.float32)
