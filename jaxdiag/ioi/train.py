"""Train the small GPT-2 (GPT-2's BPE vocabulary) with an IOI circuit that jaxdiag ships.

    python -m jaxdiag.ioi.train --out DIR --seed 0

Deterministic from the seed on one backend: data come from ``numpy.random.default_rng(seed)``, the
initial weights from ``nnx.Rngs(seed)``, and the run is a fixed number of steps. The loss is read at
each text's last token over the *used* vocabulary only (:func:`jaxdiag.ioi.data.used_vocabulary`):
training runs a GPT-2 over those ids alone (remapped), and the shipped model's tied embedding rows of
every other token are exactly 0.0 -- what the full model trained with that loss would keep, since
those rows never get a gradient -- so ``model.safetensors`` compresses to almost nothing.
Writes ``config.json`` + ``model.safetensors`` and ``training_record.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxdiag.errors import JaxdiagError
from jaxdiag.models.load import save_checkpoint
from jaxdiag.models.gpt2 import GPT2, GPT2Config
from jaxdiag.ioi import data
from jaxdiag.ioi.metrics import evaluate, per_template
from jaxdiag.vocab import write_trained_tokens
from jaxdiag.training import adamw_warmup_constant, compile_train_step, training_record
from jaxdiag.tokenizer import GPT2_VOCAB_SIZE


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    n_layer: int = 4
    n_head: int = 8
    n_embd: int = 128
    n_positions: int = data.N_POSITIONS
    steps: int = 2000  # the shipped model (the 2,000-step snapshot of a 6,000-step run)
    batch_size: int = 64
    # At 1e-3 (batch 64) the model sat on a "copy the first name" plateau (right on ABBA, wrong on
    # BABA: held-out IOI at chance) through 2,000 steps in two runs; 2e-3 left it within 900 steps.
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 0.1
    clip_norm: float = 1.0
    mixture: data.Mixture = data.Mixture()
    # Loss of a ``three`` example (two right answers): "either" -log(p_A + p_B) (the shipped recipe),
    # "both" -(log p_A + log p_B) / 2. "either" lets a model put all its mass on one name, so it
    # amplifies per-name priors: on names trained only outside IOI (three and one-name sentences),
    # a fitted per-name prior of std 3.2 logits explained 60% of the variance of logit(A) - logit(B)
    # at 2,000 steps, which then decides IOI prompts of those names. "both" is right only at
    # p_A = p_B: it trains every pair of names to equal priors in the same context.
    three_loss: str = "either"

    def model_config(self) -> GPT2Config:
        return GPT2Config(vocab_size=GPT2_VOCAB_SIZE, n_positions=self.n_positions, n_embd=self.n_embd,
                          n_layer=self.n_layer, n_head=self.n_head, bos_token_id=data.BOS_ID)


def compact_config(cfg: TrainConfig, used: np.ndarray) -> GPT2Config:
    """The training model: the same GPT-2 over the used vocabulary only (ids remapped to ``0 .. U-1``)."""
    return dataclasses.replace(cfg.model_config(), vocab_size=len(used),
                               bos_token_id=int(np.searchsorted(used, data.BOS_ID)))


def expand(compact: GPT2, cfg: TrainConfig, used: np.ndarray) -> GPT2:
    """The full-vocabulary model: the compact model's weights, with embedding rows outside ``used`` exactly 0.

    Training on the compact vocabulary is the same as training the full model with its loss read
    over the used ids only (every other tied row gets no gradient), at a fraction of the cost.
    """
    model = GPT2(cfg.model_config(), precision="highest", rngs=nnx.Rngs(0))
    _, compact_state = nnx.split(compact)
    graphdef, state = nnx.split(model)
    flat = dict(compact_state.flat_state())
    wte = np.zeros((GPT2_VOCAB_SIZE, cfg.n_embd), dtype=np.float32)
    wte[used] = np.asarray(compact.wte.embedding[...])
    for path, leaf in state.flat_state():
        leaf[...] = jnp.asarray(wte) if path == ("wte", "embedding") else flat[path][...]
    return nnx.merge(graphdef, state)


THREE_LOSSES = ("either", "both")


def _loss(model: GPT2, tokens: jax.Array, lengths: jax.Array, targets: jax.Array, *,
          three_loss: str = "either") -> jax.Array:
    """Mean over texts of the loss at the last token (compact ids, ``-1``: none).

    One target: ``-log p(t)``. Two (the ``three`` kind, either is right): ``-log(p_A + p_B)``
    (``three_loss="either"``) or ``-(log p_A + log p_B) / 2`` (``"both"``; see :class:`TrainConfig`).
    """
    hidden = model(tokens, lengths).hidden
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
    log_probs = jax.nn.log_softmax(model.unembed(last), axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.maximum(targets, 0), axis=-1)
    if three_loss == "both":
        valid = targets >= 0
        return -jnp.mean(jnp.sum(jnp.where(valid, picked, 0.0), axis=-1) / jnp.sum(valid, axis=-1))
    picked = jnp.where(targets >= 0, picked, -jnp.inf)
    return -jnp.mean(jax.nn.logsumexp(picked, axis=-1))


def training_batch(rng: np.random.Generator, cfg: TrainConfig, used: np.ndarray) -> tuple[np.ndarray, ...]:
    """One batch in compact ids, padded to the next multiple of 8 tokens (few compiled shapes)."""
    examples = data.training_examples(rng, cfg.batch_size, cfg.mixture)
    tokens, lengths, targets = data.encode_batch(examples, cfg.n_positions)
    if not np.isin(tokens, used).all():  # searchsorted would silently map it onto a neighbouring id
        bad = sorted(set(tokens[~np.isin(tokens, used)].tolist()))
        raise JaxdiagError(f"training batch has token ids outside the used vocabulary: {bad[:5]}")
    width = min(cfg.n_positions, -(-int(lengths.max()) // 8) * 8)
    tokens = np.searchsorted(used, tokens[:, :width]).astype(np.int32)
    targets = np.where(targets >= 0, np.searchsorted(used, targets), -1).astype(np.int32)
    return tokens, lengths, targets


def train(cfg: TrainConfig, seed: int, *, progress: bool = True, eval_every: int = 1000,
          on_snapshot: Callable[[int, GPT2, dict], None] | None = None,
          eval_prompts: int = 1000) -> tuple[GPT2, dict]:
    """Train from scratch; returns the full-vocabulary model and a summary (losses, evaluation).

    ``on_snapshot(step, model, summary)``: called every ``eval_every`` steps with the model so far
    and the summary a run of that many steps would return (the schedule is constant after warm-up,
    so ``--steps N`` retrains that very snapshot).
    """
    rng = np.random.default_rng(seed)
    used = data.used_vocabulary(cfg.mixture.proper_nouns > 0)
    model = GPT2(compact_config(cfg, used), precision="highest", rngs=nnx.Rngs(seed))
    tx = adamw_warmup_constant(cfg.learning_rate, cfg.warmup_steps, cfg.clip_norm, cfg.weight_decay)
    if cfg.three_loss not in THREE_LOSSES:
        raise JaxdiagError(f"three_loss must be one of {THREE_LOSSES}, not {cfg.three_loss!r}")
    graphdef, params, step = compile_train_step(model, tx, functools.partial(_loss, three_loss=cfg.three_loss))
    opt_state = tx.init(params)
    history = []
    summarised = lambda loss, full: {"final_loss": float(loss), "loss_history": list(history),
                                     "evaluation": evaluate(full, eval_prompts)}
    bar = tqdm(total=cfg.steps, disable=not progress, desc="training", mininterval=5)
    for i in range(1, cfg.steps + 1):
        params, opt_state, loss_value = step(params, opt_state, *training_batch(rng, cfg, used))
        bar.update()
        if i % 100 == 0:
            history.append({"step": i, "loss": round(float(loss_value), 4)})
            bar.set_postfix(loss=f"{float(loss_value):.3f}")
        if (progress or on_snapshot) and i % eval_every == 0 and i < cfg.steps:
            full = expand(nnx.merge(graphdef, params), cfg, used)
            summary = summarised(loss_value, full)
            bar.write(f"step {i}: loss {float(loss_value):.4f} " + json.dumps(
                {k: (v["positive"], v["mean"], v["p05"]) for k, v in summary["evaluation"].items()}), file=sys.stdout)
            sys.stdout.flush()
            if on_snapshot is not None:
                on_snapshot(i, full, summary)
    bar.close()
    model = expand(nnx.merge(graphdef, params), cfg, used)
    return model, summarised(loss_value, model)


def write_run(out: Path, model: GPT2, cfg: TrainConfig, args: list[str], seed: int, summary: dict,
              wall: float, cpu: float) -> dict:
    """Save the checkpoint, the ids it was trained on and ``training_record.json`` into ``out``."""
    save_checkpoint(model, out)
    used = data.used_vocabulary(cfg.mixture.proper_nouns > 0)
    write_trained_tokens(out, used)
    record = training_record("jaxdiag.ioi.train", args, seed, cfg, wall, cpu, **summary)
    record["heldout_per_template"] = per_template(model)
    record["data"] = {
        "train_names": list(data.TRAIN_NAMES), "heldout_names": list(data.HELDOUT_NAMES),
        "places": list(data.PLACES), "objects": list(data.OBJECTS),
        "heldout_templates": list(data.HELDOUT_TEMPLATES), "heldout_places": list(data.HELDOUT_PLACES),
        "heldout_objects": list(data.HELDOUT_OBJECTS),
        "grammar": "jaxdiag/ioi/grammar.py", "word_list": "jaxdiag/ioi/words.txt",
        "n_words": len(data.word_list()), "used_vocabulary_size": int(len(used)),
    }
    (out / "training_record.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _without(args: list[str], option: str) -> list[str]:
    """``args`` less ``option VALUE`` and ``option=VALUE``."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def _recorded_args(argv: list[str]) -> list[str]:
    """The arguments that determine the weights: ``--snapshots`` and ``--no-progress`` only add outputs."""
    return [arg for arg in _without(argv, "--snapshots") if arg != "--no-progress"]


def _with_steps(args: list[str], steps: int) -> list[str]:
    """``args`` with ``--steps`` set to ``steps``: the command that retrains a snapshot."""
    return _without(args, "--steps") + ["--steps", str(steps)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help=f"training steps (default {TrainConfig.steps})")
    parser.add_argument("--arch", type=int, nargs=3, metavar=("LAYERS", "HEADS", "D_MODEL"),
                        help="architecture (default: the recorded one)")
    parser.add_argument("--weight-decay", type=float, help=f"AdamW weight decay (default {TrainConfig.weight_decay})")
    parser.add_argument("--mixture", action="append", default=[], metavar="KEY=VALUE",
                        help="override a share of data.Mixture (repeatable), e.g. proper_nouns=0.5")
    parser.add_argument("--three-loss", choices=THREE_LOSSES,
                        help=f"loss of three-name examples (default {TrainConfig.three_loss}; see TrainConfig)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--snapshots", type=Path, help="also save a complete run (checkpoint + record) every 1000 steps here")
    args = parser.parse_args(argv)

    cfg = TrainConfig()
    if args.steps:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    if args.arch:
        cfg = dataclasses.replace(cfg, n_layer=args.arch[0], n_head=args.arch[1], n_embd=args.arch[2])
    if args.weight_decay is not None:
        cfg = dataclasses.replace(cfg, weight_decay=args.weight_decay)
    if args.three_loss:
        cfg = dataclasses.replace(cfg, three_loss=args.three_loss)
    if args.mixture:
        fields = {f.name for f in dataclasses.fields(data.Mixture)}
        shares = dict(kv.split("=", 1) for kv in args.mixture)
        if not set(shares) <= fields:
            parser.error(f"--mixture: unknown share(s) {sorted(set(shares) - fields)}; known: {sorted(fields)}")
        cfg = dataclasses.replace(cfg, mixture=dataclasses.replace(cfg.mixture, **{k: float(v) for k, v in shares.items()}))
    recorded = _recorded_args(sys.argv[1:] if argv is None else argv)
    start, cpu_start = time.perf_counter(), time.process_time()

    def snapshot(step: int, model: GPT2, summary: dict) -> None:
        write_run(args.snapshots / f"step_{step}", model, dataclasses.replace(cfg, steps=step),
                  _with_steps(recorded, step), args.seed, summary,
                  time.perf_counter() - start, time.process_time() - cpu_start)

    model, summary = train(cfg, args.seed, progress=not args.no_progress,
                           on_snapshot=snapshot if args.snapshots else None)
    record = write_run(args.out, model, cfg, recorded, args.seed, summary,
                       time.perf_counter() - start, time.process_time() - cpu_start)
    print(json.dumps({"final_loss": record["final_loss"], "wall_time_s": record["wall_time_s"],
                      "evaluation": {k: (v["positive"], v["mean"], v["p05"]) for k, v in record["evaluation"].items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
