"""`jaxdiag run --model DIR` for each family, and the two real-weight encoder presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import jaxdiag
from jaxdiag.cli import main
from jaxdiag.errors import JaxdiagError
from jaxdiag.schema import DIAGNOSTICS
from tests import test_families_decoders as decoders
from tests import test_families_encoders as encoders


def _prompts(path, vocab, seed=0):
    rng = np.random.default_rng(seed)
    records = [{"condition": c, "tokens": rng.integers(0, vocab, size=int(rng.integers(2, 12))).tolist()}
               for c in ("a", "b") for _ in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


@pytest.mark.parametrize("family, case", [(decoders, "llama-gqa-tied"), (decoders, "mistral-window"),
                                          (decoders, "neox-parallel"), (encoders, "albert-shared")])
def test_run_model_dir_for_each_family(tmp_path, family, case):
    _, directory, *_ = family.build(tmp_path, case)
    records = _prompts(tmp_path / "p.jsonl", 97)
    out = tmp_path / "store.zarr"
    assert main(["run", "--model", str(directory), "--prompts", str(tmp_path / "p.jsonl"), "--out", str(out),
                 "--quiet", "--no-compile-cache"]) == 0
    ds = xr.open_zarr(out)
    assert ds.attrs["model_type"] == json.loads((directory / "config.json").read_text())["model_type"]
    loaded = jaxdiag.load(str(directory))
    assert ds.sizes["layer"] == loaded.config.n_layer and ds.sizes["head"] == loaded.config.n_head
    for condition in ("a", "b"):
        tokens = [r["tokens"] for r in records if r["condition"] == condition]
        expected = jaxdiag.diagnose(loaded, tokens)
        for name in DIAGNOSTICS:
            np.testing.assert_allclose(ds[name].sel(condition=condition).values, expected[name].values,
                                       rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("case", ["qwen2-gqa", "neox-parallel"])
def test_effects_run_on_other_decoders(tmp_path, case):
    """`effects = [...]` runs on every decoder family: exact effects and AtP stored, finite where the
    prompt has a target, and a head's exact effect equals a whole forward with that head edited."""
    import dataclasses

    from jaxdiag.sweep.run import run_sweep
    from jaxdiag.sweep.runconfig import load_config

    _, directory, _ = decoders.build(tmp_path, case)
    rng = np.random.default_rng(1)
    records = [{"condition": "a", "tokens": rng.integers(0, 97, size=8).tolist(), "target": int(rng.integers(97))}
               for _ in range(4)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = load_config(None, preset="default", overrides={"model": str(directory), "prompts": str(tmp_path / "p.jsonl")})
    config = dataclasses.replace(config, effects=("zero", "atp_zero"), circuit=None, conditions=None)
    run_sweep(config, tmp_path / "store.zarr", quiet=True)
    ds = xr.open_zarr(tmp_path / "store.zarr")
    zero, atp = ds["effect_zero"].values, ds["effect_atp_zero"].values
    assert np.isfinite(zero).all() and np.isfinite(atp).all() and np.abs(zero).max() > 0
    from jaxdiag.models.edits import zero_heads

    loaded = jaxdiag.load(str(directory))
    c = loaded.config
    tokens = np.asarray([records[0]["tokens"]], np.int32)
    lengths = np.asarray([8], np.int32)
    clean, edited = (np.asarray(loaded.model(tokens, lengths, logits=True, edit=edit).logits)[0, -1]
                     for edit in (None, zero_heads((c.n_layer, c.n_head, c.d_head), [(1, 2)])))
    log_p = lambda logits: logits[records[0]["target"]] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    np.testing.assert_allclose(zero[0, 0, 1, 2], log_p(edited) - log_p(clean), rtol=1e-4, atol=1e-5)


def test_encoder_effects_are_refused_before_work(tmp_path):
    from jaxdiag.sweep.run import run_sweep
    from jaxdiag.sweep.runconfig import load_config

    import dataclasses

    _, directory = encoders.build(tmp_path, "bert")
    _prompts(tmp_path / "p.jsonl", 97)
    config = load_config(None, preset="default", overrides={"model": str(directory), "prompts": str(tmp_path / "p.jsonl")})
    with pytest.raises(JaxdiagError, match="masked-LM head"):
        run_sweep(dataclasses.replace(config, effects=("zero",), circuit=None, conditions=None), tmp_path / "store.zarr",
                  quiet=True)
    assert not (tmp_path / "store.zarr").exists()


@pytest.mark.parametrize("preset, n_layer, n_head", [("minilm_shuffled", 6, 12), ("rxn_shuffled", 12, 8)])
def test_real_weight_presets_run(tmp_path, preset, n_layer, n_head):
    out = tmp_path / f"{preset}.zarr"
    assert main(["run", "--preset", preset, "--out", str(out), "--quiet", "--no-compile-cache"]) == 0
    ds = xr.open_zarr(out)
    assert (ds.sizes["layer"], ds.sizes["head"]) == (n_layer, n_head)
    assert list(ds.condition.values) == ["real", "shuffled"]
    assert np.isfinite(ds["kl"].values).any()
    # the README's next command: an encoder store has no circuit, so it gets the circuit-free report
    report = tmp_path / "report"
    assert main(["report", str(out), "--out", str(report), "--n-boot", "50", "--n-perm", "50"]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["circuit"]["name"] == "none" and summary["circuit_test"] is None and summary["design"] == "paired"
    assert "pass `--circuit FILE`" in (report / "report.md").read_text()
    if preset == "rxn_shuffled":  # every reaction tokenises without [UNK]
        loaded = jaxdiag.load("wheel:rxnmapper")
        unk = loaded.tokenizer.backend.token_to_id("[UNK]")
        for line in (jaxdiag.paths.presets_dir() / "rxn_shuffled.jsonl").read_text().splitlines():
            record = json.loads(line)
            if "text" in record:
                assert unk not in loaded.encode(record["text"])
