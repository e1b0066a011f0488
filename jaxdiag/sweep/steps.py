"""The compiled steps of a sweep: diagnostics, and on request every head's effects and their
attribution estimates, plus the reference pass that mean-ablation needs."""

from __future__ import annotations

from typing import Iterable, Sequence

import jax
import numpy as np
from flax import nnx

from jaxdiag.causal.components import direct_logit_attribution, logit_lens, position_patches
from jaxdiag.causal.effects import (attribution_effects, clean_trace, edit_replacement, head_effects, head_output_sums,
                                    task_readout)
from jaxdiag.schema import EXACT_KINDS, POSITION_KINDS, QueryMode, edit_of, head_effect_kinds
from jaxdiag.probes import Probe
from jaxdiag.sweep.runner import SWEEP_PROBES, Unit, diagnostics_step


# Heads of a layer run together, as many as keep one edited run's activations near this many bytes.
EFFECT_STEP_BYTES = 256 * 2**20


def effect_heads_per_step(batch_size: int, max_len: int, config) -> int:
    """How many heads of a layer one edited run takes at once (``heads_per_step`` of :func:`sweep_step`)."""
    per_head = 8 * 4 * batch_size * max_len * config.n_embd
    return max(1, min(config.n_head, EFFECT_STEP_BYTES // per_head))


def edits_per_step(batch_size: int, max_len: int, config) -> int:
    """How many position patches (each one edited run of the batch) one step takes at once."""
    return max(1, EFFECT_STEP_BYTES // (8 * 4 * batch_size * max_len * config.n_embd))


def sweep_step(graphdef, query: QueryMode, kinds: Sequence[str], *, head_mean: np.ndarray | None = None,
               heads_per_step: int | None = None, probes: tuple[Probe, ...] = SWEEP_PROBES,
               patches_per_step: int | None = None):
    """A sweep step: the diagnostics, the clean ``metric`` and ``effect_<kind>`` for ``kinds``.

    ``step(state, tokens, lengths, target, foil[, partner][, position])`` -> ``{name: [b, ...]}``;
    ``partner`` (the pair partners' tokens, same shape) is needed for ``patch``, ``head_mean`` for
    ``mean``; ``position [b]`` is where each metric is read (default: the last real position).
    The diagnostics are the runner's own compiled step, not fused into the effects' program, so a
    run with effects stores the same diagnostics, bit for bit, as one without.
    """
    components = [kind for kind in kinds if kind not in head_effect_kinds(kinds)]
    kinds = head_effect_kinds(kinds)
    edits = sorted({edit_of(kind) for kind in kinds}, key=EXACT_KINDS.index)
    if "mean" in edits and head_mean is None:
        raise ValueError("mean-ablation effects need the reference condition's head_mean")
    exact = [kind for kind in kinds if kind in EXACT_KINDS]
    attribution = [kind for kind in kinds if kind not in EXACT_KINDS]

    diagnose = diagnostics_step(graphdef, query, probes)

    def _components(model, tokens, lengths, target, foil, partner, position, readout):
        where = lengths - 1 if position is None else position
        trace = clean_trace(model, tokens, lengths)
        metric = readout(trace.hidden)
        out = {"metric": metric}
        if "dla" in components:
            out |= direct_logit_attribution(model, trace, target, foil, where)
        if "lens" in components or "lens_rank" in components:
            out |= logit_lens(model, trace, target, foil, where, rank="lens_rank" in components)
        patching = [kind for kind in components if kind in POSITION_KINDS]
        if patching:
            out |= position_patches(model, tokens, lengths, trace, clean_trace(model, partner, lengths), readout,
                                    metric, patching, per_step=patches_per_step)
        return out

    @jax.jit
    def effects(state, tokens, lengths, target, foil, partner, position):
        model = nnx.merge(graphdef, state)
        replacements = {edit: edit_replacement(model, edit, lengths, head_mean=head_mean, partner=partner)
                        for edit in edits}
        readout = task_readout(model, lengths, target, foil, position)
        out = {}
        if components:  # one clean trace for all of them (a run of whole-head kinds alone computes what it did)
            out |= _components(model, tokens, lengths, target, foil, partner, position, readout)
        if not kinds:
            return out
        metric, per_kind = head_effects(
model, tokens, lengths, readout, {k: replacements[k] for k in exact},
                                        heads_per_step=heads_per_step)
        if attribution:
            needed = {edit_of(kind) for kind in attribution}
            estimates = attribution_effects(model, tokens, lengths, readout, {k: replacements[k] for k in needed},
                                            graddrop=any(kind.startswith("atpstar_") for kind in attribution))
            per_kind |= {kind: estimates[kind] for kind in attribution}
        return out | {"metric": metric} | {f"effect_{kind}": per_kind[kind] for kind in kinds}

    def step(state, tokens, lengths, target, foil, partner=None, position=None):
        return diagnose(state, tokens, lengths) | effects(state, tokens, lengths, target, foil, partner, position)

    return step


def head_sums_step(graphdef):
    """A jitted ``(state, tokens, lengths) -> {"head_sum": [b, layer, head, d], "n_real": [b]}`` per prompt."""
    @jax.jit
    def step(state, tokens, lengths):
        return head_output_sums(nnx.merge(graphdef, state), tokens, lengths)

    return step


def reference_means(results: Iterable[tuple[Unit, dict[str, np.ndarray]]]) -> np.ndarray:
    """``head_mean [layer, head, d_head]`` over every real position of the units' real prompts.

    Summed on the host in float64 in unit order, so the mean is the same however units are batched
    onto devices.
    """
    total, count = None, 0.0
    for unit, result in results:
        rows = len(unit.keys)
        sums = result["head_sum"][:rows].astype(np.float64).sum(axis=0)
        total = sums if total is None else total + sums
        count += float(result["n_real"][:rows].sum())
    if total is None:
        raise ValueError("no reference prompts for the mean head outputs")
    return (total / count).astype(np.float32)
