"""Per-head causal effects equal a PyTorch reference made with forward hooks on transformers' GPT-2.

The reference re-runs the whole model once per head with the head's slice of ``c_proj``'s input
zeroed or replaced by the pair partner's; jaxdiag computes every head in one step and restarts each
edited run at the edited layer's MLP. Both must give the same metric and effects.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxdiag
from jaxdiag.causal.effects import head_effects, head_output_sums, head_outputs, task_metric, task_readout
from tests.conftest import TINY_CONFIG, write_torch_checkpoint

FOUR_LAYERS = dict(vocab_size=300, n_positions=64, n_embd=48, n_layer=4, n_head=6)


def torch_effects(directory, tokens: np.ndarray, lengths: np.ndarray, target, foil, partner: np.ndarray | None):
    """``(metric [b], zero [b, L, H], patch [b, L, H] or None)`` by hooked full re-runs, float32 eager."""
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager").eval()
    config = model.config
    d_head = config.n_embd // config.n_head
    mask = torch.tensor(np.arange(tokens.shape[1])[None] < lengths[:, None]).long()
    rows = torch.arange(len(lengths))
    captured: dict[int, torch.Tensor] = {}

    def metric(edit=None) -> np.ndarray:
        handles = []
        for layer, block in enumerate(model.transformer.h):
            def hook(module, args, layer=layer):
                x = args[0]
                if edit is None:
                    captured[layer] = x.detach().clone()
                    return None
                edit_layer, head, source = edit
                if layer != edit_layer:
                    return None
                x = x.clone()
                cut = slice(head * d_head, (head + 1) * d_head)
                x[..., cut] = 0.0 if source is None else source[layer][..., cut]
                return (x,)
            handles.append(block.attn.c_proj.register_forward_pre_hook(hook))
        with torch.no_grad():
            logits = model(torch.tensor(tokens).long(), attention_mask=mask).logits
        for handle in handles:
            handle.remove()
        last = logits[rows, torch.tensor(lengths - 1)].float()
        log_probs = torch.log_softmax(last, -1).numpy()
        last = last.numpy()
        out = np.where(foil >= 0, last[np.arange(len(lengths)), target] - last[np.arange(len(lengths)), np.maximum(foil, 0)],
                       log_probs[np.arange(len(lengths)), target])
        return out

    clean = metric()
    partner_inputs = None
    if partner is not None:
        partner_inputs = {layer: value[torch.tensor(partner)] for layer, value in captured.items()}
    n_layer, n_head = config.n_layer, config.n_head
    zero = np.zeros((len(lengths), n_layer, n_head))
    patch = np.zeros_like(zero) if partner is not None else None
    for layer in range(n_layer):
        for head in range(n_head):
            zero[:, layer, head] = metric((layer, head, None)) - clean
            if partner is not None:
                patch[:, layer, head] = metric((layer, head, partner_inputs)) - clean
    return clean, zero, patch


def paired_case(request, tmp_path_factory, tiny_checkpoint, *, seed: int, lengths: list[int], partner: list[int]):
    """A random checkpoint (tiny, or four layers) and a padded batch of pairs with targets and foils.

    ``partner[i]`` is prompt i's pair partner (same length); every other prompt has a foil, so both
    metric kinds (logit difference, log-probability) occur.
    """
    if request.param == "tiny":
        directory, config = tiny_checkpoint, TINY_CONFIG
    else:
        directory = write_torch_checkpoint(tmp_path_factory.mktemp("four"), seed=seed, qk_gain=4.0, **FOUR_LAYERS)
        config = FOUR_LAYERS
    rng = np.random.default_rng(seed)
    n = len(lengths)
    tokens = np.zeros((n, max(lengths)), np.int32)
    for i, length in enumerate(lengths):
        tokens[i, :length] = rng.integers(0, config["vocab_size"], length)
    target = rng.integers(0, config["vocab_size"], n)
    foil = np.where(np.arange(n) % 2 == 0, rng.integers(0, config["vocab_size"], n), -1)
    return directory, tokens, np.asarray(lengths, np.int32), target, foil, np.asarray(partner)


@pytest.fixture(scope="module", params=["tiny", "four-layer"])
def case(request, tmp_path_factory, tiny_checkpoint):
    # Pairs (0, 1) and (2, 3) share a length; prompt 4 is shorter and pairs with nobody (patches itself).
    return paired_case(request, tmp_path_factory, tiny_checkpoint, seed=5, lengths=[12, 12, 7, 7, 4],
                       partner=[1, 0, 3, 2, 4])


def test_effects_match_hooked_transformers(case):
    directory, tokens, lengths, target, foil, partner = case
    loaded = jaxdiag.load(str(directory))
    model = loaded.model
    c = model.config
    sources = head_outputs(model, jnp.asarray(tokens), jnp.asarray(lengths))[jnp.asarray(partner)]
    replacements = {"zero": jnp.zeros((c.n_layer, 1, c.n_head, c.d_head)), "patch": sources}
    metric, effects = jax.jit(
        lambda t, n, a, b: head_effects(model, t, n, task_readout(model, n, a, b), replacements, heads_per_step=2)
    )(jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(target), jnp.asarray(foil))

    ref_metric, ref_zero, ref_patch = torch_effects(directory, tokens, lengths, target, foil, partner)
    for ours, ref, name in [(metric, ref_metric, "metric"), (effects["zero"], ref_zero, "effect_zero"),
                            (effects["patch"], ref_patch, "effect_patch")]:
        ours = np.asarray(ours, np.float64)
        assert ours.shape == ref.shape, name
        tolerance = 1e-4 * np.maximum(1.0, np.abs(ref))
        assert np.all(np.abs(ours - ref) <= tolerance), f"{name}: worst {np.max(np.abs(ours - ref) / tolerance):.2f} x tolerance"
    assert np.abs(ref_zero).max() > 1e-2, "the reference must see real effects, or the test proves nothing"
    # A prompt patched with itself changes nothing.
    np.testing.assert_allclose(np.asarray(effects["patch"])[4], 0.0, atol=1e-5)


def test_task_metric_definitions():
    logits = jnp.asarray([[1.0, 3.0, -2.0], [0.5, 0.5, 0.5], [0.0, 1.0, 2.0]], jnp.float32)
    value = np.asarray(task_metric(logits, jnp.asarray([1, 2, -1]), jnp.asarray([2, -1, 0])))
    assert value[0] == pytest.approx(5.0)
    assert value[1] == pytest.approx(np.log(1 / 3), abs=1e-6)
    assert np.isnan(value[2])  # no target


def test_head_output_sums_count_real_positions_only(tiny_checkpoint):
    model = jaxdiag.load(str(tiny_checkpoint)).model
    tokens = jnp.asarray([[3, 4, 5, 0], [7, 8, 0, 0]], jnp.int32)
    lengths = jnp.asarray([3, 2], jnp.int32)
    sums = head_output_sums(model, tokens, lengths)
    outputs = np.asarray(head_outputs(model, tokens, lengths))
    np.testing.assert_array_equal(np.asarray(sums["n_real"]), [3, 2])
    np.testing.assert_allclose(np.asarray(sums["head_sum"][0]), outputs[0, :, :3].sum(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sums["head_sum"][1]), outputs[1, :, :2].sum(1), rtol=1e-5, atol=1e-6)


def test_full_forward_edits_agree_with_the_restarted_runs(case):
    """The public edits (interventions.zero_heads / patch_heads) through a whole forward pass give the
    effects head_effects computes by restarting at the edited layer."""
    from jaxdiag.models.edits import patch_heads, zero_heads

    directory, tokens, lengths, target, foil, partner = case
    model = jaxdiag.load(str(directory)).model
    c = model.config
    t, n = jnp.asarray(tokens), jnp.asarray(lengths)
    readout = task_readout(model, n, jnp.asarray(target), jnp.asarray(foil))
    sources = head_outputs(model, t, n)[jnp.asarray(partner)]
    clean, effects = head_effects(model, t, n, readout,
                                  {"zero": jnp.zeros((c.n_layer, 1, c.n_head, c.d_head)), "patch": sources})
    for head in [(0, 1), (c.n_layer - 1, c.n_head - 1)]:
        for kind, edit in (("zero", zero_heads((c.n_layer, c.n_head, c.d_head), [head])),
                           ("patch", patch_heads(sources, [head]))):
            edited = readout(model(t, n, edit=edit).hidden)
            np.testing.assert_allclose(np.asarray(edited - clean), np.asarray(effects[kind][:, head[0], head[1]]),
                                       rtol=1e-4, atol=1e-5, err_msg=f"{kind} {head}")
