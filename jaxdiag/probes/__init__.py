"""Probes: per-layer reductions that read a layer's attention inside the compiled step.

A probe is a pure function of one layer's :class:`AttentionView` that returns named arrays with the
batch axis first; the model stacks each name over layers on axis 1. What a probe returns is all that
leaves the step, so a sweep keeps only reductions on the host, never a layer's full pattern.

Row-wise probes (those of the query rows being diagnosed) return ``[batch, head, row]`` per layer,
so ``[batch, layer, head, row]`` after stacking; ``row`` has length 1 for ``query="last"``.

Why values are returned rather than sown into the module (``nnx.Module.sow`` + ``nnx.pop``): the
forward pass stays a pure function of (parameters, tokens, edits) to outputs, so ``jax.vmap`` over
per-head edits (the causal-effects sweep) and ``jax.grad`` through the step (attribution patching)
compose with it directly, with no mutable module state to thread through ``nnx.vmap`` axes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxdiag.probes.diagnostics import attention_diagnostics
from jaxdiag.errors import JaxdiagError
from jaxdiag.schema import DIAGNOSTIC_ATTRS, TAXONOMY_ATTRS
from jaxdiag.probes.streaming import RowStats, stats_diagnostics, stats_taxonomy
from jaxdiag.probes.taxonomy import taxonomy_scores


@dataclasses.dataclass(frozen=True)
class AttentionView:
    """What one layer's attention shows a probe. Shapes: b batch, h heads, r probed rows, k keys, s seq.

    ``scores``/``probs`` are ``None`` on the streaming path with every row probed, where the
    ``[b, h, s, k]`` pattern is never formed; ``row_stats`` (the streaming running statistics of
    every row, padded rows marked empty) is given there instead, and only there.
    """

    layer: int
    rows: jax.Array  # [b, r] absolute query positions of the probed rows
    visible: jax.Array  # [b, 1, r, k] bool: which keys each probed row sees (none for padded rows)
    scores: jax.Array | None  # [b, h, r, k] float32 q.k scaled as the model scales it
    probs: jax.Array | None  # [b, h, r, k] the attention weights the model used
    row_stats: RowStats | None
    head_out: jax.Array | None  # [b, s, h, d_head] each head's output before any edit and before c_proj
    # (None where the layer's output is never computed: see Probe.reads_outputs)
    tokens: jax.Array  # [b, s] int32
    lengths: jax.Array  # [b] int32


@dataclasses.dataclass(frozen=True)
class Probe:
    """A named per-layer reduction. ``streams``: it can read a streaming view (``scores is None``);
    ``reads_outputs``: it reads ``head_out``, so the model computes every layer's output in full.
    ``attrs``: the per-head store variables it gives, name -> (long_name, units), in store order;
    a sweep stores exactly these (the store's schema is built from its probes' ``attrs``), and a
    probe without them (patterns, head outputs) is for direct calls only."""

    name: str
    read: Callable[[AttentionView], dict[str, jax.Array]]
    streams: bool = False
    reads_outputs: bool = False
    attrs: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)


def _diagnostics(view: AttentionView) -> dict[str, jax.Array]:
    if view.scores is None:
        return stats_diagnostics(view.row_stats)
    return attention_diagnostics(view.scores, view.visible)


def _taxonomy(view: AttentionView) -> dict[str, jax.Array]:
    if view.scores is None:
        return stats_taxonomy(view.row_stats)
    return taxonomy_scores(view.scores, view.visible, view.rows, view.tokens)


def _pattern(view: AttentionView) -> dict[str, jax.Array]:
    return {"attention": _needs_pattern(view, "attention").probs}


def _head_outputs(view: AttentionView) -> dict[str, jax.Array]:
    return {"head_out": view.head_out}


def _needs_pattern(view: AttentionView, name: str) -> AttentionView:
    if view.scores is None:
        raise JaxdiagError(f"probe {name!r} needs attention='direct': the streaming path never forms the pattern")
    return view


# The seven attention diagnostics of jaxdiag.probes.diagnostics, [b, h, r] per layer.
DIAGNOSTICS_PROBE = Probe("diagnostics", _diagnostics, streams=True, attrs=DIAGNOSTIC_ATTRS)
# The five head-taxonomy scores of jaxdiag.probes.taxonomy (previous-token, self, duplicate, induction, log_z).
TAXONOMY_PROBE = Probe("taxonomy", _taxonomy, streams=True, attrs=TAXONOMY_ATTRS)
# The attention weights of the probed rows, [b, h, r, k] per layer: for tests and small inputs.
ATTENTION_PROBE = Probe("attention", _pattern)
# Every head's output at every position, [b, s, h, d_head] per layer (mean- and patch-ablation sources).
HEAD_OUTPUT_PROBE = Probe("head_out", _head_outputs, streams=True, reads_outputs=True)


def read_probes(probes: tuple[Probe, ...], view: AttentionView) -> dict[str, jax.Array]:
    """Every probe's arrays for one layer, in one dict; two probes may not give the same name."""
    out: dict[str, jax.Array] = {}
    for probe in probes:
        for name, value in probe.read(view).items():
            if name in out:
                raise JaxdiagError(f"probe {probe.name!r} gives {name!r}, which another probe already gives")
            out[name] = value
    return out


def stack_layers(per_layer: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    """``[{name: [b, ...]}] * n_layer`` -> ``{name: [b, layer, ...]}``."""
    if not per_layer:
        return {}
    return {name: jnp.stack([values[name] for values in per_layer], axis=1) for name in per_layer[0]}


def stored_variables(probes: Sequence[Probe]) -> dict[str, tuple[str, str]]:
    """The per-head variables a sweep with ``probes`` stores, name -> (long_name, units), in store order."""
    out: dict[str, tuple[str, str]] = {}
    for probe in probes:
        for name, attrs in probe.attrs.items():
            if name in out:
                raise JaxdiagError(f"probe {probe.name!r} gives {name!r}, which another probe already gives")
            out[name] = attrs
    return out
