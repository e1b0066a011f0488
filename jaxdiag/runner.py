"""Batches of token sequences through one compiled diagnostics step.

Prompts are right-padded to a small set of bucket lengths and every batch is padded to the same
batch size, so a sweep compiles once per bucket, never per batch.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from jaxdiag.diagnostics import DIAGNOSTICS
from jaxdiag.errors import JaxdiagError
from jaxdiag.model import GPT2, QueryMode


def bucket_length(n: int, limit: int) -> int:
    """Smallest bucket >= n: multiples of 16 up to 128, then powers of two, capped at ``limit``."""
    bucket = -(-n // 16) * 16 if n <= 128 else 1 << (n - 1).bit_length()
    return min(bucket, limit)


def check_tokens(token_lists: Sequence[Sequence[int]], *, vocab_size: int, n_positions: int) -> None:
    for i, tokens in enumerate(token_lists):
        if len(tokens) == 0:
            raise JaxdiagError(f"prompt {i} is empty: a prompt needs at least one token")
        if len(tokens) > n_positions:
            raise JaxdiagError(f"prompt {i} has {len(tokens)} tokens, more than the model's context window of {n_positions}")
        low, high = min(tokens), max(tokens)
        if low < 0 or high >= vocab_size:
            raise JaxdiagError(f"prompt {i} has token id {low if low < 0 else high} outside the vocabulary [0, {vocab_size})")


def pad_batch(token_lists: Sequence[Sequence[int]], batch_size: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to ``[batch_size, seq_len]``; missing rows are one-token dummies whose results are dropped."""
    tokens = np.zeros((batch_size, seq_len), dtype=np.int32)
    lengths = np.ones((batch_size,), dtype=np.int32)
    for row, seq in enumerate(token_lists):
        tokens[row, : len(seq)] = seq
        lengths[row] = len(seq)
    return tokens, lengths


def compile_step(model: GPT2, query: QueryMode) -> Callable[[np.ndarray, np.ndarray], dict[str, jax.Array]]:
    """A jitted ``(tokens, lengths) -> diagnostics`` for this model; parameters are closed over once."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, tokens, lengths):
        return nnx.merge(graphdef, state)(tokens, lengths, query=query)["diagnostics"]

    return lambda tokens, lengths: step(state, tokens, lengths)


def run_diagnostics(
    model: GPT2,
    token_lists: Sequence[Sequence[int]],
    *,
    query: QueryMode = "last",
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Diagnostics for every sequence: ``[n, layer, head]`` (``last``) or ``[n, layer, head, max_len]`` (``all``)."""
    config = model.config
    check_tokens(token_lists, vocab_size=config.vocab_size, n_positions=config.n_positions)
    step = compile_step(model, query)
    n = len(token_lists)
    max_len = max(len(t) for t in token_lists)
    shape = (n, config.n_layer, config.n_head) + ((max_len,) if query == "all" else ())
    out = {name: np.full(shape, np.nan, dtype=np.float32) for name in DIAGNOSTICS}
    order = sorted(range(n), key=lambda i: len(token_lists[i]))  # length-sorted: fewer padded tokens
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        seq_len = bucket_length(max(len(token_lists[i]) for i in idx), config.n_positions)
        tokens, lengths = pad_batch([token_lists[i] for i in idx], batch_size, seq_len)
        result = jax.device_get(step(tokens, lengths))
        for name in DIAGNOSTICS:
            values = result[name][: len(idx)]
            if query == "all":
                width = min(seq_len, max_len)
                out[name][idx, ..., :width] = values[..., :width]
            else:
                out[name][idx] = values
    return out
