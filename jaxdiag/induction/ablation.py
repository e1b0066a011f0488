"""Per-head ablation: replace one head's output and measure what copying accuracy it costs.

Heads' outputs are read with the model's head-output probe and replaced with its edits
(:mod:`jaxdiag.models.edits`): a head ablated outputs zeros (zero-ablation) or its mean output over
reference prompts (mean-ablation) at every position, before the layer's output projection.
"""

from __future__ import annotations

from typing import Iterable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxdiag.causal.effects import head_effects, head_output_sums
from jaxdiag.induction.data import CopyingSet
from jaxdiag.induction.metrics import compile_predict, copying_accuracy
from jaxdiag.models.edits import HeadEdit, mean_heads, zero_heads
from jaxdiag.models.gpt2 import GPT2

Method = Literal["zero", "mean"]
Head = tuple[int, int]


def mean_head_outputs(model: GPT2, tokens: np.ndarray) -> np.ndarray:
    """``[layer, head, d_head]``: each head's output averaged over all prompts and positions of full-length ``tokens``
    (the sweep's ``head_mean`` computation, :func:`jaxdiag.causal.effects.head_output_sums`)."""
    tokens = jnp.asarray(tokens)
    sums = head_output_sums(model, tokens, jnp.full((tokens.shape[0],), tokens.shape[1], jnp.int32))
    return (np.asarray(sums["head_sum"], np.float64).sum(axis=0) / float(np.sum(sums["n_real"]))).astype(np.float32)


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
                   *, progress: bool = False, batch_size: int = 64) -> tuple[float, np.ndarray]:
    """``(baseline accuracy, [layer, head] drop in accuracy when that head alone is ablated)``.

    Every head at once with :func:`jaxdiag.causal.effects.head_effects` (the sweep's machinery): the
    readout counts each prompt's correctly copied targets, and a head's drop is the count it
    loses, summed over prompts, over the number of targets.
    """
    n_layer, n_head, d_head = _shape(model)
    if method == "mean" and means is None:
        raise ValueError("mean-ablation needs the heads' mean outputs")
    replacement = (jnp.zeros((n_layer, 1, n_head, d_head)) if method == "zero"
                   else jnp.asarray(means, jnp.float32)[:, None])
    graphdef, state = nnx.split(model)

    @jax.jit
    def correct_counts(state, inputs, targets, mask):
        model = nnx.merge(graphdef, state)
        lengths = jnp.full((inputs.shape[0],), inputs.shape[1], jnp.int32)

        def readout(hidden):
            hits = (jnp.argmax(model.unembed(hidden), axis=-1) == targets) & mask
            return jnp.sum(hits, axis=1).astype(jnp.float32)

        clean, effects = head_effects(model, inputs, lengths, readout, {method: replacement})
        return clean, effects[method]

    mask = data.target_mask()
    correct, lost = 0.0, np.zeros((n_layer, n_head))
    for start in tqdm(range(0, len(data.tokens), batch_size), disable=not progress, desc=f"{method}-ablating heads"):
        rows = slice(start, start + batch_size)
        clean, effects = correct_counts(state, jnp.asarray(data.tokens[rows, :-1]), jnp.asarray(data.tokens[rows, 1:]),
                                        jnp.asarray(mask[rows]))
        correct += float(np.asarray(clean).sum())
        lost -= np.asarray(effects, np.float64).sum(axis=0)
    return correct / mask.sum(), lost / mask.sum()
