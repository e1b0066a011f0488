"""Forward passes for the induction model: next-token logits, attention patterns, copying accuracy.

All go through :class:`jaxdiag.model.GPT2` with ``query=None`` (no diagnostics), so what is
measured here is independent of the attention diagnostics the sweep computes.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiag.induction.data import CopyingSet
from jaxdiag.model import GPT2


def _full_lengths(tokens: jax.Array) -> jax.Array:
    return jnp.full((tokens.shape[0],), tokens.shape[1], dtype=jnp.int32)


def next_token_nll(model: GPT2, tokens: jax.Array, **ablation) -> jax.Array:
    """``[b, t - 1]`` negative log-likelihood of ``tokens[:, 1:]`` given the prefixes (float32)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs, _full_lengths(inputs), query=None, return_logits=True, **ablation)["logits"]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def compile_predict(model: GPT2) -> Callable[..., np.ndarray]:
    """A jitted ``(tokens, head_scale=None, head_replacement=None) -> argmax next token [b, t - 1]``."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def predict(state, tokens, head_scale, head_replacement):
        inputs = tokens[:, :-1]
        out = nnx.merge(graphdef, state)(
            inputs, _full_lengths(inputs), query=None, return_logits=True,
            head_scale=head_scale, head_replacement=head_replacement,
        )
        return jnp.argmax(out["logits"], axis=-1)

    def run(tokens, head_scale=None, head_replacement=None):
        return np.asarray(predict(state, jnp.asarray(tokens), head_scale, head_replacement))

    return run


def copying_accuracy(predict: Callable[..., np.ndarray], data: CopyingSet, **ablation) -> float:
    """Share of copyable targets (copy positions after the first) that the model's argmax predicts."""
    predicted = predict(data.tokens, **ablation)
    mask = data.target_mask()
    return float(np.mean(predicted[mask] == data.tokens[:, 1:][mask]))


def attention_patterns(model: GPT2, tokens: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """``[n, layer, head, query, key]`` attention probabilities of full-length ``tokens [n, t]``."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def patterns(state, tokens):
        out = nnx.merge(graphdef, state)(tokens, _full_lengths(tokens), query=None, return_attention=True)
        return jnp.transpose(out["attention"], (1, 0, 2, 3, 4))  # [layer, b, ...] -> [b, layer, ...]

    return np.concatenate(
        [np.asarray(patterns(state, jnp.asarray(tokens[i : i + batch_size]))) for i in range(0, len(tokens), batch_size)]
    )
