"""The shipped IOI model (jaxdiag/data/ioi-4l8h): a plain Hugging Face GPT-2 checkpoint with GPT-2's
BPE vocabulary whose unused rows are exactly zero; it identifies indirect objects on templates and
names it never saw in an IOI prompt; its identified circuit carries the logit difference.

Everything is measured here from the shipped weights; nothing is retrained.
"""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest

import jaxdiag
from jaxdiag.ioi import CHECKPOINT_DIR

pytestmark = pytest.mark.skipif(not (CHECKPOINT_DIR / "model.safetensors").is_file(), reason="no shipped checkpoint")

TEST_SEED = 4242  # prompts no other part of the project uses
N = 256


@pytest.fixture(scope="module")
def loaded():
    return jaxdiag.load(str(CHECKPOINT_DIR))


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((CHECKPOINT_DIR / "training_record.json").read_text())


@pytest.fixture(scope="module")
def circuit_heads() -> list[tuple[int, int]]:
    roles = tomllib.loads((CHECKPOINT_DIR / "circuit.toml").read_text())["roles"]
    return sorted(tuple(int(x) for x in h.split(".")) for heads in roles.values() for h in heads)


@pytest.fixture(scope="module")
def logit_diff(loaded):
    from jaxdiag.ioi.metrics import compile_logit_diff

    return compile_logit_diff(loaded.model)


def test_unused_vocabulary_rows_are_exactly_zero_and_the_trained_ids_are_recorded(record):
    from safetensors.numpy import load_file

    from jaxdiag.ioi.data import used_vocabulary
    from jaxdiag.vocab import untrained_ids

    wte = load_file(str(CHECKPOINT_DIR / "model.safetensors"))["transformer.wte.weight"]
    assert wte.shape == (50257, 128)
    used = used_vocabulary()
    assert len(used) == record["data"]["used_vocabulary_size"]
    nonzero = np.flatnonzero(np.any(wte != 0.0, axis=1))
    assert np.array_equal(nonzero, used)  # every trained row moved, every other row is exactly 0.0
    recorded = json.loads((CHECKPOINT_DIR / "trained_tokens.json").read_text())["ids"]
    assert recorded == used.tolist()
    assert np.array_equal(untrained_ids(CHECKPOINT_DIR, 50257)[0], np.setdiff1d(np.arange(50257), used))


def test_a_prompt_with_a_word_it_never_trained_is_warned_about(loaded):
    import jaxdiag
    from jaxdiag.vocab import UntrainedTokensWarning

    with pytest.warns(UntrainedTokensWarning, match="1 of 2 prompts contain token ids this model never trained"):
        ds = jaxdiag.diagnose(loaded, ["When Mary and John went to the store, John gave a drink to",
                                       "When Mary and John went to the Kubernetes cluster, John gave a drink to"])
    assert ds.attrs["untrained_prompts"] == 1


def test_transformers_loads_it_and_agrees_with_jaxdiag(loaded):
    torch = pytest.importorskip("torch")
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(CHECKPOINT_DIR, attn_implementation="eager").eval()
    texts = ["When Mary and John went to the store, John gave a drink to",
             "After Ellen and Victor met at the cafe, Victor sent a message to",
             "Nothing here names anyone at all"]
    for text in texts:
        ids = loaded.tokenizer.encode(text)
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0].numpy()
        import jax.numpy as jnp

        ours = np.asarray(loaded.model(jnp.asarray([ids]), jnp.asarray([len(ids)]), logits=True).logits[0])
        np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=1e-4)


def test_too_long_prompt_is_a_clear_error(loaded):
    import jax.numpy as jnp

    from jaxdiag.errors import JaxdiagError

    n = loaded.model.config.n_positions + 1
    with pytest.raises(JaxdiagError, match="context window"):
        loaded.model(jnp.zeros((1, n), jnp.int32), jnp.asarray([n]))


@pytest.mark.xfail(strict=True, reason="the goal (issue 32) the shipped 2,000-step model misses: 78% on names never "
                   "in an IOI training prompt (98.9% with trained names), 57-86% per template; the best re-mix "
                   "(--mixture proper_nouns=0.3 --three-loss both) reached 83.1% at 2,000 steps, not shipped "
                   "(README); strict, so reaching it fails until unmarked")
def test_heldout_templates_fillers_and_names_positive_logit_difference_on_every_template(logit_diff):
    """Prompts of its own (not the record's): >= 95% overall, >= 90% on every held-out template."""
    from jaxdiag.ioi.data import HELDOUT_TEMPLATES
    from jaxdiag.ioi.metrics import TaskSet, heldout_set

    examples = heldout_set(40 * len(HELDOUT_TEMPLATES), seed=TEST_SEED)
    diff = logit_diff(TaskSet.from_examples(examples))
    template = np.array([e.template for e in examples])
    assert np.mean(diff > 0) >= 0.95, (np.mean(diff > 0), np.mean(diff), np.percentile(diff, 5))
    per = [float(np.mean(diff[template == k] > 0)) for k in range(template.max() + 1)]
    assert min(per) >= 0.9, per


def test_heldout_templates_with_trained_names_positive_logit_difference(logit_diff):
    from jaxdiag.ioi import data
    from jaxdiag.ioi.metrics import TaskSet

    diff = logit_diff(TaskSet.from_examples(data.evaluation_set(
        data.HELDOUT_TEMPLATES, data.TRAIN_NAMES, N, TEST_SEED, data.HELDOUT_PLACES, data.HELDOUT_OBJECTS)))
    assert np.mean(diff > 0) >= 0.95, (np.mean(diff > 0), np.mean(diff), np.percentile(diff, 5))


def test_posts_and_generator_prompts_positive_logit_difference(loaded, logit_diff):
    from jaxdiag.ioi.metrics import TaskSet
    from jaxdiag.sweep.prompts import ioi_blog_prompts, ioi_prompts

    encode = loaded.tokenizer.encode
    blog = logit_diff(TaskSet.from_prompts(list(ioi_blog_prompts(encode))))
    generated = logit_diff(TaskSet.from_prompts(list(ioi_prompts(encode, n_prompts=N, n_tokens=15, seed=TEST_SEED))))
    assert blog.size == 50 and generated.size == N
    assert np.mean(blog > 0) >= 0.95 and np.mean(generated > 0) >= 0.95


def test_record_states_the_evaluation_and_names(record):
    for key in ("command", "seed", "train_config", "loss_history", "evaluation", "wall_time_s", "data"):
        assert key in record
    assert record["evaluation"]["heldout"]["n"] >= 1000
    assert [t["template"] for t in record["heldout_per_template"]] == list(record["data"]["heldout_templates"])
    assert all(t["n"] >= 80 for t in record["heldout_per_template"])
    assert set(record["data"]["heldout_names"]).isdisjoint(record["data"]["train_names"])


def test_circuit_file_reads_and_matches_identify_json(circuit_heads):
    from analysis.circuits import load_circuit

    circuit = load_circuit(str(CHECKPOINT_DIR / "circuit.toml"))
    assert sorted(circuit.heads) == circuit_heads
    found = json.loads((CHECKPOINT_DIR / "identify.json").read_text())
    assert sorted(tuple(int(x) for x in h.split(".")) for hs in found["roles"].values() for h in hs) == circuit_heads
    assert circuit.ablation is not None and circuit.ablation.shape == (4, 8)


def test_mean_ablating_the_circuit_removes_most_of_the_logit_difference(loaded, circuit_heads):
    """Measured afresh on prompts of their own: the circuit together removes >= 0.8 of the logit
    difference, as many random non-circuit heads <= 0.1 (median of 100 draws)."""
    from jaxdiag.ioi.identify import abc_means, joint_ablation, paired_set

    pairs = paired_set(128, seed=TEST_SEED)
    means = abc_means(loaded.model, pairs)
    joint = joint_ablation(loaded.model, pairs.ioi, means, circuit_heads, draws=100, seed=TEST_SEED)
    assert joint["circuit_removed"] >= 0.8, joint
    assert joint["random_removed"]["median"] <= 0.1, joint


@pytest.mark.parametrize("name", ["ioi-4l8h", "induction-3l8h"])
def test_the_one_circuit_writer_renders_the_shipped_circuit_files(name):
    """analysis.circuits.circuit_toml (what both identify scripts write with) gives each shipped circuit.toml
    back, byte for byte, from its own contents."""
    import tomllib

    from analysis.circuits import circuit_toml
    from jaxdiag.paths import builtin_model_dir

    text = (builtin_model_dir(f"builtin:{name}") / "circuit.toml").read_text()
    doc = tomllib.loads(text)
    comments = [line[2:] for line in text.splitlines() if line.startswith("# ")]
    roles = {role: [tuple(int(x) for x in head.split(".")) for head in heads] for role, heads in doc["roles"].items()}
    rendered = circuit_toml(comments, name=doc["name"], description=doc["description"], n_layers=doc["n_layers"],
                            n_heads=doc["n_heads"], ablation=doc["ablation"], roles=roles)
    assert rendered == text
