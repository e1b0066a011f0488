"""BERT and ALBERT encoders in Flax NNX: bidirectional attention over every real token.

Post-LayerNorm blocks: ``x = LN(x + attn(x))``, ``x = LN(x + ffn(x))``; absolute position and
token-type embeddings (every token is segment 0). Each query sees every real token of its prompt,
so the diagnostics' n is the prompt's length; ``query="last"`` reads the last real token's row
(an encoder has no causal "last" semantics: it is just the row read), and the BOS of the
diagnostics (``bos_attn``) is position 0, ``[CLS]``.

ALBERT: factorised embeddings (``embedding_size`` < ``hidden_size``, then
``embedding_hidden_mapping_in``) and one set of layer weights shared by every layer
(``num_hidden_groups`` groups of ``inner_group_num = 1`` layer).

Parameter names mirror HF's ``BertModel`` / ``AlbertModel`` without the ``bert.`` / ``albert.``
prefix; heads (pooler, MLM head) are not loaded: ``hidden`` is the last layer's output and
``logits`` are not available.
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
from jaxdiag.models.family import ACTIVATIONS, Context, Family, WeightNames
from jaxdiag.schema import Precision

@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    model_type: str  # "bert" or "albert"
    vocab_size: int
    n_embd: int
    n_layer: int
    n_head: int
    d_mlp: int
    n_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str
    embedding_size: int  # ALBERT's factorised embedding width (= n_embd for BERT)
    n_groups: int = 1  # ALBERT: distinct weight sets over the layers
    bos_token_id: int = 0  # [CLS]; set from the vocabulary by the loader

    @property
    def d_head(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> "EncoderConfig":
        model_type = raw.get("model_type")
        if model_type not in ("bert", "albert"):
            raise JaxdiagError(f"{source}: model_type {model_type!r} is not 'bert' or 'albert'")
        act = raw.get("hidden_act", "gelu")
        if act not in ACTIVATIONS:
            raise JaxdiagError(f"{source}: hidden_act {act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise JaxdiagError(f"{source}: position_embedding_type {raw['position_embedding_type']!r} is not supported "
                               "(only 'absolute')")
        if raw.get("is_decoder") or raw.get("add_cross_attention"):
            raise JaxdiagError(f"{source}: decoder / cross-attention {model_type} variants are not supported")
        n_layer = raw["num_hidden_layers"]
        n_groups = 1
        if model_type == "albert":
            if raw.get("inner_group_num", 1) != 1:
                raise JaxdiagError(f"{source}: ALBERT with inner_group_num={raw['inner_group_num']} is not supported (only 1)")
            n_groups = raw.get("num_hidden_groups", 1)
            if n_layer % n_groups:
                raise JaxdiagError(f"{source}: num_hidden_layers={n_layer} is not a multiple of num_hidden_groups={n_groups}")
        return cls(
            model_type=model_type, vocab_size=raw["vocab_size"], n_embd=raw["hidden_size"], n_layer=n_layer,
            n_head=raw["num_attention_heads"], d_mlp=raw["intermediate_size"],
            n_positions=raw.get("max_position_embeddings", 512), type_vocab_size=raw.get("type_vocab_size", 2),
            layer_norm_eps=raw.get("layer_norm_eps", 1e-12), hidden_act=act,
            embedding_size=raw.get("embedding_size", raw["hidden_size"]) if model_type == "albert" else raw["hidden_size"],
            n_groups=n_groups,
        )


def _linear(n_in, n_out, dtype, precision, rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, dtype=dtype, precision=precision, rngs=rngs,
                      kernel_init=nnx.initializers.normal(0.02))


def _layer_norm(dim: int, config: EncoderConfig, dtype, rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=config.layer_norm_eps, dtype=dtype, use_fast_variance=False, rngs=rngs)


class QKV(nnx.Module):
    """The q, k, v projections and the shared attention core (BERT's ``attention.self``)."""

    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.n_head, self.d_head, self.precision = config.n_head, config.d_head, precision
        self.query = _linear(config.n_embd, config.n_embd, dtype, precision, rngs)
        self.key = _linear(config.n_embd, config.n_embd, dtype, precision, rngs)
        self.value = _linear(config.n_embd, config.n_embd, dtype, precision, rngs)

    def heads(self, x: jax.Array, ctx: Context, layer: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        batch, seq, _ = x.shape
        q, k, v = (p(x).reshape(batch, seq, self.n_head, self.d_head) for p in (self.query, self.key, self.value))
        heads, probed = attend(q, k, v, ctx, layer, scale=1.0 / math.sqrt(self.d_head), precision=self.precision)
        return heads.reshape(batch, seq, self.n_head * self.d_head), probed


class Dense(nnx.Module):
    """A projection followed by ``LayerNorm(residual + projection)`` (BERT's ``*.output``)."""

    def __init__(self, n_in: int, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.dense = _linear(n_in, config.n_embd, dtype, precision, rngs)
        self.LayerNorm = _layer_norm(config.n_embd, config, dtype, rngs)

    def __call__(self, x: jax.Array, residual: jax.Array) -> jax.Array:
        return self.LayerNorm(residual + self.dense(x))


class BertAttention(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.self = QKV(config, dtype=dtype, precision=precision, rngs=rngs)
        self.output = Dense(config.n_embd, config, dtype=dtype, precision=precision, rngs=rngs)


class Intermediate(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.dense = _linear(config.n_embd, config.d_mlp, dtype, precision, rngs)


class BertLayer(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.act = config.hidden_act
        self.attention = BertAttention(config, dtype=dtype, precision=precision, rngs=rngs)
        self.intermediate = Intermediate(config, dtype=dtype, precision=precision, rngs=rngs)
        self.output = Dense(config.d_mlp, config, dtype=dtype, precision=precision, rngs=rngs)

    def __call__(self, x: jax.Array, ctx: Context, layer: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        heads, probed = self.attention.self.heads(x, ctx, layer)
        x = self.attention.output(heads, x)
        return self.output(ACTIVATIONS[self.act](self.intermediate.dense(x)), x), probed


class Embeddings(nnx.Module):
    """Word + absolute position + token-type (segment 0) embeddings, then LayerNorm."""

    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        width = config.embedding_size
        init = nnx.initializers.normal(0.02)
        self.word_embeddings = nnx.Embed(config.vocab_size, width, dtype=dtype, rngs=rngs, embedding_init=init)
        self.position_embeddings = nnx.Embed(config.n_positions, width, dtype=dtype, rngs=rngs, embedding_init=init)
        self.token_type_embeddings = nnx.Embed(config.type_vocab_size, width, dtype=dtype, rngs=rngs,
                                               embedding_init=init)
        self.LayerNorm = _layer_norm(width, config, dtype, rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        seq = tokens.shape[1]
        x = self.word_embeddings(tokens) + self.token_type_embeddings(jnp.zeros_like(tokens))
        return self.LayerNorm(x + self.position_embeddings(jnp.arange(seq))[None])


class Encoder(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.layer = nnx.List([BertLayer(config, dtype=dtype, precision=precision, rngs=rngs)
                               for _ in range(config.n_layer)])


class Bert(Family):
    """BERT encoder (``BertModel`` without its pooler)."""

    family = "bert"
    causal_effects = ("encoders are loaded without their masked-LM head, so there is no task metric to "
                      "measure effects on")
    mask = "bidirectional"
    encoder_type = Encoder  # ALBERT's shares its layers

    def __init__(self, config: EncoderConfig, *, precision: Precision = "highest", rngs: nnx.Rngs):
        dtype, matmul_precision = self._precision(config, precision)
        self.embeddings = Embeddings(config, dtype=dtype, rngs=rngs)
        self.encoder = self.encoder_type(config, dtype=dtype, precision=matmul_precision, rngs=rngs)

    def embed(self, tokens):
        return self.embeddings(tokens)

    def blocks(self):
        return list(self.encoder.layer)

    def final(self, x):
        return x

    def unembed(self, hidden):
        raise JaxdiagError(f"{self.family} is loaded without its masked-LM head: logits are not available")


# --- ALBERT ---------------------------------------------------------------------------------------

class AlbertAttention(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.n_head, self.d_head, self.precision = config.n_head, config.d_head, precision
        self.query = _linear(config.n_embd, config.n_embd, dtype, precision, rngs)
        self.key = _linear(config.n_embd, config.n_embd, dtype, precision, rngs)
        self.value = _linear(config.n_embd, config.n_embd, dtype, precision, rngs)
        self.dense = _linear(config.n_embd, config.n_embd, dtype, precision, rngs)
        self.LayerNorm = _layer_norm(config.n_embd, config, dtype, rngs)

    def __call__(self, x: jax.Array, ctx: Context, layer: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        batch, seq, _ = x.shape
        q, k, v = (p(x).reshape(batch, seq, self.n_head, self.d_head) for p in (self.query, self.key, self.value))
        heads, probed = attend(q, k, v, ctx, layer, scale=1.0 / math.sqrt(self.d_head), precision=self.precision)
        return self.LayerNorm(x + self.dense(heads.reshape(batch, seq, -1))), probed


class AlbertLayer(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.act = config.hidden_act
        self.attention = AlbertAttention(config, dtype=dtype, precision=precision, rngs=rngs)
        self.ffn = _linear(config.n_embd, config.d_mlp, dtype, precision, rngs)
        self.ffn_output = _linear(config.d_mlp, config.n_embd, dtype, precision, rngs)
        self.full_layer_layer_norm = _layer_norm(config.n_embd, config, dtype, rngs)

    def __call__(self, x: jax.Array, ctx: Context, layer: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        x, probed = self.attention(x, ctx, layer)
        return self.full_layer_layer_norm(self.ffn_output(ACTIVATIONS[self.act](self.ffn(x))) + x), probed


class AlbertGroup(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.albert_layers = nnx.List([AlbertLayer(config, dtype=dtype, precision=precision, rngs=rngs)])


class AlbertEncoder(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.embedding_hidden_mapping_in = _linear(config.embedding_size, config.n_embd, dtype, precision, rngs)
        self.albert_layer_groups = nnx.List([AlbertGroup(config, dtype=dtype, precision=precision, rngs=rngs)
                                             for _ in range(config.n_groups)])


class Albert(Bert):
    """ALBERT encoder (``AlbertModel`` without its pooler): layer i runs the weights of group
    ``i // (n_layer / n_groups)``; with one group, the same layer ``n_layer`` times."""

    family = "albert"
    encoder_type = AlbertEncoder

    def embed(self, tokens):
        return self.encoder.embedding_hidden_mapping_in(self.embeddings(tokens))

    def blocks(self):
        per_group = self.config.n_layer // self.config.n_groups
        return [self.encoder.albert_layer_groups[i // per_group].albert_layers[0] for i in range(self.config.n_layer)]


# How HF names map to ours: strip the prefix, drop the buffers and every head (pooler, MLM, classifiers).
WEIGHT_NAMES = WeightNames(prefixes=("bert.", "albert."),
                           ignored=("embeddings.position_ids", "embeddings.token_type_ids"),
                           ignored_prefixes=("pooler.", "cls.", "predictions.", "sop_classifier.", "classifier."))
