"""How prompts become device batches: length buckets, and one exact shape for uniform-length sweeps."""

from __future__ import annotations

import numpy as np
import pytest

import jaxdiag
from jaxdiag.sweep.runner import make_units, run_diagnostics


def _items(lengths: list[int]) -> list[tuple[int, list[int]]]:
    rng = np.random.default_rng(0)
    return [(i, rng.integers(1, 100, size=n).tolist()) for i, n in enumerate(lengths)]


def test_uniform_lengths_run_unpadded():
    units = make_units(_items([15] * 10), batch_size=4, limit=64)
    assert [u.tokens.shape for u in units] == [(4, 15)] * 3
    assert sorted(k for u in units for k in u.keys) == list(range(10))
    assert list(units[-1].lengths) == [15, 15, 1, 1]  # two dummy rows fill the last batch


def test_mixed_lengths_share_bucketed_shapes():
    units = make_units(_items([15, 3, 17, 15, 40]), batch_size=2, limit=64)
    assert [u.tokens.shape[1] for u in units] == [16, 32, 48]  # sorted by length: (3, 15) (15, 17) (40)
    assert make_units(_items([50, 3]), batch_size=2, limit=56)[0].tokens.shape == (2, 56)  # capped at the context


def test_exact_shape_gives_the_bucketed_results(tiny_checkpoint):
    """Padding is masked exactly: the same 15-token prompts diagnosed at 15 and padded to 16 agree."""
    model = jaxdiag.load(str(tiny_checkpoint)).model
    prompts = [tokens for _, tokens in _items([15] * 6)]
    exact = run_diagnostics(model, prompts, batch_size=4)
    padded = run_diagnostics(model, prompts + [list(range(1, 18))], batch_size=4)  # a 17-token prompt forces buckets
    for name, values in exact.items():
        np.testing.assert_allclose(values, padded[name][:6], rtol=1e-5, atol=1e-6, err_msg=name)
