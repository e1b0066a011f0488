"""DLA, the logit lens and patching by position in a sweep (`--effects dla,lens,patch_resid,...`): stored with
the contract's dims, equal to the components computed directly, role_position from JSONL `roles`, and
one-line refusals for unpaired prompts and encoders."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import jaxdiag
from jaxdiag.causal.components import direct_logit_attribution, logit_lens, position_patches
from jaxdiag.causal.effects import clean_trace, task_readout
from jaxdiag.cli import main
from tests.sweep_helpers import TOKEN_MODEL, save_tiny_model

KINDS = "dla,lens_rank,patch_resid,patch_attn_out,patch_mlp_out,patch_head_pos"


def _pairs(path, n_pairs: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_pairs):
        n = int(rng.integers(4, 9))
        clean = [0] + rng.integers(1, 1000, n).tolist()
        corrupt = clean[:-2] + rng.integers(1, 1000, 2).tolist()
        target, foil = (int(t) for t in rng.integers(1, 1000, 2))
        roles = {"S1": 1, "END": n} if i != 1 else {"END": n}
        lines.append({"condition": "clean", "tokens": clean, "target": target, "foil": foil, "pair": i, "roles": roles})
        lines.append({"condition": "corrupt", "tokens": corrupt, "target": target, "pair": i, "roles": roles})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("components")
    model = save_tiny_model(root / "model", seed=4, **TOKEN_MODEL)
    prompts = _pairs(root / "pairs.jsonl")
    out = root / "c.zarr"
    args = ["run", "--model", str(model), "--prompts", str(prompts), "--no-bos", "--batch-size", "2",
            "--effects", KINDS, "--out", str(out), "--quiet"]
    assert main(args) == 0
    return model, prompts, xr.open_zarr(out, chunks=None), out


def test_store_has_the_contract_variables(store):
    _, _, ds, _ = store
    assert ds.attrs["schema_version"] == 3
    text = jaxdiag.sweep.store.describe(store[3])
    assert "effects: effect_patch_resid" in text and "logit attribution and lens: dla," in text
    dims = {"dla": ("layer", "head"), "dla_attn_bias": ("layer",), "dla_mlp": ("layer",), "dla_embed": (),
            "dla_norm_bias": (), "lens_metric": ("layer",), "lens_rank": ("layer",),
            "effect_patch_resid": ("layer", "position"), "effect_patch_attn_out": ("layer", "position"),
            "effect_patch_mlp_out": ("layer", "position"), "effect_patch_head_pos": ("layer", "head", "position")}
    for name, rest in dims.items():
        assert ds[name].dims == ("condition", "prompt", *rest), name
        assert ds[name].dtype == np.float32, name
    assert list(ds["role"].values) == ["S1", "END"]
    roles = ds["role_position"].sel(condition="clean").values
    assert roles.dtype == np.int32 and roles[1, 0] == -1 and roles[0, 0] == 1
    np.testing.assert_array_equal(roles[:, 1], ds["n_tokens"].sel(condition="clean").values - 1)
    np.testing.assert_allclose(ds["lens_metric"].values[..., -1], ds["metric"].values, rtol=1e-5, atol=1e-5)
    n = ds["n_tokens"].values
    patched = ds["effect_patch_resid"].values
    for c in range(2):
        for p in range(3):
            assert np.isfinite(patched[c, p, :, : n[c, p]]).all() and np.isnan(patched[c, p, :, n[c, p]:]).all()


def test_stored_components_equal_the_functions(store):
    model_dir, _, ds, _ = store
    model = jaxdiag.load(str(model_dir), prepend_bos=False).model
    for condition, other in (("clean", "corrupt"), ("corrupt", "clean")):
        sub, partner = ds.sel(condition=condition), ds.sel(condition=other)
        n = sub["n_tokens"].values
        width = int(n.max())
        t = jnp.asarray(sub["tokens"].values[:, :width].clip(min=0), jnp.int32)
        s = jnp.asarray(partner["tokens"].values[:, :width].clip(min=0), jnp.int32)
        lengths = jnp.asarray(n, jnp.int32)
        target, foil = jnp.asarray(sub["target"].values), jnp.asarray(sub["foil"].values)
        trace = clean_trace(model, t, lengths)
        readout = task_readout(model, lengths, target, foil)
        clean = readout(trace.hidden)
        ours = direct_logit_attribution(model, trace, target, foil, lengths - 1)
        ours |= logit_lens(model, trace, target, foil, lengths - 1, rank=True)
        ours |= position_patches(model, t, lengths, trace, clean_trace(model, s, lengths), readout, clean,
                                 ("patch_resid", "patch_head_pos"))
        for name, value in ours.items():
            stored = sub[name].values[..., :width] if "position" in sub[name].dims else sub[name].values
            np.testing.assert_allclose(stored, np.asarray(value), rtol=1e-4, atol=1e-5, err_msg=f"{condition} {name}")


def test_unpaired_prompts_and_encoders_are_one_line_errors(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model", seed=4, **TOKEN_MODEL)
    prompts = tmp_path / "unpaired.jsonl"
    prompts.write_text(json.dumps({"condition": "a", "tokens": [0, 5, 6], "target": 3}) + "\n")
    code = main(["run", "--model", str(model), "--prompts", str(prompts), "--effects", "patch_resid",
                 "--out", str(tmp_path / "x.zarr"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no 'pair'" in err and "\n" not in err
    from tests.test_effects_encoders import build_mlm

    _, encoder = build_mlm(tmp_path, "bert-mlm")
    capsys.readouterr()  # transformers' save progress
    code = main(["run", "--model", str(encoder), "--prompts", str(prompts), "--effects", "patch_resid",
                 "--out", str(tmp_path / "y.zarr"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "decoders" in err and "\n" not in err


def test_ioi_roles_name_the_positions():
    """The ioi source's roles: IO, S1, S1+1, S2 (the third name in an ABC counterfactual), END."""
    from jaxdiag.sweep.prompts import ioi_prompts

    vocabulary: dict[str, int] = {}
    encode = lambda text: [vocabulary.setdefault(w, len(vocabulary)) for w in text.replace(",", " ,").split()]
    prompts = list(ioi_prompts(encode, n_prompts=4, n_tokens=15, seed=0, pairs=True))
    words = {i: w for w, i in vocabulary.items()}
    for p in prompts:
        names = {"IO": p.metadata["io_name"], "S1": p.metadata["s_name"],
                 "S2": p.metadata["s_name"] if p.condition == "ioi" else p.metadata["c_name"]}
        assert list(p.roles) == ["IO", "S1", "S1+1", "S2", "END"]
        for role, name in names.items():
            assert words[p.tokens[p.roles[role]]] == name, (role, p.text)
        assert p.roles["S1+1"] == p.roles["S1"] + 1 and p.roles["END"] == len(p.tokens) - 1
        assert p.roles["S2"] > p.roles["S1"]
