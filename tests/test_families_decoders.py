"""Parity of the Llama-family and GPT-NeoX models with transformers' PyTorch models (eager
attention) on random weights, for each option: grouped-query attention, Qwen2's q/k/v biases,
Mistral's sliding window, NeoX's partial rotary and parallel/sequential residual, tied/untied heads."""

from __future__ import annotations

import json

import pytest

import jaxdiag
from jaxdiag.errors import JaxdiagError
from tests.families import CASES, DYNAMIC, SMALL, build, compare, token_batch, torch_forward

@pytest.mark.parametrize("case", list(CASES))
def test_decoder_parity_with_transformers(tmp_path, case):
    model, directory, window = build(tmp_path, case)
    token_lists = token_batch(SMALL["vocab_size"])
    attentions, hidden, logits, reference = torch_forward(model, token_lists, fresh_per_prompt=case in DYNAMIC)
    diffs = compare(directory, token_lists, attentions, hidden, logits, reference, window=window)
    print(case, {k: f"{v:.2g}" for k, v in diffs.items()})


def test_sliding_window_n_is_the_keys_a_query_sees(tmp_path):
    """With window 4, a late query's n is 4: kl_norm is kl / log 4 and bos_attn is 0 past the window."""
    _, directory, _ = build(tmp_path, "mistral-window")
    ds = jaxdiag.diagnose(jaxdiag.load(str(directory)), [list(range(1, 12))], query="all")
    kl, kl_norm, bos = (ds[name].isel(prompt=0).values for name in ("kl", "kl_norm", "bos_attn"))
    import numpy as np

    np.testing.assert_allclose(kl_norm[..., 8], kl[..., 8] / np.log(4), rtol=1e-5)
    assert (bos[..., 4:] == 0).all() and (bos[..., :4] > 0).all()


@pytest.mark.parametrize("change, message", [
    ({"model_type": "t5"}, "model_type 't5' is not supported"),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "factor": 2.0}}, "rope type 'longrope' is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads"),
])
def test_unsupported_options_are_clear_errors(tmp_path, change, message):
    _, directory, _ = build(tmp_path, "llama")
    config = json.loads((directory / "config.json").read_text()) | change
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(JaxdiagError, match=message):
        jaxdiag.load(str(directory))


@pytest.mark.parametrize("case, old", [
    # Pythia's config.json on the hub (transformers 4): rotary_pct / rotary_emb_base, no rope_parameters
    ("neox-sequential", {"rotary_pct": 0.5, "rotary_emb_base": 100.0}),
    # Llama 2/3's: top-level rope_theta and rope_scaling null
    ("llama-gqa-tied", {"rope_theta": 500.0, "rope_scaling": None}),
])
def test_transformers4_config_spelling(tmp_path, case, old):
    import numpy as np

    _, directory, _ = build(tmp_path, case)
    token_lists = token_batch(SMALL["vocab_size"], lengths=[9, 5])
    before = jaxdiag.diagnose(jaxdiag.load(str(directory)), token_lists)
    config = json.loads((directory / "config.json").read_text())
    config.pop("rope_parameters")
    (directory / "config.json").write_text(json.dumps(config | old))
    after = jaxdiag.diagnose(jaxdiag.load(str(directory)), token_lists)
    np.testing.assert_array_equal(before["kl"].values, after["kl"].values)


def test_tied_head_stored_anyway_is_ignored(tmp_path):
    """Some tied checkpoints still store lm_head.weight: it is dropped, not an 'unexpected weight' error."""
    from safetensors.numpy import load_file, save_file

    _, directory, _ = build(tmp_path, "llama-gqa-tied")
    tensors = load_file(str(directory / "model.safetensors"))
    assert "lm_head.weight" not in tensors
    save_file(tensors | {"lm_head.weight": tensors["model.embed_tokens.weight"]}, str(directory / "model.safetensors"))
    assert jaxdiag.load(str(directory)).config.tie_word_embeddings
