"""GPT-NeoX / Pythia in Flax NNX.

Pre-LayerNorm decoder with one fused ``query_key_value`` projection laid out per head as
``[head, (q, k, v), d_head]``; rotary embeddings on the first ``partial_rotary_factor`` of each
head's dimensions (Pythia: 25%); parallel residual by default, ``x + attn(ln1(x)) + mlp(ln2(x))``
(``use_parallel_residual=False``: the sequential GPT-2 order); an untied ``embed_out`` head.

Parameter names mirror HF's ``GPTNeoXForCausalLM`` without the ``gpt_neox.`` prefix.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiag.errors import JaxdiagError
from jaxdiag.models.attention import attend
from jaxdiag.models.edits import shifted
from jaxdiag.models.family import (ACTIVATIONS, Block as BlockInterface, Context, Family, WeightNames, graddrop,
                                   head_rows, linear_heads, tied_unembed)
from jaxdiag.models.rope import Rope, context_length, rope_settings, rotary
from jaxdiag.schema import Precision

@dataclasses.dataclass(frozen=True)
class NeoXConfig:
    vocab_size: int
    n_embd: int
    n_layer: int
    n_head: int
    d_mlp: int
    n_positions: int
    layer_norm_eps: float
    rope: Rope  # on the first rope.dims of each head (partial rotary)
    use_parallel_residual: bool
    attention_bias: bool
    tie_word_embeddings: bool
    hidden_act: str
    bos_token_id: int
    model_type: str = "gpt_neox"

    @property
    def d_head(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> "NeoXConfig":
        if raw.get("model_type") != "gpt_neox":
            raise JaxdiagError(f"{source}: model_type {raw.get('model_type')!r} is not 'gpt_neox'")
        act = raw.get("hidden_act", "gelu")
        if act not in ACTIVATIONS:
            raise JaxdiagError(f"{source}: hidden_act {act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
        d_head = raw["hidden_size"] // raw["num_attention_heads"]
        rope = rope_settings(raw, source=source, head_dim=d_head, default_fraction=0.25)
        bos = raw.get("bos_token_id")
        return cls(
            vocab_size=raw["vocab_size"], n_embd=raw["hidden_size"], n_layer=raw["num_hidden_layers"],
            n_head=raw["num_attention_heads"], d_mlp=raw["intermediate_size"],
            n_positions=context_length(rope, raw.get("max_position_embeddings", 2048)),
            layer_norm_eps=raw.get("layer_norm_eps", 1e-5), rope=rope,
            use_parallel_residual=bool(raw.get("use_parallel_residual", True)),
            attention_bias=bool(raw.get("attention_bias", True)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)), hidden_act=act,
            bos_token_id=bos if isinstance(bos, int) else 0,
        )


def _linear(n_in, n_out, bias, dtype, precision, rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, use_bias=bias, dtype=dtype, precision=precision, rngs=rngs,
                      kernel_init=nnx.initializers.normal(0.02))


def _layer_norm(config: NeoXConfig, dtype, rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(config.n_embd, epsilon=config.layer_norm_eps, dtype=dtype, use_fast_variance=False, rngs=rngs)


class Attention(nnx.Module):
    def __init__(self, config: NeoXConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.n_head, self.d_head = config.n_head, config.d_head
        self.rope = config.rope
        self.precision = precision
        self.query_key_value = _linear(config.n_embd, 3 * config.n_embd, config.attention_bias, dtype, precision, rngs)
        self.dense = _linear(config.n_embd, config.n_embd, config.attention_bias, dtype, precision, rngs)

    def __call__(self, x: jax.Array, ctx: Context, layer: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        batch, seq, _ = x.shape
        qkv = self.query_key_value(x).reshape(batch, seq, self.n_head, 3, self.d_head)
        positions = jnp.arange(seq)
        q = rotary(qkv[..., 0, :], positions, self.rope, ctx.lengths)
        k = rotary(qkv[..., 1, :], positions, self.rope, ctx.lengths)
        return attend(q, k, qkv[..., 2, :], ctx, layer, scale=1.0 / math.sqrt(self.d_head), precision=self.precision)


class MLP(nnx.Module):
    def __init__(self, config: NeoXConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.dense_h_to_4h = _linear(config.n_embd, config.d_mlp, True, dtype, precision, rngs)
        self.dense_4h_to_h = _linear(config.d_mlp, config.n_embd, True, dtype, precision, rngs)
        self.act = config.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dense_4h_to_h(ACTIVATIONS[self.act](self.dense_h_to_4h(x)))


class Block(BlockInterface):
    """Parallel residual ``x + attn(ln1(x)) + mlp(ln2(x))``: the MLP reads the block input, so an
    edit of the attention output leaves it unchanged and it is carried; sequential otherwise."""

    def __init__(self, config: NeoXConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.n_head = config.n_head
        self.parallel = config.use_parallel_residual
        self.input_layernorm = _layer_norm(config, dtype, rngs)
        self.post_attention_layernorm = _layer_norm(config, dtype, rngs)
        self.attention = Attention(config, dtype=dtype, precision=precision, rngs=rngs)
        self.mlp = MLP(config, dtype=dtype, precision=precision, rngs=rngs)

    def attention_heads(self, x: jax.Array, ctx: Context, layer: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        return self.attention(self.input_layernorm(x), ctx, layer)

    def project(self, heads: jax.Array) -> jax.Array:
        return linear_heads(self.attention.dense, heads)

    def out_weights(self) -> jax.Array:
        return head_rows(self.attention.dense, self.n_head)

    def carry(self, x: jax.Array, attn_out: jax.Array):
        if self.parallel:
            return self.mlp(self.post_attention_layernorm(x)), attn_out, x
        return attn_out + x

    def resume(self, carry, shift: jax.Array | None = None, drop: jax.Array | None = None) -> jax.Array:
        if self.parallel:  # HF sums mlp + attn + x in that order
            mlp_out, attn_out, x = carry
            return graddrop(mlp_out, drop) + shifted(attn_out, shift) + x
        x = shifted(carry, shift)
        return graddrop(self.mlp(self.post_attention_layernorm(x)), drop) + x



class NeoX(Family):
    """GPT-NeoX trunk with its untied ``embed_out`` head (tied to ``embed_in`` if the config says so)."""

    family = "gpt_neox"
    mask = "causal"

    def __init__(self, config: NeoXConfig, *, precision: Precision = "highest", rngs: nnx.Rngs):
        dtype, matmul_precision = self._precision(config, precision)
        self.embed_in = nnx.Embed(config.vocab_size, config.n_embd, dtype=dtype, rngs=rngs,
                                  embedding_init=nnx.initializers.normal(0.02))
        self.layers = nnx.List([Block(config, dtype=dtype, precision=matmul_precision, rngs=rngs)
                                for _ in range(config.n_layer)])
        self.final_layer_norm = _layer_norm(config, dtype, rngs)
        if not config.tie_word_embeddings:
            self.embed_out = _linear(config.n_embd, config.vocab_size, False, dtype, matmul_precision, rngs)

    def embed(self, tokens: jax.Array) -> jax.Array:
        return self.embed_in(tokens)

    def blocks(self):
        return list(self.layers)

    def final(self, x: jax.Array) -> jax.Array:
        return self.final_layer_norm(x)

    def final_norm(self) -> nnx.LayerNorm:
        return self.final_layer_norm

    def unembed_rows(self, ids: jax.Array) -> jax.Array:
        if self.config.tie_word_embeddings:
            return self.embed_in.embedding[...][ids].astype(jnp.float32)
        return jnp.moveaxis(self.embed_out.kernel[...][:, ids], 0, -1).astype(jnp.float32)

    def unembed(self, hidden: jax.Array) -> jax.Array:
        if self.config.tie_word_embeddings:
            return tied_unembed(hidden, self.embed_in)
        return self.embed_out(hidden).astype(jnp.float32)


# How HF names map to ours: strip the prefix, drop the mask and rotary buffers; an embed_out tied to
# embed_in may be stored anyway.
WEIGHT_NAMES = WeightNames(prefixes=("gpt_neox.",),
                           ignored=(".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq"),
                           tied_heads=("embed_out.weight",))
