"""The training script on a model small enough to train in seconds: deterministic from the seed,
and its record and snapshots count steps whether or not the progress bar is shown."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxdiag.induction.train import TrainConfig, main, train


@dataclasses.dataclass(frozen=True)
class TinyConfig(TrainConfig):
    n_layer: int = 1
    n_head: int = 2
    n_embd: int = 16
    vocab_size: int = 32
    stages: tuple[tuple[int, int], ...] = ((9, 200),)
    batch_size: int = 8
    warmup_steps: int = 10
    max_period: int = 4
    eval_prompts: int = 8


TINY = TinyConfig()


def _params(model) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]


@pytest.mark.parametrize("progress", [False, True])
def test_loss_history_counts_steps(progress):
    _, summary = train(TINY, seed=0, progress=progress)
    assert [entry["step"] for entry in summary["loss_history"]] == [100, 200]
    assert np.isfinite(summary["final_loss"])
    assert set(summary["copying_accuracy"]) == {"varied", "halves"}


def test_same_seed_gives_identical_weights_other_seed_does_not():
    first, _ = train(TINY, seed=3, progress=False)
    again, _ = train(TINY, seed=3, progress=False)
    other, _ = train(TINY, seed=4, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(_params(first), _params(again), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(_params(first), _params(other), strict=True))


def test_snapshots_are_saved_at_their_step(tmp_path):
    train(TINY, seed=0, progress=False, snapshots=tmp_path, eval_every=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_100", "step_200"]
    assert (tmp_path / "step_200" / "model.safetensors").is_file()


def test_command_line_writes_a_loadable_checkpoint_and_record(tmp_path, monkeypatch):
    import jaxdiag.induction.train as train_module

    monkeypatch.setattr(train_module, "TrainConfig", TinyConfig)
    out = tmp_path / "model"
    assert main(["--out", str(out), "--seed", "1", "--steps", "100", "--weight-decay", "0.5", "--no-progress"]) == 0
    record = json.loads((out / "training_record.json").read_text())
    assert record["seed"] == 1 and record["train_config"]["weight_decay"] == 0.5
    assert record["train_config"]["stages"] == [[9, 100]]
    assert [entry["step"] for entry in record["loss_history"]] == [100]
    trained = json.loads((out / "trained_tokens.json").read_text())["ids"]
    assert trained == list(range(TinyConfig().vocab_size))  # its sequences draw from every id
    import jaxdiag

    assert jaxdiag.load(str(out)).config.n_head == 2
