"""The synthetic copying data and the head-identification scores, on constructed inputs."""

from __future__ import annotations

import numpy as np
import pytest

from jaxdiag.induction.data import (
    BOS_ID, MAX_PERIOD, MIN_PERIOD, Copy, copying_set, random_set, sample_copy, training_batch,
)
from jaxdiag.induction.identify import fixed_offset_attention, induction_scores, offset_attention


def test_copies_fit_and_vary():
    rng = np.random.default_rng(0)
    copies = [sample_copy(rng, 33) for _ in range(3000)]
    for c in copies:
        assert c.src >= 1 and MIN_PERIOD <= c.period <= MAX_PERIOD and c.dst + c.seg_len <= 33
        assert c.seg_len >= c.period  # at least one whole repeat of the segment
    # period, length and start all vary: no single offset to memorise
    assert {c.period for c in copies} == set(range(MIN_PERIOD, MAX_PERIOD + 1))
    assert len({c.seg_len for c in copies}) > 20 and len({c.src for c in copies}) > 20
    # no period dominates the copyable targets (a dominant one invites a positional shortcut)
    weight = np.bincount([c.period for c in copies], weights=[c.seg_len - 1 for c in copies])
    assert weight.max() / weight.sum() < 0.15


def test_overlapping_copy_repeats_periodically():
    from jaxdiag.induction.data import apply_copy

    out = apply_copy(np.arange(10), Copy(src=1, period=2, seg_len=5))
    np.testing.assert_array_equal(out, [0, 1, 2, 1, 2, 1, 2, 1, 8, 9])


def test_copying_set_targets_are_the_copied_tokens():
    data = copying_set(3, 50, 49, 256)
    mask = data.target_mask()
    for tokens, copy, row in zip(data.tokens, data.copies, mask):
        assert tokens[0] == BOS_ID and (tokens[1:] != BOS_ID).all()
        targets = np.flatnonzero(row) + 1  # mask[t] scores the prediction of token t + 1
        np.testing.assert_array_equal(tokens[targets], tokens[targets - copy.period])
        # apart from the copy, no token repeats: the earlier occurrence is unambiguous
        body = np.delete(tokens, np.arange(copy.dst, copy.dst + copy.seg_len))
        assert len(set(body.tolist())) == len(body)


def test_halves_are_bos_segment_segment():
    data = copying_set(0, 4, 41, 256, kind="halves")
    np.testing.assert_array_equal(data.tokens[:, 1:21], data.tokens[:, 21:41])
    assert all(c == Copy(1, 20, 20) for c in data.copies)


def test_training_batch_weights_copyable_targets():
    rng = np.random.default_rng(1)
    tokens, weights = training_batch(rng, 64, 25, 256, p_random=0.25, copy_weight=4.0)
    assert tokens.shape == (64, 25) and weights.shape == (64, 24)
    copied = (weights == 4.0).any(axis=1)
    assert 0.5 < copied.mean() < 0.95  # some fully random sequences, mostly copies
    for seq, w in zip(tokens, weights):
        t = np.flatnonzero(w == 4.0) + 1
        if len(t):  # a weighted target's token already occurred earlier
            assert all(seq[i] in seq[:i] for i in t)
        else:
            assert len(set(seq.tolist())) == len(seq)


def test_generators_are_deterministic_in_the_seed():
    np.testing.assert_array_equal(copying_set(7, 5, 49, 256).tokens, copying_set(7, 5, 49, 256).tokens)
    np.testing.assert_array_equal(random_set(7, 5, 48, 256), random_set(7, 5, 48, 256))
    assert not np.array_equal(random_set(7, 5, 48, 256), random_set(8, 5, 48, 256))


def _one_hot_patterns(n: int, t: int, target_of_query) -> np.ndarray:
    """[n, 1 layer, 1 head, t, t] attention that puts all weight on target_of_query(p, q)."""
    out = np.zeros((n, 1, 1, t, t))
    for p in range(n):
        for q in range(t):
            out[p, 0, 0, q, target_of_query(p, q)] = 1.0
    return out


def test_induction_and_duplicate_scores_on_constructed_patterns():
    data = copying_set(0, 6, 33, 256)
    by_prompt = {p: c for p, c in enumerate(data.copies)}

    def induction_target(p, q):
        c = by_prompt[p]
        return q - c.period + 1 if c.dst <= q < c.dst + c.seg_len else 0

    patterns = _one_hot_patterns(6, 32, induction_target)
    induction, duplicate = induction_scores(patterns, data)
    assert induction[0, 0] == pytest.approx(1.0) and duplicate[0, 0] == pytest.approx(0.0)
    shifted = _one_hot_patterns(6, 32, lambda p, q: induction_target(p, q) - 1 if induction_target(p, q) else 0)
    induction, duplicate = induction_scores(shifted, data)
    assert induction[0, 0] == pytest.approx(0.0) and duplicate[0, 0] == pytest.approx(1.0)


def test_fixed_offset_detects_a_positional_shortcut_and_spares_previous_token():
    previous = _one_hot_patterns(3, 20, lambda p, q: max(q - 1, 0))
    shortcut = _one_hot_patterns(3, 20, lambda p, q: q - 7 if q >= 7 else 0)
    assert offset_attention(previous)[0, 0, 1] == pytest.approx(19 / 19)
    assert fixed_offset_attention(previous)[0, 0] == pytest.approx(0.0)
    assert fixed_offset_attention(shortcut)[0, 0] == pytest.approx(1.0)  # every query that can see 7 back does
