"""Shared helpers of the model-family parity tests: random HF models saved to disk, the PyTorch
forward pass (eager attention), and the comparisons (attention, hidden states, diagnostics vs a
float64 reference of the torch attention weights over exactly the keys each query sees)."""

from __future__ import annotations

import numpy as np
import torch

import jaxdiag
from jaxdiag.probes import ATTENTION_PROBE
from jaxdiag.schema import DIAGNOSTICS
from tests.reference import assert_close, reference_diagnostics_masked

LENGTHS = [11, 6, 1, 9]  # different lengths, a one-token prompt, right padding


def randomise(model: torch.nn.Module, *, seed: int, qk_gain: float = 3.0) -> torch.nn.Module:
    """Random weights with some structure: biases and norm weights away from their 0 / 1 init, and
    q/k scaled up so that heads are sharper than at HF's 0.02 init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
            elif "norm" in name.lower() and param.ndim == 1:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
            elif param.ndim == 2:
                param.copy_(0.02 * torch.randn(param.shape, generator=gen) * param.shape[1] ** 0.5 / 32 ** 0.5)
            if any(k in name for k in ("q_proj.weight", "k_proj.weight", "query.weight", "key.weight",
                                       "query_key_value.weight")):
                param.mul_(qk_gain)
    return model.eval()


def token_batch(vocab_size: int, lengths=LENGTHS, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, size=n).tolist() for n in lengths]


def torch_forward(model, token_lists, *, base=None, fresh_per_prompt: bool = False):
    """(attentions [layer, b, h, q, k], last hidden state [b, s, e], logits or None) from torch, and
    the attentions of the same model run in float64 (the diagnostics' reference: in float32, trained
    heads give keys exactly 0 weight, whose log the reference needs). ``fresh_per_prompt``: each
    prompt alone through its own copy of the model (dynamic rope: transformers rescales by the
    batch's longest position and caches the result in the model)."""
    import copy

    float64 = copy.deepcopy(model).double()
    base_of = lambda m: m if base is model else m.base_model
    if fresh_per_prompt:
        width = max(map(len, token_lists))
        parts = [_forward(copy.deepcopy(model), [seq]) for seq in token_lists]
        pad = lambda a, axes: np.pad(a, [(0, width - a.shape[i]) if i in axes else (0, 0) for i in range(a.ndim)])
        ours = (np.concatenate([pad(a, (3, 4)) for a, _, _ in parts], axis=1),
                np.concatenate([pad(h, (1,)) for _, h, _ in parts], axis=0),
                None if parts[0][2] is None else np.concatenate([pad(l, (1,)) for _, _, l in parts], axis=0))
    else:
        ours = _forward(model, token_lists, base=base)
    # each prompt alone, unpadded: a padded query whose window holds only padding is a fully masked row,
    # which float64 torch turns into NaN (and that NaN reaches the real rows of the next layer)
    reference = np.zeros_like(ours[0])
    for b, seq in enumerate(token_lists):
        fresh = copy.deepcopy(float64) if fresh_per_prompt else float64
        reference[:, b, :, : len(seq), : len(seq)] = _forward(fresh, [seq], base=base_of(fresh))[0][:, 0]
    return (*ours, reference)


def torch_padded(token_lists) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids and the attention mask (1 on real tokens) of a ragged batch, for torch models."""
    width = max(map(len, token_lists))
    tokens = torch.zeros((len(token_lists), width), dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for i, seq in enumerate(token_lists):
        tokens[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    return tokens, mask


def _forward(model, token_lists, *, base=None):
    tokens, mask = torch_padded(token_lists)
    base = base if base is not None else model.base_model
    with torch.no_grad():
        out = base(tokens, attention_mask=mask, output_attentions=True)
        logits = model(tokens, attention_mask=mask).logits.double().numpy() if model is not base else None
    return torch.stack(out.attentions).double().numpy(), out.last_hidden_state.double().numpy(), logits


def padded(token_lists, width):
    tokens = np.zeros((len(token_lists), width), dtype=np.int32)
    for i, seq in enumerate(token_lists):
        tokens[i, : len(seq)] = seq
    return tokens, np.array([len(t) for t in token_lists], dtype=np.int32)


def visible_keys(q: int, n: int, *, mask: str, window: int | None = None) -> np.ndarray:
    """Which keys ``[0, n)`` of a prompt of length ``n`` query ``q`` sees, by the family's rule."""
    k = np.arange(n)
    if mask == "bidirectional":
        return np.ones(n, bool)
    seen = k <= q
    if window is not None:
        seen &= k > q - window
    return seen


def expected_diagnostics(reference_rows, q: int, n: int, width: int, *, mask: str, window) -> dict[str, np.ndarray]:
    """float64 diagnostics of ``reference_rows [layer, head, k]`` (query ``q`` of an ``n``-token prompt):
    ``window`` one for every layer, or a tuple of each layer's (per-layer sliding windows)."""
    windows = window if isinstance(window, tuple) else (window,) * reference_rows.shape[0]
    per_layer = []
    for layer, w in enumerate(windows):
        seen = np.zeros(width, bool)
        seen[:n] = visible_keys(q, n, mask=mask, window=w)
        per_layer.append(reference_diagnostics_masked(reference_rows[layer], seen))
    return {name: np.stack([d[name] for d in per_layer]) for name in per_layer[0]}


def compare(directory, token_lists, attentions, hidden, logits=None, reference=None, *, mask="causal", window=None,
            atol_attn=1e-5, atol_hidden=1e-4) -> dict[str, float]:
    """Assert parity; return the max abs differences (attention, hidden and logits relative to their
    scale, max |torch| or 1, diagnostics). ``window``: the sliding window, or each layer's."""
    loaded = jaxdiag.load(str(directory))
    tokens, lengths = padded(token_lists, attentions.shape[-1])
    out = loaded.model(tokens, lengths, probes=(ATTENTION_PROBE,), query="all", logits=logits is not None)
    ours_attn = np.moveaxis(np.asarray(out.probes["attention"], np.float64), 1, 0)  # [layer, b, h, q, k]
    diffs = {"attention": 0.0, "hidden": 0.0, "logits": 0.0, "diagnostics": 0.0}
    for b, n in enumerate(lengths):
        diffs["attention"] = max(diffs["attention"], np.abs(ours_attn[:, b, :, :n, :n] - attentions[:, b, :, :n, :n]).max())
        diffs["hidden"] = max(diffs["hidden"], np.abs(np.asarray(out.hidden)[b, :n] - hidden[b, :n]).max())
        if logits is not None:
            diffs["logits"] = max(diffs["logits"], np.abs(np.asarray(out.logits)[b, :n] - logits[b, :n]).max())
        # padded keys get exactly no weight
        assert np.all(ours_attn[:, b, :, :n, n:] == 0)
    diffs["hidden"] /= max(1.0, float(np.abs(hidden).max()))
    if logits is not None:
        diffs["logits"] /= max(1.0, float(np.abs(logits).max()))
    assert diffs["attention"] < atol_attn, diffs
    assert diffs["hidden"] < atol_hidden, diffs
    assert diffs["logits"] < 1e-4, diffs
    for query in ("last", "all"):
        ds = jaxdiag.diagnose(loaded, token_lists, query=query, batch_size=4)
        assert ds.sizes["layer"] == attentions.shape[0] and ds.sizes["head"] == attentions.shape[2]
        for b, seq in enumerate(token_lists):
            n = len(seq)
            for q in ([n - 1] if query == "last" else range(n)):
                expected = expected_diagnostics(reference[:, b, :, q, :], q, n, attentions.shape[-1], mask=mask,
                                                window=window)
                for name in DIAGNOSTICS:
                    got = ds[name].isel(prompt=b) if query == "last" else ds[name].isel(prompt=b, query=q)
                    assert_close(got.values, expected[name], what=f"{name} prompt {b} query {q}")
                    ok = ~np.isnan(expected[name])
                    if ok.any():
                        diffs["diagnostics"] = max(diffs["diagnostics"],
                                                   float(np.abs(got.values[ok] - expected[name][ok]).max()))
            if query == "all":  # padded query positions: NaN
                for name in DIAGNOSTICS:
                    assert np.isnan(ds[name].isel(prompt=b).values[..., n:]).all()
    return diffs


# --- random decoder checkpoints of every option, made by transformers ------------------------------

SMALL = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=48, vocab_size=97,
             max_position_embeddings=64)

CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=4), None),
    "llama-gqa-tied": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=True,
                                                               rope_theta=500.0), None),
    "llama-bias": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True,
                                                           head_dim=16), None),
    "qwen2-gqa": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2), None),
    "mistral-window": ("MistralConfig", "MistralForCausalLM", dict(num_key_value_heads=2, sliding_window=4), 4),
    "neox-parallel": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(rotary_pct=0.25), None),
    "neox-sequential": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(rotary_pct=0.5, use_parallel_residual=False,
                                                                    rotary_emb_base=100.0), None),
    # Llama 3.1's rope, its original context (8) shorter than the prompts; head_dim 16 gives frequencies in
    # all three bands (kept, smoothed, divided by factor)
    "llama3-rope": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2, head_dim=16, rope_parameters=dict(
        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=0.25, high_freq_factor=2.0,
        original_max_position_embeddings=8)), None),
    "llama-yarn": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2, head_dim=16, rope_parameters=dict(
        rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16)), None),
    "llama-linear": ("LlamaConfig", "LlamaForCausalLM", dict(rope_parameters=dict(
        rope_type="linear", rope_theta=10000.0, factor=3.0)), None),
    # dynamic NTK past max_position_embeddings (8): torch runs each prompt on a fresh model (DYNAMIC)
    "llama-dynamic": ("LlamaConfig", "LlamaForCausalLM", dict(max_position_embeddings=8, rope_parameters=dict(
        rope_type="dynamic", rope_theta=10000.0, factor=4.0)), None),
    # Qwen2's per-layer window: layer 0 global, layer 1 local (use_sliding_window, max_window_layers)
    "qwen2-layer-windows": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, use_sliding_window=True,
                                                                    sliding_window=4, max_window_layers=1), (None, 4)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(num_key_value_heads=2, head_dim=16), None),
    # Gemma 2: local layer 0 (window 4), global layer 1; soft-caps small enough to bite
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(num_key_value_heads=2, head_dim=16, sliding_window=4,
                                                         query_pre_attn_scalar=24, attn_logit_softcapping=3.0,
                                                         final_logit_softcapping=4.0), (4, None)),
    # Gemma 3 (text), as the 4B+ checkpoints: linear rope scaling on the global layer only
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        num_key_value_heads=2, head_dim=16, sliding_window=4, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"full_attention": dict(rope_type="linear", factor=8.0, rope_theta=1e6),
                         "sliding_attention": dict(rope_type="default", rope_theta=1e4)}), (4, None)),
}
DYNAMIC = ("llama-dynamic",)  # parity against one fresh torch model per prompt


def build(tmp_path, case: str, seed: int = 0):
    import transformers

    config_name, model_name, extra, window = CASES[case]
    config = getattr(transformers, config_name)(**(SMALL | extra))
    model = getattr(transformers, model_name)._from_config(config, attn_implementation="eager")
    randomise(model, seed=seed)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    directory = tmp_path / case
    model.save_pretrained(directory)
    return model, directory, window
