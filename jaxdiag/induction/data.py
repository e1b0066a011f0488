"""Synthetic token sequences on which in-context copying pays, and the prompts that test it.

Token 0 is BOS and starts every sequence; content tokens are ``1 .. vocab_size - 1``. A sequence's
content is drawn without replacement, so the only repeated tokens are the ones a copy puts there
and "the token after the earlier occurrence" is always unambiguous.

A *copy* repeats ``seg_len`` tokens from position ``src`` at position ``dst = src + period``.
Period, length and start all vary, and a share of sequences are fully random: with one fixed
segment length a model solves the task by attending to a fixed offset instead of by induction.
"""

from __future__ import annotations

import dataclasses

import numpy as np

BOS_ID = 0


@dataclasses.dataclass(frozen=True)
class Copy:
    """``tokens[dst : dst + seg_len] == tokens[src : src + seg_len]`` with ``dst = src + period``."""

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


def sample_copy(rng: np.random.Generator, n_tokens: int, min_seg_len: int = 3) -> Copy:
    """A random non-overlapping copy that fits in a sequence of ``n_tokens`` (BOS at 0)."""
    max_seg_len = (n_tokens - 1) // 2
    seg_len = int(rng.integers(min_seg_len, max_seg_len + 1))
    period = int(rng.integers(seg_len, n_tokens - seg_len))  # dst + seg_len <= n_tokens needs src >= 1
    src = int(rng.integers(1, n_tokens - period - seg_len + 1))
    return Copy(src, period, seg_len)


def apply_copy(tokens: np.ndarray, copy: Copy) -> np.ndarray:
    out = tokens.copy()
    out[copy.dst : copy.dst + copy.seg_len] = tokens[copy.src : copy.src + copy.seg_len]
    return out


def training_batch(
    rng: np.random.Generator, batch: int, n_tokens: int, vocab_size: int, *, p_random: float, copy_weight: float
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
            copy = sample_copy(rng, n_tokens)
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
