"""Synthetic token sequences on which in-context copying pays, and the prompts that test it.

Token 0 is BOS and starts every sequence; content tokens are ``1 .. vocab_size - 1``. A sequence's
content is drawn without replacement, so the only repeated tokens are the ones a copy puts there
and "the token after the earlier occurrence" is always unambiguous.

A *copy* repeats the sequence with period ``period`` from ``dst = src + period`` on, for ``seg_len``
tokens: ``tokens[t] = tokens[t - period]`` there (``seg_len > period`` repeats the segment more than
once). Period and start are drawn independently, and a share of sequences are fully
random: when one period dominates the copyable tokens, a model copies by attending to that fixed
offset instead of by induction (seen with non-overlapping copies, whose long segments force
periods near half the sequence).
"""

from __future__ import annotations

import dataclasses

import numpy as np

BOS_ID = 0


@dataclasses.dataclass(frozen=True)
class Copy:
    """``tokens[t] == tokens[t - period]`` for ``dst <= t < dst + seg_len``, where ``dst = src + period``."""

    src: int
    period: int
    seg_len: int

    @property
    def dst(self) -> int:
        return self.src + self.period

    def predictable_targets(self) -> range:
        """Positions whose token an induction head can predict: the copy minus its first token."""
        return range(self.dst + 1, self.dst + self.seg_len)


def random_content(rng: np.random.Generator, n: int, vocab_size: int) -> np.ndarray:
    """``n`` distinct content tokens (never BOS), uniformly at random."""
    return rng.choice(np.arange(1, vocab_size), size=n, replace=False).astype(np.int32)


MIN_PERIOD, MAX_PERIOD = 3, 14


def sample_copy(rng: np.random.Generator, n_tokens: int, max_period: int = MAX_PERIOD) -> Copy:
    """A random copy that fits in ``n_tokens`` (BOS at 0): period uniform in ``3 .. max_period`` (at
    most ``(n - 1) // 2``), random start, and at least one whole repeat of the segment, often more."""
    period = int(rng.integers(MIN_PERIOD, min(max_period, (n_tokens - 1) // 2) + 1))
    src = int(rng.integers(1, n_tokens - 2 * period + 1))
    seg_len = int(rng.integers(period, n_tokens - src - period + 1))
    return Copy(src, period, seg_len)


def apply_copy(tokens: np.ndarray, copy: Copy) -> np.ndarray:
    out = tokens.copy()
    for t in range(copy.dst, copy.dst + copy.seg_len):  # one by one: a copy may overlap its source
        out[t] = out[t - copy.period]
    return out


def training_batch(
    rng: np.random.Generator, batch: int, n_tokens: int, vocab_size: int, *, p_random: float, copy_weight: float,
    max_period: int = MAX_PERIOD,
) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens [batch, n_tokens], weights [batch, n_tokens - 1])`` for next-token training.

    ``weights[b, t]`` weighs the prediction of ``tokens[b, t + 1]`` from position ``t``: 1, or
    ``copy_weight`` where the target is predictable by copying. Every input position, the last
    included, gets a target, so no position the diagnostics read is left untrained.
    """
    tokens = np.empty((batch, n_tokens), dtype=np.int32)
    weights = np.ones((batch, n_tokens - 1), dtype=np.float32)
    for b in range(batch):
        seq = np.concatenate([[BOS_ID], random_content(rng, n_tokens - 1, vocab_size)]).astype(np.int32)
        if rng.random() >= p_random:
            copy = sample_copy(rng, n_tokens, max_period)
            seq = apply_copy(seq, copy)
            weights[b, np.asarray(copy.predictable_targets()) - 1] = copy_weight
        tokens[b] = seq
    return tokens, weights


@dataclasses.dataclass(frozen=True)
class CopyingSet:
    """Prompts with one copy each, and where their copyable targets are."""

    tokens: np.ndarray  # [n, n_tokens] int32
    copies: tuple[Copy, ...]

    def target_mask(self) -> np.ndarray:
        """``[n, n_tokens - 1]``: True where position ``t``'s prediction of token ``t + 1`` is scored."""
        mask = np.zeros((self.tokens.shape[0], self.tokens.shape[1] - 1), dtype=bool)
        for i, copy in enumerate(self.copies):
            mask[i, np.asarray(copy.predictable_targets()) - 1] = True
        return mask


def copying_set(seed: int, n: int, n_tokens: int, vocab_size: int, *, kind: str = "varied") -> CopyingSet:
    """Evaluation prompts: ``varied`` copies as in training, or ``halves`` (BOS, segment, segment)."""
    rng = np.random.default_rng(seed)
    tokens = np.empty((n, n_tokens), dtype=np.int32)
    copies = []
    for i in range(n):
        seq = np.concatenate([[BOS_ID], random_content(rng, n_tokens - 1, vocab_size)]).astype(np.int32)
        if kind == "varied":
            copy = sample_copy(rng, n_tokens)
        elif kind == "halves":
            seg_len = (n_tokens - 1) // 2
            copy = Copy(1, seg_len, seg_len)
        else:
            raise ValueError(f"unknown copying-set kind {kind!r}")
        tokens[i] = apply_copy(seq, copy)
        copies.append(copy)
    return CopyingSet(tokens, tuple(copies))


def random_set(seed: int, n: int, n_tokens: int, vocab_size: int) -> np.ndarray:
    """``[n, n_tokens]`` BOS + distinct random content tokens: nothing to copy."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [np.concatenate([[BOS_ID], random_content(rng, n_tokens - 1, vocab_size)]) for _ in range(n)]
    ).astype(np.int32)
