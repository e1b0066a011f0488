"""Head-taxonomy scores: parity with a float64 reference from transformers' GPT-2 (attention
probabilities, scores and token ids) in both query modes and both attention paths, and properties."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxdiag
from jaxdiag.probes import TAXONOMY_PROBE
from jaxdiag.schema import TAXONOMY
from jaxdiag.probes.taxonomy import taxonomy_scores
from tests.conftest import TINY_CONFIG


def prompts_with_repeats(vocab: int) -> list[list[int]]:
    """Repeated segments, repeated single tokens, a prompt without repeats, and a one-token prompt."""
    rng = np.random.default_rng(11)
    segment = rng.choice(np.arange(1, vocab), 9, replace=False).tolist()
    distinct = rng.choice(np.arange(1, vocab), 14, replace=False).tolist()
    return [[0] + segment + segment, [0, 5, 7, 5, 5, 9, 7, 5], distinct, [0], [0] + segment[:4] + segment[:4] + segment[:3]]


def torch_reference(directory, token_lists):
    """Float64 ``{name: [layer, b, head, q]}`` from transformers' attention probabilities and scores."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager").eval()
    config = model.config
    n_head, d_head = config.n_head, config.n_embd // config.n_head
    width = max(map(len, token_lists))
    tokens = np.zeros((len(token_lists), width), np.int64)
    for i, seq in enumerate(token_lists):
        tokens[i, : len(seq)] = seq
    mask = (np.arange(width)[None] < np.array([len(t) for t in token_lists])[:, None])
    qkv = []
    handles = [block.attn.c_attn.register_forward_hook(lambda m, a, out: qkv.append(out.detach()))
               for block in model.transformer.h]
    with torch.no_grad():
        probs = model(torch.tensor(tokens), attention_mask=torch.tensor(mask).long(), output_attentions=True).attentions
    for handle in handles:
        handle.remove()
    out = {name: np.full((config.n_layer, len(token_lists), n_head, width), np.nan) for name in TAXONOMY}
    for layer in range(config.n_layer):
        q, k, _ = qkv[layer].double().split(config.n_embd, dim=-1)
        q, k = (t.reshape(len(token_lists), width, n_head, d_head) for t in (q, k))
        z = torch.einsum("bqhd,bkhd->bhqk", q, k).numpy() / np.sqrt(d_head)
        pi = probs[layer].double().numpy()
        for b, seq in enumerate(token_lists):
            x = np.asarray(seq)
            for t in range(len(seq)):
                keys = np.arange(t + 1)
                p = pi[b, :, t, : t + 1] / pi[b, :, t, : t + 1].sum(-1, keepdims=True)
                out["self_attn"][layer, b, :, t] = p[:, t]
                if t >= 1:
                    out["prev_attn"][layer, b, :, t] = p[:, t - 1]
                dup = keys[(keys < t) & (x[keys] == x[t])]
                if dup.size:
                    out["dup_attn"][layer, b, :, t] = p[:, dup].sum(-1)
                ind = keys[(keys >= 1) & (x[np.maximum(keys - 1, 0)] == x[t])]
                if ind.size:
                    out["induction_attn"][layer, b, :, t] = p[:, ind].sum(-1)
                zt = z[b, :, t, : t + 1]
                out["log_z"][layer, b, :, t] = zt.max(-1) + np.log(np.exp(zt - zt.max(-1, keepdims=True)).sum(-1))
    return out


@pytest.fixture(scope="module")
def case(tiny_checkpoint):
    token_lists = prompts_with_repeats(TINY_CONFIG["vocab_size"])
    return jaxdiag.load(str(tiny_checkpoint)).model, token_lists, torch_reference(tiny_checkpoint, token_lists)


@pytest.mark.parametrize("attention", ["direct", "streaming"])
@pytest.mark.parametrize("query", ["last", "all"])
def test_taxonomy_matches_float64_reference(case, query, attention):
    model, token_lists, reference = case
    width = max(map(len, token_lists))
    tokens = np.zeros((len(token_lists), width), np.int32)
    for i, seq in enumerate(token_lists):
        tokens[i, : len(seq)] = seq
    lengths = np.array([len(t) for t in token_lists], np.int32)
    out = model(jnp.asarray(tokens), jnp.asarray(lengths), probes=(TAXONOMY_PROBE,), query=query, attention=attention)
    for name in TAXONOMY:
        ours = np.moveaxis(np.asarray(out.probes[name], np.float64), 1, 0)  # [layer, b, head, rows]
        ref = reference[name]
        if query == "last":
            ref = np.stack([ref[:, b, :, n - 1] for b, n in enumerate(lengths)], axis=1)[..., None]
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref), err_msg=f"{name}: NaN pattern")
        tolerance = 1e-5 * np.maximum(1.0, np.abs(np.nan_to_num(ref)))
        assert np.all(np.abs(np.nan_to_num(ours - ref)) <= tolerance), name
    # the prompts exercise every case: repeats and none
    assert np.isfinite(reference["induction_attn"]).any() and np.isnan(reference["dup_attn"][:, 2]).all()


WIDTH = 24
score = jax.jit(taxonomy_scores)


@st.composite
def rows_and_tokens(draw):
    """One probed row per prompt at a random position t, with its scores and the prompt's tokens."""
    z = np.array(draw(hnp.arrays(np.float32, (1, 1, 1, WIDTH), elements=st.floats(-20, 20, width=32))))
    t = draw(st.integers(0, WIDTH - 1))
    tokens = np.array(draw(hnp.arrays(np.int32, (1, WIDTH), elements=st.integers(0, 5))))
    visible = (np.arange(WIDTH) <= t)[None, None, None, :]
    return z, visible, np.array([[t]], np.int32), tokens


@settings(max_examples=60, deadline=None)
@given(rows_and_tokens(), st.floats(-50, 50))
def test_taxonomy_properties(case_row, shift):
    z, visible, rows, tokens = case_row
    out = {k: np.asarray(v).item() for k, v in score(z, visible, rows, tokens).items()}
    for name in ("prev_attn", "self_attn", "dup_attn", "induction_attn"):
        assert np.isnan(out[name]) or -1e-6 <= out[name] <= 1 + 1e-6, name
    prev = 0.0 if np.isnan(out["prev_attn"]) else out["prev_attn"]
    assert prev + out["self_attn"] <= 1 + 1e-5  # prev + self + the others = 1, the others >= 0
    assert np.isnan(out["prev_attn"]) == (rows[0, 0] == 0)
    shifted = {k: np.asarray(v).item() for k, v in score(z + np.float32(shift), visible, rows, tokens).items()}
    assert shifted["log_z"] == pytest.approx(out["log_z"] + np.float32(shift), abs=1e-4 * max(1.0, abs(shift)))
    for name in ("prev_attn", "self_attn", "dup_attn", "induction_attn"):
        assert shifted[name] == pytest.approx(out[name], abs=1e-5, nan_ok=True)


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(np.float32, (1, 2, WIDTH, WIDTH), elements=st.floats(-10, 10, width=32)))
def test_no_repeated_token_means_no_duplicate_or_induction_score(z):
    tokens = np.random.default_rng(0).permutation(100)[:WIDTH][None].astype(np.int32)
    rows = np.arange(WIDTH, dtype=np.int32)[None]
    visible = (np.arange(WIDTH)[None, :] <= np.arange(WIDTH)[:, None])[None, None]
    out = score(z, visible, rows, tokens)
    assert np.isnan(np.asarray(out["dup_attn"])).all() and np.isnan(np.asarray(out["induction_attn"])).all()
    prev_plus_self = np.asarray(out["prev_attn"])[..., 1:] + np.asarray(out["self_attn"])[..., 1:]
    assert (prev_plus_self <= 1 + 1e-5).all() and np.isnan(np.asarray(out["prev_attn"])[..., 0]).all()
    # a row that sees only itself puts everything there
    np.testing.assert_allclose(np.asarray(out["self_attn"])[..., 0], 1.0, rtol=1e-6)
