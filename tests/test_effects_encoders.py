"""Causal effects and attribution patching on the encoders with their masked-LM heads, against
transformers' ``BertForMaskedLM`` / ``AlbertForMaskedLM`` in float64, hooked on the heads' slices of
the attention output (tests/test_effects_families.py's reference): random weights with the metric
read at a position inside the prompt, and rxnmapper's real ALBERT on reactions with one product atom
masked, each paired with the same reaction whose reactant-side tokens are shuffled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import jaxdiag
from jaxdiag.sweep.masked import mask_token, product_atoms, shuffle_reactants
from tests.families import randomise
from tests.test_effects_families import PARTNER, _batch, assert_effects_parity
from tests.test_families_encoders import SMALL

# (the untied decoder's logits: tests/test_families_encoders.py)
CASES = {
    "bert-mlm": ("BertConfig", "BertForMaskedLM", dict()),
    "albert-mlm-groups": ("AlbertConfig", "AlbertForMaskedLM", dict(embedding_size=16, num_hidden_layers=4,
                                                                    num_hidden_groups=2)),
}
POSITIONS = [3, 0, 5, 2, 6]  # inside each prompt of _batch (lengths 10, 10, 8, 8, 7); [CLS] is 0


def build_mlm(tmp_path, case: str, seed: int = 1):
    import transformers

    config_name, model_name, extra = CASES[case]
    config = getattr(transformers, config_name)(**(SMALL | extra))
    model = getattr(transformers, model_name)._from_config(config, attn_implementation="eager")
    randomise(model, seed=seed)
    with torch.no_grad():  # post-LN renormalises the residual: louder heads, so that effects are not ~1e-3
        for name, param in model.named_parameters():
            if name.endswith(("value.weight", "attention.output.dense.weight", "attention.dense.weight")):
                param.mul_(5.0)
    directory = tmp_path / case
    model.save_pretrained(directory)
    return model, directory


@pytest.mark.parametrize("case", list(CASES))
def test_encoder_effects_and_atp_match_hooked_transformers(tmp_path, case):
    torch_model, directory = build_mlm(tmp_path, case)
    tokens, lengths, target, foil = _batch()
    position = np.asarray(POSITIONS)
    tokens[np.arange(len(tokens)), position] = SMALL["vocab_size"] - 1  # a stand-in [MASK]
    effects = assert_effects_parity(case, torch_model, directory, tokens, lengths, target, foil, PARTNER, position)
    np.testing.assert_allclose(np.asarray(effects["patch"])[4], 0.0, atol=1e-5)  # patched with itself


REACTIONS = ["CC(=O)O.OCC>>CC(=O)OCC.O", "CC(=O)Cl.Nc1ccccc1>>CC(=O)Nc1ccccc1",
             "COc1ccc(Br)cc1.C#CC1CC1>>COc1ccc(C#CC2CC2)cc1"]


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
    """rxnmapper's trained ALBERT (12 shared layers x 8 heads): masked product atoms, log p(atom)."""
    import transformers

    from tests.wheels import rxnmapper_dir

    directory = rxnmapper_dir()
    loaded = jaxdiag.load(str(directory))
    assert loaded.model.config.mlm_head and loaded.model.config.mask_token_id >= 0
    torch_model = transformers.AlbertForMaskedLM.from_pretrained(directory, attn_implementation="eager").eval()
    tokens, lengths, target, foil, partner, position = masked_reaction_batch(loaded, REACTIONS)
    effects = assert_effects_parity("rxnmapper", torch_model, directory, tokens, lengths, target, foil, partner,
                                    position)
    # the trained model predicts the masked atom well from the real reaction
    metric = np.asarray(loaded.model(tokens, lengths, logits=True).logits)
    assert np.all(np.argmax(metric[np.arange(3), position[:3]], -1) == target[:3])
    assert np.abs(np.asarray(effects["patch"])).max() > 1e-2
