"""The shipped induction model (jaxdiag/data/induction-3l8h): loads like any GPT-2, copies in context,
and copies by induction: its identified heads are causal, and no head uses a positional shortcut.

Everything is measured here from the shipped weights; nothing is retrained.
"""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest

import jaxdiag
from jaxdiag.induction import CHECKPOINT_DIR

pytestmark = pytest.mark.skipif(not (CHECKPOINT_DIR / "model.safetensors").is_file(), reason="no shipped checkpoint")

TEST_SEED = 31337  # prompts no other part of the project uses


@pytest.fixture(scope="module")
def loaded():
    return jaxdiag.load(str(CHECKPOINT_DIR))  # the same loader as a real GPT-2 checkpoint


@pytest.fixture(scope="module")
def model(loaded):
    return loaded.model


@pytest.fixture(scope="module")
def circuit() -> dict:
    return tomllib.loads((CHECKPOINT_DIR / "circuit.toml").read_text())


@pytest.fixture(scope="module")
def ablation_record() -> dict:
    return json.loads((CHECKPOINT_DIR / "ablation.json").read_text())


@pytest.fixture(scope="module")
def copies(model):
    from jaxdiag.induction.data import copying_set

    return copying_set(TEST_SEED, 128, model.config.n_positions + 1, model.config.vocab_size)


@pytest.fixture(scope="module")
def means(model):
    from jaxdiag.induction.ablation import mean_head_outputs
    from jaxdiag.induction.data import random_set

    return mean_head_outputs(model, random_set(TEST_SEED + 1, 32, model.config.n_positions, model.config.vocab_size))


def test_shipped_checkpoint_is_small_gpt2_with_record(loaded):
    config = loaded.config
    assert config.n_layer * config.n_head >= 24
    assert config.bos_token_id == 0 and 100 <= config.vocab_size <= 1000
    assert (CHECKPOINT_DIR / "model.safetensors").stat().st_size < 5 * 2**20
    record = json.loads((CHECKPOINT_DIR / "training_record.json").read_text())
    for key in ("command", "seed", "train_config", "final_loss", "copying_accuracy", "wall_time_s", "date"):
        assert key in record
    assert record["command"].startswith("python -m jaxdiag.induction.train")


def test_recorded_accuracy_is_what_the_weights_give(model):
    from jaxdiag.induction.train import TrainConfig, evaluate

    record = json.loads((CHECKPOINT_DIR / "training_record.json").read_text())
    measured = evaluate(model, TrainConfig(**{**record["train_config"], "stages": tuple(map(tuple, record["train_config"]["stages"]))}))
    for kind, value in record["copying_accuracy"].items():
        assert measured[kind] == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("kind", ["varied", "halves"])
def test_copying_accuracy_above_90_percent(model, kind):
    from jaxdiag.induction.data import copying_set
    from jaxdiag.induction.metrics import compile_predict, copying_accuracy

    data = copying_set(TEST_SEED + 2, 128, model.config.n_positions + 1, model.config.vocab_size, kind=kind)
    assert copying_accuracy(compile_predict(model), data) > 0.90


def test_circuit_file_lists_induction_heads(circuit, model):
    assert circuit["n_layers"] == model.config.n_layer and circuit["n_heads"] == model.config.n_head
    assert circuit["roles"]["Induction"], "no induction head identified"
    from analysis.circuits import load_circuit

    loaded = load_circuit(CHECKPOINT_DIR / "circuit.toml")  # the analysis reads it, ablation included
    assert loaded.ablation is not None and loaded.ablation.shape == (model.config.n_layer, model.config.n_head)


@pytest.mark.parametrize("method", ["mean", "zero"])
def test_ablating_induction_heads_drops_copying_by_over_50_points(model, copies, circuit, means, method):
    from jaxdiag.induction.ablation import ablated_accuracy
    from jaxdiag.induction.metrics import compile_predict, copying_accuracy
    from analysis.circuits import parse_head

    heads = [parse_head(h, "circuit") for h in circuit["roles"]["Induction"]]
    baseline = copying_accuracy(compile_predict(model), copies)
    ablated = ablated_accuracy(model, copies, heads, method, means)
    assert baseline - ablated > 0.50


def test_ablating_other_heads_costs_little(model, copies, circuit, means):
    """Control: as many heads outside the circuit, nearest the induction layer first, matter far less."""
    from jaxdiag.induction.ablation import ablated_accuracy
    from analysis.circuits import parse_head

    in_circuit = {parse_head(h, "circuit") for heads in circuit["roles"].values() for h in heads}
    induction = [parse_head(h, "circuit") for h in circuit["roles"]["Induction"]]
    layer = induction[0][0]
    outside = [(l, h) for l in range(model.config.n_layer) for h in range(model.config.n_head) if (l, h) not in in_circuit]
    controls = sorted(outside, key=lambda head: abs(head[0] - layer))[: len(induction)]
    assert len(controls) == len(induction)
    full = ablated_accuracy(model, copies, [], "mean", means)
    assert full - ablated_accuracy(model, copies, controls, "mean", means) < 0.2


def test_no_head_attends_to_a_fixed_offset_on_random_prompts(model):
    from jaxdiag.induction.data import random_set
    from jaxdiag.induction.identify import FIXED_OFFSET_LIMIT, fixed_offset_attention
    from jaxdiag.induction.metrics import attention_patterns

    tokens = random_set(TEST_SEED + 3, 64, model.config.n_positions, model.config.vocab_size)
    worst = fixed_offset_attention(attention_patterns(model, tokens))
    assert worst.max() < FIXED_OFFSET_LIMIT, f"head {np.unravel_index(worst.argmax(), worst.shape)} attends {worst.max():.2f} to one offset"


def test_mean_ablation_with_a_heads_own_output_changes_nothing(model):
    """mean_head_outputs reads what the model computes: on a one-token prompt every head's output is
    constant, so replacing it by its own mean must leave the logits unchanged."""
    import jax.numpy as jnp
    from jaxdiag.induction.ablation import ablation_edit, mean_head_outputs

    tokens = np.array([[0], [5]], dtype=np.int32)
    lengths = jnp.ones((1,), jnp.int32)
    for row in tokens:
        means = mean_head_outputs(model, row[None])
        heads = [(l, h) for l in range(model.config.n_layer) for h in range(model.config.n_head)]
        edit = ablation_edit((model.config.n_layer, model.config.n_head, model.config.d_head), heads, "mean", means)
        plain = model(jnp.asarray(row[None]), lengths, logits=True).logits
        ablated = model(jnp.asarray(row[None]), lengths, logits=True, edit=edit).logits
        np.testing.assert_allclose(np.asarray(ablated), np.asarray(plain), atol=1e-5)
        zeroed = ablation_edit((model.config.n_layer, model.config.n_head, model.config.d_head), heads, "zero")
        assert np.abs(np.asarray(model(jnp.asarray(row[None]), lengths, logits=True, edit=zeroed).logits) - np.asarray(plain)).max() > 1e-3


def test_circuit_is_identified_without_the_diagnostics(model, circuit, ablation_record, monkeypatch):
    """Re-run the identification with the diagnostics disabled: same scores, same roles as shipped."""
    import jaxdiag.probes
    from jaxdiag.induction.identify import identify

    def forbidden(*args, **kwargs):
        raise AssertionError("identification must not compute attention diagnostics")

    monkeypatch.setattr(jaxdiag.probes, "attention_diagnostics", forbidden)
    monkeypatch.setattr(jaxdiag.probes, "stats_diagnostics", forbidden)
    found = identify(model)
    np.testing.assert_allclose(found.causal_effect(), ablation_record["effect"], atol=1e-4)
    np.testing.assert_allclose(found.mean_drop, ablation_record["mean_ablation"], atol=1e-4)
    np.testing.assert_allclose(found.induction_score, ablation_record["induction_score"], atol=1e-4)
    roles = {role: sorted(f"{l}.{h}" for l, h in heads) for role, heads in found.roles().items()}
    assert roles == {role: sorted(heads) for role, heads in circuit["roles"].items()}
