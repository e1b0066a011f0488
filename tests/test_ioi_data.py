"""The IOI model's training data: what is held out stays out, every token is in the used vocabulary,
and training is deterministic from its seed (no shipped checkpoint needed)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from jaxdiag.errors import JaxdiagError
from jaxdiag.ioi import data, grammar
from jaxdiag.ioi.identify import paired_set
from jaxdiag.sweep.prompts import BLOG_ABBA, IOI_ABBA


@pytest.fixture(scope="module")
def sample():
    examples = data.training_examples(np.random.default_rng(7), 64)
    rng = np.random.default_rng(8)
    for _ in range(100):  # batches: a prefix is drawn per batch
        examples += data.training_examples(rng, 64)
    return examples, data.encode_batch(examples)


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+", text)


def test_heldout_file_is_plain_ioi_templates_and_disjoint_word_sets():
    assert len(data.HELDOUT_TEMPLATES) >= 10 and len(set(data.HELDOUT_TEMPLATES)) == len(data.HELDOUT_TEMPLATES)
    for t in data.HELDOUT_TEMPLATES:
        assert t.count("{A}") == 1 and t.count("{B}") == 2 and t.rindex("{B}") > t.index("{A}"), t
        assert not t.startswith("{")  # a text-initial name would be a different token (no leading space)
    assert not set(data.HELDOUT_FILLERS) & set(data.PLACES + data.OBJECTS)
    assert not set(data.HELDOUT_NAMES) & set(data.TRAIN_NAMES)
    assert not set(data.HELDOUT_FILLERS) & set(data.train_fillers())
    for w in data.HELDOUT_FILLERS + data.ALL_NAMES + data.word_list()[::500]:
        data.word_id(w)  # every one a single GPT-2 token after a space


def test_no_training_sentence_has_a_heldout_template_skeleton():
    """The grammar redraws the held-out skeletons (made here to be drawn: the guard is what keeps them out)."""
    skeletons = grammar.heldout_skeletons()
    assert len(skeletons) == len(data.HELDOUT_TEMPLATES)  # ABBA and BABA give one key: names are "{?}"
    rng = np.random.default_rng(0)
    for _ in range(3000):
        s = grammar.sentence(rng, 2, "{S}")
        assert grammar._skeleton_key(s) not in skeletons
    target = next(iter(skeletons)).replace("{?}", "{X}", 1).replace("{?}", "{Y}", 1)
    assert grammar._skeleton_key(target) in skeletons  # the key of a held-out template is recognised


def test_heldout_names_and_fillers_never_in_an_ioi_training_prompt_but_every_one_is_trained(sample):
    examples, (tokens, _, _) = sample
    held = set(data.HELDOUT_NAMES) | set(data.HELDOUT_FILLERS)
    assert {e.kind for e in examples} == {"ioi", "ioi_words", "three", "single"}
    seen = set()
    for e in examples:
        words = set(_words(e.text))
        if e.kind in ("ioi", "ioi_words"):
            assert not held & words, e.text  # the whole text, its distractor sentence included
        seen |= words
    assert held <= seen  # ... yet all appear (in "three" and "single" examples): their rows train


def test_ioi_targets_are_the_non_repeated_name_in_both_orders(sample):
    examples, (tokens, lengths, targets) = sample
    orders = set()
    for e, row, n in zip(examples, tokens, lengths):
        sentence = row[:n].tolist()
        if e.kind in ("ioi", "ioi_words"):
            assert sentence.count(e.foil) == 2 and sentence.count(e.targets[0]) == 1, e.text
            orders.add(sentence.index(e.targets[0]) < sentence.index(e.foil))
        if e.kind == "three":
            assert len(set(e.targets)) == 2 and all(sentence.count(t) == 1 for t in e.targets)
    assert orders == {True, False}  # ABBA and BABA


def test_every_token_of_training_and_evaluation_is_in_the_used_vocabulary(sample):
    from jaxdiag.ioi.metrics import evaluation_sets

    _, (tokens, _, targets) = sample
    used = data.used_vocabulary()
    assert np.isin(tokens, used).all() and np.isin(targets[targets >= 0], used).all()
    assert data.BOS_ID in used and len(data.word_list()) < len(used) < 20000
    for name, task in evaluation_sets(200).items():  # no evaluation prompt holds an untrained id
        assert np.isin(task.tokens, used).all(), name


def test_heldout_evaluation_balances_templates_and_orders():
    from jaxdiag.ioi.metrics import heldout_set

    examples = heldout_set(1200)
    k = len(data.HELDOUT_TEMPLATES)
    counts = np.bincount([e.template for e in examples], minlength=k)
    assert counts.tolist() == [1200 // k] * k
    for e in examples[:48]:
        words = _words(e.text)
        assert set(words) & set(data.HELDOUT_PLACES) and set(words) & set(data.HELDOUT_OBJECTS)
        assert {w for w in words if w in data.ALL_NAMES} <= set(data.HELDOUT_NAMES)


def test_word_list_is_vendored_single_tokens():
    words = data.word_list()
    assert len(words) == len(set(words)) > 15000
    assert {"after", "because", "yesterday", "car", "money"} <= set(words)
    with pytest.raises(JaxdiagError, match="not one"):
        data.word_id("Xylophonist")


def test_training_examples_are_deterministic_from_the_seed():
    a = data.training_examples(np.random.default_rng(3), 50)
    b = data.training_examples(np.random.default_rng(3), 50)
    assert a == b and a != data.training_examples(np.random.default_rng(4), 50)


def test_too_long_text_is_a_one_line_error():
    with pytest.raises(JaxdiagError, match="exceeds n_positions"):
        data.encode_batch([data.Example("word " * 80, (1,))])


def test_abc_counterfactuals_have_the_ioi_prompts_lengths_and_no_repeated_name():
    pairs = paired_set(40, seed=5)
    assert np.array_equal(pairs.ioi.lengths, pairs.abc.lengths)
    names = {data.word_id(n) for n in data.ALL_NAMES}
    for i in range(40):
        row, abc = pairs.ioi.tokens[i, :pairs.ioi.lengths[i]], pairs.abc.tokens[i, :pairs.abc.lengths[i]]
        assert row[pairs.io[i]] == pairs.ioi.target[i] and row[pairs.s1[i]] == row[pairs.s2[i]] == pairs.ioi.foil[i]
        abc_names = [t for t in abc.tolist() if t in names]
        assert len(abc_names) == len(set(abc_names)) == 3
        assert not set(abc_names) & {int(pairs.ioi.target[i]), int(pairs.ioi.foil[i])}


def test_training_is_bit_identical_from_its_seed_and_unused_rows_stay_exactly_zero(tmp_path):
    """CI's training smoke: a few steps of the real recipe (tiny widths), twice, the same bits; only
    the used vocabulary's rows move."""
    from jaxdiag.models.load import export_weights
    from jaxdiag.ioi.train import TrainConfig, train

    cfg = dataclasses.replace(TrainConfig(), n_layer=1, n_head=2, n_embd=16, steps=3, batch_size=8, warmup_steps=1)
    first = export_weights(train(cfg, 11, progress=False, eval_prompts=8)[0])
    second = export_weights(train(cfg, 11, progress=False, eval_prompts=8)[0])
    assert first.keys() == second.keys()
    assert all(np.array_equal(first[k], second[k]) for k in first)
    used = data.used_vocabulary()
    unused = np.setdiff1d(np.arange(first["wte.weight"].shape[0]), used)
    assert np.all(first["wte.weight"][unused] == 0.0)
    assert np.all(np.any(first["wte.weight"][used] != 0.0, axis=1))


def test_the_experimental_shares_draw_nothing_at_zero_and_stay_in_their_vocabulary():
    """The issue-32 re-mixes (off in the shipped recipe): at 0 the data stream is the shipped one; the
    proper-noun mixture's names are proper nouns, never held-out names, inside used_vocabulary(True)."""
    import dataclasses

    base = data.training_examples(np.random.default_rng(3), 64)
    off = data.training_examples(np.random.default_rng(3), 64,
                                 dataclasses.replace(data.Mixture(), proper_nouns=0.0, heldout_names=0.0))
    assert [e.text for e in base] == [e.text for e in off]
    mixture = dataclasses.replace(data.Mixture(), proper_nouns=1.0)
    examples = data.training_examples(np.random.default_rng(4), 256, mixture)
    proper = set(data.proper_nouns())
    ioi = [e for e in examples if e.kind == "ioi"]
    assert ioi and all(set(_words(e.text)) & proper for e in ioi)
    assert proper.isdisjoint(data.ALL_NAMES) and proper.isdisjoint(data.word_list())
    tokens, _, targets = data.encode_batch(examples)
    used = data.used_vocabulary(True)
    assert np.isin(tokens, used).all() and np.isin(targets[targets >= 0], used).all()
    assert len(used) > len(data.used_vocabulary())


def test_trainer_mixture_option_is_recorded_and_checked():
    from jaxdiag.ioi import train

    assert train._recorded_args(["--out", "d", "--mixture", "proper_nouns=0.5", "--snapshots", "s"]) == [
        "--out", "d", "--mixture", "proper_nouns=0.5"]
    with pytest.raises(SystemExit):
        train.main(["--out", "/nonexistent/x", "--mixture", "nope=1"])


def test_three_name_losses_against_their_definitions():
    """``three_loss``: "either" is -log(p_A + p_B), "both" -(log p_A + log p_B) / 2, computed here from
    the model's own logits in float64; one-target texts read -log p(t) under both; an unknown one is an error."""
    import jax.numpy as jnp
    from flax import nnx

    from jaxdiag.models.gpt2 import GPT2, GPT2Config
    from jaxdiag.ioi.train import TrainConfig, _loss, train

    model = GPT2(GPT2Config(vocab_size=40, n_positions=8, n_embd=16, n_layer=1, n_head=2, bos_token_id=0),
                 precision="highest", rngs=nnx.Rngs(1))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (3, 8)), jnp.int32)
    lengths = jnp.asarray([8, 5, 6], jnp.int32)
    targets = np.array([[3, 7], [5, -1], [9, 2]], np.int32)
    hidden = model(tokens, lengths).hidden
    last = np.asarray(hidden)[np.arange(3), np.asarray(lengths) - 1]
    logits = np.asarray(model.unembed(jnp.asarray(last)), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    either = -np.mean([np.log(np.exp(logp[0, 3]) + np.exp(logp[0, 7])), logp[1, 5], np.log(np.exp(logp[2, 9]) + np.exp(logp[2, 2]))])
    both = -np.mean([(logp[0, 3] + logp[0, 7]) / 2, logp[1, 5], (logp[2, 9] + logp[2, 2]) / 2])
    np.testing.assert_allclose(float(_loss(model, tokens, lengths, jnp.asarray(targets))), either, rtol=1e-5)
    np.testing.assert_allclose(float(_loss(model, tokens, lengths, jnp.asarray(targets), three_loss="both")), both, rtol=1e-5)
    cfg = dataclasses.replace(TrainConfig(), n_layer=1, n_head=2, n_embd=16, steps=1, batch_size=4, three_loss="all")
    with pytest.raises(JaxdiagError, match="three_loss"):
        train(cfg, 0, progress=False, eval_prompts=8)
