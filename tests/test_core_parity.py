"""Parity of the Flax GPT-2 and its diagnostics with transformers' PyTorch GPT-2 (eager attention)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jaxdiag
from jaxdiag.probes import ATTENTION_PROBE
from jaxdiag.schema import DIAGNOSTICS
from tests.conftest import TINY_CONFIG, write_torch_checkpoint
from tests.families import padded, torch_padded
from tests.reference import assert_close, reference_diagnostics

GPT2_SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)


def padded_batch(vocab_size: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, size=n).tolist() for n in lengths]


def torch_forward(directory, token_lists):
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager").eval()
    tokens, mask = torch_padded(token_lists)
    with torch.no_grad():
        out = model(tokens, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    return torch.stack(out.attentions).numpy(), out.hidden_states[-1].numpy()


@pytest.fixture(scope="module", params=["tiny", "gpt2-small"])
def checkpoint_and_batch(request, tmp_path_factory, tiny_checkpoint):
    if request.param == "tiny":
        directory, vocab = tiny_checkpoint, TINY_CONFIG["vocab_size"]
    else:
        directory = write_torch_checkpoint(tmp_path_factory.mktemp("gpt2-small"), seed=1, **GPT2_SMALL)
        vocab = GPT2_SMALL["vocab_size"]
    # Different lengths, a one-token prompt (n = 1 everywhere) and an odd bucket boundary.
    token_lists = padded_batch(vocab, [15, 9, 1, 17, 4])
    attentions, hidden = torch_forward(directory, token_lists)
    return directory, token_lists, attentions, hidden


def test_attention_and_hidden_states_match_transformers(checkpoint_and_batch):
    directory, token_lists, attentions, hidden = checkpoint_and_batch
    loaded = jaxdiag.load(str(directory))
    tokens, lengths = padded(token_lists, attentions.shape[-1])
    out = loaded.model(tokens, lengths, probes=(ATTENTION_PROBE,), query="all")
    ours_attn, ours_hidden = np.moveaxis(np.asarray(out.probes["attention"]), 1, 0), np.asarray(out.hidden)
    for b, n in enumerate(lengths):
        assert np.abs(ours_attn[:, b, :, :n, :n] - attentions[:, b, :, :n, :n]).max() < 1e-5
        assert np.abs(ours_hidden[b, :n] - hidden[b, :n]).max() < 1e-4


@pytest.mark.parametrize("query", ["last", "all"])
def test_diagnostics_match_float64_reference(checkpoint_and_batch, query):
    directory, token_lists, attentions, _ = checkpoint_and_batch
    ds = jaxdiag.diagnose(jaxdiag.load(str(directory)), token_lists, query=query, batch_size=4)
    n_layer, n_head = attentions.shape[0], attentions.shape[2]
    assert ds.sizes["layer"] == n_layer and ds.sizes["head"] == n_head
    for b, seq in enumerate(token_lists):
        n = len(seq)
        rows = [n - 1] if query == "last" else range(ds.sizes["query"])
        for q in rows:
            if q >= n:  # a padded query position: every diagnostic is NaN
                for name in DIAGNOSTICS:
                    assert np.isnan(ds[name].isel(prompt=b, query=q)).all()
                continue
            expected = reference_diagnostics(attentions[:, b, :, q, :], q + 1)  # [layer, head]
            for name in DIAGNOSTICS:
                got = ds[name].isel(prompt=b) if query == "last" else ds[name].isel(prompt=b, query=q)
                assert_close(got.values, expected[name], what=f"{name} prompt {b} query {q}")


def test_checkpoint_round_trip_through_transformers(tmp_path, tiny_checkpoint):
    """Our exported checkpoint loads in transformers and gives the same model back."""
    from jaxdiag.models.load import export_weights, save_checkpoint

    loaded = jaxdiag.load(str(tiny_checkpoint))
    save_checkpoint(loaded.model, tmp_path / "copy")
    token_lists = padded_batch(TINY_CONFIG["vocab_size"], [12, 5])
    attn_a, hidden_a = torch_forward(tiny_checkpoint, token_lists)
    attn_b, hidden_b = torch_forward(tmp_path / "copy", token_lists)
    np.testing.assert_array_equal(attn_a, attn_b)
    np.testing.assert_array_equal(hidden_a, hidden_b)
    again = export_weights(jaxdiag.load(str(tmp_path / "copy")).model)
    for name, value in export_weights(loaded.model).items():
        np.testing.assert_array_equal(value, again[name])


def test_pytorch_bin_fallback_and_weights_hash(tmp_path, tiny_checkpoint):
    from safetensors.numpy import load_file

    from jaxdiag.checkpoint import sha256_file

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    tensors = {k: torch.from_numpy(v) for k, v in load_file(str(tiny_checkpoint / "model.safetensors")).items()}
    torch.save(tensors, bin_dir / "pytorch_model.bin")
    from_bin = jaxdiag.load(str(bin_dir))
    from_st = jaxdiag.load(str(tiny_checkpoint))
    assert from_bin.checkpoint.weights_file.name == "pytorch_model.bin"
    assert from_st.checkpoint.weights_sha256 == sha256_file(tiny_checkpoint / "model.safetensors")
    token_lists = padded_batch(TINY_CONFIG["vocab_size"], [7, 3])
    a = jaxdiag.diagnose(from_bin, token_lists)
    b = jaxdiag.diagnose(from_st, token_lists)
    for name in DIAGNOSTICS:
        np.testing.assert_array_equal(a[name].values, b[name].values)


def test_logits_match_transformers(tiny_checkpoint):
    from transformers import GPT2LMHeadModel

    loaded = jaxdiag.load(str(tiny_checkpoint))
    tokens = np.array([padded_batch(TINY_CONFIG["vocab_size"], [10])[0]], dtype=np.int32)
    ours = np.asarray(loaded.model(tokens, np.array([10], np.int32), logits=True).logits)
    model = GPT2LMHeadModel.from_pretrained(tiny_checkpoint, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = model(torch.tensor(tokens).long()).logits.numpy()
    assert np.abs(ours - theirs).max() < 1e-4


@pytest.mark.parametrize("variant", [
    dict(scale_attn_by_inverse_layer_idx=True, activation_function="gelu"),
    dict(activation_function="relu", n_inner=48, layer_norm_epsilon=1e-3),
])
def test_config_variants_match_transformers(tmp_path, variant):
    """GPT-2-family options that change the forward pass (as in custom configs) are honoured."""
    directory = write_torch_checkpoint(tmp_path, qk_gain=4.0, **(TINY_CONFIG | variant))
    token_lists = padded_batch(TINY_CONFIG["vocab_size"], [11, 6])
    attentions, hidden = torch_forward(directory, token_lists)
    ds = jaxdiag.diagnose(jaxdiag.load(str(directory)), token_lists)
    for b, seq in enumerate(token_lists):
        expected = reference_diagnostics(attentions[:, b, :, len(seq) - 1, :], len(seq))
        for name in DIAGNOSTICS:
            assert_close(ds[name].isel(prompt=b).values, expected[name], what=name)


@pytest.mark.parametrize("precision, tol", [("default", 1e-4), ("bf16", 5e-2)])
def test_reduced_precisions_stay_near_highest(tiny_checkpoint, precision, tol):
    token_lists = padded_batch(TINY_CONFIG["vocab_size"], [13, 8, 3])
    exact = jaxdiag.diagnose(jaxdiag.load(str(tiny_checkpoint)), token_lists)
    fast = jaxdiag.diagnose(jaxdiag.load(str(tiny_checkpoint), precision=precision), token_lists)
    for name in DIAGNOSTICS:
        assert fast[name].dtype == np.float32
        np.testing.assert_allclose(fast[name].values, exact[name].values, atol=tol, rtol=tol)
