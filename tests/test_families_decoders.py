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
    # Llama 3.1's: rope_scaling with rope_type llama3
    ("llama3-rope", {"rope_theta": 10000.0, "rope_scaling": {
        "factor": 8.0, "low_freq_factor": 0.25, "high_freq_factor": 2.0, "original_max_position_embeddings": 8,
        "rope_type": "llama3"}}),
    # Qwen2.5's long-context yarn: the old "type" key
    ("llama-yarn", {"rope_theta": 10000.0, "rope_scaling": {"type": "yarn", "factor": 4.0,
                                                            "original_max_position_embeddings": 16}}),
    # Qwen2's: no layer_types, the window from use_sliding_window / max_window_layers
    ("qwen2-layer-windows", {"rope_theta": 10000.0}),
    # Gemma 2's: no layer_types (local layers first, alternating)
    ("gemma2", {"rope_theta": 10000.0}),
    # Gemma 3 4B's: global rope_theta + rope_scaling, rope_local_base_freq, sliding_window_pattern
    ("gemma3", {"rope_theta": 1e6, "rope_local_base_freq": 1e4, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
                "sliding_window_pattern": 2}),
])
def test_transformers4_config_spelling(tmp_path, case, old):
    import numpy as np

    _, directory, _ = build(tmp_path, case)
    token_lists = token_batch(SMALL["vocab_size"], lengths=[9, 5])
    before = jaxdiag.diagnose(jaxdiag.load(str(directory)), token_lists)
    config = json.loads((directory / "config.json").read_text())
    config.pop("rope_parameters")
    config.pop("layer_types", None)
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


def test_gemma3_multimodal_checkpoint_loads_its_text_part(tmp_path):
    """A published-layout Gemma3ForConditionalGeneration (config text_config, language_model.* weights, a
    vision tower and projector): jaxdiag loads the text model, at parity with torch's."""
    import transformers

    from tests.families import CASES, randomise

    text = SMALL | CASES["gemma3"][2]
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    config = transformers.Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                       image_token_index=500, boi_token_index=501, eoi_token_index=502)
    model = transformers.Gemma3ForConditionalGeneration._from_config(config, attn_implementation="eager")
    randomise(model, seed=0)
    model.tie_weights()
    model.save_pretrained(tmp_path / "gemma3-mm")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "gemma3-mm" / "model.safetensors"), "np") as f:
        names = list(f.keys())
    assert any(n.startswith("vision_tower.") for n in names) and any(n.startswith("language_model.") for n in names)
    token_lists = token_batch(SMALL["vocab_size"])
    attentions, hidden, logits, reference = torch_forward(model, token_lists)
    compare(tmp_path / "gemma3-mm", token_lists, attentions, hidden, logits, reference, window=CASES["gemma3"][3])
    assert jaxdiag.load(str(tmp_path / "gemma3-mm")).config.model_type == "gemma3"
