"""Tokenisation as TransformerLens does it, and one-line errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxdiag
from jaxdiag.errors import JaxdiagError
from jaxdiag.tokenizer import Tokenizer
from tests.conftest import write_torch_checkpoint

EXAMPLE = "When Alice and Bob went to the store, Bob gave a drink to"
EXAMPLE_IDS = [2215, 14862, 290, 5811, 1816, 284, 262, 3650, 11, 5811, 2921, 257, 4144, 284]


@pytest.fixture(scope="module")
def gpt2_vocab_checkpoint(tmp_path_factory):
    """GPT-2's vocabulary with a tiny trunk and no tokenizer files: the bundled BPE is used."""
    return write_torch_checkpoint(tmp_path_factory.mktemp("gpt2-vocab"), vocab_size=50257, n_positions=32,
                                  n_embd=16, n_layer=1, n_head=2)


def test_reference_ids_with_bos():
    tok = Tokenizer.for_checkpoint(None, vocab_size=50257, bos_id=50256)
    assert tok.encode(EXAMPLE) == [50256, *EXAMPLE_IDS]
    assert tok.decode(EXAMPLE_IDS) == EXAMPLE


def test_no_bos():
    tok = Tokenizer.for_checkpoint(None, vocab_size=50257, bos_id=50256, prepend_bos=False)
    assert tok.encode(EXAMPLE) == EXAMPLE_IDS


def test_tokenizer_files_in_checkpoint_directory_are_used(tmp_path):
    """vocab.json + merges.txt in the model directory (as the hub ships them) take precedence."""
    from jaxdiag.tokenizer import bundled_gpt2_files

    vocab, merges = bundled_gpt2_files()
    (tmp_path / "vocab.json").write_text(vocab.read_text())
    (tmp_path / "merges.txt").write_text(merges.read_text())
    tok = Tokenizer.for_checkpoint(tmp_path, vocab_size=50257, bos_id=50256)
    assert tok.encode(EXAMPLE)[1:] == EXAMPLE_IDS


def test_text_prompts_end_to_end(gpt2_vocab_checkpoint):
    loaded = jaxdiag.load(str(gpt2_vocab_checkpoint))
    ds = jaxdiag.diagnose(loaded, [EXAMPLE, "Hello"])
    assert ds.n_tokens.values.tolist() == [15, 2]
    assert ds.tokens.values[0].tolist() == [50256, *EXAMPLE_IDS]
    assert ds.text.values[0] == EXAMPLE
    assert ds.kl.dtype == np.float32 and not np.isnan(ds.kl_norm.values).any()


@pytest.mark.parametrize(
    "prompt, message",
    [("", "empty prompt"), ([], "empty"), ([1] * 33, "context window"), ([50257], "outside the vocabulary")],
)
def test_bad_prompts(gpt2_vocab_checkpoint, prompt, message):
    loaded = jaxdiag.load(str(gpt2_vocab_checkpoint))
    with pytest.raises(JaxdiagError, match=message) as info:
        jaxdiag.diagnose(loaded, [[1, 2, 3], prompt])
    assert "\n" not in str(info.value)


def test_unknown_model_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(JaxdiagError, match="cannot load model 'no-such-org/no-such-model'"):
        jaxdiag.load("no-such-org/no-such-model")


def test_directory_without_weights(tmp_path, gpt2_vocab_checkpoint):
    (tmp_path / "config.json").write_text((gpt2_vocab_checkpoint / "config.json").read_text())
    with pytest.raises(JaxdiagError, match="has no weights"):
        jaxdiag.load(str(tmp_path))


def test_missing_local_path():
    with pytest.raises(JaxdiagError, match="not a directory"):
        jaxdiag.load("./no/such/dir")


@pytest.mark.parametrize("model_type, message", [
    ("t5", "model_type 't5' is not supported"),  # a family jaxdiag does not implement
    ("llama", "a llama config needs 'num_attention_heads'"),  # a GPT-2 config.json labelled llama
])
def test_config_that_is_not_gpt2(tmp_path, gpt2_vocab_checkpoint, model_type, message):
    config = json.loads((gpt2_vocab_checkpoint / "config.json").read_text()) | {"model_type": model_type}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((gpt2_vocab_checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(JaxdiagError, match=message):
        jaxdiag.load(str(tmp_path))


def test_weights_that_do_not_match_the_config(tmp_path, gpt2_vocab_checkpoint):
    config = json.loads((gpt2_vocab_checkpoint / "config.json").read_text()) | {"n_layer": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((gpt2_vocab_checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(JaxdiagError, match=r"missing .* weights \(e\.g\. h\.1\."):
        jaxdiag.load(str(tmp_path))
    config["n_layer"], config["n_embd"] = 1, 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(JaxdiagError, match="has shape"):
        jaxdiag.load(str(tmp_path))


def test_hub_id_resolves_through_the_hub_cache(tmp_path, monkeypatch, gpt2_vocab_checkpoint):
    """A hub id is fetched with huggingface_hub; here from its offline cache, laid out as the hub does."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-gpt2"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(gpt2_vocab_checkpoint / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    loaded = jaxdiag.load("someone/tiny-gpt2")
    assert loaded.checkpoint.revision == commit
    assert loaded.tokenizer.encode(EXAMPLE)[1:] == EXAMPLE_IDS


@pytest.mark.parametrize("case", ["unknown-model", "no-weights", "not-gpt2", "too-long", "empty"])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, gpt2_vocab_checkpoint, case):
    """Each bad input of the core issue, through `jaxdiag run`: one line on stderr, status 2, no store."""
    import os
    import subprocess
    import sys

    model = str(gpt2_vocab_checkpoint)
    prompts = [{"condition": "a", "text": EXAMPLE}]
    if case == "unknown-model":
        model = "no-such-org/no-such-model"
    elif case in ("no-weights", "not-gpt2"):
        model = str(tmp_path / "model")
        (tmp_path / "model").mkdir()
        config = json.loads((gpt2_vocab_checkpoint / "config.json").read_text())
        if case == "not-gpt2":
            config["model_type"] = "bert"
            (tmp_path / "model" / "model.safetensors").write_bytes((gpt2_vocab_checkpoint / "model.safetensors").read_bytes())
        (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    elif case == "too-long":
        prompts.append({"condition": "a", "tokens": [1] * 33})
    elif case == "empty":
        prompts.append({"condition": "a", "text": ""})
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    out = tmp_path / "store.zarr"
    result = subprocess.run(
        [sys.executable, "-m", "jaxdiag.cli", "run", "--model", model, "--prompts", str(prompt_file), "--out", str(out), "--quiet"],
        capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"}, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jaxdiag: error:"), result.stderr
    assert not out.exists()


def test_paired_ioi_run_patches_each_prompt_with_its_abc_counterfactual(gpt2_vocab_checkpoint, tmp_path):
    """pairs = true end to end: the store carries the pair ids and patch effects find each partner."""
    import xarray as xr

    from jaxdiag.cli import main

    config = tmp_path / "paired.toml"
    config.write_text(f'model = "{gpt2_vocab_checkpoint}"\neffects = ["patch"]\n'
                      '[prompts]\nsource = "ioi"\nn_prompts = 6\npairs = true\n')
    assert main(["run", str(config), "--out", str(tmp_path / "s.zarr")]) == 0
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert ds.pair.sel(condition="ioi").values.tolist() == ds.pair.sel(condition="non_ioi").values.tolist() \
        == [str(i) for i in range(6)]
    ioi, abc = ds.tokens.sel(condition="ioi").values, ds.tokens.sel(condition="non_ioi").values
    assert ((ioi != abc).sum(axis=1) == 1).all()  # the second S, replaced by C
    assert np.isfinite(ds.effect_patch.sel(condition="ioi").values).all()
    assert np.isnan(ds.effect_patch.sel(condition="non_ioi").values).all()  # no IO on an ABC prompt
    # without effects the pairs are stored too: the report's paired statistics need only them
    config.write_text(f'model = "{gpt2_vocab_checkpoint}"\n[prompts]\nsource = "ioi"\nn_prompts = 6\npairs = true\n')
    assert main(["run", str(config), "--out", str(tmp_path / "plain.zarr")]) == 0
    plain = xr.open_zarr(tmp_path / "plain.zarr")
    assert plain.pair.values.tolist() == ds.pair.values.tolist() and "metric" not in plain and "target" not in plain.coords
