"""The GPU run's own measurements, one per call, run by ``benchmarks.workers`` in a fresh process
(``{"kind": "points", "module": "benchmarks.gpu_workers", ...}``); every kind of
``benchmarks.workers`` is available here too.

- ``effects_jaxdiag`` / ``effects_transformerlens``: ``benchmarks.effects``' measurements on the device;
- ``precision_drift``: each diagnostic under jaxdiag's precisions against a float64 CPU reference;
- ``profile_step``: a ``jax.profiler`` trace of the diagnostics step, packed into one file.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import workers
from benchmarks.measure import random_prompts


def effects_jaxdiag(spec: dict) -> dict[str, Any]:
    """Every head's effects of ``spec["kinds"]`` (one run, e.g. ``["patch"]``) on ``n_pairs`` prompt pairs."""
    from benchmarks.effects import bench_jaxdiag, effect_inputs

    inputs = effect_inputs(spec["n_pairs"], spec["seq"], spec["vocab_size"])
    out = bench_jaxdiag(spec["checkpoint"], *inputs, spec.get("repeats", 2), precision=spec.get("precision", "highest"),
                        runs_of=[tuple(spec["kinds"])])
    return out | _device_memory()


def effects_transformerlens(spec: dict) -> dict[str, Any]:
    """TransformerLens's ``get_act_patch_attn_head_out_all_pos`` on the same pairs, on ``spec["device"]``."""
    from benchmarks.effects import bench_transformerlens, effect_inputs

    inputs = effect_inputs(spec["n_pairs"], spec["seq"], spec["vocab_size"])
    device = "cuda" if spec.get("device") == "gpu" else "cpu"
    return bench_transformerlens(spec["checkpoint"], *inputs, spec.get("repeats", 1), device=device)


def drift_prompts(kind: str, n: int, seq: int, vocab_size: int) -> np.ndarray:
    """``random`` token prompts, or ``repeated``: a random half followed by itself, the input on which
    induction and previous-token heads attend sharply (near-uniform attention would hide the drift)."""
    if kind == "random":
        return random_prompts(n, seq, vocab_size)
    half = random_prompts(n, seq // 2, vocab_size)
    return np.concatenate([half, half], axis=1)


def reference_diagnostics(directory: str, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The last position's diagnostics and head-taxonomy scores in float64 on the CPU: transformers'
    eager GPT-2 (an implementation independent of jaxdiag's) cast to float64, reduced in float64.
    (``log_z`` is left out: the attention probabilities do not determine it.)"""
    import torch
    from transformers import GPT2Model

    model = GPT2Model.from_pretrained(directory, attn_implementation="eager").eval().to("cpu", torch.float64)
    with torch.inference_mode():
        patterns = model(torch.from_numpy(tokens).long(), output_attentions=True).attentions
        last_rows = torch.stack([p[:, :, -1, :] for p in patterns], dim=1).numpy()  # [b, layer, head, n]
        return workers.torch_diagnostics(patterns, torch, dtype=torch.float64) | reference_taxonomy(last_rows, tokens)


def reference_taxonomy(pi: np.ndarray, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """``prev_attn``, ``self_attn``, ``dup_attn``, ``induction_attn`` of the last query ``t = n - 1`` from its
    attention row ``pi [b, layer, head, n]`` and the prompts ``tokens [b, n]`` (every key visible), as
    jaxdiag.probes.taxonomy defines them; a share is NaN where its set of keys is empty."""
    n = tokens.shape[1]
    t, keys, query = n - 1, np.arange(n)[None, :], tokens[:, -1:]
    previous = np.concatenate([np.full_like(tokens[:, :1], -1), tokens[:, :-1]], axis=1)
    earlier_copies = (keys < t) & (tokens == query)
    after_copies = (keys >= 1) & (previous == query)

    def share(mask: np.ndarray) -> np.ndarray:
        total = (pi * mask[:, None, None, :]).sum(-1)
        return np.where(mask.any(-1)[:, None, None], total, np.nan)

    return {"prev_attn": pi[..., t - 1], "self_attn": pi[..., t], "dup_attn": share(earlier_copies),
            "induction_attn": share(after_copies)}


def jaxdiag_diagnostics(checkpoint: str, precision: str, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """jaxdiag's diagnostics of the last position at ``precision`` on the default (accelerator) device."""
    import jax

    model = workers._loaded_model(checkpoint, precision)
    step, state, _, lengths = workers.one_batch_step(model, len(tokens), tokens.shape[1])
    return jax.device_get(step(state, tokens, lengths))


def deviations(values: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per variable: largest absolute deviation and ``||out - ref|| / ||ref||`` over the reference's
    numbers (a NaN in their place counts as an infinite deviation; None where the reference has none),
    and how many entries are NaN in one and not the other."""
    out = {}
    for name, ref in reference.items():
        ref = np.asarray(ref, np.float64)
        got = np.asarray(values[name], np.float64).reshape(ref.shape)
        keep = ~np.isnan(ref)
        diff = np.where(np.isnan(got[keep]), np.inf, got[keep] - ref[keep])
        norm = float(np.linalg.norm(ref[keep]))
        out[name] = {"max_abs": float(np.max(np.abs(diff))) if diff.size else None,
                     "rel_norm": (float(np.linalg.norm(diff) / norm) if norm > 0 else float(np.linalg.norm(diff)))
                     if diff.size else None,
                     "nan_mismatches": int(np.sum(np.isnan(got) != np.isnan(ref)))}
    return out


def precision_drift(spec: dict) -> dict[str, Any]:
    """How far each precision moves every diagnostic from the float64 CPU reference, on one model:
    ``{checkpoint, prompts: random|repeated, n, seq, precisions}``."""
    from jaxdiag.checkpoint import resolve

    config = workers._loaded_model(spec["checkpoint"], "highest").config
    seq = min(spec["seq"], config.n_positions)
    tokens = drift_prompts(spec["prompts"], spec["n"], seq, config.vocab_size)
    reference = reference_diagnostics(str(resolve(spec["checkpoint"]).directory), tokens)
    sharpness = {"max_attn_mean": float(np.mean(reference["max_attn"])), "kl_norm_mean": float(np.mean(reference["kl_norm"]))}
    drift = {precision: deviations(jaxdiag_diagnostics(spec["checkpoint"], precision, tokens), reference)
             for precision in spec["precisions"]}
    return {"seq": int(tokens.shape[1]), "n": len(tokens), "reference": sharpness, "drift": drift}


def profile_step(spec: dict) -> dict[str, Any]:
    """A ``jax.profiler`` trace of ``steps`` diagnostics steps (after a compiling one), packed into
    ``spec["out"]`` (.tar.gz: the trace's folders are deeper than what the device run brings back)."""
    import jax

    model = workers._loaded_model(spec["checkpoint"], spec.get("precision", "highest"))
    step, state, tokens, lengths = workers.one_batch_step(model, spec["batch"], spec["seq"])
    jax.block_until_ready(step(state, tokens, lengths))
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(spec.get("steps", 3)):
                jax.block_until_ready(step(state, tokens, lengths))
        with tarfile.open(spec["out"], "w:gz") as archive:
            archive.add(trace_dir, arcname="trace")
    return {"trace": spec["out"], "bytes": Path(spec["out"]).stat().st_size}


def _device_memory() -> dict[str, Any]:
    import jax

    return workers._device_memory(jax)


KINDS = workers.KINDS | {
    "effects_jaxdiag": effects_jaxdiag, "effects_transformerlens": effects_transformerlens,
    "precision_drift": precision_drift, "profile_step": profile_step,
}
