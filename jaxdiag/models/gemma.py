"""Gemma 2 and Gemma 3 (text) in Flax NNX, built of the Llama family's parts (attention, gated MLP,
RMSNorm) with Gemma's variations:

- RMSNorm by ``1 + weight``, in float32 and cast after (``unit_offset``);
- embeddings times ``sqrt(d_model)``, that factor rounded to the activation dtype first, as
  transformers does;
- a tanh-GELU gated MLP; ``head_dim`` independent of ``d_model / heads``; scores scaled by
  ``query_pre_attn_scalar^-1/2``;
- "sandwich" norms: ``x += post_attention_norm(attn(input_norm(x)))``,
  ``x += post_feedforward_norm(mlp(pre_feedforward_norm(x)))``. The attention output is
  normalised before it joins the residual, so the block carries ``(x, attn_out)`` and an edit's
  shift of ``attn_out`` goes through the norm again (:mod:`jaxdiag.models.family`);
- local (sliding-window) and global layers by ``layer_types``: Gemma 2 alternates them (local
  first), Gemma 3 has five local layers per global one, each kind with its own rotary base
  (``rope_local_base_freq`` / ``rope_theta``; the 4B+ checkpoints scale the global one linearly);
- Gemma 2 soft-caps attention scores (the probes read the capped scores the softmax sees) and
  final logits, ``c tanh(z / c)``; Gemma 3 has q/k RMSNorm per head instead.

The published multimodal ``gemma3`` checkpoints load their text part: the config's
``text_config``, the ``language_model`` weights (vision tower and projector never read).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiag.errors import JaxdiagError
from jaxdiag.models.attention import soft_cap
from jaxdiag.models.family import ACTIVATIONS, WeightNames, graddrop, norm_gain
from jaxdiag.models import llama
from jaxdiag.models.llama import MLP, Attention, AttentionSettings, DecoderShape, RMSNorm, _linear, layer_windows
from jaxdiag.models.rope import Rope, rope_parameters, rope_settings
from jaxdiag.schema import Precision

MODEL_TYPES = ("gemma2", "gemma3_text", "gemma3")


@dataclasses.dataclass(frozen=True)
class GemmaConfig(DecoderShape):
    hidden_act: str
    attention_bias: bool
    query_pre_attn_scalar: float
    attn_softcap: float | None
    final_softcap: float | None
    layer_windows: tuple[int | None, ...]  # each layer's sliding window (None: a global layer)
    global_rope: Rope
    local_rope: Rope
    qk_norm: bool  # Gemma 3
    bos_token_id: int
    tie_word_embeddings: bool = True
    mlp_bias: bool = False

    def attention(self, layer: int) -> AttentionSettings:
        window = self.layer_windows[layer]
        return AttentionSettings(
            self.n_embd, self.n_head, self.n_kv_head, self.d_head, self.attention_bias, self.attention_bias,
            self.global_rope if window is None else self.local_rope, window, self.query_pre_attn_scalar ** -0.5,
            self.attn_softcap, self.qk_norm)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> "GemmaConfig":
        model_type = raw.get("model_type")
        if model_type not in MODEL_TYPES:
            raise JaxdiagError(f"{source}: model_type {model_type!r} is not a Gemma type ({', '.join(MODEL_TYPES)})")
        if model_type == "gemma3":  # multimodal: the text model's config is nested
            text = raw.get("text_config")
            if not isinstance(text, dict):
                raise JaxdiagError(f"{source}: a gemma3 config needs 'text_config', which this one lacks")
            return dataclasses.replace(cls.from_dict({"model_type": "gemma3_text", **text}, source=source),
                                       model_type="gemma3")
        gemma2 = model_type == "gemma2"
        act = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
        if act not in ACTIVATIONS:
            raise JaxdiagError(f"{source}: hidden_activation {act!r} is not supported")
        if raw.get("use_bidirectional_attention"):
            raise JaxdiagError(f"{source}: use_bidirectional_attention (an encoder's Gemma) is not supported")
        n_head, n_layer = raw["num_attention_heads"], raw["num_hidden_layers"]
        n_kv = raw.get("num_key_value_heads") or n_head
        if n_head % n_kv:
            raise JaxdiagError(f"{source}: num_attention_heads={n_head} is not a multiple of num_key_value_heads={n_kv}")
        d_head = raw.get("head_dim") or 256
        pattern = 2 if gemma2 else int(raw.get("sliding_window_pattern") or 6)  # transformers' defaults
        default_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layer)]
        windows = layer_windows(raw, n_layer, source=source, window=raw.get("sliding_window", 4096),
                                default_types=default_types)
        global_rope, local_rope = gemma_ropes(raw, source=source, head_dim=d_head, gemma2=gemma2)
        bos = raw.get("bos_token_id")
        caps = (50.0, 30.0) if gemma2 else (None, None)  # transformers' defaults when a config omits them
        attn_cap = raw.get("attn_logit_softcapping", caps[0])
        final_cap = raw.get("final_logit_softcapping", caps[1])
        return cls(
            model_type=model_type, vocab_size=raw["vocab_size"], n_embd=raw["hidden_size"], n_layer=n_layer,
            n_head=n_head, n_kv_head=n_kv, d_head=d_head, d_mlp=raw["intermediate_size"],
            n_positions=raw.get("max_position_embeddings", 8192), rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            hidden_act=act, attention_bias=bool(raw.get("attention_bias", False)),
            query_pre_attn_scalar=float(raw.get("query_pre_attn_scalar", 256)),
            attn_softcap=None if attn_cap is None else float(attn_cap),
            final_softcap=None if final_cap is None else float(final_cap),
            layer_windows=windows, global_rope=global_rope, local_rope=local_rope, qk_norm=not gemma2,
            bos_token_id=bos if isinstance(bos, int) else 2,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
        )


def gemma_ropes(raw: dict[str, Any], *, source: str, head_dim: int, gemma2: bool) -> tuple[Rope, Rope]:
    """(global, local) rotary rules. Gemma 2: one for both. Gemma 3: transformers 5 nests
    ``rope_parameters`` by layer type; transformers 4 wrote ``rope_theta`` (global, 1e6),
    ``rope_local_base_freq`` (local, 1e4) and a ``rope_scaling`` that applies to global layers only."""
    if gemma2:
        rope = rope_settings(raw, source=source, head_dim=head_dim)
        return rope, rope
    nested = raw.get("rope_parameters") or {}
    if "full_attention" in nested or "sliding_attention" in nested:
        full, local = nested.get("full_attention") or {}, nested.get("sliding_attention") or {}
    else:
        full = {"rope_theta": raw.get("rope_theta", 1e6), **rope_parameters(raw)}
        local = {"rope_theta": raw.get("rope_local_base_freq", 1e4)}
    full = {"rope_theta": 1e6, **full}
    local = {"rope_theta": raw.get("rope_local_base_freq", 1e4), **local}
    return (rope_settings(raw, source=source, head_dim=head_dim, params=full),
            rope_settings(raw, source=source, head_dim=head_dim, params=local))


class Block(llama.Block):
    """Llama's block with sandwich norms; the attention output is normalised, so the carry is
    ``(x, attn_out)`` (attention_heads, project and out_weights are Llama's)."""

    def __init__(self, config: GemmaConfig, layer: int, *, dtype, precision, rngs: nnx.Rngs):
        norm = lambda dim: RMSNorm(dim, config.rms_norm_eps, dtype=dtype, rngs=rngs, unit_offset=True)
        self.n_head = config.n_head
        self.input_layernorm = norm(config.n_embd)
        self.self_attn = Attention(config.attention(layer), eps=config.rms_norm_eps, dtype=dtype, precision=precision,
                                   rngs=rngs, unit_offset_norm=True)
        self.post_attention_layernorm = norm(config.n_embd)
        self.pre_feedforward_layernorm = norm(config.n_embd)
        self.post_feedforward_layernorm = norm(config.n_embd)
        self.mlp = MLP(config, dtype=dtype, precision=precision, rngs=rngs)

    def carry(self, x: jax.Array, attn_out: jax.Array) -> tuple[jax.Array, jax.Array]:
        return x, attn_out

    def attention_gain(self, attn_out: jax.Array) -> jax.Array:
        return norm_gain(self.post_attention_layernorm, attn_out)[0]

    def resume(self, carry: tuple[jax.Array, jax.Array], shift: jax.Array | None = None,
               drop: jax.Array | None = None) -> jax.Array:
        x, attn_out = carry
        if shift is not None:
            attn_out = attn_out + shift.astype(attn_out.dtype)
        x = x + self.post_attention_layernorm(attn_out)
        return x + graddrop(self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x))), drop)


class Gemma(llama.Llama):
    """Gemma 2 / Gemma 3 text decoder with its LM head tied to ``embed_tokens``: Llama's model with
    Gemma's blocks and norm, scaled embeddings and soft-capped logits (``blocks`` and ``final`` are
    Llama's)."""

    mask = "causal"

    def __init__(self, config: GemmaConfig, *, precision: Precision = "highest", rngs: nnx.Rngs):
        dtype, matmul_precision = self._precision(config, precision)
        self.family = config.model_type
        self.dtype = dtype
        self.embed_tokens = nnx.Embed(config.vocab_size, config.n_embd, dtype=dtype, rngs=rngs,
                                      embedding_init=nnx.initializers.normal(0.02))
        self.layers = nnx.List([Block(config, i, dtype=dtype, precision=matmul_precision, rngs=rngs)
                                for i in range(config.n_layer)])
        self.norm = RMSNorm(config.n_embd, config.rms_norm_eps, dtype=dtype, rngs=rngs, unit_offset=True)
        if not config.tie_word_embeddings:
            self.lm_head = _linear(config.n_embd, config.vocab_size, False, dtype, matmul_precision, rngs)

    def embed(self, tokens: jax.Array) -> jax.Array:
        # transformers: the float32 scalar sqrt(d_model) cast to the weights' dtype, then the product
        normalizer = jnp.asarray(self.config.n_embd ** 0.5, jnp.float32).astype(self.dtype)
        return self.embed_tokens(tokens) * normalizer

    def unembed(self, hidden: jax.Array) -> jax.Array:
        return self.cap_logits(super().unembed(hidden))

    def cap_logits(self, logits: jax.Array) -> jax.Array:
        return soft_cap(logits, self.config.final_softcap)


# HF names: Gemma2/3ForCausalLM's ``model.*``; the multimodal Gemma3ForConditionalGeneration's text part
# under ``model.language_model.*`` (transformers 5) or ``language_model.model.*`` (as published, 4);
# its vision tower and projector are never read; a head tied to the embeddings may be stored anyway.
WEIGHT_NAMES = WeightNames(
    prefixes=("model.language_model.", "language_model.model.", "model."),
    ignored=(".rotary_emb.inv_freq",),
    ignored_prefixes=("vision_tower.", "multi_modal_projector."),
    tied_heads=("lm_head.weight", "language_model.lm_head.weight"),
)
