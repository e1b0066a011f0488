"""The notebook API against the CLI: jaxdiag.diagnose / jaxdiag.effects equal a `jaxdiag run` store of the
same prompts bit for bit, a user probe (the same object in both) is stored as computed by hand,
jaxdiag.attention gives labelled whole-prompt patterns, and bad input is one JaxdiagError sentence."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from safetensors.numpy import load_file

import jaxdiag
from jaxdiag.cli import main
from jaxdiag.errors import JaxdiagError
from jaxdiag.probes import stored_variables
from jaxdiag.schema import HEAD_VARIABLE_ATTRS
from jaxdiag.sweep.runconfig import load_config
from jaxdiag.sweep.runner import SWEEP_PROBES
from tests.sweep_helpers import TOKEN_MODEL, save_tiny_model
from tests.test_effects_sweep import write_pairs

KINDS = ["mean", "patch"]  # the two that need reference= and pairs=
PROBES = '''
import jax.numpy as jnp
import jaxdiag


@jaxdiag.probe(long_name="pi at the first key", units="1")
def first_key(view):
    return view.probs[..., 0]


@jaxdiag.probe(long_name="keys the probed row sees", units="keys")
def n_visible(view):
    return jnp.broadcast_to(view.visible.sum(-1), view.probs.shape[:3])


@jaxdiag.probe()
def whole_pattern(view):  # wrong: a probe returns [batch, head, row], not the pattern
    return view.probs
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A `jaxdiag run` with effects and two user probes (a module beside the config), and the model."""
    root = tmp_path_factory.mktemp("notebook-api")
    model_dir = save_tiny_model(root / "model", seed=4, **TOKEN_MODEL)
    (root / "nb_probes.py").write_text(PROBES)
    prompts = write_pairs(root / "pairs.jsonl")
    (root / "run.toml").write_text(textwrap.dedent(f"""\
        model = "{model_dir}"
        prepend_bos = false
        batch_size = 4
        effects = {json.dumps(KINDS)}
        probes = ["nb_probes:first_key", "nb_probes:n_visible"]
        [prompts]
        source = "jsonl"
        path = "pairs.jsonl"
        """))
    assert main(["run", str(root / "run.toml"), "--out", str(root / "s.zarr"), "--quiet"]) == 0
    store = xr.open_zarr(root / "s.zarr", chunks=None).load()
    rows = [json.loads(line) for line in prompts.read_text().splitlines()]
    model = jaxdiag.load(str(model_dir), prepend_bos=False)
    return store, rows, model, model_dir


def _prompts(rows, condition):
    return [r for r in rows if r["condition"] == condition]


def assert_bits_equal(api: xr.Dataset, stored: xr.Dataset) -> None:
    """Every data variable of the store: same dims, attrs and float32 bits."""
    for name in stored.data_vars:
        assert api[name].dims == stored[name].dims, name
        assert api[name].attrs["long_name"] == stored[name].attrs["long_name"], name
        np.testing.assert_array_equal(api[name].values.view(np.uint32), stored[name].values.view(np.uint32),
                                      err_msg=f"{name} differs in its bits")


def test_diagnose_with_user_probes_equals_the_store_bit_for_bit(run):
    store, rows, model, _ = run
    assert store["first_key"].attrs["long_name"] == "pi at the first key" and store["n_visible"].attrs["units"] == "keys"
    for condition in ("clean", "corrupt"):
        ds = jaxdiag.diagnose(model, [r["tokens"] for r in _prompts(rows, condition)], batch_size=4,
                              probes=["nb_probes:first_key", "nb_probes:n_visible"], progress=False)
        stored = store.sel(condition=condition)
        assert_bits_equal(ds, stored[[*HEAD_VARIABLE_ATTRS, "first_key", "n_visible"]])
        np.testing.assert_array_equal(ds["tokens"].values, stored["tokens"].values)


def test_effects_equal_the_store_bit_for_bit(run):
    store, rows, model, _ = run
    clean, corrupt = _prompts(rows, "clean"), _prompts(rows, "corrupt")
    both = clean + corrupt
    fx = jaxdiag.effects(model, [r["tokens"] for r in both], target=[r["target"] for r in both],
                         foil=[r.get("foil") for r in both], pairs=[r["pair"] for r in both], kinds=KINDS,
                         reference=[r["tokens"] for r in corrupt], batch_size=4,
                         probes=["nb_probes:first_key", "nb_probes:n_visible"], progress=False)
    assert fx["effect_patch"].dims == ("prompt", "layer", "head") and fx["metric"].dims == ("prompt",)
    np.testing.assert_array_equal(fx["head_mean"].values, store["head_mean"].values)
    for condition, part in (("clean", slice(0, len(clean))), ("corrupt", slice(len(clean), None))):
        stored = store.sel(condition=condition)
        api = fx.isel(prompt=part).assign_coords(prompt=stored["prompt"].values)
        assert_bits_equal(api, stored.drop_vars("head_mean"))
        for coord in ("target", "foil", "pair", "n_tokens", "tokens"):
            np.testing.assert_array_equal(api[coord].values, stored[coord].values, err_msg=coord)


def _layer0_pattern(model_dir: Path, tokens: list[int]) -> np.ndarray:
    """Layer 0's attention weights [head, query, key] by hand, in numpy, from the checkpoint's tensors."""
    w = {k.removeprefix("transformer."): v.astype(np.float64) for k, v in load_file(model_dir / "model.safetensors").items()}
    n_embd, n_head = TOKEN_MODEL["n_embd"], TOKEN_MODEL["n_head"]
    x = w["wte.weight"][tokens] + w["wpe.weight"][: len(tokens)]
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    x = x * w["h.0.ln_1.weight"] + w["h.0.ln_1.bias"]
    q, k, _ = np.split(x @ w["h.0.attn.c_attn.weight"] + w["h.0.attn.c_attn.bias"], 3, axis=-1)
    q, k = (a.reshape(len(tokens), n_head, n_embd // n_head).transpose(1, 0, 2) for a in (q, k))
    scores = np.where(np.tril(np.ones((len(tokens),) * 2, bool)), q @ k.transpose(0, 2, 1) / np.sqrt(n_embd // n_head),
                      -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


def test_user_probes_store_what_a_hand_computation_gives(run):
    store, rows, model, model_dir = run
    clean = store.sel(condition="clean")
    n = clean["n_tokens"].values
    np.testing.assert_array_equal(clean["n_visible"].values, np.broadcast_to(n[:, None, None], clean["n_visible"].shape))
    tokens = [r["tokens"] for r in _prompts(rows, "clean")]
    for i in (0, 3):
        by_hand = _layer0_pattern(model_dir, tokens[i])
        np.testing.assert_allclose(clean["first_key"].values[i, 0], by_hand[:, -1, 0], rtol=2e-5, atol=1e-7)
    # every layer: the probe's value is the last row's weight on key 0 of the whole-prompt pattern
    pattern = jaxdiag.attention(model, tokens, progress=False)
    last = np.stack([pattern.values[p, :, :, n[p] - 1, 0] for p in range(len(tokens))])
    np.testing.assert_allclose(clean["first_key"].values, last, rtol=2e-6, atol=1e-8)


def test_attention_is_labelled_whole_prompt_patterns(run):
    _, _, _, model_dir = run
    model = jaxdiag.load("builtin:ioi-4l8h")
    texts = ["When Mary and John went to the store, John gave a drink to", "Then, Tom and Kate had fun"]
    pattern = jaxdiag.attention(model, texts, layers=[1, 3], heads=[0, 5], progress=False)
    assert pattern.dims == ("prompt", "layer", "head", "query", "key")
    assert pattern["layer"].values.tolist() == [1, 3] and pattern["head"].values.tolist() == [0, 5]
    n = pattern["n_tokens"].values
    assert pattern["query_token"].values[0, : 4].tolist() == ["<|endoftext|>", "When", " Mary", " and"]
    assert (pattern["key_token"].values == pattern["query_token"].values).all()
    sums = pattern.isel(prompt=1).values[..., : n[1], : n[1]].sum(-1)
    np.testing.assert_allclose(sums, 1, rtol=1e-5)
    assert np.isnan(pattern.isel(prompt=1).values[..., n[1]:, :]).all()
    upper = np.triu(np.ones((n[0], n[0]), bool), 1)
    assert (pattern.isel(prompt=0).values[..., : n[0], : n[0]][..., upper] == 0).all()  # causal
    one = jaxdiag.attention(model, texts[1], layers=3, heads=5, progress=False)
    # alone, the prompt is not padded to the pair's length: the same weights up to float32 rounding
    np.testing.assert_allclose(one.values[0, 0, 0, : n[1], : n[1]], pattern.values[1, 1, 1, : n[1], : n[1]],
                               rtol=1e-6, atol=1e-7)
    html = jaxdiag.show(pattern).html
    assert html.count("<option") == 4 + 2  # 2 layers x 2 heads, 2 prompts


def test_stored_variables_come_from_the_probes():
    assert stored_variables(SWEEP_PROBES) == HEAD_VARIABLE_ATTRS


def _one_sentence(excinfo, *words: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and message.count(". ") == 0, message
    for word in words:
        assert word in message, message


def test_bad_input_is_one_sentence(run, monkeypatch):
    _, rows, model, _ = run
    tokens = [r["tokens"] for r in rows]
    with pytest.raises(JaxdiagError) as e:
        jaxdiag.effects(model, tokens[:2], target=[1, 2], kinds=["zero", "shuffle"], progress=False)
    _one_sentence(e, "unknown kind 'shuffle'")
    with pytest.raises(JaxdiagError) as e:  # prompts 0 and 1 are a pair (clean/corrupt); 0 and 2 are not
        jaxdiag.effects(model, [tokens[0], tokens[2]], target=5, pairs=["p", "p"], kinds=["patch"], progress=False)
    _one_sentence(e, "pair 'p'", "prompt 0", "prompt 1", "equal lengths")
    with pytest.raises(JaxdiagError) as e:
        jaxdiag.effects(model, tokens[:2], target=[5], kinds=["zero"], progress=False)
    _one_sentence(e, "target has 1 entries for 2 prompts")
    with pytest.raises(JaxdiagError) as e:
        jaxdiag.effects(model, tokens[:2], target=5, kinds=["mean"], progress=False)
    _one_sentence(e, "reference=")
    with pytest.raises(JaxdiagError) as e:
        jaxdiag.attention(model, tokens[0], layers=[0, 2], progress=False)
    _one_sentence(e, "layer 2 is out of range", "layers 0-1")
    with pytest.raises(JaxdiagError) as e:
        jaxdiag.attention(model, tokens[0], heads=[-1], progress=False)
    _one_sentence(e, "head -1 is out of range")
    monkeypatch.setattr(jaxdiag.api, "MAX_PATTERN_BYTES", 1000)
    with pytest.raises(JaxdiagError) as e:
        jaxdiag.attention(model, tokens[0], progress=False)
    _one_sentence(e, "above the 0 MiB limit", "fewer layers=")
    monkeypatch.undo()
    with pytest.raises(JaxdiagError) as e:
        jaxdiag.diagnose(model, tokens[:2], probes=["nb_probes:whole_pattern"], progress=False)
    _one_sentence(e, "probe 'whole_pattern' returned shape", "[batch, head, row]")
    with pytest.raises(JaxdiagError) as e:
        jaxdiag.diagnose(model, tokens[:2], probes=["nb_probes:absent"], progress=False)
    _one_sentence(e, "'nb_probes:absent' is nothing, not a probe")
    with pytest.raises(JaxdiagError) as e:
        jaxdiag.probe("kl_norm")(lambda view: view.probs[..., 0])
    _one_sentence(e, "probe name 'kl_norm' is taken")


def test_run_config_probes_are_checked_before_any_work(run, tmp_path):
    _, _, _, model_dir = run
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"condition": "a", "tokens": [1, 2]}) + "\n")
    for spec, words in (('"no_such_module:f"', "cannot import the module of probe 'no_such_module:f'"),
                        ('"nb_probes"', "is not of the form 'module:function'"), ("3", "probes must be a list")):
        (tmp_path / "bad.toml").write_text(f'model = "{model_dir}"\nprobes = [{spec}]\n'
                                           '[prompts]\nsource = "jsonl"\npath = "pairs.jsonl"\n')
        with pytest.raises(JaxdiagError) as e:
            load_config(str(tmp_path / "bad.toml"))
        _one_sentence(e, words)
