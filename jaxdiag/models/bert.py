"""BERT and ALBERT encoders in Flax NNX: bidirectional attention over every real token.

Post-LayerNorm blocks: ``x = LN(x + attn(x))``, ``x = LN(x + ffn(x))``; absolute position and
token-type embeddings (every token is segment 0). Each query sees every real token of its prompt,
so the diagnostics' n is the prompt's length; ``query="last"`` reads the last real token's row
(an encoder has no causal "last" semantics: it is just the row read), and the BOS of the
diagnostics (``bos_attn``) is position 0, ``[CLS]``.

ALBERT: factorised embeddings (``embedding_size`` < ``hidden_size``, then
``embedding_hidden_mapping_in``) and one set of layer weights shared by every layer
(``num_hidden_groups`` groups of ``inner_group_num = 1`` layer).

Parameter names mirror HF's ``BertForMaskedLM`` / ``AlbertForMaskedLM`` without the ``bert.`` /
``albert.`` prefix. The masked-LM head (``cls.predictions.*`` / ``predictions.*``) is loaded when the
checkpoint has it (``EncoderConfig.mlm_head``, decided by the weights): then ``logits=True`` gives the
MLM logits, every position, and causal effects have a metric. The decoder is tied to the word
embeddings unless the config says ``tie_word_embeddings: false``; its bias is ``predictions.bias``
(or, stored alone, ``predictions.decoder.bias``, the same tensor in HF). The pooler and the
NSP / SOP / classifier heads are never loaded; ``hidden`` is the last layer's output.

The blocks follow the interface of :mod:`jaxdiag.models.family`. Post-LN is the non-linear resume
case: the carry is ``(x, attn_out)`` and ``resume`` recomputes ``h = LN(x + attn_out + shift)`` then
``LN(h + ffn(h))``. AtP*'s GradDrop of layer l (``drop``) scales the gradient through the layer's two
updates, ``attn_out`` and ``ffn(h)``, and keeps the residual path, which here runs through both
LayerNorms (their Jacobians at the clean values) rather than being the identity of a pre-LN stream:
post-LN layer contributions are not additive, so "the gradient with layer l's contribution dropped"
is defined as the gradient through every path that skips both of its updates.
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
from jaxdiag.models.family import (ACTIVATIONS, ONES, ZEROS, Block, Context, Family, WeightNames, graddrop, head_rows,
                                   linear_bias, linear_heads, normal, tied_unembed)
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
    mask_token_id: int = -1  # [MASK] (-1: none); set from the vocabulary by the loader
    mlm_head: bool = False  # the masked-LM head is loaded (the checkpoint has it: see Bert.configure)
    tie_word_embeddings: bool = True  # the MLM decoder is the word embeddings (HF's default)

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
            n_groups=n_groups, tie_word_embeddings=raw.get("tie_word_embeddings", True),
            # a first guess from the architecture, settled by the weights when they are read (Bert.configure)
            mlm_head=any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in raw.get("architectures") or ()),
        )


def _linear(n_in, n_out, dtype, precision, rngs) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, dtype=dtype, precision=precision, rngs=rngs,
                      kernel_init=normal(0.02), bias_init=ZEROS)


def _layer_norm(dim: int, config: EncoderConfig, dtype, rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=config.layer_norm_eps, dtype=dtype, use_fast_variance=False, rngs=rngs,
                         scale_init=ONES, bias_init=ZEROS)


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
        return attend(q, k, v, ctx, layer, scale=1.0 / math.sqrt(self.d_head), precision=self.precision)


class Dense(nnx.Module):
    """A projection and the LayerNorm of ``residual + projection`` (BERT's ``*.output``)."""

    def __init__(self, n_in: int, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.dense = _linear(n_in, config.n_embd, dtype, precision, rngs)
        self.LayerNorm = _layer_norm(config.n_embd, config, dtype, rngs)


class BertAttention(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.self = QKV(config, dtype=dtype, precision=precision, rngs=rngs)
        self.output = Dense(config.n_embd, config, dtype=dtype, precision=precision, rngs=rngs)


class Intermediate(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.dense = _linear(config.n_embd, config.d_mlp, dtype, precision, rngs)


def post_ln_resume(carry: tuple[jax.Array, jax.Array], shift: jax.Array | None, drop: jax.Array | None, *,
                   attn_norm: nnx.LayerNorm, ffn, out_norm: nnx.LayerNorm) -> jax.Array:
    """A post-LN block from its input and attention output: ``h = attn_norm(x + attn_out + shift)``,
    then ``out_norm(h + ffn(h))`` with GradDrop on the FFN update (this module's docstring)."""
    x, attn_out = carry
    if shift is not None:
        attn_out = attn_out + shift.astype(attn_out.dtype)
    h = attn_norm(x + attn_out)
    return out_norm(h + graddrop(ffn(h), drop))


class BertLayer(Block):
    """Post-LN: ``h = LN(x + dense(attn(x)))``, ``x' = LN(h + ffn(h))``; carry ``(x, attn_out)``."""

    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.act, self.n_head = config.hidden_act, config.n_head
        self.attention = BertAttention(config, dtype=dtype, precision=precision, rngs=rngs)
        self.intermediate = Intermediate(config, dtype=dtype, precision=precision, rngs=rngs)
        self.output = Dense(config.d_mlp, config, dtype=dtype, precision=precision, rngs=rngs)

    def attention_heads(self, x: jax.Array, ctx: Context, layer: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        return self.attention.self.heads(x, ctx, layer)

    def project(self, heads: jax.Array) -> jax.Array:
        return linear_heads(self.attention.output.dense, heads)

    def out_weights(self) -> jax.Array:
        return head_rows(self.attention.output.dense, self.n_head)

    def out_bias(self) -> jax.Array | None:
        return linear_bias(self.attention.output.dense)

    def carry(self, x: jax.Array, attn_out: jax.Array) -> tuple[jax.Array, jax.Array]:
        return x, attn_out

    def resume(self, carry, shift: jax.Array | None = None, drop: jax.Array | None = None) -> jax.Array:
        return post_ln_resume(carry, shift, drop, attn_norm=self.attention.output.LayerNorm, ffn=self.ffn,
                              out_norm=self.output.LayerNorm)

    def ffn(self, h: jax.Array) -> jax.Array:
        return self.output.dense(ACTIVATIONS[self.act](self.intermediate.dense(h)))


class Embeddings(nnx.Module):
    """Word + absolute position + token-type (segment 0) embeddings, then LayerNorm."""

    def __init__(self, config: EncoderConfig, *, dtype, rngs: nnx.Rngs):
        width = config.embedding_size
        init = normal(0.02)
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


class Transform(nnx.Module):
    """The MLM head's ``dense`` (hidden -> width) and ``LayerNorm``."""

    def __init__(self, config: EncoderConfig, width: int, *, dtype, precision, rngs: nnx.Rngs):
        self.dense = _linear(config.n_embd, width, dtype, precision, rngs)
        self.LayerNorm = _layer_norm(width, config, dtype, rngs)


class MLMPredictions(nnx.Module):
    """The masked-LM head on the last hidden states: ``dense -> act -> LayerNorm -> decoder + bias``.
    Tied (HF's default): the decoder is the word embeddings (``embedding``) plus ``bias``; untied: its
    own ``decoder`` with its own bias, as HF's forward reads them.
    BERT nests dense and LayerNorm under ``transform`` (``cls.predictions.transform.*``); ALBERT does
    not (``predictions.*``), and its width is ``embedding_size``."""

    def __init__(self, config: EncoderConfig, *, nested: bool, dtype, precision, rngs: nnx.Rngs):
        self.act, self.nested = config.hidden_act, nested
        width = config.embedding_size
        transform = Transform(config, width, dtype=dtype, precision=precision, rngs=rngs)
        if nested:
            self.transform = transform
        else:
            self.dense, self.LayerNorm = transform.dense, transform.LayerNorm
        if config.tie_word_embeddings:  # decoder.weight is the word embeddings, decoder.bias is tied to bias
            self.bias = nnx.Param(ZEROS(None, (config.vocab_size,), dtype))
        else:  # an untied decoder adds its own bias (HF's forward never reads predictions.bias then)
            self.decoder = _linear(width, config.vocab_size, dtype, precision, rngs)

    def __call__(self, hidden: jax.Array, embedding: nnx.Embed) -> jax.Array:
        """Float32 logits ``[..., vocab]``; ``embedding``: the word embeddings (the tied decoder)."""
        parts = self.transform if self.nested else self
        h = parts.LayerNorm(ACTIVATIONS[self.act](parts.dense(hidden)))
        if hasattr(self, "decoder"):
            return self.decoder(h).astype(jnp.float32)
        return tied_unembed(h, embedding) + self.bias[...].astype(jnp.float32)


class BertMLMHead(nnx.Module):
    """``cls.predictions`` (BertForMaskedLM's ``BertOnlyMLMHead``)."""

    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.predictions = MLMPredictions(config, nested=True, dtype=dtype, precision=precision, rngs=rngs)


MLM_HEAD_PREFIXES = ("cls.predictions.", "predictions.")  # BERT's, ALBERT's (after the trunk's prefix is cut)
NO_HEAD = "the checkpoint has no masked-LM head (cls.predictions.* / predictions.*), so there is no task metric"


class Bert(Family):
    """BERT encoder (``BertForMaskedLM``: the trunk, and the MLM head when the checkpoint has one)."""

    family = "bert"
    causal_effects = NO_HEAD
    mask = "bidirectional"
    encoder_type = Encoder  # ALBERT's shares its layers

    def __init__(self, config: EncoderConfig, *, precision: Precision = "highest", rngs: nnx.Rngs):
        dtype, matmul_precision = self._precision(config, precision)
        self.embeddings = Embeddings(config, dtype=dtype, rngs=rngs)
        self.encoder = self.encoder_type(config, dtype=dtype, precision=matmul_precision, rngs=rngs)
        if config.mlm_head:
            self.make_head(config, dtype=dtype, precision=matmul_precision, rngs=rngs)

    def make_head(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs) -> None:
        self.cls = BertMLMHead(config, dtype=dtype, precision=precision, rngs=rngs)

    def head(self) -> MLMPredictions:
        return self.cls.predictions

    @classmethod
    def configure(cls, config: EncoderConfig, names) -> EncoderConfig:
        """The head is loaded exactly when the (prefix-stripped) weight ``names`` hold it."""
        return dataclasses.replace(config, mlm_head=any(n.startswith(MLM_HEAD_PREFIXES) for n in names))

    @classmethod
    def effects_reason(cls, config: EncoderConfig) -> str | None:
        return None if config.mlm_head else NO_HEAD

    def embed(self, tokens):
        return self.embeddings(tokens)

    def blocks(self):
        return list(self.encoder.layer)

    def final(self, x):
        return x

    def unembed(self, hidden):
        if not self.config.mlm_head:
            raise JaxdiagError(f"{self.family}: {NO_HEAD}: logits are not available")
        return self.head()(hidden, self.embeddings.word_embeddings)


# --- ALBERT ---------------------------------------------------------------------------------------

class AlbertAttention(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.n_head, self.d_head, self.precision = config.n_head, config.d_head, precision
        self.query = _linear(config.n_embd, config.n_embd, dtype, precision, rngs)
        self.key = _linear(config.n_embd, config.n_embd, dtype, precision, rngs)
        self.value = _linear(config.n_embd, config.n_embd, dtype, precision, rngs)
        self.dense = _linear(config.n_embd, config.n_embd, dtype, precision, rngs)
        self.LayerNorm = _layer_norm(config.n_embd, config, dtype, rngs)

    heads = QKV.heads  # the same q, k, v attributes and core


class AlbertLayer(Block):
    """BERT's post-LN layer under ALBERT's names (``attention.dense``, ``ffn``, ``full_layer_layer_norm``)."""

    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.act, self.n_head = config.hidden_act, config.n_head
        self.attention = AlbertAttention(config, dtype=dtype, precision=precision, rngs=rngs)
        self.ffn = _linear(config.n_embd, config.d_mlp, dtype, precision, rngs)
        self.ffn_output = _linear(config.d_mlp, config.n_embd, dtype, precision, rngs)
        self.full_layer_layer_norm = _layer_norm(config.n_embd, config, dtype, rngs)

    def attention_heads(self, x: jax.Array, ctx: Context, layer: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        return self.attention.heads(x, ctx, layer)

    def project(self, heads: jax.Array) -> jax.Array:
        return linear_heads(self.attention.dense, heads)

    def out_weights(self) -> jax.Array:
        return head_rows(self.attention.dense, self.n_head)

    def out_bias(self) -> jax.Array | None:
        return linear_bias(self.attention.dense)

    def carry(self, x: jax.Array, attn_out: jax.Array) -> tuple[jax.Array, jax.Array]:
        return x, attn_out

    def resume(self, carry, shift: jax.Array | None = None, drop: jax.Array | None = None) -> jax.Array:
        return post_ln_resume(carry, shift, drop, attn_norm=self.attention.LayerNorm,
                              ffn=lambda h: self.ffn_output(ACTIVATIONS[self.act](self.ffn(h))),
                              out_norm=self.full_layer_layer_norm)


class AlbertGroup(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.albert_layers = nnx.List([AlbertLayer(config, dtype=dtype, precision=precision, rngs=rngs)])


class AlbertEncoder(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs):
        self.embedding_hidden_mapping_in = _linear(config.embedding_size, config.n_embd, dtype, precision, rngs)
        self.albert_layer_groups = nnx.List([AlbertGroup(config, dtype=dtype, precision=precision, rngs=rngs)
                                             for _ in range(config.n_groups)])


class Albert(Bert):
    """ALBERT encoder (``AlbertForMaskedLM``'s trunk and, when present, its ``predictions`` head):
    layer i runs the weights of group ``i // (n_layer / n_groups)``; with one group, the same layer
    ``n_layer`` times."""

    family = "albert"
    encoder_type = AlbertEncoder

    def make_head(self, config: EncoderConfig, *, dtype, precision, rngs: nnx.Rngs) -> None:
        self.predictions = MLMPredictions(config, nested=False, dtype=dtype, precision=precision, rngs=rngs)

    def head(self) -> MLMPredictions:
        return self.predictions

    def embed(self, tokens):
        return self.encoder.embedding_hidden_mapping_in(self.embeddings(tokens))

    def blocks(self):
        per_group = self.config.n_layer // self.config.n_groups
        return [self.encoder.albert_layer_groups[i // per_group].albert_layers[0] for i in range(self.config.n_layer)]


# How HF names map to ours: strip the prefix, drop the buffers and the heads other than the MLM head
# (pooler, NSP, SOP, classifiers). A tied MLM decoder is the word embeddings plus predictions.bias
# (HF ties decoder.bias to it): a stored decoder.weight is dropped, a decoder.bias stored alone is read
# as predictions.bias, one stored beside it is the same tensor and dropped. An untied decoder has its
# own weight and bias, and predictions.bias is dropped. (Each is dropped only when the model lacks it.)
_TIED = ("decoder.weight", "decoder.bias", "bias")
WEIGHT_NAMES = WeightNames(prefixes=("bert.", "albert."),
                           ignored=("embeddings.position_ids", "embeddings.token_type_ids"),
                           ignored_prefixes=("pooler.", "cls.seq_relationship.", "sop_classifier.", "classifier.",
                                             "qa_outputs."),
                           tied_heads=tuple(f"{head}{name}" for head in MLM_HEAD_PREFIXES for name in _TIED),
                           aliases=tuple((f"{head}decoder.bias", f"{head}bias") for head in MLM_HEAD_PREFIXES))
