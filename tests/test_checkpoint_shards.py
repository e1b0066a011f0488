"""Checkpoints as published: sharded safetensors (``model.safetensors.index.json``, local and hub),
tensors kept in their stored dtype (bf16), the shards' manifest in the store, and bad checkpoints as
one-line errors that write nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import xarray as xr
from flax import nnx

import jaxdiag
from jaxdiag.checkpoint import sha256_file
from jaxdiag.cli import main
from jaxdiag.schema import DIAGNOSTICS
from tests.families import SMALL, build, token_batch, torch_forward
from tests.reference import reference_diagnostics_masked


def _prompts(path, n: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    lines = [{"condition": "a" if i % 2 else "b", "tokens": rng.integers(0, SMALL["vocab_size"], int(rng.integers(2, 12))).tolist(),
              "target": int(rng.integers(0, SMALL["vocab_size"]))} for i in range(n)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _run(tmp_path, model_dir, name, *extra):
    out = tmp_path / name
    assert main(["run", "--model", str(model_dir), "--prompts", str(_prompts(tmp_path / "p.jsonl")), "--out", str(out),
                 "--quiet", "--query", "all", *extra]) == 0
    return xr.open_zarr(out, chunks=None).load()


def _params(model) -> set[str]:
    return {str(v.dtype) for v in jax.tree.leaves(nnx.state(model, nnx.Param))}


def test_sharded_checkpoint_gives_a_bit_identical_store(tmp_path):
    """Same checkpoint, one file vs five shards: every data variable equal bit for bit; only the
    weights' provenance differs (the manifest, whose sha256 is weights_sha256)."""
    torch_model, single, _ = build(tmp_path, "llama-gqa-tied")
    sharded = tmp_path / "sharded"
    torch_model.save_pretrained(sharded, max_shard_size="20KB")
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) >= 3 and not (sharded / "model.safetensors").exists()
    one, many = _run(tmp_path, single, "one.zarr"), _run(tmp_path, sharded, "many.zarr")
    assert set(one.data_vars) == set(many.data_vars) and "kl" in one.data_vars
    for name in [*one.data_vars, *one.coords]:
        np.testing.assert_array_equal(one[name].values, many[name].values, err_msg=name)
    assert one.attrs["weights_sha256"] == sha256_file(single / "model.safetensors")  # a single file: as before
    assert "weights_manifest" not in one.attrs
    manifest = json.loads(many.attrs["weights_manifest"])
    assert sorted(manifest) == shards
    assert all(manifest[s] == hashlib.sha256((sharded / s).read_bytes()).hexdigest() for s in shards)
    assert many.attrs["weights_sha256"] == hashlib.sha256(many.attrs["weights_manifest"].encode()).hexdigest()


def test_bf16_checkpoint_stays_bf16_and_its_diagnostics_are_as_close_as_torch_bf16(tmp_path):
    """A bf16 checkpoint: bf16 parameters under precision="bf16" (float32, with the upcast recorded, under
    "highest"); its diagnostics are within 3x torch-bf16's own distance from the float64 reference."""
    torch_model, _, _ = build(tmp_path, "llama-gqa-tied")
    directory = tmp_path / "bf16"
    torch_model.to(torch.bfloat16).save_pretrained(directory, max_shard_size="30KB")
    assert json.loads((directory / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = jaxdiag.load(str(directory), precision="bf16")
    assert _params(loaded.model) == {"bfloat16"}
    upcast = jaxdiag.load(str(directory))
    assert _params(upcast.model) == {"float32"}
    from jaxdiag.models.load import weights_attrs

    assert weights_attrs(upcast.checkpoint, upcast.model)["weights_upcast"].startswith("bfloat16 -> float32")
    assert "weights_upcast" not in weights_attrs(loaded.checkpoint, loaded.model)

    token_lists = token_batch(SMALL["vocab_size"])
    bf16_torch = torch_model.to(torch.bfloat16)  # the same bf16 weights, run by torch in bf16
    torch_attn, _, _, reference = torch_forward(bf16_torch, token_lists)  # reference: those weights in float64
    ours = jaxdiag.diagnose(loaded, token_lists)
    worst = {"ours": 0.0, "torch": 0.0}
    for b, seq in enumerate(token_lists):
        n = len(seq)
        seen = np.zeros(reference.shape[-1], bool)
        seen[:n] = True
        expected = reference_diagnostics_masked(reference[:, b, :, n - 1, :], seen)
        torch_diag = reference_diagnostics_masked(np.clip(torch_attn[:, b, :, n - 1, :], 1e-30, None), seen)
        for name in DIAGNOSTICS:
            ok = np.isfinite(expected[name])
            if not ok.any():  # a one-token prompt: every diagnostic is NaN
                continue
            worst["ours"] = max(worst["ours"], float(np.abs(ours[name].isel(prompt=b).values - expected[name])[ok].max()))
            worst["torch"] = max(worst["torch"], float(np.abs(torch_diag[name] - expected[name])[ok].max()))
    assert 0 < worst["torch"] and worst["ours"] <= 3 * worst["torch"], worst


def test_hub_sharded_checkpoint_fetches_only_the_named_shards(tmp_path, monkeypatch):
    """A hub id with a shard index: snapshot_download is asked for the config, the index and exactly the
    shards the index names (not the .bin twins a repo may also hold), here from the offline hub cache."""
    import huggingface_hub

    torch_model, _, _ = build(tmp_path, "llama")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-llama"
    snapshot = repo / "snapshots" / commit
    torch_model.save_pretrained(snapshot, max_shard_size="20KB")
    (snapshot / "pytorch_model-00001-of-00002.bin").write_bytes(b"never fetched")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    asked = []
    real = huggingface_hub.snapshot_download

    def recording(*args, allow_patterns=None, **kwargs):
        asked.append(list(allow_patterns))
        return real(*args, allow_patterns=allow_patterns, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    loaded = jaxdiag.load("someone/tiny-llama")
    shards = sorted(p.name for p in snapshot.glob("model-*.safetensors"))
    assert loaded.checkpoint.revision == commit and [n for n, _ in loaded.checkpoint.manifest] == shards
    assert set(shards) <= set(asked[-1]) and not any(".bin" in p for p in asked[-1])
    local = jaxdiag.load(str(snapshot))
    tokens = token_batch(SMALL["vocab_size"], lengths=[7, 3])
    np.testing.assert_array_equal(jaxdiag.diagnose(loaded, tokens)["kl"].values,
                                  jaxdiag.diagnose(local, tokens)["kl"].values)


def _break(directory, case: str):
    from safetensors.torch import load_file, save_file

    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = directory / index["weight_map"]["model.layers.0.self_attn.q_proj.weight"]
    if case == "missing-shard":
        shard.unlink()
        return shard.name, "(holding tensor model."
    if case == "unknown-rope":
        config = json.loads((directory / "config.json").read_text())
        config["rope_parameters"] = {"rope_type": "su-per", "rope_theta": 10000.0, "factor": 2.0}
        (directory / "config.json").write_text(json.dumps(config))
        return "config.json", "su-per"
    tensors = load_file(str(shard))
    name = "model.layers.0.self_attn.q_proj.weight"
    tensors[name] = (tensors[name][:, :-1] if case == "wrong-shape" else tensors[name].to(torch.int32)).contiguous()
    save_file(tensors, str(shard), metadata={"format": "pt"})
    return shard.name, name


@pytest.mark.parametrize("case", ["missing-shard", "wrong-shape", "wrong-dtype", "unknown-rope"])
def test_bad_sharded_checkpoint_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    torch_model, _, _ = build(tmp_path, "llama")
    directory = tmp_path / "sharded"
    torch_model.save_pretrained(directory, max_shard_size="20KB")
    file_name, what = _break(directory, case)
    out = tmp_path / "store.zarr"
    result = subprocess.run(
        [sys.executable, "-m", "jaxdiag.cli", "run", "--model", str(directory), "--prompts",
         str(_prompts(tmp_path / "p.jsonl")), "--out", str(out), "--quiet"],
        capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jaxdiag: error:"), result.stderr
    assert file_name in lines[0] and what in lines[0], lines[0]
    assert not out.exists()
