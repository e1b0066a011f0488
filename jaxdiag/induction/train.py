"""Train the small GPT-2 with an induction circuit that jaxdiag ships as its offline default.

    python -m jaxdiag.induction.train --out DIR --seed 0

Deterministic from the seed on CPU: data come from ``numpy.random.default_rng(seed)`` and the
initial weights from ``nnx.Rngs(seed)``; the run is a fixed number of steps (no early stopping).
Writes ``config.json`` + ``model.safetensors`` (via :func:`jaxdiag.checkpoint.save_checkpoint`)
and ``training_record.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from jaxdiag.checkpoint import save_checkpoint
from jaxdiag.config import GPT2Config
from jaxdiag.induction.data import BOS_ID, copying_set, training_batch
from jaxdiag.induction.metrics import compile_predict, copying_accuracy, next_token_nll
from jaxdiag.model import GPT2

EVAL_SEED = 12345  # the copying-accuracy prompts; fixed, independent of the training seed


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    vocab_size: int = 256
    n_layer: int = 3
    n_head: int = 8
    n_embd: int = 128
    # Curriculum: (sequence length in tokens incl. BOS and the last target, steps). The last stage's
    # inputs span the whole context window, so every position the diagnostics read is trained.
    stages: tuple[tuple[int, int], ...] = ((25, 2000), (49, 1500))
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    p_random: float = 0.25  # share of fully random sequences (nothing to copy)
    copy_weight: float = 4.0  # loss weight of copyable targets
    eval_prompts: int = 256

    @property
    def n_positions(self) -> int:
        return max(n for n, _ in self.stages) - 1

    @property
    def total_steps(self) -> int:
        return sum(steps for _, steps in self.stages)

    def model_config(self) -> GPT2Config:
        return GPT2Config(
            vocab_size=self.vocab_size, n_positions=self.n_positions, n_embd=self.n_embd,
            n_layer=self.n_layer, n_head=self.n_head, bos_token_id=BOS_ID,
        )


def _loss(model: GPT2, tokens: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.sum(next_token_nll(model, tokens) * weights) / jnp.sum(weights)


@nnx.jit
def _train_step(model: GPT2, optimizer: nnx.Optimizer, tokens: jax.Array, weights: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(_loss)(model, tokens, weights)
    optimizer.update(model, grads)
    return loss


def evaluate(model: GPT2, cfg: TrainConfig) -> dict[str, float]:
    """Copying accuracy on held-out prompts at the full context length: varied copies and halves."""
    predict = compile_predict(model)
    n_tokens = cfg.n_positions + 1
    return {
        kind: copying_accuracy(predict, copying_set(EVAL_SEED, cfg.eval_prompts, n_tokens, cfg.vocab_size, kind=kind))
        for kind in ("varied", "halves")
    }


def train(cfg: TrainConfig, seed: int, *, progress: bool = True) -> tuple[GPT2, dict]:
    """Train from scratch; returns the model and a summary (losses, accuracies)."""
    rng = np.random.default_rng(seed)
    model = GPT2(cfg.model_config(), precision="highest", rngs=nnx.Rngs(seed))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, min(cfg.warmup_steps, cfg.total_steps // 10), cfg.total_steps, end_value=cfg.learning_rate * 0.05
    )
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=cfg.weight_decay), wrt=nnx.Param)
    history = []
    bar = tqdm(total=cfg.total_steps, disable=not progress, desc="training", mininterval=5)
    loss = float("nan")
    for n_tokens, steps in cfg.stages:
        for _ in range(steps):
            tokens, weights = training_batch(
                rng, cfg.batch_size, n_tokens, cfg.vocab_size, p_random=cfg.p_random, copy_weight=cfg.copy_weight
            )
            loss = float(_train_step(model, optimizer, jnp.asarray(tokens), jnp.asarray(weights)))
            bar.update()
            if bar.n % 100 == 0:
                bar.set_postfix(loss=f"{loss:.3f}", seq=n_tokens)
                history.append({"step": bar.n, "loss": round(loss, 4)})
            if bar.n % 500 == 0 and progress:
                bar.write(f"step {bar.n}: loss {loss:.4f} copying {evaluate(model, cfg)}")
    bar.close()
    return model, {"final_loss": loss, "loss_history": history, "copying_accuracy": evaluate(model, cfg)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, nargs="+", help="steps per curriculum stage (default: the recorded ones)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    cfg = TrainConfig()
    if args.steps:
        if len(args.steps) != len(cfg.stages):
            parser.error(f"--steps needs {len(cfg.stages)} values, one per stage")
        cfg = dataclasses.replace(cfg, stages=tuple((n, s) for (n, _), s in zip(cfg.stages, args.steps)))
    start = time.perf_counter()
    model, summary = train(cfg, args.seed, progress=not args.no_progress)
    wall = time.perf_counter() - start
    save_checkpoint(model, args.out)
    record = {
        "command": "python -m jaxdiag.induction.train " + shlex.join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed,
        "train_config": dataclasses.asdict(cfg),
        "final_loss": summary["final_loss"],
        "copying_accuracy": summary["copying_accuracy"],
        "copying_eval": {"seed": EVAL_SEED, "prompts": cfg.eval_prompts, "n_tokens": cfg.n_positions + 1},
        "loss_history": summary["loss_history"],
        "wall_time_s": round(wall, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": {
            "jax": jax.__version__, "optax": optax.__version__, "backend": jax.default_backend(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
        },
    }
    (args.out / "training_record.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("final_loss", "copying_accuracy", "wall_time_s")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
