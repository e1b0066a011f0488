"""Attention patterns of whole prompts, one layer at a time: what ``jaxdiag.attention`` returns.

A sweep never keeps a pattern (its probes reduce each layer inside the step); a notebook wants to
look at a few. Each layer runs as its own compiled step that takes the residual stream from the
layer below and returns the stream after it and, for a wanted layer, its ``[b, h, s, s]`` weights,
so only one layer's pattern is on the device at a time, and layers above the last wanted one never run.
"""

from __future__ import annotations

import functools
from typing import Iterator, Sequence

import jax
import numpy as np
from flax import nnx

from jaxdiag.models.family import Family
from jaxdiag.probes import ATTENTION_PROBE


def layer_patterns(model: Family, tokens: np.ndarray, lengths: np.ndarray,
                   layers: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
    """``(layer, weights [b, head, query, key] float32 numpy)`` for each of ``layers`` in increasing
    order; query rows and keys past a prompt's length are NaN."""
    graphdef, state = nnx.split(model)
    wanted = set(layers)

    @jax.jit
    def embed(state, tokens):
        return nnx.merge(graphdef, state).embed(tokens)

    # Every layer up to the last wanted one forms its pattern, wanted or not: one program per layer,
    # so a layer's pattern is the same bits whichever other layers are asked for.
    @functools.partial(jax.jit, static_argnums=0)
    def layer_step(layer: int, state, x, tokens, lengths):
        module = nnx.merge(graphdef, state)
        ctx = module.context(tokens, lengths, probes=(ATTENTION_PROBE,), query="all", attention="direct")
        block = module.blocks()[layer]
        heads, probed = block.attention_heads(x, ctx, layer)
        return block.resume(block.carry(x, block.project(heads))), probed["attention"]

    x = embed(state, tokens)
    real = np.arange(tokens.shape[1]) < np.asarray(lengths)[:, None]  # [b, s]
    for layer in range(max(wanted) + 1):
        x, pattern = layer_step(layer, state, x, tokens, lengths)
        if layer in wanted:
            weights = np.asarray(pattern, dtype=np.float32)
            yield layer, np.where(real[:, None, :, None] & real[:, None, None, :], weights, np.float32(np.nan))
