"""GPT-2 in Flax NNX: the config, the forward pass, and the block interface every family shares.

Module and parameter names follow the Hugging Face checkpoint (``h.3.attn.c_attn`` ...), so loading
is a rename of ``weight`` to ``kernel``/``scale``/``embedding`` and nothing else. Linear kernels are
stored ``[in, out]`` exactly as HF's ``Conv1D`` stores them.

A GPT-2 is a :class:`jaxdiag.models.family.Family` like the others: probes read each layer's
attention (:mod:`jaxdiag.probes`), an edit (:mod:`jaxdiag.models.edits`) replaces heads' outputs
before ``c_proj``, and each block answers the interface causal effects are written against.

Prompts are right-padded: prompt ``b`` occupies positions ``0 .. lengths[b]-1``, so position ids
need no shifting, and keys at or beyond ``lengths[b]`` are masked out exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiag.errors import JaxdiagError
from jaxdiag.models.attention import attend, row_attention
from jaxdiag.models.edits import shifted
from jaxdiag.models.family import (ACTIVATIONS, Block as BlockInterface, Context, Family, WeightNames, graddrop,
                                   head_rows, linear_heads, tied_unembed)
from jaxdiag.probes import read_probes
from jaxdiag.schema import Precision


# The order of c_attn's columns: HF's [(q, k, v), head, d_head], or [head, (q, k, v), d_head] when sharded.
QKVLayout = Literal["qkv", "head"]


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """What the forward pass needs to know; frozen so it can be a static ``jit`` argument."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    bos_token_id: int = 50256

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise JaxdiagError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.activation_function not in ACTIVATIONS:
            raise JaxdiagError(
                f"unsupported activation_function {self.activation_function!r} (supported: {', '.join(ACTIVATIONS)})"
            )

    @property
    def model_type(self) -> str:
        return "gpt2"

    @property
    def d_head(self) -> int:
        return self.n_embd // self.n_head

    @property
    def d_mlp(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> "GPT2Config":
        model_type = raw.get("model_type")
        if model_type != "gpt2":
            raise JaxdiagError(f"{source}: model_type is {model_type!r}, not 'gpt2'; jaxdiag runs GPT-2-family models only")
        if raw.get("add_cross_attention"):
            raise JaxdiagError(f"{source}: cross-attention GPT-2 variants are not supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in fields and v is not None})

    @classmethod
    def from_json(cls, path: str | Path) -> "GPT2Config":
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise JaxdiagError(f"cannot read model config {path}: {exc}") from None
        return cls.from_dict(raw, source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` body that transformers' ``GPT2Config`` reads back to the same model."""
        out = dataclasses.asdict(self)
        out.update(model_type="gpt2", architectures=["GPT2LMHeadModel"], eos_token_id=self.bos_token_id, n_ctx=self.n_positions)
        return out


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
        # HF's c_attn columns are [(q, k, v), head, d_head]; a model sharded over heads
        # (jaxdiag.models.sharding) holds them [head, (q, k, v), d_head], so that each device's
        # contiguous block of columns is its heads' q, k and v. The default keeps HF's order.
        self.qkv_layout: QKVLayout = "qkv"

    def __call__(self, x: jax.Array, ctx: Context) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The heads' outputs ``[b, s, h, d_head]`` (after the edit) and the probes' arrays."""
        batch, seq, _ = x.shape
        if self.qkv_layout == "head":
            qkv = self.c_attn(x).reshape(batch, seq, self.n_head, 3, self.d_head)
            q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
        else:
            q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
            q, k, v = (t.reshape(batch, seq, self.n_head, self.d_head) for t in (q, k, v))
        return attend(q, k, v, ctx, self.layer_idx, scale=self.scale, precision=self.precision)

    def probe_rows(self, x: jax.Array, ctx: Context) -> dict[str, jax.Array]:
        """The probes of ``ctx.rows`` alone, when nothing reads this layer's output (the last layer of
        a diagnostics-only pass with ``query="last"``): the keys of every position and the probed
        rows' queries are projected, never the values, the other rows' queries or the output."""
        batch, seq, _ = x.shape
        q = self._projection(jnp.take_along_axis(x, ctx.rows[:, :, None], axis=1), 0)
        k = self._projection(x, 1)
        scores, probs = row_attention(q.reshape(batch, -1, self.n_head, self.d_head),
                                      k.reshape(batch, seq, self.n_head, self.d_head), ctx,
                                      scale=self.scale, precision=self.precision)
        return read_probes(ctx.probes, ctx.view(self.layer_idx, None, scores=scores, probs=probs))

    def _projection(self, x: jax.Array, which: int) -> jax.Array:
        """The query (``which=0``) or key (1) part of ``c_attn(x)``, ``[..., h * d_head]``, from its columns alone."""
        if self.qkv_layout == "head":  # columns [head, (q, k, v), d]: a head-local gather under sharding
            kernel, bias = self.c_attn.kernel[...], self.c_attn.bias[...]
            width = self.n_head * self.d_head
            kernel = kernel.reshape(-1, self.n_head, 3, self.d_head)[:, :, which].reshape(-1, width)
            bias = bias.reshape(self.n_head, 3, self.d_head)[:, which].reshape(width)
            return _columns(self.c_attn, x, kernel, bias)
        width = self.n_head * self.d_head
        start, stop = which * width, (which + 1) * width
        return _columns(self.c_attn, x, self.c_attn.kernel[..., start:stop], self.c_attn.bias[start:stop])


def _columns(linear: nnx.Linear, x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """``x @ kernel + bias`` for some output columns of ``linear``, computed as ``nnx.Linear`` does."""
    x, kernel, bias = linear.promote_dtype((x, kernel, bias), dtype=linear.dtype)
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=linear.precision)
    return y + bias


class MLP(nnx.Module):
    def __init__(self, config: GPT2Config, *, dtype, precision, rngs: nnx.Rngs):
        self.c_fc = _linear(config.n_embd, config.d_mlp, dtype, precision, rngs)
        self.c_proj = _linear(config.d_mlp, config.n_embd, dtype, precision, rngs)
        self.activation = config.activation_function

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(ACTIVATIONS[self.activation](self.c_fc(x)))


class Block(BlockInterface):
    """Pre-LN, sequential residual: ``x += c_proj(attn(ln_1(x)))``, then ``x += mlp(ln_2(x))``."""

    def __init__(self, config: GPT2Config, layer_idx: int, *, dtype, precision, rngs: nnx.Rngs):
        self.n_head = config.n_head
        self.ln_1 = _layer_norm(config, dtype, rngs)
        self.attn = Attention(config, layer_idx, dtype=dtype, precision=precision, rngs=rngs)
        self.ln_2 = _layer_norm(config, dtype, rngs)
        self.mlp = MLP(config, dtype=dtype, precision=precision, rngs=rngs)

    def attention_heads(self, x: jax.Array, ctx: Context, layer: int) -> tuple[jax.Array, dict[str, jax.Array]]:
        return self.attn(self.ln_1(x), ctx)

    def project(self, heads: jax.Array) -> jax.Array:
        return linear_heads(self.attn.c_proj, heads)

    def out_weights(self) -> jax.Array:
        return head_rows(self.attn.c_proj, self.n_head)

    def resume(self, carry: jax.Array, shift: jax.Array | None = None, drop: jax.Array | None = None) -> jax.Array:
        x = shifted(carry, shift)
        return x + graddrop(self.mlp(self.ln_2(x)), drop)

    def probe_rows(self, x: jax.Array, ctx: Context, layer: int) -> dict[str, jax.Array]:
        return self.attn.probe_rows(self.ln_1(x), ctx)


class GPT2(Family):
    """GPT-2 trunk (``transformer.*`` in HF) with the LM head tied to ``wte``, computed on request."""

    family = "gpt2"
    mask = "causal"

    def __init__(self, config: GPT2Config, *, precision: Precision = "highest", rngs: nnx.Rngs):
        dtype, matmul_precision = self._precision(config, precision)
        self.wte = nnx.Embed(config.vocab_size, config.n_embd, dtype=dtype, rngs=rngs,
                             embedding_init=nnx.initializers.normal(0.02))
        self.wpe = nnx.Embed(config.n_positions, config.n_embd, dtype=dtype, rngs=rngs,
                             embedding_init=nnx.initializers.normal(0.01))
        self.h = nnx.List(
            [Block(config, i, dtype=dtype, precision=matmul_precision, rngs=rngs) for i in range(config.n_layer)]
        )
        self.ln_f = _layer_norm(config, dtype, rngs)

    def blocks(self) -> list[Block]:
        return list(self.h)

    def embed(self, tokens: jax.Array) -> jax.Array:
        """The residual stream entering layer 0: token plus position embeddings ``[b, seq, n_embd]``."""
        return self.wte(tokens) + self.wpe(jnp.arange(tokens.shape[1]))[None]

    def final(self, x: jax.Array) -> jax.Array:
        return self.ln_f(x)

    def final_norm(self) -> nnx.LayerNorm:
        return self.ln_f

    def unembed_rows(self, ids: jax.Array) -> jax.Array:
        return self.wte.embedding[...][ids].astype(jnp.float32)

    def unembed(self, hidden: jax.Array) -> jax.Array:
        """Float32 logits ``[..., vocab]`` of final hidden states ``[..., n_embd]`` (LM head tied to ``wte``)."""
        return tied_unembed(hidden, self.wte)


# How HF names map to ours: GPT2LMHeadModel's prefix, the causal-mask buffers old checkpoints carry,
# the head tied to wte; Conv1D stores kernels [in, out].
WEIGHT_NAMES = WeightNames(prefixes=("transformer.",), ignored=(".attn.bias", ".attn.masked_bias"),
                           tied_heads=("lm_head.weight",), transpose_kernels=False)
