"""Streaming (blockwise-over-keys) attention and diagnostics equal the direct computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiag.models.family import STREAMING_MIN_SEQ, choose_attention
from jaxdiag.models.gpt2 import GPT2, GPT2Config
from jaxdiag.probes.diagnostics import DIAGNOSTICS, attention_diagnostics
from jaxdiag.errors import JaxdiagError
from jaxdiag.probes import ATTENTION_PROBE, DIAGNOSTICS_PROBE
from jaxdiag.probes.streaming import block_stats, empty_stats, merge, merge_scales, stats_diagnostics, streaming_attention

ATOL = 1e-5


def causal_visible(seq: int, lengths: np.ndarray) -> np.ndarray:
    pos = np.arange(seq)
    return (pos[None, :, None] >= pos[None, None, :]) & (pos[None, None, :] < lengths[:, None, None])


def float64_reference(z: np.ndarray, visible: np.ndarray) -> dict[str, np.ndarray]:
    """The seven diagnostics in float64 numpy, straight from the definitions."""
    out = {name: np.full(z.shape[:-1], np.nan) for name in DIAGNOSTICS}
    for idx in np.ndindex(*z.shape[:-1]):
        vis = visible[idx]
        n = int(vis.sum())
        if n == 0:
            continue
        zz = z[idx][vis].astype(np.float64)
        log_pi = zz - (zz.max() + np.log(np.exp(zz - zz.max()).sum()))
        pi = np.exp(log_pi)
        entropy = -(pi * log_pi).sum()
        kl = np.log(n) - entropy
        var = (pi * (zz - (pi * zz).sum()) ** 2).sum()
        out["entropy"][idx], out["kl"][idx] = entropy, kl
        out["max_attn"][idx], out["bos_attn"][idx] = pi.max(), pi[0]
        out["z_excess"][idx] = (pi * zz).sum() - zz.mean()
        if n >= 2:
            out["kl_norm"][idx], out["chi"][idx] = kl / np.log(n), var / np.log(n) ** 2
    return out


def assert_diagnostics_close(ours: dict, ref: dict, atol: float = ATOL) -> None:
    for name in DIAGNOSTICS:
        a, b = np.asarray(ours[name], np.float64), np.asarray(ref[name], np.float64)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{name}: NaN pattern differs")
        np.testing.assert_allclose(a, b, atol=atol, rtol=0, equal_nan=True, err_msg=name)


@pytest.mark.parametrize(
    "seq, block, lengths",
    [
        (16, 4, [16, 9, 1, 3]),  # several blocks, a one-token prompt (n = 1), padding
        (37, 8, [37, 20, 1, 36]),  # sequence not a multiple of the block
        (64, 128, [64, 2, 30, 63]),  # one block larger than the sequence
        (300, 64, [300, 129, 1, 257]),  # long, padded across block boundaries
    ],
)
def test_streaming_attention_matches_direct_and_float64(seq, block, lengths):
    rng = np.random.default_rng(seq)
    batch, n_head, d_head = len(lengths), 3, 8
    # Score scale ~3: peaked and flat rows both occur; an offset on the keys tests shift invariance.
    q, k, v = (rng.normal(size=(batch, seq, n_head, d_head)).astype(np.float32) for _ in range(3))
    k = k + 0.5
    lengths = np.asarray(lengths, np.int32)
    scale = 0.6
    out, stats = jax.jit(
        lambda q, k, v, n: streaming_attention(q, k, v, n, scale=scale, block=block, row_stats=True,
                                               precision=jax.lax.Precision.HIGHEST)
    )(q, k, v, lengths)
    diag = stats_diagnostics(stats)

    z = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64), k.astype(np.float64)) * scale
    visible = causal_visible(seq, lengths)[:, None]
    diag_visible = visible & (np.arange(seq)[None, None, :, None] < lengths[:, None, None, None])
    ref = float64_reference(z, np.broadcast_to(diag_visible, z.shape))
    assert_diagnostics_close(diag, ref)
    # The float32 direct reduction agrees with the streaming one too.
    assert_diagnostics_close(diag, attention_diagnostics(jnp.asarray(z, jnp.float32), jnp.asarray(diag_visible)))

    p = np.where(visible, np.exp(z - np.where(visible, z, -np.inf).max(-1, keepdims=True)), 0.0)
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out), np.einsum("bhqk,bkhd->bqhd", p, v), atol=ATOL)


def test_merging_blocks_in_any_split_gives_the_same_statistics():
    """Chan's update is associative in exact arithmetic: one block vs many blocks of the same row."""
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(5, 48)) * 4 + 20, jnp.float32)  # large offset, no cancellation
    visible = jnp.asarray(rng.random((5, 48)) < 0.7).at[:, 0].set(True)
    whole, _ = block_stats(z, visible)
    stats = empty_stats((5,))
    for start in range(0, 48, 7):
        new, _ = block_stats(z[:, start : start + 7], visible[:, start : start + 7])
        m, alpha, beta = merge_scales(stats, new)
        stats = merge(stats, new, alpha, beta, m)
    for a, b in zip(stats_diagnostics(stats).values(), stats_diagnostics(whole).values()):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=ATOL, rtol=1e-5)


def test_a_block_with_no_visible_key_changes_nothing():
    z = jnp.asarray([[0.3, -1.0, 2.0, 0.5]], jnp.float32)
    visible = jnp.asarray([[True, True, True, False]])
    stats, _ = block_stats(z, visible)
    empty, _ = block_stats(z, jnp.zeros_like(visible))
    m, alpha, beta = merge_scales(stats, empty)
    merged = merge(stats, empty, alpha, beta, m)
    for a, b in zip(merged, stats):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def small_model():
    config = GPT2Config(vocab_size=97, n_positions=160, n_embd=32, n_layer=2, n_head=4)
    model = GPT2(config, rngs=nnx.Rngs(3))
    # Sharper attention than the init gives, so the diagnostics are far from their uniform values.
    for block in model.h:
        kernel = block.attn.c_attn.kernel
        kernel.set_value(kernel[...].at[:, :64].multiply(8.0))
    return model


@pytest.mark.parametrize("query", ["last", "all"])
@pytest.mark.parametrize("seq, lengths", [(16, [16, 5, 1]), (150, [150, 97, 1, 33])])
def test_model_streaming_path_equals_direct(small_model, query, seq, lengths):
    rng = np.random.default_rng(seq)
    tokens = jnp.asarray(rng.integers(0, 97, size=(len(lengths), seq)), jnp.int32)
    lengths = jnp.asarray(lengths, jnp.int32)
    direct = small_model(tokens, lengths, probes=(DIAGNOSTICS_PROBE,), query=query, attention="direct")
    streaming = small_model(tokens, lengths, probes=(DIAGNOSTICS_PROBE,), query=query, attention="streaming")
    assert_diagnostics_close(streaming.probes, direct.probes)
    for b, n in enumerate(np.asarray(lengths)):  # padded positions' hidden states are don't-cares
        np.testing.assert_allclose(np.asarray(streaming.hidden[b, :n]), np.asarray(direct.hidden[b, :n]), atol=ATOL)


def test_auto_picks_streaming_for_long_or_large_and_direct_otherwise():
    assert choose_attention("auto", batch=64, n_head=12, seq=16) == "direct"
    assert choose_attention("auto", batch=1, n_head=12, seq=STREAMING_MIN_SEQ) == "streaming"
    assert choose_attention("auto", batch=4096, n_head=12, seq=128) == "streaming"  # 3 GiB of scores
    assert choose_attention("direct", batch=4096, n_head=12, seq=1024) == "direct"
    with pytest.raises(JaxdiagError, match="unknown attention"):
        choose_attention("flash", batch=1, n_head=1, seq=1)


def test_attention_probe_refuses_streaming(small_model):
    tokens, lengths = jnp.zeros((1, 4), jnp.int32), jnp.asarray([4], jnp.int32)
    with pytest.raises(JaxdiagError, match="probe 'attention' needs attention='direct'"):
        small_model(tokens, lengths, probes=(ATTENTION_PROBE,), query="all", attention="streaming")
    out = small_model(tokens, lengths, probes=(ATTENTION_PROBE,), query="all")
    assert out.probes["attention"].shape == (1, 2, 4, 4, 4)  # [batch, layer, head, query, key]
