"""Per-head ablation: replace one head's output and measure what copying accuracy it costs.

Heads' outputs are read with the model's head-output probe and replaced with its edits
(:mod:`jaxdiag.interventions`): a head ablated outputs zeros (zero-ablation) or its mean output over
reference prompts (mean-ablation) at every position, before the layer's output projection.
"""

from __future__ import annotations

from typing import Iterable, Literal

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxdiag.induction.data import CopyingSet
from jaxdiag.induction.metrics import compile_predict, copying_accuracy
from jaxdiag.interventions import HeadEdit, mean_heads, zero_heads
from jaxdiag.model import GPT2
from jaxdiag.probes import HEAD_OUTPUT_PROBE

Method = Literal["zero", "mean"]
Head = tuple[int, int]


def head_outputs(model: GPT2, tokens: np.ndarray) -> np.ndarray:
    """``[n, t, layer, head, d_head]``: every head's output (before ``c_proj``) on full-length ``tokens``."""
    tokens = jnp.asarray(tokens)
    out = model(tokens, jnp.full((tokens.shape[0],), tokens.shape[1], jnp.int32), probes=(HEAD_OUTPUT_PROBE,))
    return np.moveaxis(np.asarray(out.probes["head_out"]), 1, 2)  # [n, layer, t, ...] -> [n, t, layer, ...]


def mean_head_outputs(model: GPT2, tokens: np.ndarray) -> np.ndarray:
    """``[layer, head, d_head]``: each head's output averaged over all prompts and positions."""
    return head_outputs(model, tokens).mean(axis=(0, 1)).astype(np.float32)


def ablation_edit(shape: tuple[int, int, int], heads: Iterable[Head], method: Method,
                  means: np.ndarray | None = None) -> HeadEdit:
    """The edit that ablates ``heads`` (of a model with ``shape = (layer, head, d_head)``) and no other."""
    if method == "zero":
        return zero_heads(shape, heads)
    if method == "mean":
        if means is None:
            raise ValueError("mean-ablation needs the heads' mean outputs")
        return mean_heads(means, heads)
    raise ValueError(f"unknown ablation method {method!r} (choose 'zero' or 'mean')")


def _shape(model: GPT2) -> tuple[int, int, int]:
    return model.config.n_layer, model.config.n_head, model.config.d_head


def ablated_accuracy(model: GPT2, data: CopyingSet, heads: Iterable[Head], method: Method = "mean",
                     means: np.ndarray | None = None, predict=None) -> float:
    """Copying accuracy with ``heads`` ablated together."""
    predict = predict or compile_predict(model)
    return copying_accuracy(predict, data, ablation_edit(_shape(model), heads, method, means))


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
