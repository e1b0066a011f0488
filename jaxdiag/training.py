"""What the shipped models' training scripts share: the optimiser, the jitted step and the training record.

``jaxdiag.induction.train`` and ``jaxdiag.ioi.train`` differ in data and loss only; both are
deterministic from their seed on one backend, which these pieces keep (no state, no clocks in the
step).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import shlex
from typing import Any, Callable

import jax
import optax
from flax import nnx

from jaxdiag.models.gpt2 import GPT2


def adamw_warmup_constant(learning_rate: float, warmup_steps: int, clip_norm: float,
                          weight_decay: float) -> optax.GradientTransformation:
    """AdamW with a linear warm-up to a constant rate, after global-norm clipping. Constant after the
    warm-up, so a run of N steps is exactly the first N steps of any longer run (snapshots retrain)."""
    schedule = optax.warmup_constant_schedule(0.0, learning_rate, warmup_steps)
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adamw(schedule, weight_decay=weight_decay))


def compile_train_step(model: GPT2, tx: optax.GradientTransformation, loss: Callable[..., jax.Array]):
    """``(graphdef, params, step)``: ``step(params, opt_state, *batch) -> (params, opt_state, loss)`` jitted
    and pure, ``loss(model, *batch)`` the scalar to minimise.

    Parameters travel as a plain pytree (nnx.split once, outside the loop), which keeps the
    per-step Python overhead of ``nnx.jit`` graph traversal out of a long CPU run.
    """
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def step(params, opt_state, *batch):
        value, grads = jax.value_and_grad(lambda p: loss(nnx.merge(graphdef, p), *batch))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return graphdef, params, step


def training_record(module: str, args: list[str], seed: int, cfg: Any, wall_s: float, cpu_s: float,
                    **results: Any) -> dict[str, Any]:
    """The ``training_record.json`` of a run: the command that reproduces it, its config and results, and
    where and how long it ran."""
    return {
        "command": f"python -m {module} " + shlex.join(args),
        "seed": seed,
        "train_config": dataclasses.asdict(cfg),
        **results,
        "wall_time_s": round(wall_s, 1),
        "cpu_time_s": round(cpu_s, 1),  # summed over threads; wall time on a shared machine overstates
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": {
            "jax": jax.__version__, "optax": optax.__version__, "backend": jax.default_backend(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
        },
    }
