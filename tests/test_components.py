"""Direct logit attribution, the logit lens and patching by position (jaxdiag.causal.components)
against transformers eager in float64 with hooks, on random GPT-2 and Llama checkpoints; the DLA sum
rule and lens_metric = metric on every decoder family; and patching against TransformerLens's own
patching functions on a GPT-2.

The hooked references: DLA from the captured inputs of each layer's output projection (per head) and
its MLP's output, through the final norm with its scale frozen at the clean residual; the lens from
HF's hidden states through the final norm; a patch by replacing, at one position, a block's input
(forward pre-hook), its attention module's output, its MLP's output (forward hooks) or one head's
slice of the output projection's input (pre-hook) by the partner prompt's value.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxdiag
from jaxdiag.causal.components import POSITION_KINDS, direct_logit_attribution, logit_lens, position_patches
from jaxdiag.causal.effects import clean_trace, task_metric, task_readout
from tests.families import SMALL, build, randomise
from tests.test_effects_families import _assert_close

LENGTHS = [10, 10, 8, 8, 7]
PARTNER = [1, 0, 3, 2, 4]  # prompt 4 patches itself: its effects are 0


def _build(tmp_path, case: str):
    """(torch model, checkpoint directory) of a random decoder; ``gpt2`` besides tests.families' cases."""
    if case != "gpt2":
        model, directory, _ = build(tmp_path, case, seed=1)
        return model, directory
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=SMALL["vocab_size"], n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=48,
                        bos_token_id=0, eos_token_id=0)
    model = randomise(GPT2LMHeadModel._from_config(config, attn_implementation="eager"), seed=1)
    model.tie_weights()
    directory = tmp_path / "gpt2"
    model.save_pretrained(directory)
    return model, directory


def _batch(seed: int = 3):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(LENGTHS), max(LENGTHS)), np.int64)
    for i, n in enumerate(LENGTHS):
        tokens[i, :n] = rng.integers(0, SMALL["vocab_size"], n)
    target = rng.integers(0, SMALL["vocab_size"], len(LENGTHS))
    foil = np.where(np.arange(len(LENGTHS)) % 2 == 0, rng.integers(0, SMALL["vocab_size"], len(LENGTHS)), -1)
    return tokens, np.asarray(LENGTHS), target, foil


def _ours(directory, tokens, lengths, target, foil, kinds=POSITION_KINDS):
    model = jaxdiag.load(str(directory)).model
    t, n = jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths, jnp.int32)
    a, f = jnp.asarray(target, jnp.int32), jnp.asarray(foil, jnp.int32)
    position = n - 1

    @jax.jit
    def run():
        trace = clean_trace(model, t, n)
        readout = task_readout(model, n, a, f, position)
        clean = readout(trace.hidden)
        out = {"metric": clean} | direct_logit_attribution(model, trace, a, f, position)
        out |= logit_lens(model, trace, a, f, position, rank=True)
        if kinds:
            partner = clean_trace(model, t[jnp.asarray(PARTNER)], n)
            out |= position_patches(model, t, n, trace, partner, readout, clean, kinds, per_step=3)
        out["raw_logits"] = jnp.einsum("bd,bvd->bv", at_last(trace.hidden, n), model.unembed_rows(jnp.stack([a, f], 1)))
        return out

    return model, jax.tree.map(np.asarray, run())


def at_last(values, lengths):
    return jnp.take_along_axis(values, (lengths - 1)[:, None, None], axis=1)[:, 0]


def _parts(model):
    """(blocks, attention module, output projection, MLP, final norm) names of a GPT-2 or Llama in torch."""
    if hasattr(model, "transformer"):
        blocks = model.transformer.h
        return blocks, [b.attn for b in blocks], [b.attn.c_proj for b in blocks], [b.mlp for b in blocks], model.transformer.ln_f
    blocks = model.model.layers
    return blocks, [b.self_attn for b in blocks], [b.self_attn.o_proj for b in blocks], [b.mlp for b in blocks], model.model.norm


class Hooked:
    """Float64 runs of a transformers GPT-2 or Llama, clean (capturing every activation) or patched at one position."""

    def __init__(self, model, tokens, lengths, target, foil):
        self.model = copy.deepcopy(model).double().eval()
        self.blocks, self.attn, self.proj, self.mlp, self.norm = _parts(self.model)
        self.tokens, self.lengths, self.target, self.foil = tokens, lengths, target, foil
        self.mask = torch.tensor(np.arange(tokens.shape[1])[None] < lengths[:, None]).long()
        self.rows = torch.arange(len(lengths))
        self.last = torch.tensor(lengths - 1)
        config = self.model.config
        self.n_head = config.num_attention_heads
        self.d_head = getattr(config, "head_dim", None) or config.hidden_size // self.n_head

    def run(self, tokens=None, patch=None):
        """(logits, captured {name: [layer] tensors}); ``patch = (kind, layer, head, position, source captures)``."""
        captured = {"resid": {}, "attn": {}, "z": {}, "mlp": {}}
        handles = []

        def edit(name, layer, value):
            if patch is not None and patch[1] == layer and patch[0] == name:
                _, _, head, p, source = patch
                value = value.clone()
                cut = slice(None) if head is None else slice(head * self.d_head, (head + 1) * self.d_head)
                value[:, p, cut] = source[name][layer][:, p, cut]
                return value
            captured[name][layer] = value.detach().clone()
            return None

        def before(name, layer):  # the module's first input, positional or hidden_states=
            def hook(_module, args, kwargs):
                value = edit(name, layer, args[0] if args else kwargs["hidden_states"])
                if value is None:
                    return None
                return ((value, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": value})
            return hook

        def after(name, layer):
            def hook(_module, args, output):
                value = edit(name, layer, output[0] if isinstance(output, tuple) else output)
                if value is None:
                    return None
                return (value, *output[1:]) if isinstance(output, tuple) else value
            return hook

        for layer in range(len(self.blocks)):
            handles.append(self.blocks[layer].register_forward_pre_hook(before("resid", layer), with_kwargs=True))
            handles.append(self.proj[layer].register_forward_pre_hook(before("z", layer), with_kwargs=True))
            handles.append(self.attn[layer].register_forward_hook(after("attn", layer)))
            handles.append(self.mlp[layer].register_forward_hook(after("mlp", layer)))
        try:
            with torch.no_grad():
                out = self.model(torch.tensor(self.tokens if tokens is None else tokens), attention_mask=self.mask,
                                 output_hidden_states=True)
        finally:
            for h in handles:
                h.remove()
        return out, captured

    def metric_of(self, logits_last):
        target, foil = torch.tensor(self.target), torch.tensor(self.foil)
        difference = logits_last[self.rows, target] - logits_last[self.rows, foil.clamp(min=0)]
        return torch.where(foil >= 0, difference, torch.log_softmax(logits_last, -1)[self.rows, target]).numpy()

    def unembedding(self):
        return self.model.get_output_embeddings().weight  # [vocab, d]

    def frozen(self, x_last):
        """(gain [b, d], bias or None, centred) of the final norm at the clean residual's last positions."""
        norm = self.norm
        if isinstance(norm, torch.nn.LayerNorm):
            sigma = torch.sqrt(x_last.var(-1, unbiased=False, keepdim=True) + norm.eps)
            return norm.weight / sigma, norm.bias, True
        rms = torch.sqrt(x_last.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return norm.weight / rms, None, False

    def reference(self, partner_rows):
        out, clean = self.run()
        n_layer = len(self.blocks)
        hidden = out.hidden_states  # HF's last entry is after the final norm
        pick = lambda t: t[self.rows, self.last]
        # the last block's output before the final norm: its input + attention + MLP (sequential residual)
        mid = clean["resid"][n_layer - 1] + clean["attn"][n_layer - 1]
        final_resid = pick(mid + clean["mlp"][n_layer - 1])
        w_u = self.unembedding()
        target, foil = torch.tensor(self.target), torch.tensor(self.foil)
        u = w_u[target] - torch.where((foil >= 0)[:, None], w_u[foil.clamp(min=0)], torch.zeros_like(w_u[target]))
        gain, bias, centred = self.frozen(final_resid)
        through = lambda c: ((c - c.mean(-1, keepdim=True)) if centred else c) * gain
        dot = lambda c: (through(c) * u).sum(-1).numpy()
        ref = {"metric": self.metric_of(pick(out.logits))}
        w_o = [p.weight.T if hasattr(self.model, "model") else p.weight for p in self.proj]  # [h*d, d_model]
        ref["dla"] = np.stack([np.stack([dot(pick(clean["z"][l])[:, h * self.d_head:(h + 1) * self.d_head]
                                             @ w_o[l][h * self.d_head:(h + 1) * self.d_head])
                                         for h in range(self.n_head)], 1) for l in range(n_layer)], 1)
        bias_of = lambda p: torch.zeros(u.shape[-1], dtype=u.dtype) if p.bias is None else p.bias
        ref["dla_attn_bias"] = np.stack([dot(bias_of(self.proj[l]).expand_as(u)) for l in range(n_layer)], 1)
        ref["dla_mlp"] = np.stack([dot(pick(clean["mlp"][l])) for l in range(n_layer)], 1)
        ref["dla_embed"] = dot(pick(clean["resid"][0]))
        ref["dla_norm_bias"] = np.zeros(len(self.lengths)) if bias is None else (u @ bias).numpy()
        lens = []
        for layer in range(n_layer):
            h = hidden[layer + 1] if layer == n_layer - 1 else self.norm(hidden[layer + 1])
            lens.append(self.metric_of(pick(h) @ w_u.T))
        ref["lens_metric"] = np.stack(lens, 1)
        # partner captures, then every patch
        _, source = self.run(self.tokens[partner_rows])
        seq = self.tokens.shape[1]
        names = {"patch_resid": "resid", "patch_attn_out": "attn", "patch_mlp_out": "mlp"}
        for kind, name in names.items():
            values = np.full((len(self.lengths), n_layer, seq), np.nan)
            for layer in range(n_layer):
                for p in range(seq):
                    logits = self.run(patch=(name, layer, None, p, source))[0].logits
                    values[:, layer, p] = self.metric_of(pick(logits)) - ref["metric"]
            ref[f"effect_{kind}"] = np.where(np.arange(seq) < self.lengths[:, None, None], values, np.nan)
        values = np.full((len(self.lengths), n_layer, self.n_head, seq), np.nan)
        for layer in range(n_layer):
            for head in range(self.n_head):
                for p in range(seq):
                    logits = self.run(patch=("z", layer, head, p, source))[0].logits
                    values[:, layer, head, p] = self.metric_of(pick(logits)) - ref["metric"]
        ref["effect_patch_head_pos"] = np.where(np.arange(seq) < self.lengths[:, None, None, None], values, np.nan)
        return ref


@pytest.mark.parametrize("case", ["gpt2", "llama-bias"])
def test_components_match_hooked_transformers(tmp_path, case):
    torch_model, directory = _build(tmp_path, case)
    tokens, lengths, target, foil = _batch()
    _, ours = _ours(directory, tokens, lengths, target, foil)
    with torch.no_grad():
        ref = Hooked(torch_model, tokens, lengths, target, foil).reference(PARTNER)
    for name, value in ref.items():
        _assert_close(ours[name], np.asarray(value, np.float64), f"{case} {name}")
    assert np.nanmax(np.abs(ref["effect_patch_resid"])) > 1e-2, "the reference must see real effects"
    for kind in POSITION_KINDS:  # prompt 4 is its own partner
        np.testing.assert_allclose(np.nan_to_num(ours[f"effect_{kind}"][4]), 0.0, atol=1e-5)


def _sum_rule(ours, foil):
    """The components sum to the raw logit difference (the target's raw logit without a foil)."""
    total = (ours["dla"].sum((1, 2)) + ours["dla_attn_bias"].sum(1) + ours["dla_mlp"].sum(1) + ours["dla_embed"]
             + ours["dla_norm_bias"])
    raw = ours["raw_logits"]
    expected = np.where(foil >= 0, raw[:, 0] - raw[:, 1], raw[:, 0])
    np.testing.assert_allclose(total, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["gpt2", "llama-gqa-tied", "llama-bias", "neox-parallel", "neox-sequential",
                                  "gemma2", "gemma3", "qwen3"])
def test_dla_sum_rule_and_lens_on_every_family(tmp_path, case):
    _, directory = _build(tmp_path, case)
    tokens, lengths, target, foil = _batch()
    model, ours = _ours(directory, tokens, lengths, target, foil, kinds=("patch_resid", "patch_head_pos"))
    _sum_rule(ours, foil)
    if case != "gemma2":  # without a soft cap the metric with a foil is that difference
        np.testing.assert_allclose(ours["metric"][foil >= 0], (ours["raw_logits"][:, 0] - ours["raw_logits"][:, 1])[foil >= 0],
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours["lens_metric"][:, -1], ours["metric"], rtol=1e-5, atol=1e-5)
    assert np.all(ours["lens_rank"] >= 0)
    # patching the residual entering layer 0 at every position is patching the whole prompt... at the last
    # position, the residual entering layer 0 is all the metric sees of that position's token
    assert np.isnan(ours["effect_patch_resid"][2, :, 9]).all() and np.isfinite(ours["effect_patch_resid"][2, :, :8]).all()


def test_lens_rank_and_metric_without_foil(tmp_path):
    _, directory = _build(tmp_path, "gpt2")
    tokens, lengths, target, _ = _batch()
    foil = np.full(len(lengths), -1)
    model, ours = _ours(directory, tokens, lengths, target, foil, kinds=())
    _sum_rule(ours, foil)
    np.testing.assert_allclose(ours["lens_metric"][:, -1], ours["metric"], rtol=1e-5, atol=1e-5)
    logits = np.asarray(model.unembed(jnp.asarray(model(jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths, jnp.int32)).hidden)))
    last = logits[np.arange(len(lengths)), lengths - 1]
    expected = (last > last[np.arange(len(lengths)), target][:, None]).sum(-1)
    np.testing.assert_array_equal(ours["lens_rank"][:, -1], expected)


def test_patching_matches_transformer_lens(tmp_path):
    """TransformerLens's get_act_patch_* on the same GPT-2 weights, one prompt per call (its metric is one
    scalar): patched metric minus the corrupted run's, against effect_patch_* within 1e-4."""
    pytest.importorskip("transformer_lens")
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    torch_model, directory = _build(tmp_path, "gpt2")
    config = torch_model.config
    # TransformerLens 4's bridge runs the HF weights unprocessed (no folded norms, no centring)
    hooked = TransformerBridge.boot_transformers(str(directory), hf_model=torch_model.float().eval())
    n = 8
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, config.vocab_size, (2, n))
    lengths, target, foil = np.array([n, n]), rng.integers(0, config.vocab_size, 2), np.array([3, -1])
    global PARTNER
    saved, PARTNER = PARTNER, [1, 0]
    try:
        _, ours = _ours(directory, tokens, lengths, target, foil)
    finally:
        PARTNER = saved
    functions = {"patch_resid": patching.get_act_patch_resid_pre, "patch_attn_out": patching.get_act_patch_attn_out,
                 "patch_mlp_out": patching.get_act_patch_mlp_out,
                 "patch_head_pos": patching.get_act_patch_attn_head_out_by_pos}
    for b in range(2):
        corrupted, clean = torch.tensor(tokens[b:b + 1]), torch.tensor(tokens[1 - b:2 - b])
        _, cache = hooked.run_with_cache(clean)
        metric = lambda logits, b=b: torch.as_tensor(np.asarray(task_metric(
            jnp.asarray(logits[:, -1].detach().numpy()), jnp.asarray(target[b:b + 1]), jnp.asarray(foil[b:b + 1])))[0])
        base = metric(hooked(corrupted))
        for kind, function in functions.items():
            result = function(hooked, corrupted, cache, metric).detach().numpy() - base.item()  # [layer, pos(, head)]
            if kind == "patch_head_pos":
                result = np.swapaxes(result, 1, 2)  # TL: [layer, pos, head]; ours: [layer, head, pos]
            np.testing.assert_allclose(ours[f"effect_{kind}"][b], result, atol=1e-4, err_msg=kind)
