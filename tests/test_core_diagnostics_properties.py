"""Property tests of the diagnostics on random score rows and masks (hypothesis)."""

from __future__ import annotations

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxdiag.probes.diagnostics import DIAGNOSTICS, attention_diagnostics
from tests.reference import assert_close

WIDTH = 48  # fixed key width: one compilation serves every example
diagnose = jax.jit(attention_diagnostics)

scores_st = hnp.arrays(np.float32, WIDTH, elements=st.floats(-30, 30, width=32))


@st.composite
def rows(draw):
    """Scores plus a visibility mask with n >= 1 visible keys at arbitrary places (bos kept visible)."""
    z = draw(scores_st)
    visible = np.array(draw(hnp.arrays(np.bool_, WIDTH)))
    visible[0] = True
    return z, visible


def run(z: np.ndarray, visible: np.ndarray) -> dict[str, float]:
    return {k: float(v) for k, v in diagnose(z, visible).items()}


def float64_reference(z: np.ndarray, visible: np.ndarray) -> dict[str, float]:
    zv = z[visible].astype(np.float64)
    n = zv.size
    log_p = zv - (zv.max() + np.log(np.exp(zv - zv.max()).sum()))
    p = np.exp(log_p)
    entropy = -(p * log_p).sum()
    var = (p * (zv - (p * zv).sum()) ** 2).sum()
    log_n = np.log(n)
    return {
        "kl": log_n - entropy,
        "kl_norm": (log_n - entropy) / log_n if n > 1 else np.nan,
        "chi": var / log_n**2 if n > 1 else np.nan,
        "entropy": entropy,
        "max_attn": p.max(),
        "bos_attn": p[0],
        "z_excess": (p * zv).sum() - zv.mean(),
    }


@settings(max_examples=300, deadline=None)
@given(rows())
def test_matches_float64_reference(row):
    z, visible = row
    got, expected = run(z, visible), float64_reference(z, visible)
    for name in DIAGNOSTICS:
        assert_close(got[name], expected[name], tol=2e-5 if name == "z_excess" else 1e-5, what=name)


@settings(max_examples=300, deadline=None)
@given(rows())
def test_bounds(row):
    z, visible = row
    d = run(z, visible)
    n = visible.sum()
    assert 0.0 <= d["kl"] <= np.log(n) + 1e-5
    assert -1e-6 <= d["entropy"] <= np.log(n) + 1e-5
    assert 1.0 / n - 1e-6 <= d["max_attn"] <= 1.0 + 1e-6
    if n == 1:
        assert np.isnan(d["kl_norm"]) and np.isnan(d["chi"])
    else:
        assert 0.0 <= d["kl_norm"] <= 1.0 + 1e-6
        assert d["chi"] >= 0.0


@settings(max_examples=200, deadline=None)
@given(rows(), st.floats(-1e3, 1e3, width=32))
def test_invariant_to_a_constant_shift(row, shift):
    z, visible = row
    a, b = run(z, visible), run(z + np.float32(shift), visible)
    for name in ("kl", "kl_norm", "chi", "entropy", "max_attn", "bos_attn"):
        # the shift's own rounding (|shift| * 2^-24 per score) bounds how exact this can be
        tol = 1e-5 + 2e-7 * abs(shift) * max(1.0, float(np.abs(z).max()))
        assert_close(b[name], a[name], tol=tol, what=name)


@settings(max_examples=100, deadline=None)
@given(st.floats(-100, 100, width=32), st.integers(2, WIDTH))
def test_uniform_scores_give_zero_kl_and_chi(value, n):
    visible = np.arange(WIDTH) < n
    d = run(np.full(WIDTH, value, np.float32), visible)
    assert abs(d["kl"]) < 1e-6 and abs(d["chi"]) < 1e-6 and abs(d["z_excess"]) < 1e-6
    assert abs(d["entropy"] - np.log(n)) < 1e-5


@settings(max_examples=100, deadline=None)
@given(scores_st, st.integers(2, WIDTH), st.integers(0, WIDTH - 1))
def test_one_hot_scores_give_kl_log_n(z, n, hot):
    hot = hot % n
    visible = np.arange(WIDTH) < n
    z = np.clip(z, -5, 5)
    z[hot] = 60.0  # every other pi < e^-55: pi is one-hot to float32 precision
    d = run(z, visible)
    assert abs(d["kl"] - np.log(n)) < 1e-5
    assert abs(d["kl_norm"] - 1.0) < 1e-5
    assert d["max_attn"] > 1 - 1e-6


@settings(max_examples=200, deadline=None)
@given(rows(), scores_st)
def test_masked_keys_never_change_a_result(row, other):
    """Whatever sits in the masked-out keys (padding, future tokens) is invisible."""
    z, visible = row
    replaced = np.where(visible, z, other)
    a, b = run(z, visible), run(replaced, visible)
    for name in DIAGNOSTICS:
        assert a[name] == b[name] or (np.isnan(a[name]) and np.isnan(b[name])), name


def test_row_with_no_visible_key_is_nan():
    d = run(np.zeros(WIDTH, np.float32), np.zeros(WIDTH, bool))
    assert all(np.isnan(v) for v in d.values())


def test_model_padding_never_changes_a_prompts_diagnostics(tiny_checkpoint):
    """The same prompt alone and in a padded batch beside longer prompts gives the same numbers."""
    import jaxdiag

    loaded = jaxdiag.load(str(tiny_checkpoint))
    rng = np.random.default_rng(3)
    prompt = rng.integers(0, 1000, 6).tolist()
    alone = jaxdiag.diagnose(loaded, [prompt], batch_size=1)
    padded = jaxdiag.diagnose(loaded, [rng.integers(0, 1000, 40).tolist(), prompt], batch_size=2)
    for name in DIAGNOSTICS:
        np.testing.assert_allclose(padded[name].isel(prompt=1).values, alone[name].isel(prompt=0).values,
                                   rtol=1e-5, atol=1e-6)
