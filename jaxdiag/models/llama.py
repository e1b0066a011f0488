"""The Llama family in Flax NNX: Llama, Qwen2 (q/k/v biases) and Mistral (sliding window).

Pre-norm decoder: ``x += o_proj(attn(rms(x)))``, ``x += down(silu(gate(rms(x))) * up(rms(x)))``;
rotary embeddings on q and k; grouped-query attention (``num_key_value_heads`` key/value heads,
each read by a group of query heads: the diagnostics are per query head). Mistral's sliding
window w lets query t see keys t-w+1 .. t, and the diagnostics' n is that count.

Parameter names mirror HF's ``LlamaForCausalLM`` without the ``model.`` prefix
(``layers.3.self_attn.q_proj``, ``layers.3.mlp.gate_proj``, ``norm``, ``lm_head``); HF stores
``nn.Linear`` weights ``[out, in]``, the loader transposes them to ``[in, out]`` kernels.
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
from jaxdiag.models.family import (Block as BlockInterface, Context, Family, WeightNames, graddrop, head_rows,
                                   linear_heads, tied_unembed)
from jaxdiag.models.rope import rope_settings, rotary
from jaxdiag.schema import Precision

MODEL_TYPES = ("llama", "qwen2", "mistral")
ACTIVATIONS = {"silu": jax.nn.silu, "swish": jax.nn.silu}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    model_type: str
    vocab_size: int
    n_embd: int
    n_layer: int
    n_head: int
    n_kv_head: int
    d_head: int
    d_mlp: int
    n_positions: int
    rms_norm_eps: float
    rope_theta: float
    qkv_bias: bool  # Qwen2 (and Llama's attention_bias): biases on q, k, v
    o_bias: bool  # Llama's attention_bias also biases o_proj
    mlp_bias: bool
    sliding_window: int | None
    tie_word_embeddings: bool
    bos_token_id: int
    hidden_act: str = "silu"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> "LlamaConfig":
        model_type = raw.get("model_type")
        if model_type not in MODEL_TYPES:
            raise JaxdiagError(f"{source}: model_type {model_type!r} is not a Llama-family type ({', '.join(MODEL_TYPES)})")
        act = raw.get("hidden_act", "silu")
        if act not in ACTIVATIONS:
            raise JaxdiagError(f"{source}: hidden_act {act!r} is not supported (supported: silu)")
        theta, fraction = rope_settings(raw, source=source)
        if fraction != 1.0:
            raise JaxdiagError(f"{source}: partial rotary embeddings are not supported for {model_type}")
        n_head = raw["num_attention_heads"]
        n_kv = raw.get("num_key_value_heads") or n_head
        if n_head % n_kv:
            raise JaxdiagError(f"{source}: num_attention_heads={n_head} is not a multiple of num_key_value_heads={n_kv}")
        window = None
        if model_type == "mistral":
            window = raw.get("sliding_window")
        elif model_type == "qwen2" and raw.get("use_sliding_window"):
            raise JaxdiagError(f"{source}: Qwen2's per-layer sliding window (use_sliding_window) is not supported")
        if raw.get("layer_types") and any(t != "full_attention" for t in raw["layer_types"]) and model_type != "mistral":
            raise JaxdiagError(f"{source}: per-layer attention types {sorted(set(raw['layer_types']))} are not supported")
        if raw.get("pretraining_tp", 1) not in (1, None):
            raise JaxdiagError(f"{source}: pretraining_tp > 1 is not supported")
        attention_bias = bool(raw.get("attention_bias", False))
        bos = raw.get("bos_token_id")
        return cls(
            model_type=model_type, vocab_size=raw["vocab_size"], n_embd=raw["hidden_size"],
            n_layer=raw["num_hidden_layers"], n_head=n_head, n_kv_head=n_kv,
            d_head=raw.get("head_dim") or raw["hidden_size"] // n_head, d_mlp=raw["intermediate_size"],
            n_positions=raw.get("max_position_embeddings", 2048), rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=theta, qkv_bias=model_type == "qwen2" or attention_bias, o_bias=attention_bias,
            mlp_bias=bool(raw.get("mlp_bias", False)), sliding_window=window,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            bos_token_id=bos if isinstance(bos, int) else 0, hidden_act=act,
        )


def _linear(n_in, n_out, bias, dtype, precision, rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, use_bias=bias, dtype=dtype, precision=precision, rngs=rngs,
                      kernel_init=nnx.initializers.normal(0.02))


class RMSNorm(nnx.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, computed in float32 as transformers does."""

    def __init__(self, dim: int, eps: float, *, dtype, rngs: nnx.Rngs):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (self.scale[...].astype(self.dtype) * normed.astype(self.dtype))


class Attention(nnx.Module):
    def __init__(self, config: LlamaConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.n_head, self.n_kv_head, self.d_head = config.n_head, config.n_kv_head, config.d_head
        self.theta = config.rope_theta
        self.precision = precision
        e = config.n_embd
        self.q_proj = _linear(e, config.n_head * config.d_head, config.qkv_bias, dtype, precision, rngs)
        self.k_proj = _linear(e, config.n_kv_head * config.d_head, config.qkv_bias, dtype, precision, rngs)
        self.v_proj = _linear(e, config.n_kv_head * config.d_head, config.qkv_bias, dtype, precision, rngs)
        self.o_proj = _linear(config.n_head * config.d_head, e, config.o_bias, dtype, precision, rngs)

    def __call__(self, x: jax.Array, ctx: Context, layer: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        batch, seq, _ = x.shape
        positions = jnp.arange(seq)
        q = rotary(self.q_proj(x).reshape(batch, seq, self.n_head, self.d_head), positions,
                   dims=self.d_head, theta=self.theta)
        k = rotary(self.k_proj(x).reshape(batch, seq, self.n_kv_head, self.d_head), positions,
                   dims=self.d_head, theta=self.theta)
        v = self.v_proj(x).reshape(batch, seq, self.n_kv_head, self.d_head)
        return attend(q, k, v, ctx, layer, scale=1.0 / math.sqrt(self.d_head), precision=self.precision)


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: LlamaConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.gate_proj = _linear(config.n_embd, config.d_mlp, config.mlp_bias, dtype, precision, rngs)
        self.up_proj = _linear(config.n_embd, config.d_mlp, config.mlp_bias, dtype, precision, rngs)
        self.down_proj = _linear(config.d_mlp, config.n_embd, config.mlp_bias, dtype, precision, rngs)
        self.act = config.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(ACTIVATIONS[self.act](self.gate_proj(x)) * self.up_proj(x))


class Block(BlockInterface):
    """Pre-norm, sequential residual: ``x += o_proj(attn(rms(x)))``, then ``x += mlp(rms(x))``."""

    def __init__(self, config: LlamaConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.n_head = config.n_head
        self.input_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.self_attn = Attention(config, dtype=dtype, precision=precision, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = MLP(config, dtype=dtype, precision=precision, rngs=rngs)

    def attention_heads(self, x: jax.Array, ctx: Context, layer: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        return self.self_attn(self.input_layernorm(x), ctx, layer)

    def project(self, heads: jax.Array) -> jax.Array:
        return linear_heads(self.self_attn.o_proj, heads)

    def out_weights(self) -> jax.Array:
        return head_rows(self.self_attn.o_proj, self.n_head)

    def resume(self, carry: jax.Array, shift: jax.Array | None = None, drop: jax.Array | None = None) -> jax.Array:
        x = carry if shift is None else carry + shift.astype(carry.dtype)
        return x + graddrop(self.mlp(self.post_attention_layernorm(x)), drop)


class Llama(Family):
    """Llama / Qwen2 / Mistral decoder with its LM head (tied to ``embed_tokens`` when the config says so)."""

    mask = "causal"

    def __init__(self, config: LlamaConfig, *, precision: Precision = "highest", rngs: nnx.Rngs):
        dtype, matmul_precision = self._precision(config, precision)
        self.family = config.model_type
        self.window = config.sliding_window
        self.embed_tokens = nnx.Embed(config.vocab_size, config.n_embd, dtype=dtype, rngs=rngs,
                                      embedding_init=nnx.initializers.normal(0.02))
        self.layers = nnx.List([Block(config, dtype=dtype, precision=matmul_precision, rngs=rngs)
                                for _ in range(config.n_layer)])
        self.norm = RMSNorm(config.n_embd, config.rms_norm_eps, dtype=dtype, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = _linear(config.n_embd, config.vocab_size, False, dtype, matmul_precision, rngs)

    def embed(self, tokens: jax.Array) -> jax.Array:
        return self.embed_tokens(tokens)

    def blocks(self):
        return list(self.layers)

    def final(self, x: jax.Array) -> jax.Array:
        return self.norm(x)

    def unembed(self, hidden: jax.Array) -> jax.Array:
        if self.config.tie_word_embeddings:
            return tied_unembed(hidden, self.embed_tokens)
        return self.lm_head(hidden).astype(jnp.float32)


# How HF names map to ours: strip the prefix, drop the rotary buffers; a head tied to embed_tokens
# may be stored anyway (dropped when tie_word_embeddings).
WEIGHT_NAMES = WeightNames(prefixes=("model.",), ignored=(".rotary_emb.inv_freq",), tied_heads=("lm_head.weight",))
