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
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxdiag.models.load import save_checkpoint
from jaxdiag.models.gpt2 import GPT2, GPT2Config
from jaxdiag.vocab import write_trained_tokens
from jaxdiag.induction.data import BOS_ID, copying_set, training_batch
from jaxdiag.induction.metrics import compile_predict, copying_accuracy, next_token_nll
from jaxdiag.training import adamw_warmup_constant, compile_train_step, training_record

EVAL_SEED = 12345  # the copying-accuracy prompts; fixed, independent of the training seed


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    vocab_size: int = 256
    n_layer: int = 3
    n_head: int = 8
    n_embd: int = 64
    # Curriculum: (sequence length in tokens incl. BOS and the last target, steps). The last stage's
    # inputs span the whole context window, so every position the diagnostics read is trained.
    stages: tuple[tuple[int, int], ...] = ((33, 5000),)
    batch_size: int = 64
    # 1e-3 crosses the induction phase change near step 600; 3e-3 stalled on a plateau for
    # thousands of steps in every run tried (d_model 64 and 128).
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    # Strong decay: weights no loss term defends shrink away, so heads the circuit does not use end
    # with near-uniform attention instead of arbitrary leftover patterns. At 0.01 the spare layer-2
    # heads kept sharp patterns (on BOS) that moved more between repeated and random prompts than
    # any induction head while changing copying by < 0.1 points; 1.5 or more slows the phase change
    # past 4,000 steps (88% copying).
    weight_decay: float = 1.0
    clip_norm: float = 1.0
    # Periods beyond the head count: with fewer offsets than heads, one head per period can copy
    # by a fixed-offset shortcut instead of by induction (seen with 2 x 12 heads and periods 3-14).
    max_period: int = 14
    p_random: float = 0.1  # share of fully random sequences (nothing to copy)
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


def evaluate(model: GPT2, cfg: TrainConfig, n_tokens: int | None = None) -> dict[str, float]:
    """Copying accuracy on held-out prompts (default: the full context): varied copies and halves."""
    predict = compile_predict(model)
    n_tokens = n_tokens or cfg.n_positions + 1
    return {
        kind: copying_accuracy(predict, copying_set(EVAL_SEED, cfg.eval_prompts, n_tokens, cfg.vocab_size, kind=kind))
        for kind in ("varied", "halves")
    }


def train(cfg: TrainConfig, seed: int, *, progress: bool = True, snapshots: Path | None = None,
          eval_every: int = 250) -> tuple[GPT2, dict]:
    """Train from scratch; returns the model and a summary (losses, accuracies).

    ``snapshots``: also save the model every ``eval_every`` steps into ``snapshots/step_N`` (to
    choose a step count; the schedule is constant, so ``--steps N`` retrains that very snapshot).
    """
    rng = np.random.default_rng(seed)
    model = GPT2(cfg.model_config(), precision="highest", rngs=nnx.Rngs(seed))
    tx = adamw_warmup_constant(cfg.learning_rate, cfg.warmup_steps, cfg.clip_norm, cfg.weight_decay)
    graphdef, params, step = compile_train_step(model, tx, _loss)
    opt_state = tx.init(params)
    history = []
    bar = tqdm(total=cfg.total_steps, disable=not progress, desc="training", mininterval=5)
    step_count = 0  # not bar.n: a disabled tqdm does not count
    for n_tokens, steps in cfg.stages:
        for _ in range(steps):
            tokens, weights = training_batch(
                rng, cfg.batch_size, n_tokens, cfg.vocab_size, p_random=cfg.p_random, copy_weight=cfg.copy_weight,
                max_period=cfg.max_period,
            )
            params, opt_state, loss_value = step(params, opt_state, jnp.asarray(tokens), jnp.asarray(weights))
            step_count += 1
            bar.update()
            if step_count % 100 == 0:
                loss = float(loss_value)
                bar.set_postfix(loss=f"{loss:.3f}", seq=n_tokens)
                history.append({"step": step_count, "loss": round(loss, 4)})
            if step_count % eval_every == 0 and (progress or snapshots):
                model = nnx.merge(graphdef, params)
                bar.write(f"step {step_count}: loss {float(loss_value):.4f} copying at {n_tokens} tokens {evaluate(model, cfg, n_tokens)}")
                if snapshots is not None:
                    save_checkpoint(model, snapshots / f"step_{step_count}")
    loss = float(loss_value)
    model = nnx.merge(graphdef, params)
    bar.close()
    return model, {"final_loss": loss, "loss_history": history, "copying_accuracy": evaluate(model, cfg)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, nargs="+", help="steps per curriculum stage (default: the recorded ones)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--copy-weight", type=float, help=f"loss weight of copyable targets (default {TrainConfig.copy_weight})")
    parser.add_argument("--p-random", type=float, help=f"share of fully random sequences (default {TrainConfig.p_random})")
    parser.add_argument("--arch", type=int, nargs=3, metavar=("LAYERS", "HEADS", "D_MODEL"),
                        help="architecture (default: the recorded one)")
    parser.add_argument("--n-tokens", type=int, help="training sequence length incl. BOS (context = n - 1)")
    parser.add_argument("--max-period", type=int, help=f"longest copy period (default {TrainConfig.max_period})")
    parser.add_argument("--learning-rate", type=float, help=f"peak AdamW learning rate (default {TrainConfig.learning_rate})")
    parser.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (default {TrainConfig.weight_decay})")
    parser.add_argument("--snapshots", type=Path, help="also save a snapshot every 250 steps here")
    args = parser.parse_args(argv)

    cfg = TrainConfig()
    if args.steps:
        if len(args.steps) != len(cfg.stages):
            parser.error(f"--steps needs {len(cfg.stages)} values, one per stage")
        cfg = dataclasses.replace(cfg, stages=tuple((n, s) for (n, _), s in zip(cfg.stages, args.steps)))
    if args.copy_weight is not None:
        cfg = dataclasses.replace(cfg, copy_weight=args.copy_weight)
    if args.p_random is not None:
        cfg = dataclasses.replace(cfg, p_random=args.p_random)
    if args.arch:
        cfg = dataclasses.replace(cfg, n_layer=args.arch[0], n_head=args.arch[1], n_embd=args.arch[2])
    if args.n_tokens:
        cfg = dataclasses.replace(cfg, stages=tuple((args.n_tokens, s) for _, s in cfg.stages))
    if args.max_period:
        cfg = dataclasses.replace(cfg, max_period=args.max_period)
    if args.learning_rate is not None:
        cfg = dataclasses.replace(cfg, learning_rate=args.learning_rate)
    if args.weight_decay is not None:
        cfg = dataclasses.replace(cfg, weight_decay=args.weight_decay)
    start, cpu_start = time.perf_counter(), time.process_time()
    model, summary = train(cfg, args.seed, progress=not args.no_progress, snapshots=args.snapshots)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    save_checkpoint(model, args.out)
    write_trained_tokens(args.out, np.arange(cfg.vocab_size))  # its random sequences draw from every id
    record = training_record(
        "jaxdiag.induction.train", sys.argv[1:] if argv is None else argv, args.seed, cfg, wall, cpu,
        final_loss=summary["final_loss"], copying_accuracy=summary["copying_accuracy"],
        copying_eval={"seed": EVAL_SEED, "prompts": cfg.eval_prompts, "n_tokens": cfg.n_positions + 1},
        loss_history=summary["loss_history"])
    (args.out / "training_record.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("final_loss", "copying_accuracy", "wall_time_s")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
