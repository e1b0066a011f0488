"""Causal effects and attribution patching on every decoder family, against transformers in float64.

The reference runs transformers' eager model in float64 once per head, with a forward pre-hook on the
layer's output projection (``o_proj`` / ``dense``) that edits that head's ``d_head`` slice of its
input: zeros (``zero``), the head's mean input over every real position of the batch (``mean``) or
the pair partner's input (``patch``). AtP's reference is ``torch.autograd`` of the metric with respect
to those inputs. jaxdiag computes every head in one pass through the family interface
(:mod:`jaxdiag.models.family`), restarting each edited run inside the edited block.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxdiag
from jaxdiag.causal.effects import attribution_effects, head_effects, head_outputs, task_readout
from jaxdiag.errors import JaxdiagError
from tests.families import SMALL, build

# Mistral's window (4) is shorter than the prompts; NeoX with both residual orders; GQA; Qwen2's biases;
# per-layer windows (Qwen2, Gemma); Qwen3's and Gemma 3's q/k norms; Gemma's normalised attention output
# and Gemma 2's soft-capped scores and logits.
DECODERS = ["llama-gqa-tied", "llama-bias", "qwen2-gqa", "mistral-window", "neox-parallel", "neox-sequential",
            "qwen2-layer-windows", "qwen3", "gemma2", "gemma3"]
# Padding stays shorter than the window (4): a padded query row that sees only padding is NaN in
# float64 torch, and the NaN reaches the real rows of the next layer.
LENGTHS = [10, 10, 8, 8, 7]
PARTNER = [1, 0, 3, 2, 4]  # prompt 4 pairs with nobody: it patches itself


def _projections(model) -> list[torch.nn.Module]:
    """Each layer's output projection, in order (ALBERT's one shared layer: the same module each time)."""
    base = model.base_model
    if hasattr(base, "encoder") and hasattr(base.encoder, "albert_layer_groups"):
        per_group = base.config.num_hidden_layers // base.config.num_hidden_groups
        return [base.encoder.albert_layer_groups[i // per_group].albert_layers[0].attention.dense
                for i in range(base.config.num_hidden_layers)]
    if hasattr(base, "encoder"):  # BERT
        return [layer.attention.output.dense for layer in base.encoder.layer]
    if hasattr(base, "layers") and hasattr(base.layers[0], "self_attn"):
        return [layer.self_attn.o_proj for layer in base.layers]
    return [layer.attention.dense for layer in base.layers]  # GPT-NeoX


def _batch(seed: int = 3):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(LENGTHS), max(LENGTHS)), np.int64)
    for i, n in enumerate(LENGTHS):
        tokens[i, :n] = rng.integers(0, SMALL["vocab_size"], n)
    target = rng.integers(0, SMALL["vocab_size"], len(LENGTHS))
    foil = np.where(np.arange(len(LENGTHS)) % 2 == 0, rng.integers(0, SMALL["vocab_size"], len(LENGTHS)), -1)
    return tokens, np.asarray(LENGTHS), target, foil


class TorchReference:
    """Hooked float64 runs of a transformers model: the metric with any head edit, and its gradients."""

    def __init__(self, model, tokens, lengths, target, foil, position=None):
        self.model = copy.deepcopy(model).double().eval()
        self.projections = _projections(self.model)
        config = self.model.config
        self.n_head = config.num_attention_heads
        self.d_head = getattr(config, "head_dim", None) or config.hidden_size // self.n_head
        self.tokens, self.lengths, self.target, self.foil = tokens, lengths, target, foil
        self.position = lengths - 1 if position is None else position  # where the metric is read
        self.mask = torch.tensor(np.arange(tokens.shape[1])[None] < lengths[:, None]).long()
        self.inputs: dict[int, torch.Tensor] = {}

    def metric(self, edit=None, shift=None) -> torch.Tensor:
        """``[b]`` metric; ``edit = (layer, head, replacement [b, s, h*d] or None for zeros)``;
        ``shift``: per layer, a tensor added to the projection's input (for gradients)."""
        handles, calls = [], [0]

        def hook(module, args):
            layer = calls[0]  # the projections run in layer order (a shared one once per layer)
            calls[0] += 1
            x = args[0]
            if edit is None and shift is None:
                self.inputs[layer] = x.detach().clone()
                return None
            if shift is not None:
                return (x + shift[layer],)
            edit_layer, head, replacement = edit
            if layer != edit_layer:
                return None
            x = x.clone()
            cut = slice(head * self.d_head, (head + 1) * self.d_head)
            x[..., cut] = 0.0 if replacement is None else replacement[..., cut]
            return (x,)
        for projection in {id(p): p for p in self.projections}.values():
            handles.append(projection.register_forward_pre_hook(hook))
        try:
            logits = self.model(torch.tensor(self.tokens), attention_mask=self.mask).logits
        finally:
            for handle in handles:
                handle.remove()
        rows = torch.arange(len(self.lengths))
        last = logits[rows, torch.tensor(self.position)]
        target, foil = torch.tensor(self.target), torch.tensor(self.foil)
        difference = last[rows, target] - last[rows, foil.clamp(min=0)]
        log_prob = torch.log_softmax(last, -1)[rows, target]
        return torch.where(foil >= 0, difference, log_prob)

    def effects(self, replacements: dict[str, dict[int, torch.Tensor] | None], heads=None) -> tuple[np.ndarray, dict]:
        """Clean metric and each kind's effects ``[b, layer, head]``; with ``heads``, only those
        ``(layer, head)``s are run (NaN elsewhere)."""
        heads = heads or [(l, h) for l in range(len(self.projections)) for h in range(self.n_head)]
        with torch.no_grad():
            clean = self.metric()
            out = {}
            for kind, per_layer in replacements.items():
                values = np.full((len(self.lengths), len(self.projections), self.n_head), np.nan)
                for layer, head in heads:
                    source = None if per_layer is None else per_layer[layer]
                    values[:, layer, head] = (self.metric((layer, head, source)) - clean).numpy()
                out[kind] = values
        return clean.numpy(), out

    def attribution(self, replacements: dict[str, dict[int, torch.Tensor] | None]) -> dict[str, np.ndarray]:
        """AtP: sum over positions and the head's slice of ``(a_ref - a) * d metric / d a``."""
        with torch.no_grad():
            self.metric()
        shift = {layer: torch.zeros_like(x, requires_grad=True) for layer, x in self.inputs.items()}
        self.metric(shift=shift).sum().backward()
        out = {}
        b, s = self.tokens.shape
        for kind, per_layer in replacements.items():
            values = np.zeros((b, len(self.projections), self.n_head))
            for layer, x in self.inputs.items():
                reference = torch.zeros_like(x) if per_layer is None else per_layer[layer]
                grad = shift[layer].grad  # None where no path reaches the metric (a detached layer)
                grad = torch.zeros_like(x) if grad is None else grad
                term = ((reference - x) * grad).reshape(b, s, self.n_head, self.d_head)
                values[:, layer] = term.sum(dim=(1, 3)).numpy()
            out[f"atp_{kind}"] = values
        return out


def _assert_close(ours, ref, name: str) -> None:
    """Within 1e-4 max(1, |ref|) wherever the reference was computed (NaN where it was not, on both)."""
    ours = np.asarray(ours, np.float64)
    assert ours.shape == ref.shape, name
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref), err_msg=f"{name}: computed heads differ")
    tolerance = 1e-4 * np.maximum(1.0, np.abs(ref))
    worst = np.nanmax(np.abs(ours - ref) / tolerance)
    assert worst <= 1.0, f"{name}: worst {worst:.2f} x tolerance"


@pytest.fixture(scope="module", params=DECODERS)
def family_case(request, tmp_path_factory):
    model, directory, _ = build(tmp_path_factory.mktemp("effects"), request.param, seed=1)
    return request.param, model, directory


def test_effects_and_atp_match_hooked_transformers(family_case):
    case, torch_model, directory = family_case
    tokens, lengths, target, foil = _batch()
    effects = assert_effects_parity(case, torch_model, directory, tokens, lengths, target, foil, PARTNER)
    np.testing.assert_allclose(np.asarray(effects["patch"])[4], 0.0, atol=1e-5)  # patched with itself


def assert_effects_parity(case: str, torch_model, directory, tokens, lengths, target, foil, partner,
                          position=None, heads=None) -> dict:
    """jaxdiag's metric, exact effects (zero, mean, patch: ``partner[b]`` is prompt b's partner row)
    of every head (or of ``heads`` only, a list of ``(layer, head)``) and AtP of every head, read at
    ``position`` (default: the last real one), against the hooked float64 transformers reference
    within 1e-4 max(1, |v|); returns jaxdiag's exact effects."""
    reference = TorchReference(torch_model, tokens, lengths, target, foil, position)
    with torch.no_grad():
        reference.metric()
    real = torch.tensor(np.arange(tokens.shape[1])[None] < lengths[:, None]).double()[..., None]
    means = {layer: (x * real).sum((0, 1)) / real.sum() for layer, x in reference.inputs.items()}
    torch_replacements = {"zero": None, "mean": means,
                          "patch": {layer: x[torch.tensor(partner)] for layer, x in reference.inputs.items()}}
    ref_metric, ref_effects = reference.effects(torch_replacements, heads)
    ref_atp = reference.attribution(torch_replacements)

    model = jaxdiag.load(str(directory)).model
    c = model.config
    t, n = jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths, jnp.int32)
    where = None if position is None else jnp.asarray(position, jnp.int32)
    head_mean = jnp.stack([jnp.asarray(means[layer].numpy().reshape(c.n_head, c.d_head), jnp.float32)
                           for layer in range(c.n_layer)])
    replacements = {"zero": jnp.zeros((c.n_layer, 1, c.n_head, c.d_head)), "mean": head_mean[:, None],
                    "patch": head_outputs(model, t, n)[jnp.asarray(partner)]}
    readout_of = lambda a, b: task_readout(model, n, a, b, where)
    metric, effects = jax.jit(lambda a, b: head_effects(model, t, n, readout_of(a, b), replacements,
                                                        heads_per_step=2, only=heads))(jnp.asarray(target),
                                                                                       jnp.asarray(foil))
    atp = jax.jit(lambda a, b: attribution_effects(model, t, n, readout_of(a, b), replacements))(
        jnp.asarray(target), jnp.asarray(foil))

    _assert_close(metric, ref_metric.astype(np.float64), f"{case} metric")
    for kind in ("zero", "mean", "patch"):
        _assert_close(effects[kind], ref_effects[kind], f"{case} effect_{kind}")
        _assert_close(atp[f"atp_{kind}"], ref_atp[f"atp_{kind}"], f"{case} effect_atp_{kind}")
    assert np.nanmax(np.abs(ref_effects["zero"])) > 1e-2, "the reference must see real effects, or the test proves nothing"
    return effects


@pytest.mark.parametrize("case", DECODERS)
@pytest.mark.parametrize("query", ["last", "all"])
def test_streaming_equals_direct_on_every_decoder(tmp_path, case, query):
    """The O(T) streaming path (windows and GQA included) gives the direct path's diagnostics and
    taxonomy within 1e-5, and the same effects."""
    from jaxdiag.sweep.runner import SWEEP_PROBES

    _, directory, _ = build(tmp_path, case, seed=2)
    model = jaxdiag.load(str(directory)).model
    tokens, lengths, _, _ = _batch(seed=4)
    t, n = jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths, jnp.int32)
    run = lambda impl: model(t, n, probes=SWEEP_PROBES, query=query, attention=impl).probes
    direct, streamed = run("direct"), run("streaming")
    assert set(direct) == set(streamed)
    for name in direct:
        a, b = np.asarray(direct[name]), np.asarray(streamed[name])
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=name)
        ok = ~np.isnan(a)
        assert np.all(np.abs(a[ok] - b[ok]) <= 1e-5 * np.maximum(1.0, np.abs(a[ok]))), name
    hidden = {impl: np.asarray(model(t, n, attention=impl).hidden) for impl in ("direct", "streaming")}
    np.testing.assert_allclose(hidden["streaming"], hidden["direct"], rtol=1e-5, atol=1e-5)


def test_encoder_effects_are_a_one_line_error(tmp_path):
    """An encoder checkpoint without its masked-LM head (a BertModel) has no metric: effects say why,
    before any work (tests/test_effects_encoders.py measures them on encoders with the head)."""
    from jaxdiag.models.load import read_config
    from jaxdiag.models.registry import require_effects
    from tests.test_families_encoders import build as build_encoder

    _, directory = build_encoder(tmp_path, "bert")
    with pytest.raises(JaxdiagError, match="masked-LM head") as error:
        require_effects(read_config(directory))
    assert "\n" not in str(error.value)
    from jaxdiag.causal.effects import clean_run

    encoder = jaxdiag.load(str(directory)).model
    with pytest.raises(JaxdiagError, match="masked-LM head"):
        clean_run(encoder, jnp.ones((1, 3), jnp.int32), jnp.asarray([3], jnp.int32))
