"""Per-head ablation: replace one head's output and measure what copying accuracy it costs.

Uses the model's own ``head_scale`` / ``head_replacement`` arguments: a head with scale 0 outputs
its replacement vector (zeros for zero-ablation, its mean output over reference prompts for
mean-ablation) at every position, before the layer's output projection.
"""

from __future__ import annotations

from typing import Iterable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxdiag.induction.data import CopyingSet
from jaxdiag.induction.metrics import compile_predict, copying_accuracy
from jaxdiag.model import GPT2

Method = Literal["zero", "mean"]
Head = tuple[int, int]


def head_outputs(model: GPT2, tokens: np.ndarray) -> np.ndarray:
    """``[n, t, layer, head, d_head]``: every head's output (before ``c_proj``) on full-length ``tokens``.

    Read by wrapping each layer's output projection in a clone of the model, so the forward pass
    is the model's own, not a re-implementation.
    """
    clone = nnx.clone(model)
    seen: list[jax.Array] = []
    for block in clone.h:
        block.attn.c_proj = _Recording(block.attn.c_proj, seen)
    tokens = jnp.asarray(tokens)
    clone(tokens, jnp.full((tokens.shape[0],), tokens.shape[1], jnp.int32), query=None)
    config = model.config
    per_layer = [np.asarray(x).reshape(*tokens.shape, config.n_head, config.d_head) for x in seen]
    return np.stack(per_layer, axis=2)


class _Recording(nnx.Module):
    """A linear layer that also appends its input to an outside list (eager use only)."""

    def __init__(self, inner: nnx.Linear, sink: list):
        self.inner = inner
        self.sink = nnx.static(sink) if hasattr(nnx, "static") else sink

    def __call__(self, x: jax.Array) -> jax.Array:
        self.sink.append(x)
        return self.inner(x)


def mean_head_outputs(model: GPT2, tokens: np.ndarray) -> np.ndarray:
    """``[layer, head, d_head]``: each head's output averaged over all prompts and positions."""
    return head_outputs(model, tokens).mean(axis=(0, 1)).astype(np.float32)


def ablation_arrays(config_shape: tuple[int, int, int], heads: Iterable[Head], method: Method,
                    means: np.ndarray | None = None) -> dict[str, jax.Array]:
    """``head_scale`` / ``head_replacement`` that ablate ``heads`` and leave every other head alone."""
    n_layer, n_head, d_head = config_shape
    scale = np.ones((n_layer, n_head), dtype=np.float32)
    for layer, head in heads:
        scale[layer, head] = 0.0
    if method == "zero":
        replacement = np.zeros((n_layer, n_head, d_head), dtype=np.float32)
    elif method == "mean":
        if means is None:
            raise ValueError("mean-ablation needs the heads' mean outputs")
        replacement = np.asarray(means, dtype=np.float32)
    else:
        raise ValueError(f"unknown ablation method {method!r} (choose 'zero' or 'mean')")
    return {"head_scale": jnp.asarray(scale), "head_replacement": jnp.asarray(replacement)}


def _shape(model: GPT2) -> tuple[int, int, int]:
    return model.config.n_layer, model.config.n_head, model.config.d_head


def ablated_accuracy(model: GPT2, data: CopyingSet, heads: Iterable[Head], method: Method = "mean",
                     means: np.ndarray | None = None, predict=None) -> float:
    """Copying accuracy with ``heads`` ablated together."""
    predict = predict or compile_predict(model)
    return copying_accuracy(predict, data, **ablation_arrays(_shape(model), heads, method, means))


def per_head_drops(model: GPT2, data: CopyingSet, method: Method = "mean", means: np.ndarray | None = None,
                   *, progress: bool = False) -> tuple[float, np.ndarray]:
    """``(baseline accuracy, [layer, head] drop in accuracy when that head alone is ablated)``."""
    predict = compile_predict(model)
    n_layer, n_head, _ = _shape(model)
    baseline = copying_accuracy(predict, data)
    drops = np.zeros((n_layer, n_head))
    for layer, head in tqdm([(l, h) for l in range(n_layer) for h in range(n_head)], disable=not progress,
                            desc=f"{method}-ablating heads"):
        drops[layer, head] = baseline - ablated_accuracy(model, data, [(layer, head)], method, means, predict)
    return baseline, drops
