"""Forward passes for the induction model: next-token logits, attention patterns, copying accuracy.

All go through :class:`jaxdiag.models.gpt2.GPT2` without the diagnostics probe, so what is measured here is
independent of the attention diagnostics the sweep computes. Ablations are
:class:`jaxdiag.models.edits.HeadEdit`\ s.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiag.induction.data import CopyingSet
from jaxdiag.models.edits import HeadEdit
from jaxdiag.models.gpt2 import GPT2
from jaxdiag.probes import ATTENTION_PROBE


def _full_lengths(tokens: jax.Array) -> jax.Array:
    return jnp.full((tokens.shape[0],), tokens.shape[1], dtype=jnp.int32)


def next_token_nll(model: GPT2, tokens: jax.Array, edit: HeadEdit | None = None) -> jax.Array:
    """``[b, t - 1]`` negative log-likelihood of ``tokens[:, 1:]`` given the prefixes (float32)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs, _full_lengths(inputs), edit=edit, logits=True).logits
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def compile_predict(model: GPT2) -> Callable[..., np.ndarray]:
    """A jitted ``(tokens, edit=None) -> argmax next token [b, t - 1]``."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def predict(state, tokens, edit):
        inputs = tokens[:, :-1]
        out = nnx.merge(graphdef, state)(inputs, _full_lengths(inputs), edit=edit, logits=True)
        return jnp.argmax(out.logits, axis=-1)

    def run(tokens, edit: HeadEdit | None = None):
        return np.asarray(predict(state, jnp.asarray(tokens), edit))

    return run


def copying_accuracy(predict: Callable[..., np.ndarray], data: CopyingSet, edit: HeadEdit | None = None) -> float:
    """Share of copyable targets (copy positions after the first) that the model's argmax predicts."""
    predicted = predict(data.tokens, edit)
    mask = data.target_mask()
    return float(np.mean(predicted[mask] == data.tokens[:, 1:][mask]))


def attention_patterns(model: GPT2, tokens: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """``[n, layer, head, query, key]`` attention probabilities of full-length ``tokens [n, t]``."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def patterns(state, tokens):
        out = nnx.merge(graphdef, state)(tokens, _full_lengths(tokens), probes=(ATTENTION_PROBE,), query="all")
        return out.probes["attention"]

    return np.concatenate(
        [np.asarray(patterns(state, jnp.asarray(tokens[i : i + batch_size]))) for i in range(0, len(tokens), batch_size)]
    )
