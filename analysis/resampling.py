"""Vectorised resampling engines shared by every bootstrap and permutation test.

No test loops over resamples in Python one at a time: bootstrap resamples are drawn as count
matrices (how many times each prompt is drawn) and permutations as 0/1 membership matrices, in
chunks, so a statistic that is a weighted sum over prompts becomes one matrix product per chunk.
Chunk sizes are fixed, so results depend only on the seed.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

CHUNK = 256  # resamples per chunk: keeps a [CHUNK, n_prompts] float64 matrix around 20 MB at 10k prompts


def rng_for(seed: int, purpose: int) -> np.random.Generator:
    """An independent generator per purpose, so adding a test never changes another test's draws."""
    return np.random.default_rng([int(seed), int(purpose)])


def bootstrap_counts(n: int, n_resamples: int, rng: np.random.Generator, chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """Yield [c, n] float64 matrices of draw counts (each row sums to n): prompts resampled with replacement."""
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        idx += (np.arange(size) * n)[:, None]
        yield np.bincount(idx.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)


def permutation_members(n_a: int, n_b: int, n_perm: int, rng: np.random.Generator,
                        chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """Yield [c, n_a + n_b] 0/1 float64 matrices: 1 marks the prompts relabelled as condition a."""
    n = n_a + n_b
    for start in range(0, n_perm, chunk):
        size = min(chunk, n_perm - start)
        order = np.argsort(rng.random((size, n)), axis=1)[:, :n_a]
        members = np.zeros((size, n))
        np.put_along_axis(members, order, 1.0, axis=1)
        yield members


def weighted_means(weights: np.ndarray, x: np.ndarray, finite: np.ndarray | None) -> np.ndarray:
    """Means of x's columns under each row of weights; NaN entries of x (marked by ~finite) are skipped."""
    if finite is None:
        return weights @ x / weights.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ np.where(finite, x, 0.0)) / (weights @ finite.astype(np.float64))


def finite_mask(x: np.ndarray) -> np.ndarray | None:
    """None when x has no NaN (the fast path), else the boolean mask of finite entries."""
    finite = np.isfinite(x)
    return None if finite.all() else finite
