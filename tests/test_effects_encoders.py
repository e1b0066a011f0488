"""Causal effects and attribution patching on the encoders with their masked-LM heads, against
transformers' ``BertForMaskedLM`` / ``AlbertForMaskedLM`` in float64, hooked on the heads' slices of
the attention output (tests/test_effects_families.py's reference): random weights with the metric
read at a position inside the prompt, and rxnmapper's real ALBERT on reactions with one product atom
masked, each paired with the same reaction whose reactant-side tokens are shuffled."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import jaxdiag
from jaxdiag.sweep.masked import mask_token, product_atoms, shuffle_reactants
from tests.test_effects_families import PARTNER, _batch, assert_effects_parity
from tests.test_families_encoders import SMALL, build

# (the untied decoder's logits: tests/test_families_encoders.py)
CASES = ["bert-mlm", "albert-mlm-groups"]
POSITIONS = [3, 0, 5, 2, 6]  # inside each prompt of _batch (lengths 10, 10, 8, 8, 7); [CLS] is 0


def build_mlm(tmp_path, case: str, seed: int = 1):
    return build(tmp_path, case, seed=seed, head_gain=5.0)


@pytest.mark.parametrize("case", CASES)
def test_encoder_effects_and_atp_match_hooked_transformers(tmp_path, case):
    torch_model, directory = build_mlm(tmp_path, case)
    tokens, lengths, target, foil = _batch()
    position = np.asarray(POSITIONS)
    tokens[np.arange(len(tokens)), position] = SMALL["vocab_size"] - 1  # a stand-in [MASK]
    effects = assert_effects_parity(case, torch_model, directory, tokens, lengths, target, foil, PARTNER, position)
    np.testing.assert_allclose(np.asarray(effects["patch"])[4], 0.0, atol=1e-5)  # patched with itself


REACTIONS = ["CC(=O)O.OCC>>CC(=O)OCC.O", "CC(=O)Cl.Nc1ccccc1>>CC(=O)Nc1ccccc1"]
# the exact effects checked on the real model (each costs a float64 torch forward per kind): every
# head of layer 10, where rxnmapper reads its atom-mapping head (index 5), and head 5 of three others
REAL_HEADS = [(10, h) for h in range(8)] + [(0, 5), (6, 5), (11, 5)]


def masked_reaction_batch(loaded, reactions, seed: int = 0):
    """Each reaction with its middle product atom masked, then each one's reactant-shuffled twin:
    tokens [2n, s], lengths, target (the masked token), foil (-1), partner rows, metric positions."""
    rng = np.random.default_rng(seed)
    rows, targets, positions = [], [], []
    twins = []
    for reaction in reactions:
        tokens = loaded.encode(reaction)
        strings = loaded.tokenizer.token_strings(tokens)
        atoms = product_atoms(strings)
        index = atoms[len(atoms) // 2]
        masked, original = mask_token(tokens, index, loaded.model.config.mask_token_id)
        rows.append(masked)
        twins.append(shuffle_reactants(masked, strings, rng))
        targets.append(original)
        positions.append(index)
    rows += twins
    n = len(reactions)
    lengths = np.asarray([len(r) for r in rows])
    tokens = np.zeros((len(rows), lengths.max()), np.int64)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    partner = [*range(n, 2 * n), *range(n)]
    return tokens, lengths, np.asarray(targets * 2), np.full(2 * n, -1), partner, np.asarray(positions * 2)


def test_rxnmapper_effects_real_weights():
    """rxnmapper's trained ALBERT (12 shared layers x 8 heads): masked product atoms, log p(atom);
    the metric, AtP of every head, and the exact effects of REAL_HEADS."""
    import transformers

    from tests.wheels import rxnmapper_dir

    directory = rxnmapper_dir()
    loaded = jaxdiag.load(str(directory))
    assert loaded.model.config.mlm_head and loaded.model.config.mask_token_id >= 0
    torch_model = transformers.AlbertForMaskedLM.from_pretrained(directory, attn_implementation="eager").eval()
    tokens, lengths, target, foil, partner, position = masked_reaction_batch(loaded, REACTIONS)
    effects = assert_effects_parity("rxnmapper", torch_model, directory, tokens, lengths, target, foil, partner,
                                    position, heads=REAL_HEADS)
    # the trained model predicts the masked atom from the real reaction
    n = len(REACTIONS)
    logits = np.asarray(loaded.model(tokens, lengths, logits=True).logits)
    assert np.all(np.argmax(logits[np.arange(n), position[:n]], -1) == target[:n])
    assert np.nanmax(np.abs(np.asarray(effects["patch"]))) > 1e-2


def test_masked_encoder_sweep_stores_the_position_and_its_metric(tmp_path, capsys):
    """A sweep of masked prompts on an encoder: the store records each prompt's metric position (the
    masked index) and target (the original token), and its metric and effects are the step's at
    that position."""
    import jax.numpy as jnp
    import xarray as xr

    from jaxdiag.causal.effects import head_effects, head_outputs, task_readout
    from jaxdiag.cli import main

    _, directory = build_mlm(tmp_path, "bert-mlm")
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (directory / "vocab.txt").write_text("\n".join(special + [f"t{i}" for i in range(SMALL["vocab_size"] - 5)]) + "\n")
    rng = np.random.default_rng(0)
    lines = []
    for pair, n in enumerate([9, 6, 12]):
        tokens = [2, *rng.integers(5, SMALL["vocab_size"], n - 2).tolist(), 3]
        mask = int(rng.integers(1, n - 1))
        twin = [2, *rng.permutation(tokens[1:-1]).tolist(), 3]
        lines.append({"condition": "real", "tokens": tokens, "mask": mask, "pair": pair})
        lines.append({"condition": "shuffled", "tokens": twin, "mask": mask, "target": tokens[mask], "pair": pair})
    prompts = tmp_path / "masked.jsonl"
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "masked.zarr"
    assert main(["run", "--model", str(directory), "--prompts", str(prompts), "--effects", "zero,patch",
                 "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    ds = xr.open_zarr(out, chunks=None)
    real, twin = ds.sel(condition="real"), ds.sel(condition="shuffled")
    assert real["metric_position"].values.tolist() == [line["mask"] for line in lines[::2]]
    assert real["target"].values.tolist() == [line["tokens"][line["mask"]] for line in lines[::2]]
    rows = np.arange(3)
    assert (real["tokens"].values[rows, real["metric_position"].values] == 4).all()  # [MASK]
    model = jaxdiag.load(str(directory)).model
    n = real["n_tokens"].values
    width = int(n.max())
    tokens, partner = (jnp.asarray(part["tokens"].values[:, :width].clip(min=0)) for part in (real, twin))
    lengths = jnp.asarray(n, jnp.int32)
    readout = task_readout(model, lengths, jnp.asarray(real["target"].values), jnp.asarray(real["foil"].values),
                           jnp.asarray(real["metric_position"].values))
    metric, effects = head_effects(model, tokens, lengths, readout, {"patch": head_outputs(model, partner, lengths)})
    np.testing.assert_allclose(real["metric"].values, np.asarray(metric), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(real["effect_patch"].values, np.asarray(effects["patch"]), rtol=1e-4, atol=1e-5)
    last = task_readout(model, lengths, jnp.asarray(real["target"].values), jnp.asarray(real["foil"].values))
    assert np.abs(np.asarray(last(model(tokens, lengths).hidden)) - np.asarray(metric)).min() > 1e-3  # position matters


def test_atpstar_graddrop_on_post_ln_matches_detached_torch_gradients(tmp_path):
    """AtP* on a post-LN encoder: GradDrop of layer l is the gradient with both of its updates (the
    attention output and the FFN output, before each LayerNorm) detached, the residual path through
    the LayerNorms kept; combined as sum over l of |AtP_l| / (L - 1). The reference detaches those
    two outputs in transformers' BertForMaskedLM with forward hooks, in float64."""
    import jax
    import jax.numpy as jnp

    from jaxdiag.causal.effects import attribution_effects, head_outputs, task_readout
    from tests.test_effects_families import TorchReference, _assert_close

    torch_model, directory = build_mlm(tmp_path, "bert-mlm")
    tokens, lengths, target, foil = _batch()
    position = np.asarray(POSITIONS)
    reference = TorchReference(torch_model, tokens, lengths, target, foil, position)
    with torch.no_grad():
        reference.metric()
    patch = {layer: x[torch.tensor(PARTNER)] for layer, x in reference.inputs.items()}
    layers = reference.model.bert.encoder.layer
    per_drop = []
    for dropped in range(len(layers)):
        updates = (layers[dropped].attention.output.dense, layers[dropped].output.dense)
        handles = [m.register_forward_hook(lambda module, args, out: out.detach()) for m in updates]
        try:
            per_drop.append(reference.attribution({"patch": patch})["atp_patch"])
        finally:
            for handle in handles:
                handle.remove()
    expected = np.sum(np.abs(per_drop), axis=0) / (len(layers) - 1)

    model = jaxdiag.load(str(directory)).model
    t, n = jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths, jnp.int32)
    readout = task_readout(model, n, jnp.asarray(target), jnp.asarray(foil), jnp.asarray(position, jnp.int32))
    replacements = {"patch": head_outputs(model, t, n)[jnp.asarray(PARTNER)]}
    ours = jax.jit(lambda: attribution_effects(model, t, n, readout, replacements, graddrop=True))()
    _assert_close(ours["atpstar_patch"], expected, "bert-mlm effect_atpstar_patch")
    assert np.abs(expected).max() > 1e-2
    # dropping a layer changes the estimate: GradDrop is not plain |AtP| here
    assert np.abs(expected - np.abs(np.asarray(ours["atp_patch"]))).max() > 1e-4


def test_verify_on_a_headless_encoder_store_says_why_instead_of_suggesting_refused_effects(tmp_path, capsys):
    """A store of an encoder without its masked-LM head (as `--preset minilm_shuffled` makes) has no effects to
    verify; verify's hint must not send the user to `--effects`, which `run` refuses for that model."""
    from jaxdiag.cli import main

    _, directory = build(tmp_path, "bert")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"condition": c, "tokens": [2, 7, 8 + i, 9, 3]}) + "\n"
                               for i in range(2) for c in ("a", "b")))
    store = tmp_path / "s.zarr"
    assert main(["run", "--model", str(directory), "--prompts", str(prompts), "--out", str(store), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["verify", str(store), "--out", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err
    assert "no masked-LM head" in err and "--effects" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "v").exists()
