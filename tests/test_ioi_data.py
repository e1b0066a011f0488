"""The IOI model's training data: what is held out stays out, every token is in the used vocabulary,
and training is deterministic from its seed (no shipped checkpoint needed)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxdiag.errors import JaxdiagError
from jaxdiag.ioi import data
from jaxdiag.ioi.identify import paired_set
from jaxdiag.sweep.prompts import BLOG_ABBA, BLOG_BABA, IOI_ABBA, IOI_BABA


@pytest.fixture(scope="module")
def sample():
    examples = data.training_examples(np.random.default_rng(7), 6000)
    return examples, data.encode_batch(examples)


def test_training_templates_exclude_every_evaluation_template():
    trained = set(data.TRAIN_TEMPLATES) | {data.baba(t) for t in data.TRAIN_TEMPLATES}
    held = set(data.HELDOUT_TEMPLATES) | {data.baba(t) for t in data.HELDOUT_TEMPLATES}
    assert not trained & (held | set(BLOG_ABBA + BLOG_BABA + IOI_ABBA + IOI_BABA))
    assert len(data.TRAIN_TEMPLATES) == len(set(data.TRAIN_TEMPLATES)) >= 40


def test_baba_swaps_the_first_clause_and_three_name_replaces_the_second_subject():
    t = "When {A} and {B} went to the {P}, {B} gave a {O} to"
    assert data.baba(t) == "When {B} and {A} went to the {P}, {B} gave a {O} to"
    assert data.three_name(t) == "When {A} and {B} went to the {P}, {C} gave a {O} to"
    assert data.baba("Then {A} met {B} at the {P}, and {B} gave") == "Then {B} met {A} at the {P}, and {B} gave"


def test_heldout_names_never_in_an_ioi_training_prompt_but_every_name_is_trained(sample):
    examples, (tokens, _, _) = sample
    held = {data.word_id(n) for n in data.HELDOUT_NAMES}
    kinds = {e.kind for e in examples}
    assert kinds == {"ioi", "ioi_words", "three", "single"}
    for e, row in zip(examples, tokens):
        if e.kind in ("ioi", "ioi_words"):
            assert e.targets[0] not in held and e.foil not in held
            # no held-out name anywhere in an IOI prompt's own sentence (a prefix may hold one: never the answer)
            sentence = data.encode_batch([dataclasses.replace(e, text=e.text.split(". ")[-1])])[0][0]
            assert not held & set(sentence.tolist()), e.text
    seen = set(tokens.ravel().tolist())
    assert {data.word_id(n) for n in data.ALL_NAMES} <= seen


def test_ioi_targets_are_the_non_repeated_name(sample):
    examples, (tokens, lengths, targets) = sample
    for e, row, n in zip(examples, tokens, lengths):
        if e.kind in ("ioi", "ioi_words"):
            sentence = row[:n].tolist()
            assert sentence.count(e.foil) == 2 and sentence.count(e.targets[0]) == 1
        if e.kind == "three":
            assert len(set(e.targets)) == 2


def test_every_token_is_in_the_used_vocabulary(sample):
    _, (tokens, _, targets) = sample
    used = data.used_vocabulary()
    assert np.isin(tokens, used).all() and np.isin(targets[targets >= 0], used).all()
    assert data.BOS_ID in used and len(used) < 4000


def test_word_pool_is_single_tokens_disjoint_from_names():
    words = data.word_pool()
    assert len(words) == len(set(words)) == 3000
    assert not {w.lower() for w in words} & {n.lower() for n in data.ALL_NAMES}
    assert all(isinstance(data.word_id(w), int) for w in words[:200])
    with pytest.raises(JaxdiagError, match="not one"):
        data.word_id("Xylophonist")


def test_training_examples_are_deterministic_from_the_seed():
    a = data.training_examples(np.random.default_rng(3), 50)
    b = data.training_examples(np.random.default_rng(3), 50)
    assert a == b and a != data.training_examples(np.random.default_rng(4), 50)


def test_too_long_text_is_a_one_line_error():
    with pytest.raises(JaxdiagError, match="exceeds n_positions"):
        data.encode_batch([data.Example("word " * 60, (1,))])


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


def test_training_is_deterministic_and_unused_rows_stay_exactly_zero():
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
