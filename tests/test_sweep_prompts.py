"""Prompt sources: the posts' IOI sets exactly, the scalable IOI generator, induction, JSONL."""

from __future__ import annotations

import collections
import json
import random

import pytest

from jaxdiag.errors import JaxdiagError
from jaxdiag.sweep.prompts import (
    BLOG_NAMES, Prompt, induction_prompts, ioi_blog_texts, ioi_prompts, jsonl_prompts,
)
from jaxdiag.tokenizer import Tokenizer

EXAMPLE = "When Alice and Bob went to the store, Bob gave a drink to"
EXAMPLE_IDS = [2215, 14862, 290, 5811, 1816, 284, 262, 3650, 11, 5811, 2921, 257, 4144, 284]


@pytest.fixture(scope="module")
def gpt2_tokenizer() -> Tokenizer:
    return Tokenizer.for_checkpoint(None, vocab_size=50257, bos_id=50256, prepend_bos=True)


def _reference_blog_sets() -> tuple[list[str], list[str]]:
    """docs/REFERENCE.md's procedure, written out from its prose (templates spelt out, not derived)."""
    abba = [
        "When {A} and {B} went to the store, {B} gave a drink to",
        "When {A} and {B} went to the park, {B} handed a ball to",
        "When {A} and {B} arrived at the office, {B} passed a note to",
        "When {A} and {B} got to the restaurant, {B} offered a menu to",
        "When {A} and {B} walked into the room, {B} showed a book to",
        "After {A} and {B} met at the cafe, {B} sent a message to",
        "After {A} and {B} sat down for dinner, {B} gave a gift to",
    ]
    baba = [t.replace("{A} and {B}", "{B} and {A}") for t in abba]
    non_ioi = [
        "When {A} and {B} went to the store, {C} gave a drink to",
        "When {A} and {B} went to the park, {C} handed a ball to",
        "When {A} and {B} arrived at the office, {C} passed a note to",
        "When {A} and {B} got to the restaurant, {C} offered a menu to",
        "When {A} and {B} walked into the room, {C} showed a book to",
        "After {A} and {B} met at the cafe, {C} sent a message to",
        "After {A} and {B} sat down for dinner, {C} gave a gift to",
    ]
    names = ["Mary", "John", "Alice", "Bob", "Sarah", "Tom", "Emma", "James", "Lisa", "David", "Kate", "Mark"]
    random.seed(42)
    ioi: list[str] = []
    while len(ioi) < 50:
        template = random.choice(abba + baba)
        a, b = random.sample(names, 2)
        text = template.format(A=a, B=b)
        if text not in ioi:
            ioi.append(text)
    random.seed(43)
    non: list[str] = []
    while len(non) < 50:
        template = random.choice(non_ioi)
        a, b, c = random.sample(names, 3)
        text = template.format(A=a, B=b, C=c)
        if text not in non:
            non.append(text)
    return ioi, non


def test_example_sentence_tokenises_as_the_posts_say(gpt2_tokenizer):
    assert gpt2_tokenizer.encode(EXAMPLE) == [50256, *EXAMPLE_IDS]


def test_ioi_blog_reproduces_the_posts_procedure(gpt2_tokenizer):
    state = random.getstate()
    produced = list(ioi_blog_texts())
    assert random.getstate() == state  # a private generator: the caller's random stream is untouched
    ioi = [text for condition, text, _ in produced if condition == "ioi"]
    non = [text for condition, text, _ in produced if condition == "non_ioi"]
    assert (ioi, non) == _reference_blog_sets()
    assert len(set(ioi)) == 50 and len(set(non)) == 50
    for condition, text, meta in produced:
        assert len(gpt2_tokenizer.encode(text)) == 15
        assert {meta["io_name"], meta["s_name"]} <= set(BLOG_NAMES)
        if condition == "ioi":  # subject twice, IO once, and the subject ends the second clause
            assert text.count(meta["s_name"]) == 2 and text.count(meta["io_name"]) == 1
            assert text.split(", ")[1].startswith(meta["s_name"])
        else:
            assert text.split(", ")[1].startswith(meta["c_name"])
            assert len({meta["io_name"], meta["s_name"], meta["c_name"]}) == 3


def test_ioi_generator_makes_2000_unique_prompts_per_condition_of_the_requested_length(gpt2_tokenizer):
    prompts = list(ioi_prompts(gpt2_tokenizer.encode, n_prompts=2000, n_tokens=15, seed=0))
    by_condition = collections.defaultdict(list)
    for p in prompts:
        by_condition[p.condition].append(p)
    assert {c: len(v) for c, v in by_condition.items()} == {"ioi": 2000, "non_ioi": 2000}
    for condition, group in by_condition.items():
        assert len({p.text for p in group}) == 2000
        assert all(len(p.tokens) == 15 and list(p.tokens) == gpt2_tokenizer.encode(p.text) for p in group)
    orders = collections.Counter(p.metadata["template"].split("-")[0] for p in by_condition["ioi"])
    assert orders == {"abba": 1000, "baba": 1000}
    for p in by_condition["ioi"]:
        first, second = p.text.split(", ")[:2]
        assert second.split()[0] == p.metadata["s_name"] and p.metadata["io_name"] in first
        assert p.metadata["place"] in first and p.metadata["object"] in second
    for p in by_condition["non_ioi"]:
        assert p.text.split(", ")[1].split()[0] == p.metadata["c_name"]
    again = list(ioi_prompts(gpt2_tokenizer.encode, n_prompts=2000, n_tokens=15, seed=0))
    other = list(ioi_prompts(gpt2_tokenizer.encode, n_prompts=50, n_tokens=15, seed=1))
    assert again == prompts and [p.text for p in other] != [p.text for p in prompts[:50]]


def test_paired_ioi_prompts_are_abc_counterfactuals_of_the_unpaired_ioi_prompts(gpt2_tokenizer):
    unpaired = list(ioi_prompts(gpt2_tokenizer.encode, n_prompts=300, n_tokens=15, seed=0))
    paired = list(ioi_prompts(gpt2_tokenizer.encode, n_prompts=300, n_tokens=15, seed=0, pairs=True))
    ioi, abc = paired[:300], paired[300:]
    assert [p.condition for p in paired] == ["ioi"] * 300 + ["non_ioi"] * 300
    # the IOI half is the unpaired walk's, now with pair ids 0..n-1
    assert [(p.tokens, p.metadata) for p in ioi] == [(p.tokens, p.metadata) for p in unpaired[:300]]
    assert [p.pair for p in ioi] == [p.pair for p in abc] == [str(i) for i in range(300)]
    assert len({p.text for p in abc}) == 300
    for p, q in zip(ioi, abc):
        io, s, c = p.metadata["io_name"], p.metadata["s_name"], q.metadata["c_name"]
        assert c not in (io, s) and q.metadata["template"] == p.metadata["template"]
        assert len(q.tokens) == len(p.tokens) == 15 and list(q.tokens) == gpt2_tokenizer.encode(q.text)
        # exactly one token differs: the second occurrence of S, now C
        differ = [i for i, (a, b) in enumerate(zip(p.tokens, q.tokens)) if a != b]
        assert len(differ) == 1 and p.text.rsplit(s, 1) == q.text.rsplit(c, 1)
        assert min(p.target, p.foil) >= 0 and (q.target, q.foil) == (-1, -1)  # -1: no target
    again = list(ioi_prompts(gpt2_tokenizer.encode, n_prompts=300, n_tokens=15, seed=0, pairs=True))
    assert again == paired


def test_ioi_generator_other_lengths_and_impossible_ones(gpt2_tokenizer):
    longer = list(ioi_prompts(gpt2_tokenizer.encode, n_prompts=20, n_tokens=16, seed=0))
    assert all(len(p.tokens) == 16 for p in longer)
    with pytest.raises(JaxdiagError, match="no ioi template has 40 tokens"):
        next(ioi_prompts(gpt2_tokenizer.encode, n_prompts=20, n_tokens=40, seed=0))
    with pytest.raises(JaxdiagError, match="at most"):
        next(ioi_prompts(gpt2_tokenizer.encode, n_prompts=10**9, n_tokens=15, seed=0))


def test_induction_prompts_repeat_a_segment_or_never_repeat():
    prompts = list(induction_prompts(n_prompts=30, segment_length=7, vocab_size=50, bos_id=0, seed=3))
    assert [p.condition for p in prompts] == ["repeated"] * 30 + ["random"] * 30
    for p in prompts:
        body = p.tokens[1:]
        assert p.tokens[0] == 0 and len(p.tokens) == 15 and 0 not in body
        assert all(0 < t < 50 for t in body)
        if p.condition == "repeated":
            assert body[:7] == body[7:] and len(set(body[:7])) == 7
        else:
            assert len(set(body)) == 14
    assert prompts == list(induction_prompts(n_prompts=30, segment_length=7, vocab_size=50, bos_id=0, seed=3))
    no_bos = list(induction_prompts(n_prompts=5, segment_length=3, vocab_size=10, bos_id=None, seed=0))
    assert all(len(p.tokens) == 6 for p in no_bos)
    with pytest.raises(JaxdiagError, match="distinct tokens"):
        next(induction_prompts(n_prompts=1, segment_length=30, vocab_size=50, bos_id=0, seed=0))


def test_jsonl_prompts_keep_metadata_and_name_bad_lines(tmp_path, gpt2_tokenizer):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"condition": "a", "text": EXAMPLE, "template": "t1", "score": 2}) + "\n\n"
                    + json.dumps({"condition": "b", "tokens": [1, 2, 3], "extra": {"k": [1]}}) + "\n")
    prompts = list(jsonl_prompts(good, gpt2_tokenizer.encode))
    assert prompts == [
        Prompt("a", (50256, *EXAMPLE_IDS), EXAMPLE, {"template": "t1", "score": 2}),
        Prompt("b", (1, 2, 3), "", {"extra": '{"k": [1]}'}),
    ]
    cases = {
        "{not json": "line 1: not valid JSON",
        "[1, 2]": "line 1: a line must be a JSON object",
        '{"text": "x"}': "'condition' must be a non-empty string",
        '{"condition": "a"}': "exactly one of 'text' and 'tokens'",
        '{"condition": "a", "text": "x", "tokens": [1]}': "exactly one of",
        '{"condition": "a", "tokens": [1, "2"]}': "list of integers",
        '{"condition": "a", "tokens": []}': "list of integers",
        '{"condition": "a", "tokens": [1], "kl": 3}': "'kl' is reserved",
    }
    for line, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(line + "\n")
        with pytest.raises(JaxdiagError, match=message):
            list(jsonl_prompts(bad, gpt2_tokenizer.encode))
    with pytest.raises(JaxdiagError, match="need a tokenizer"):
        list(jsonl_prompts(good, None))
    with pytest.raises(JaxdiagError, match="cannot read prompt file"):
        list(jsonl_prompts(tmp_path / "missing.jsonl", None))


def test_jsonl_metric_position_and_mask(tmp_path):
    """``metric_position`` is kept as given; ``mask`` puts [MASK] there, targets the original token
    unless a target is given, and is the metric position; bad values name the line."""
    path = tmp_path / "masked.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"condition": "a", "tokens": [2, 10, 11, 12, 3], "metric_position": 1, "target": 7},
        {"condition": "a", "tokens": [2, 10, 11, 12, 3], "mask": 2},
        {"condition": "a", "tokens": [2, 10, 11, 12, 3], "mask": 3, "target": 9, "metric_position": 3},
        {"condition": "a", "tokens": [2, 10, 11, 12, 3]},
    ]) + "\n")
    first, second, third, plain = jsonl_prompts(path, None, mask_id=4)
    assert (first.tokens, first.target, first.position, first.metric_position) == ((2, 10, 11, 12, 3), 7, 1, 1)
    assert (second.tokens, second.target, second.metric_position) == ((2, 10, 4, 12, 3), 11, 2)
    assert (third.tokens, third.target, third.metric_position) == ((2, 10, 11, 4, 3), 9, 3)
    assert plain.position == -1 and plain.metric_position == 4  # the last token, as before
    assert "mask" not in second.metadata and "metric_position" not in first.metadata
    cases = {
        '{"condition": "a", "tokens": [1, 2], "mask": 2}': r"'mask' must be a token index in \[0, 2\)",
        '{"condition": "a", "tokens": [1, 2], "metric_position": -1}': "'metric_position' must be a token index",
        '{"condition": "a", "tokens": [1, 2], "metric_position": true}': "'metric_position' must be a token index",
        '{"condition": "a", "tokens": [1, 2, 3], "mask": 1, "metric_position": 2}': "'metric_position' 2 and 'mask' 1 differ",
    }
    for line, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(line + "\n")
        with pytest.raises(JaxdiagError, match=message):
            list(jsonl_prompts(bad, None, mask_id=4))
    bad.write_text('{"condition": "a", "tokens": [1, 2], "mask": 1}\n')
    with pytest.raises(JaxdiagError, match=r"line 1: 'mask' needs a model whose tokenizer has a \[MASK\] token"):
        list(jsonl_prompts(bad, None))  # a decoder: no [MASK]
