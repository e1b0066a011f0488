"""Float64 NumPy reference for the diagnostics, from attention probabilities alone.

Uses only pi: log pi = z - logsumexp(z), so <z>_pi - mean(z) = <log pi>_pi - mean(log pi) and
Var_pi(z) = Var_pi(log pi); the unknown logsumexp cancels everywhere.
"""

from __future__ import annotations

import numpy as np


def reference_diagnostics(probs: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Diagnostics of attention rows ``probs[..., :n]`` (the n visible keys), in float64."""
    p = np.asarray(probs, dtype=np.float64)[..., :n]
    p = p / p.sum(-1, keepdims=True)
    log_p = np.log(p)
    entropy = -(p * log_p).sum(-1)
    log_n = np.log(n)
    kl = log_n - entropy
    mean_log_p = (p * log_p).sum(-1, keepdims=True)
    var = (p * (log_p - mean_log_p) ** 2).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_norm = np.where(n > 1, kl / log_n, np.nan)
        chi = np.where(n > 1, var / log_n**2, np.nan)
    return {
        "kl": kl,
        "kl_norm": kl_norm,
        "chi": chi,
        "entropy": entropy,
        "max_attn": p.max(-1),
        "bos_attn": p[..., 0],
        "z_excess": mean_log_p[..., 0] - log_p.mean(-1),
    }


def assert_close(actual: np.ndarray, expected: np.ndarray, tol: float = 1e-5, what: str = "") -> None:
    """Within ``tol`` absolutely, or relatively where |expected| > 1; NaN exactly where expected is NaN."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=f"{what}: NaN pattern")
    ok = ~np.isnan(expected)
    err = np.abs(actual[ok] - expected[ok]) / np.maximum(1.0, np.abs(expected[ok]))
    assert err.size == 0 or err.max() < tol, f"{what}: max error {err.max():.3g} >= {tol}"


def reference_diagnostics_masked(probs: np.ndarray, visible: np.ndarray) -> dict[str, np.ndarray]:
    """Diagnostics of attention rows ``probs [..., k]`` over the keys ``visible [k]`` (any set of keys,
    not only a prefix: a sliding window, an encoder's real tokens), in float64."""
    visible = np.asarray(visible, dtype=bool)
    n = int(visible.sum())
    p = np.where(visible, np.asarray(probs, dtype=np.float64), 0.0)
    p = p / p.sum(-1, keepdims=True)
    with np.errstate(divide="ignore"):
        log_p = np.where(visible, np.log(np.where(visible, p, 1.0)), 0.0)
    entropy = -(p * log_p).sum(-1)
    log_n = np.log(n)
    kl = log_n - entropy
    mean_log_p = (p * log_p).sum(-1, keepdims=True)
    var = (p * (log_p - mean_log_p) ** 2).sum(-1)
    nan = np.full(entropy.shape, np.nan)
    return {
        "kl": kl,
        "kl_norm": kl / log_n if n > 1 else nan,
        "chi": var / log_n**2 if n > 1 else nan,
        "entropy": entropy,
        "max_attn": p.max(-1),
        "bos_attn": p[..., 0],
        "z_excess": mean_log_p[..., 0] - log_p.sum(-1) / n,
    }
