"""GPT-2 in Flax NNX, with attention diagnostics reduced inside the forward pass.

Module and parameter names follow the Hugging Face checkpoint (``h.3.attn.c_attn`` ...), so loading
is a rename of ``weight`` to ``kernel``/``scale``/``embedding`` and nothing else. Linear kernels are
stored ``[in, out]`` exactly as HF's ``Conv1D`` stores them.

Each layer hands its scores to :func:`jaxdiag.diagnostics.attention_diagnostics` for the chosen
query rows and keeps only the reduced ``[batch, head, query]`` values: a layer's full
``[batch, head, query, key]`` pattern lives only while that layer runs (unless a caller asks for it
with ``return_attention=True``, which the parity tests do on small inputs).

Prompts are right-padded: prompt ``b`` occupies positions ``0 .. lengths[b]-1``, so position ids
need no shifting, and keys at or beyond ``lengths[b]`` are masked out exactly.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiag.config import GPT2Config
from jaxdiag.diagnostics import attention_diagnostics
from jaxdiag.errors import JaxdiagError
from jaxdiag.schema import PRECISIONS, Precision, QueryMode
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
        self.n_head = config.n_head
        self.d_head = config.d_head
        self.precision = precision
        scale = 1.0 / math.sqrt(config.d_head) if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        self.scale = scale
        self.c_attn = _linear(config.n_embd, 3 * config.n_embd, dtype, precision, rngs)
        self.c_proj = _linear(config.n_embd, config.n_embd, dtype, precision, rngs)

    def __call__(
        self,
        x: jax.Array,
        visible: jax.Array,
        diag_rows: jax.Array | None,
        diag_visible: jax.Array | None,
        head_scale: jax.Array | None = None,
        head_replacement: jax.Array | None = None,
        *,
        lengths: jax.Array | None = None,
        impl: Literal["direct", "streaming"] = "direct",
        query: QueryMode | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array] | None, jax.Array | None]:
        batch, seq, width = x.shape
        q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
        q, k, v = (t.reshape(batch, seq, self.n_head, self.d_head) for t in (q, k, v))
        if impl == "streaming":
            return self._streaming(q, k, v, lengths, diag_rows, diag_visible, query, head_scale, head_replacement)
        scores = jnp.einsum(
            "bqhd,bkhd->bhqk", q, k, precision=self.precision, preferred_element_type=jnp.float32
        ) * jnp.float32(self.scale)
        # finfo.min rather than -inf, as transformers does: a row stays finite even if fully masked.
        probs = jax.nn.softmax(jnp.where(visible, scores, jnp.finfo(jnp.float32).min), axis=-1)
        heads = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v, precision=self.precision)
        out = self._project(heads, head_scale, head_replacement)

        diagnostics = None
        if diag_rows is not None:
            # [batch, 1, n_rows, 1] indices pick each prompt's query rows out of [b, h, q, k].
            rows = jnp.take_along_axis(scores, diag_rows[:, None, :, None], axis=2)
            diagnostics = attention_diagnostics(rows, diag_visible)
        return out, diagnostics, probs

    def _project(self, heads: jax.Array, head_scale: jax.Array | None, head_replacement: jax.Array | None) -> jax.Array:
        """Per-head ablation (if asked), then the output projection, from ``heads [b, q, h, d]``."""
        batch, seq = heads.shape[:2]
        if head_scale is not None:
            # Ablation: head h's output becomes scale * output + (1 - scale) * replacement.
            heads = heads * head_scale[:, None].astype(heads.dtype)
            if head_replacement is not None:
                heads = heads + ((1 - head_scale)[:, None] * head_replacement).astype(heads.dtype)
        return self.c_proj(heads.reshape(batch, seq, self.n_head * self.d_head))

    def _streaming(self, q, k, v, lengths, diag_rows, diag_visible, query, head_scale, head_replacement):
        """Blockwise attention (O(b h q) memory); the ``[b, h, q, k]`` pattern is never formed."""
        heads, diagnostics = streaming_attention(
            q, k, v, lengths, scale=self.scale, precision=self.precision, diagnostics=query == "all"
        )
        if query == "last":
            # Only one row per prompt: its scores against every key are O(b h k), formed directly.
            q_rows = jnp.take_along_axis(q, diag_rows[:, :, None, None], axis=1)
            rows = jnp.einsum(
                "brhd,bkhd->bhrk", q_rows, k, precision=self.precision, preferred_element_type=jnp.float32
            ) * jnp.float32(self.scale)
            diagnostics = attention_diagnostics(rows, diag_visible)
        return self._project(heads, head_scale, head_replacement), diagnostics, None


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

    def __call__(self, x, visible, diag_rows, diag_visible, head_scale=None, head_replacement=None, **attention):
        attn_out, diagnostics, probs = self.attn(
            self.ln_1(x), visible, diag_rows, diag_visible, head_scale, head_replacement, **attention
        )
        x = x + attn_out
        x = x + self.mlp(self.ln_2(x))
        return x, diagnostics, probs


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
        query: QueryMode | None = "last",
        return_logits: bool = False,
        return_attention: bool = False,
        head_scale: jax.Array | None = None,
        head_replacement: jax.Array | None = None,
        attention: AttentionImpl = "auto",
    ) -> dict[str, jax.Array | dict[str, jax.Array]]:
        """Run the model on right-padded ``tokens [batch, seq]`` with true ``lengths [batch]``.

        Args:
          query: which query rows to diagnose: ``"last"`` (each prompt's last real token),
            ``"all"`` (every position; padded positions give NaN) or ``None`` (no diagnostics).
          return_logits: also compute the tied LM head.
          return_attention: also return every layer's probabilities ``[layer, b, h, q, k]``
            (materialises them all: for tests and small inputs only).
          head_scale, head_replacement: per-head ablation, shapes ``[layer, head]`` and
            ``[layer, head, d_head]``: each head's output becomes
            ``scale * output + (1 - scale) * replacement`` (0 and zeros = zero-ablation).
          attention: ``"direct"`` forms each layer's ``[b, h, q, k]`` scores; ``"streaming"``
            visits keys in blocks with O(b h q) memory (:mod:`jaxdiag.streaming`); ``"auto"``
            (default) picks streaming for long prompts or large score tensors. Both give the
            same values to float32 rounding. ``return_attention`` needs the direct path.

        Returns:
          ``hidden`` (after ``ln_f``, ``[b, seq, n_embd]``), ``diagnostics`` (name ->
          ``[b, layer, head]`` for ``last``, ``[b, layer, head, seq]`` for ``all``), and
          ``logits`` / ``attention`` when asked for.
        """
        batch, seq = tokens.shape
        if seq > self.config.n_positions:
            raise JaxdiagError(f"sequence length {seq} exceeds the model's context window of {self.config.n_positions}")
        impl = choose_attention(attention, batch=batch, n_head=self.config.n_head, seq=seq)
        if return_attention:
            if attention == "streaming":
                raise JaxdiagError("return_attention=True needs attention='direct': streaming never forms the pattern")
            impl = "direct"
        positions = jnp.arange(seq)
        key_real = positions[None, :] < lengths[:, None]
        visible = (positions[None, :, None] >= positions[None, None, :]) & key_real[:, None, :]
        visible = visible[:, None]  # [b, 1, q, k]

        diag_rows = diag_visible = None
        if query == "last":
            diag_rows = (lengths - 1)[:, None]
            diag_visible = (positions[None, None, :] <= diag_rows[:, :, None])[:, None]  # [b, 1, 1, k]
        elif query == "all":
            diag_rows = jnp.broadcast_to(positions, (batch, seq))
            query_real = positions[None, :] < lengths[:, None]
            diag_visible = visible & query_real[:, None, :, None]
        elif query is not None:
            raise JaxdiagError(f"unknown query mode {query!r} (choose 'last' or 'all')")

        x = self.wte(tokens) + self.wpe(positions)[None]
        per_layer: list[dict[str, jax.Array]] = []
        patterns = []
        for i, block in enumerate(self.h):
            scale_i = None if head_scale is None else head_scale[i]
            repl_i = None if head_replacement is None else head_replacement[i]
            x, diagnostics, probs = block(
                x, visible, diag_rows, diag_visible, scale_i, repl_i, lengths=lengths, impl=impl, query=query
            )
            if diagnostics is not None:
                per_layer.append(diagnostics)
            if return_attention:
                patterns.append(probs)
        hidden = self.ln_f(x)

        out: dict = {"hidden": hidden}
        if per_layer:
            stacked = {name: jnp.stack([d[name] for d in per_layer], axis=1) for name in per_layer[0]}
            if query == "last":
                stacked = {name: value[..., 0] for name, value in stacked.items()}
            out["diagnostics"] = stacked
        if return_logits:
            out["logits"] = jnp.einsum(
                "bse,ve->bsv", hidden, self.wte.embedding[...].astype(hidden.dtype),
                preferred_element_type=jnp.float32,
            )
        if return_attention:
            out["attention"] = jnp.stack(patterns)
        return out
