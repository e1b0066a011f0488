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
