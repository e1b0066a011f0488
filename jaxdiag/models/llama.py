"""The Llama family in Flax NNX: Llama, Qwen2 (q/k/v biases), Qwen3 (q/k RMSNorm per head) and
Mistral (sliding window); its attention, RMSNorm and gated MLP are the parts Gemma is built of.

Pre-norm decoder: ``x += o_proj(attn(rms(x)))``, ``x += down(silu(gate(rms(x))) * up(rms(x)))``;
rotary embeddings on q and k (with Llama-3's, YaRN's, linear or dynamic scaling: ``rope.py``);
grouped-query attention (``num_key_value_heads`` key/value heads, each read by a group of query
heads: the diagnostics are per query head). A sliding window w lets query t see keys t-w+1 .. t,
and the diagnostics' n is that count: Mistral's on every layer, Qwen2's and Qwen3's on the layers
``layer_types`` (or ``use_sliding_window`` with ``max_window_layers``) names.

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
from jaxdiag.models.edits import shifted
from jaxdiag.models.family import (Block as BlockInterface, Context, Family, WeightNames, graddrop, head_rows,
                                   linear_heads, tied_unembed)
from jaxdiag.models.family import ACTIVATIONS as ALL_ACTIVATIONS
from jaxdiag.models.rope import Rope, context_length, rope_settings, rotary
from jaxdiag.schema import Precision

MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
ACTIVATIONS = {"silu": jax.nn.silu, "swish": jax.nn.silu}


@dataclasses.dataclass(frozen=True)
class AttentionSettings:
    """One layer's attention, whatever the family: shapes, biases, rotary rule, window, score scale,
    soft-cap and whether q and k are RMS-normalised per head (Qwen3, Gemma 3)."""

    n_embd: int
    n_head: int
    n_kv_head: int
    d_head: int
    qkv_bias: bool
    o_bias: bool
    rope: Rope
    window: int | None
    scale: float
    softcap: float | None = None
    qk_norm: bool = False


def layer_windows(raw: dict[str, Any], n_layer: int, *, source: str, window: int | None,
                  default_types: list[str] | None = None) -> tuple[int | None, ...]:
    """Each layer's sliding window from ``layer_types`` (transformers 5; ``default_types`` when a
    config has none): ``window`` on ``sliding_attention`` layers, none on ``full_attention``."""
    types = raw.get("layer_types") or default_types or ["full_attention"] * n_layer
    unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
    if unknown or len(types) != n_layer:
        raise JaxdiagError(f"{source}: layer_types {unknown or len(types)} not supported "
                           f"(full_attention / sliding_attention, one per layer)")
    return tuple(window if t == "sliding_attention" else None for t in types)


@dataclasses.dataclass(frozen=True)
class DecoderShape:
    """What every RMSNorm decoder of this family and its variants (Gemma) has."""

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


@dataclasses.dataclass(frozen=True)
class LlamaConfig(DecoderShape):
    rope: Rope
    qkv_bias: bool  # Qwen2 (and Llama's attention_bias): biases on q, k, v
    o_bias: bool  # Llama's attention_bias also biases o_proj
    mlp_bias: bool
    sliding_window: int | None  # the window of every layer (Mistral), else None
    tie_word_embeddings: bool
    bos_token_id: int
    hidden_act: str = "silu"
    layer_windows: tuple[int | None, ...] = ()  # per layer (Qwen2, Qwen3); () = sliding_window everywhere
    qk_norm: bool = False  # Qwen3

    def attention(self, layer: int) -> AttentionSettings:
        return AttentionSettings(
            self.n_embd, self.n_head, self.n_kv_head, self.d_head, self.qkv_bias, self.o_bias, self.rope,
            self.layer_windows[layer] if self.layer_windows else self.sliding_window, 1.0 / math.sqrt(self.d_head),
            qk_norm=self.qk_norm)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> "LlamaConfig":
        model_type = raw.get("model_type")
        if model_type not in MODEL_TYPES:
            raise JaxdiagError(f"{source}: model_type {model_type!r} is not a Llama-family type ({', '.join(MODEL_TYPES)})")
        act = raw.get("hidden_act", "silu")
        if act not in ACTIVATIONS:
            raise JaxdiagError(f"{source}: hidden_act {act!r} is not supported (supported: silu)")
        n_head = raw["num_attention_heads"]
        n_kv = raw.get("num_key_value_heads") or n_head
        if n_head % n_kv:
            raise JaxdiagError(f"{source}: num_attention_heads={n_head} is not a multiple of num_key_value_heads={n_kv}")
        d_head = raw.get("head_dim") or raw["hidden_size"] // n_head
        rope = rope_settings(raw, source=source, head_dim=d_head)
        if rope.dims != d_head:
            raise JaxdiagError(f"{source}: partial rotary embeddings are not supported for {model_type}")
        window, windows, n_layer = None, (), raw["num_hidden_layers"]
        if model_type == "mistral":
            window = raw.get("sliding_window")
        elif model_type in ("qwen2", "qwen3"):  # transformers: a window only with use_sliding_window
            sliding = raw.get("sliding_window") if raw.get("use_sliding_window") else None
            first = raw.get("max_window_layers", n_layer)
            default = ["sliding_attention" if sliding is not None and i >= first else "full_attention"
                       for i in range(n_layer)]
            windows = layer_windows(raw, n_layer, source=source, window=sliding, default_types=default)
            if len(set(windows)) == 1:  # the same on every layer: the model's window
                window, windows = windows[0], ()
        elif raw.get("layer_types") and any(t != "full_attention" for t in raw["layer_types"]):
            raise JaxdiagError(f"{source}: per-layer attention types {sorted(set(raw['layer_types']))} are not supported")
        if raw.get("pretraining_tp", 1) not in (1, None):
            raise JaxdiagError(f"{source}: pretraining_tp > 1 is not supported")
        attention_bias = bool(raw.get("attention_bias", False))
        bos = raw.get("bos_token_id")
        return cls(
            model_type=model_type, vocab_size=raw["vocab_size"], n_embd=raw["hidden_size"],
            n_layer=n_layer, n_head=n_head, n_kv_head=n_kv, d_head=d_head, d_mlp=raw["intermediate_size"],
            n_positions=context_length(rope, raw.get("max_position_embeddings", 2048)),
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope=rope, qkv_bias=model_type == "qwen2" or attention_bias, o_bias=attention_bias,
            mlp_bias=bool(raw.get("mlp_bias", False)), sliding_window=window,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            bos_token_id=bos if isinstance(bos, int) else 0, hidden_act=act, layer_windows=windows,
            qk_norm=model_type == "qwen3",
        )


def _linear(n_in, n_out, bias, dtype, precision, rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, use_bias=bias, dtype=dtype, precision=precision, rngs=rngs,
                      kernel_init=nnx.initializers.normal(0.02))


class RMSNorm(nnx.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, computed in float32 as transformers does: Llama's casts
    the normalised x to the activation dtype before the weight; Gemma's (``unit_offset``) multiplies
    by ``1 + weight`` in float32 and casts after (transformers#29402)."""

    def __init__(self, dim: int, eps: float, *, dtype, rngs: nnx.Rngs, unit_offset: bool = False):
        self.scale = nnx.Param(jnp.zeros((dim,), jnp.float32) if unit_offset else jnp.ones((dim,), jnp.float32))
        self.eps = eps
        self.dtype = dtype
        self.unit_offset = unit_offset

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        if self.unit_offset:
            return (normed * (1.0 + self.scale[...].astype(jnp.float32))).astype(self.dtype)
        return (self.scale[...].astype(self.dtype) * normed.astype(self.dtype))


class Attention(nnx.Module):
    """q, k, v projections (q/k RMS-normalised per head if asked), rotary, the shared core, o_proj."""

    def __init__(self, settings: AttentionSettings, *, eps: float, dtype, precision, rngs: nnx.Rngs,
                 unit_offset_norm: bool = False):
        s = settings
        self.settings = s
        self.n_head, self.n_kv_head, self.d_head = s.n_head, s.n_kv_head, s.d_head
        self.precision = precision
        self.q_proj = _linear(s.n_embd, s.n_head * s.d_head, s.qkv_bias, dtype, precision, rngs)
        self.k_proj = _linear(s.n_embd, s.n_kv_head * s.d_head, s.qkv_bias, dtype, precision, rngs)
        self.v_proj = _linear(s.n_embd, s.n_kv_head * s.d_head, s.qkv_bias, dtype, precision, rngs)
        self.o_proj = _linear(s.n_head * s.d_head, s.n_embd, s.o_bias, dtype, precision, rngs)
        if s.qk_norm:
            self.q_norm = RMSNorm(s.d_head, eps, dtype=dtype, rngs=rngs, unit_offset=unit_offset_norm)
            self.k_norm = RMSNorm(s.d_head, eps, dtype=dtype, rngs=rngs, unit_offset=unit_offset_norm)

    def __call__(self, x: jax.Array, ctx: Context, layer: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        s = self.settings
        batch, seq, _ = x.shape
        positions = jnp.arange(seq)
        q = self.q_proj(x).reshape(batch, seq, self.n_head, self.d_head)
        k = self.k_proj(x).reshape(batch, seq, self.n_kv_head, self.d_head)
        if s.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotary(q, positions, s.rope, ctx.lengths), rotary(k, positions, s.rope, ctx.lengths)
        v = self.v_proj(x).reshape(batch, seq, self.n_kv_head, self.d_head)
        return attend(q, k, v, ctx.with_window(s.window), layer, scale=s.scale, precision=self.precision,
                      softcap=s.softcap)


class MLP(nnx.Module):
    """Gated MLP: ``down(act(gate(x)) * up(x))`` (SwiGLU; Gemma's tanh-GELU GLU)."""

    def __init__(self, config: LlamaConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.gate_proj = _linear(config.n_embd, config.d_mlp, config.mlp_bias, dtype, precision, rngs)
        self.up_proj = _linear(config.n_embd, config.d_mlp, config.mlp_bias, dtype, precision, rngs)
        self.down_proj = _linear(config.d_mlp, config.n_embd, config.mlp_bias, dtype, precision, rngs)
        self.act = config.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(ALL_ACTIVATIONS[self.act](self.gate_proj(x)) * self.up_proj(x))


class Block(BlockInterface):
    """Pre-norm, sequential residual: ``x += o_proj(attn(rms(x)))``, then ``x += mlp(rms(x))``."""

    def __init__(self, config: LlamaConfig, layer: int, *, dtype, precision, rngs: nnx.Rngs):
        self.n_head = config.n_head
        self.input_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.self_attn = Attention(config.attention(layer), eps=config.rms_norm_eps, dtype=dtype, precision=precision,
                                   rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.rms_norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = MLP(config, dtype=dtype, precision=precision, rngs=rngs)

    def attention_heads(self, x: jax.Array, ctx: Context, layer: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        return self.self_attn(self.input_layernorm(x), ctx, layer)

    def project(self, heads: jax.Array) -> jax.Array:
        return linear_heads(self.self_attn.o_proj, heads)

    def out_weights(self) -> jax.Array:
        return head_rows(self.self_attn.o_proj, self.n_head)

    def resume(self, carry: jax.Array, shift: jax.Array | None = None, drop: jax.Array | None = None) -> jax.Array:
        x = shifted(carry, shift)
        return x + graddrop(self.mlp(self.post_attention_layernorm(x)), drop)


class Llama(Family):
    """Llama / Qwen2 / Qwen3 / Mistral decoder with its LM head (tied to ``embed_tokens`` when the config says so)."""

    mask = "causal"

    def __init__(self, config: LlamaConfig, *, precision: Precision = "highest", rngs: nnx.Rngs):
        dtype, matmul_precision = self._precision(config, precision)
        self.family = config.model_type
        self.window = config.sliding_window
        self.embed_tokens = nnx.Embed(config.vocab_size, config.n_embd, dtype=dtype, rngs=rngs,
                                      embedding_init=nnx.initializers.normal(0.02))
        self.layers = nnx.List([Block(config, i, dtype=dtype, precision=matmul_precision, rngs=rngs)
                                for i in range(config.n_layer)])
        self.norm = RMSNorm(config.n_embd, config.rms_norm_eps, dtype=dtype, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = _linear(config.n_embd, config.vocab_size, False, dtype, matmul_precision, rngs)

    def embed(self, tokens: jax.Array) -> jax.Array:
        return self.embed_tokens(tokens)

    def blocks(self):
        return list(self.layers)

    def final(self, x: jax.Array) -> jax.Array:
        return self.norm(x)

    def final_norm(self) -> RMSNorm:
        return self.norm

    def unembed_rows(self, ids: jax.Array) -> jax.Array:
        if self.config.tie_word_embeddings:
            return self.embed_tokens.embedding[...][ids].astype(jnp.float32)
        return jnp.moveaxis(self.lm_head.kernel[...][:, ids], 0, -1).astype(jnp.float32)

    def unembed(self, hidden: jax.Array) -> jax.Array:
        if self.config.tie_word_embeddings:
            return tied_unembed(hidden, self.embed_tokens)
        return self.lm_head(hidden).astype(jnp.float32)


# How HF names map to ours: strip the prefix, drop the rotary buffers; a head tied to embed_tokens
# may be stored anyway (dropped when tie_word_embeddings).
WEIGHT_NAMES = WeightNames(prefixes=("model.",), ignored=(".rotary_emb.inv_freq",), tied_heads=("lm_head.weight",))
