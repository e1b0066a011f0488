"""Causal effects in a sweep: stored beside the diagnostics, equal to the step computed directly,
deterministic and resumable, and refused with one line when the task or the pairs are bad."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import jaxdiag
from jaxdiag.cli import main
from jaxdiag.causal.effects import attribution_effects, head_effects, head_outputs, task_readout
from tests.sweep_helpers import TEXT_MODEL, TOKEN_MODEL, save_tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("effect-models")
    return {"text": save_tiny_model(root / "text", **TEXT_MODEL), "token": save_tiny_model(root / "token", seed=4, **TOKEN_MODEL)}


def write_pairs(path: Path, n_pairs: int = 7, seed: int = 0, length: int | None = None) -> Path:
    """Pairs of token prompts (clean / corrupted) of varied lengths (or all ``length + 1`` long, BOS
    included); targets and foils as ids."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_pairs):
        n = length or int(rng.integers(3, 20))
        clean = rng.integers(1, 1000, n).tolist()
        corrupt = clean[:-2] + rng.integers(1, 1000, 2).tolist()
        target, foil = (int(t) for t in rng.integers(1, 1000, 2))
        lines.append({"condition": "clean", "tokens": [0] + clean, "target": target, "foil": foil, "pair": i})
        lines.append({"condition": "corrupt", "tokens": [0] + corrupt, "target": target, "pair": i})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def _run(capsys, *args) -> tuple[int, str]:
    code = main(["run", *map(str, args), "--quiet"])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def effect_store(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("effects")
    prompts = write_pairs(root / "pairs.jsonl")
    out = root / "e.zarr"
    args = ["--model", models["token"], "--prompts", prompts, "--no-bos", "--batch-size", "4", "--chunk-size", "3",
            "--effects", "zero,mean,patch"]
    assert main(["run", *map(str, args), "--out", str(out), "--quiet"]) == 0
    return args, out, xr.open_zarr(out, chunks=None), prompts


def test_store_holds_metric_effects_and_the_task(effect_store):
    _, out, ds, _ = effect_store
    assert ds.attrs["schema_version"] == 3 and ds.attrs["effects"] == ["zero", "mean", "patch"]
    assert ds.attrs["effects_reference"] == "corrupt"  # the second condition unless configured
    assert ds["metric"].dims == ("condition", "prompt") and ds["metric"].dtype == np.float32
    for kind in ("zero", "mean", "patch"):
        assert ds[f"effect_{kind}"].dims == ("condition", "prompt", "layer", "head")
    assert ds["head_mean"].dims == ("layer", "head", "d_head")
    assert {"target", "foil", "pair"} <= set(ds.coords)
    assert (ds["foil"].sel(condition="corrupt") == -1).all() and (ds["foil"].sel(condition="clean") >= 0).all()
    assert np.isfinite(ds["metric"].values).all()
    assert "effects: effect_zero, effect_mean, effect_patch" in jaxdiag.sweep.store.describe(out)


def test_stored_effects_equal_the_step_computed_directly(effect_store, models):
    _, _, ds, _ = effect_store
    model = jaxdiag.load(str(models["token"]), prepend_bos=False).model
    cfg = model.config
    for condition, other in (("clean", "corrupt"), ("corrupt", "clean")):
        sub, partner = ds.sel(condition=condition), ds.sel(condition=other)
        n = sub["n_tokens"].values
        width = int(n.max())
        tokens = sub["tokens"].values[:, :width].clip(min=0)
        order = [int(np.flatnonzero(partner["pair"].values == p)[0]) for p in sub["pair"].values]
        partner_tokens = partner["tokens"].values[order][:, :width].clip(min=0)
        lengths = jnp.asarray(n, jnp.int32)
        replacements = {"zero": jnp.zeros((cfg.n_layer, 1, cfg.n_head, cfg.d_head)),
                        "mean": jnp.asarray(ds["head_mean"].values)[:, None],
                        "patch": head_outputs(model, jnp.asarray(partner_tokens), lengths)}
        readout = task_readout(model, lengths, jnp.asarray(sub["target"].values), jnp.asarray(sub["foil"].values))
        metric, effects = head_effects(model, jnp.asarray(tokens), lengths, readout, replacements)
        np.testing.assert_allclose(sub["metric"].values, np.asarray(metric), rtol=1e-4, atol=1e-5)
        for kind, value in effects.items():
            np.testing.assert_allclose(sub[f"effect_{kind}"].values, np.asarray(value), rtol=1e-4, atol=1e-5,
                                       err_msg=kind)
    # patching each pair both ways: noising on "clean", denoising on "corrupt", both measured
    assert np.abs(ds["effect_patch"].values).max() > 1e-3


def test_effects_are_deterministic_and_resume_bit_for_bit(effect_store, tmp_path, capsys):
    args, out, ds, _ = effect_store
    again = tmp_path / "again.zarr"
    assert _run(capsys, *args, "--out", again)[0] == 0
    other = xr.open_zarr(again, chunks=None)
    for name in ("metric", "effect_zero", "effect_mean", "effect_patch", "head_mean", "kl_norm"):
        np.testing.assert_array_equal(other[name].values, ds[name].values, err_msg=name)
    # an interrupted run resumes into the same store: drop a chunk's done state and its data, rerun
    import zarr

    group = zarr.open_group(str(again), mode="r+")
    group.attrs["complete"] = False
    (again / ".jaxdiag-progress").mkdir()
    for c in range(2):
        for k in range(3):
            if (c, k) != (1, 2):
                (again / ".jaxdiag-progress" / f"{c}-{k}").write_bytes(b"")
    group["effect_patch"][1, 6:] = np.nan
    assert _run(capsys, *args, "--out", again, "--resume")[0] == 0
    np.testing.assert_array_equal(xr.open_zarr(again, chunks=None)["effect_patch"].values, ds["effect_patch"].values)


def test_a_run_without_effects_is_unchanged(effect_store, tmp_path, capsys):
    args, _, ds, prompts = effect_store
    plain = tmp_path / "plain.zarr"
    assert _run(capsys, *args[:-2], "--out", plain)[0] == 0
    store = xr.open_zarr(plain, chunks=None)
    assert "effects" not in store.attrs and "metric" not in store
    assert "effects" not in json.loads(store.attrs["config"])
    for name in jaxdiag.DIAGNOSTICS:  # the diagnostics do not depend on whether effects ride along
        np.testing.assert_array_equal(store[name].values, ds[name].values, err_msg=name)


BAD = [
    ("no_target", "no prompt has a target"),
    ("unequal_pair", "tokens; a patch needs equal lengths"),
    ("missing_partner", "has no partner"),
    ("long_foil", "'foil': ' Johnathan Smith' is 3 tokens, not one"),
    ("same_condition_pair", "a pair spans two conditions"),
    ("target_out_of_vocab", "outside the vocabulary"),
]


@pytest.mark.parametrize("problem, message", BAD)
def test_bad_task_input_is_one_line_and_writes_nothing(tmp_path, models, capsys, problem, message):
    lines = [{"condition": "a", "tokens": [0, 5, 6, 7], "target": 3, "pair": 1},
             {"condition": "b", "tokens": [0, 5, 9, 7], "target": 3, "pair": 1}]
    model = models["token"]
    if problem == "no_target":
        lines = [{k: v for k, v in line.items() if k != "target"} for line in lines]
    elif problem == "unequal_pair":
        lines[1]["tokens"] = [0, 5, 9]
    elif problem == "missing_partner":
        lines[1]["pair"] = 2
    elif problem == "long_foil":
        model = models["text"]
        lines = [{"condition": c, "text": "When Mary and John went out", "target": " Mary", "foil": " Johnathan Smith",
                  "pair": 1} for c in "ab"]
    elif problem == "same_condition_pair":
        lines[1]["condition"] = "a"
        lines.append({"condition": "b", "tokens": [0, 1, 2, 3], "target": 3, "pair": 9})
    elif problem == "target_out_of_vocab":
        lines[0]["target"] = 5000
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "bad.zarr"
    code, err = _run(capsys, "--model", model, "--prompts", prompts, "--effects", "zero,patch", "--out", out)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("jaxdiag: error:")
    assert not out.exists() and not list(tmp_path.glob(".bad.zarr*"))


def test_attribution_patching_is_stored_as_computed(effect_store, models, tmp_path, capsys):
    args, _, exact, _ = effect_store
    out = tmp_path / "atp.zarr"
    assert _run(capsys, *args[:-1], "atp_zero,atpstar_patch,patch", "--out", out)[0] == 0
    ds = xr.open_zarr(out, chunks=None)
    assert ds.attrs["effects"] == ["patch", "atp_zero", "atpstar_patch"]  # one order, however given
    assert "unsigned" in ds["effect_atpstar_patch"].attrs["long_name"] and "signed" in ds["effect_atp_zero"].attrs["long_name"]
    np.testing.assert_array_equal(ds["effect_patch"].values, exact["effect_patch"].values)  # exact effects unchanged
    model = jaxdiag.load(str(models["token"]), prepend_bos=False).model
    cfg = model.config
    sub, partner = ds.sel(condition="clean"), ds.sel(condition="corrupt")
    n = sub["n_tokens"].values
    width = int(n.max())
    order = [int(np.flatnonzero(partner["pair"].values == p)[0]) for p in sub["pair"].values]
    lengths = jnp.asarray(n, jnp.int32)
    tokens = jnp.asarray(sub["tokens"].values[:, :width].clip(min=0))
    sources = head_outputs(model, jnp.asarray(partner["tokens"].values[order][:, :width].clip(min=0)), lengths)
    readout = task_readout(model, lengths, jnp.asarray(sub["target"].values), jnp.asarray(sub["foil"].values))
    expected = attribution_effects(model, tokens, lengths, readout,
                                   {"zero": jnp.zeros((cfg.n_layer, 1, cfg.n_head, cfg.d_head)), "patch": sources},
                                   graddrop=True)
    for kind in ("atp_zero", "atpstar_patch"):
        np.testing.assert_allclose(sub[f"effect_{kind}"].values, np.asarray(expected[kind]), rtol=1e-4, atol=1e-6,
                                   err_msg=kind)
    assert (ds["effect_atpstar_patch"].values[np.isfinite(ds["effect_atpstar_patch"].values)] >= 0).all()


def test_verify_patches_the_top_heads_exactly_and_bounds_the_rest(effect_store, tmp_path, capsys):
    args, _, _, _ = effect_store
    store = tmp_path / "star.zarr"
    assert _run(capsys, *args[:-1], "patch,atpstar_patch", "--out", store)[0] == 0
    out = tmp_path / "verified"
    assert main(["verify", str(store), "--out", str(out), "--top", "3", "--sample", "4"]) == 0
    result = json.loads((out / "verify.json").read_text())
    assert result["method"] == "atpstar_patch" and result["exact_kind"] == "patch"
    ds = xr.open_zarr(store, chunks=None)
    star = ds["effect_atpstar_patch"].mean(["condition", "prompt"]).values
    exact = ds["effect_patch"].mean(["condition", "prompt"]).values  # every prompt here has a target
    ranked = [tuple(int(x) for x in np.unravel_index(i, star.shape)) for i in np.argsort(-star, axis=None, kind="stable")]
    assert [(c["layer"], c["head"]) for c in result["verified"]] == ranked[:3]
    for check in result["verified"] + result["sampled"]:  # verify's exact patching = the sweep's, same prompts
        assert check["exact_mean"] == pytest.approx(exact[check["layer"], check["head"]], rel=1e-4, abs=1e-6)
    sampled = {(c["layer"], c["head"]) for c in result["sampled"]}
    assert len(sampled) == 4 and not sampled & set(ranked[:3])
    k = sum(c["matters"] for c in result["sampled"])
    from scipy import stats

    assert result["share_bound"] == pytest.approx(stats.beta.ppf(0.95, k + 1, 4 - k))
    assert "Bound:" in (out / "verify.md").read_text()
    code = main(["verify", str(effect_store[1]), "--out", str(tmp_path / "none")])
    assert code == 2 and "no attribution-patching estimates" in capsys.readouterr().err


def test_pairs_without_effects_are_checked_and_stored(tmp_path, models, capsys):
    """The report pairs prompts by the stored ``pair``: a run without effects keeps it (any lengths),
    and refuses a pair that is not two prompts in two conditions."""
    lines = [{"condition": "a", "tokens": [0, 5, 6, 7], "pair": "x"}, {"condition": "b", "tokens": [0, 5], "pair": "x"},
             {"condition": "a", "tokens": [0, 8], "pair": 2}, {"condition": "b", "tokens": [0, 9, 9], "pair": 2}]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert _run(capsys, "--model", models["token"], "--prompts", prompts, "--out", tmp_path / "ok.zarr")[0] == 0
    ds = xr.open_zarr(tmp_path / "ok.zarr", chunks=None)
    assert ds.pair.values.tolist() == [["x", "2"], ["x", "2"]] and "target" not in ds.coords
    prompts.write_text("\n".join(json.dumps(line) for line in lines[:3]) + "\n")
    code, err = _run(capsys, "--model", models["token"], "--prompts", prompts, "--out", tmp_path / "bad.zarr")
    assert code == 2 and "pair '2' has no partner" in err and not (tmp_path / "bad.zarr").exists()
