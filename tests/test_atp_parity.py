"""Attribution patching: equal to a torch.autograd reference on transformers' GPT-2, and the first-order
limit of exact patching; AtP* (GradDrop) follows its definition."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxdiag
from jaxdiag.causal.effects import attribution_effects, head_effects, head_gradients, head_outputs, task_readout
from tests.test_effects_parity import paired_case


def torch_atp(directory, tokens: np.ndarray, lengths: np.ndarray, target, foil, partner: np.ndarray):
    """``(atp_zero, atp_patch)`` [b, L, H]: the gradient at the heads' ``c_proj`` inputs (kept, not cut off:
    each one's gradient includes every later path), by torch.autograd."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager").eval()
    config = model.config
    n_layer, n_head, d_head = config.n_layer, config.n_head, config.n_embd // config.n_head
    mask = torch.tensor(np.arange(tokens.shape[1])[None] < lengths[:, None]).long()
    leaves: dict[int, torch.Tensor] = {}

    def hook(module, args, layer):
        args[0].retain_grad()
        leaves[layer] = args[0]

    handles = [block.attn.c_proj.register_forward_pre_hook(lambda m, a, layer=i: hook(m, a, layer))
               for i, block in enumerate(model.transformer.h)]
    logits = model(torch.tensor(tokens).long(), attention_mask=mask).logits
    for handle in handles:
        handle.remove()
    rows = np.arange(len(lengths))
    last = logits[torch.tensor(rows), torch.tensor(lengths - 1)].float()
    log_probs = torch.log_softmax(last, -1)
    metric = torch.where(torch.tensor(foil >= 0), last[rows, target] - last[rows, np.maximum(foil, 0)],
                         log_probs[rows, target])
    metric.sum().backward()
    heads = torch.stack([leaves[i].detach() for i in range(n_layer)], 1).reshape(len(rows), n_layer, -1, n_head, d_head)
    grads = torch.stack([leaves[i].grad for i in range(n_layer)], 1).reshape(heads.shape)
    atp_zero = torch.einsum("blshd,blshd->blh", -heads, grads)
    atp_patch = torch.einsum("blshd,blshd->blh", heads[torch.tensor(partner)] - heads, grads)
    return atp_zero.numpy(), atp_patch.numpy()


@pytest.fixture(scope="module", params=["tiny", "four-layer"])
def case(request, tmp_path_factory, tiny_checkpoint):
    directory, tokens, lengths, target, foil, partner = paired_case(
        request, tmp_path_factory, tiny_checkpoint, seed=7, lengths=[11, 11, 6, 6], partner=[1, 0, 3, 2])
    return directory, jaxdiag.load(str(directory)).model, tokens, lengths, target, foil, partner


def _replacements(model, tokens, lengths, partner):
    c = model.config
    sources = head_outputs(model, jnp.asarray(tokens), jnp.asarray(lengths))[jnp.asarray(partner)]
    return {"zero": jnp.zeros((c.n_layer, 1, c.n_head, c.d_head)), "patch": sources}


def test_atp_matches_torch_autograd(case):
    directory, model, tokens, lengths, target, foil, partner = case
    n = jnp.asarray(lengths)
    readout = task_readout(model, n, jnp.asarray(target), jnp.asarray(foil))
    ours = attribution_effects(model, jnp.asarray(tokens), n, readout, _replacements(model, tokens, lengths, partner))
    ref_zero, ref_patch = torch_atp(directory, tokens, lengths, target, foil, partner)
    for name, ref in (("atp_zero", ref_zero), ("atp_patch", ref_patch)):
        value = np.asarray(ours[name], np.float64)
        tolerance = 1e-4 * np.maximum(1.0, np.abs(ref))
        assert np.all(np.abs(value - ref) <= tolerance), f"{name}: worst {np.max(np.abs(value - ref) / tolerance):.2f} x tolerance"
        assert np.abs(ref).max() > 1e-3, "the reference must see real estimates"


def test_atp_is_the_first_order_limit_of_exact_patching(case):
    """Patch towards the partner by a step eps: (exact effect) / eps -> AtP_patch for every head.

    Central differences cancel the O(eps) curvature term. In float32 the metric's rounding (~1e-6)
    over eps sets the floor (measured on the tiny model: 3e-4 of the largest AtP at eps = 0.1,
    3e-3 at 0.01, 4e-2 at 0.001), so the check uses steps where truncation and rounding are both small.
    """
    _, model, tokens, lengths, target, foil, partner = case
    t, n = jnp.asarray(tokens), jnp.asarray(lengths)
    readout = task_readout(model, n, jnp.asarray(target), jnp.asarray(foil))
    heads = head_outputs(model, t, n)
    direction = heads[jnp.asarray(partner)] - heads
    atp = np.asarray(attribution_effects(model, t, n, readout, {"patch": heads + direction})["atp_patch"], np.float64)
    scale = np.abs(atp).max()
    assert scale > 1e-3
    for eps in (0.1, 0.05):
        _, up = head_effects(model, t, n, readout, {"step": heads + eps * direction})
        _, down = head_effects(model, t, n, readout, {"step": heads - eps * direction})
        slope = (np.asarray(up["step"], np.float64) - np.asarray(down["step"], np.float64)) / (2 * eps)
        assert np.abs(slope - atp).max() <= 1e-3 * scale, f"eps {eps}: worst {np.abs(slope - atp).max() / scale:.2e}"
    # the whole patch (eps = 1) is not first order: AtP is an estimate, and here it visibly differs
    _, whole = head_effects(model, t, n, readout, {"step": heads + direction})
    assert np.abs(np.asarray(whole["step"]) - atp).max() > 1e-3 * scale


def test_atpstar_is_the_mean_absolute_graddrop_estimate(case):
    """AtP* from its definition, one dropped layer at a time; its own layer's term is exactly 0."""
    _, model, tokens, lengths, target, foil, partner = case
    t, n = jnp.asarray(tokens), jnp.asarray(lengths)
    readout = task_readout(model, n, jnp.asarray(target), jnp.asarray(foil))
    replacements = _replacements(model, tokens, lengths, partner)
    ours = attribution_effects(model, t, n, readout, replacements, graddrop=True)
    n_layer = model.config.n_layer
    terms = []
    for layer in range(n_layer):
        _, heads, grads = head_gradients(model, t, n, readout, jnp.zeros(n_layer).at[layer].set(1.0))
        reference = jnp.broadcast_to(replacements["patch"], heads.shape)
        terms.append(np.asarray(jnp.einsum("blshd,blshd->blh", reference - heads, grads)))
        np.testing.assert_array_equal(terms[-1][:, layer], 0.0)  # no path from a head around its own layer
    expected = np.abs(np.stack(terms)).sum(0) / (n_layer - 1)
    np.testing.assert_allclose(np.asarray(ours["atpstar_patch"]), expected, rtol=1e-5, atol=1e-6)
    # the last layer has no later layer to cancel through: AtP* there is |AtP| * (L - 1) / (L - 1)
    np.testing.assert_allclose(np.asarray(ours["atpstar_patch"])[:, -1], np.abs(np.asarray(ours["atp_patch"]))[:, -1],
                               rtol=1e-5, atol=1e-6)
