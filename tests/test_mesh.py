"""A device mesh with data and model axes: parameters sharded Megatron-style over ``model``
(jaxdiag.models.sharding), batches over ``data``, on 8 virtual CPU devices.

``XLA_FLAGS`` must be set before JAX starts, so the meshes run in two subprocesses
(tests/mesh_worker.py, one per kind of mesh, started together): ``data`` makes the stores of a run
without a mesh and of ``--mesh data=2``; ``model`` streams a ~110 MB checkpoint into ``model=4``
(peak RSS), loads the tiny model on ``data=2, model=4`` (bytes per device, probe shardings), and
makes the stores of ``data=2,model=4``, ``data=1,model=4`` and ``data=2,model=4`` interrupted and
resumed, with every effect kind (exact, AtP, AtP*), asks the CLI for meshes that do not fit, and
compares random Llama (grouped-query) and NeoX models' diagnostics on ``data=2, model=4``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from jaxdiag.errors import JaxdiagError
from jaxdiag.schema import MeshShape
from tests.sweep_helpers import REPO, TOKEN_MODEL, assert_same_store, save_tiny_model
from tests.test_effects_sweep import write_pairs

# ~110 MB of float32 parameters; its largest tensor (wte, 4096 x 512) is 8 MiB.
BIG_MODEL = dict(vocab_size=4096, n_positions=64, n_embd=512, n_layer=8, n_head=8, bos_token_id=0)
# What a streaming load may hold beyond its resident shards and one tensor: the numpy copy of a
# shard on its way to the device, allocator slack and the header (measured: see the assertion's message).
LOAD_SLACK_BYTES = 32 * 2**20
# Sharded vs replicated stores: a row-wise projection (attention output, MLP output, the LM head over
# d_model) sums `model` partial products across devices in another order than one device sums the
# whole row, so each of them may differ by float32 rounding (~1e-7 relative), which the layers carry
# on; the diagnostics are O(1) (entropies up to log n) and effects are logit differences of O(1).
RTOL, ATOL = 1e-5, 2e-6


@pytest.fixture(scope="module")
def meshes(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mesh")
    model = save_tiny_model(root / "token", seed=4, **TOKEN_MODEL)
    prompts = write_pairs(root / "pairs.jsonl", n_pairs=6, length=8)  # one compiled shape
    big = save_tiny_model(root / "big", seed=1, **BIG_MODEL)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    workers = {}
    for role in ("data", "model"):
        (root / role).mkdir()
        workers[role] = subprocess.Popen([sys.executable, "-m", "tests.mesh_worker", role, str(root / role), str(model),
                                          str(prompts), str(big)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
    out = {}
    for role, worker in workers.items():
        log, _ = worker.communicate(timeout=900)
        assert worker.returncode == 0, f"mesh worker {role} failed:\n{log[-4000:]}"
        out[role] = (root / role, json.loads((root / role / "measured.json").read_text()))
    return out


def test_runs_on_every_mesh_finish(meshes):
    for role, (_, measured) in meshes.items():
        assert measured["codes"] == [0] * len(measured["codes"]), role


def test_data_only_meshes_give_the_store_of_a_run_without_a_mesh(meshes):
    out, _ = meshes["data"]
    assert_same_store(out / "d0.zarr", out / "d2.zarr")
    assert "mesh" not in json.loads(xr.open_zarr(out / "d2.zarr").attrs["config"])  # recorded as earlier versions did


def test_model_axis_holds_a_quarter_of_the_parameters_plus_the_norms_and_biases(meshes):
    sharding = meshes["model"][1]["sharding"]
    held, total, replicated = sharding["bytes_per_device"], sharding["total_bytes"], sharding["replicated"]
    assert len(held) == 8  # data=2 x model=4: every device holds one row's share
    assert all(name.rsplit(".", 1)[1] in ("scale", "bias") for name in replicated)  # only norms and biases
    remainder = sum(replicated.values())
    assert 0 < remainder < total / 20
    for device, n in held.items():
        assert n <= total / 4 + remainder, device
        assert n == (total - remainder) // 4 + remainder, device  # everything else split exactly in four


def test_probes_of_a_head_stay_on_the_device_that_holds_it(meshes):
    sharding = meshes["model"][1]["sharding"]
    for name, spec in sharding["probe_specs"].items():  # [batch, layer, head]
        assert spec[2] == "model" and sharding["probe_devices"][name] == 4, (name, spec)


def _stores_close(a: Path, b: Path) -> float:
    left, right = xr.open_zarr(a, chunks=None).load(), xr.open_zarr(b, chunks=None).load()
    assert set(left.data_vars) == set(right.data_vars)
    worst = 0.0
    for name in left.data_vars:
        x, y = left[name].values, right[name].values
        if not np.issubdtype(x.dtype, np.floating):
            np.testing.assert_array_equal(x, y, err_msg=name)
            continue
        np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=f"{name}: NaN in other places")
        np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL, err_msg=name)
        worst = max(worst, float(np.nanmax(np.abs(x - y), initial=0.0)))
    return worst


def test_sharded_stores_equal_the_replicated_store_to_float32_rounding(meshes):
    data_out, _ = meshes["data"]
    model_out, _ = meshes["model"]
    ds = xr.open_zarr(model_out / "m24.zarr")
    assert {f"effect_{k}" for k in ("zero", "mean", "patch", "atp_zero", "atpstar_patch")} <= set(ds.data_vars)
    assert json.loads(ds.attrs["config"])["mesh"] == {"model": 4}
    worst = _stores_close(data_out / "d0.zarr", model_out / "m24.zarr")
    assert worst > 0  # the sums really were split (else this test could not tell)


def test_grouped_query_and_interleaved_fused_attention_shard_to_float32_rounding(meshes):
    for family, found in meshes["model"][1]["families"].items():
        assert found["same_nans"] and found["max_abs"] <= ATOL + RTOL * found["max_value"], (family, found)


def test_the_same_model_axis_gives_the_same_bits_on_any_data_axis_and_after_resume(meshes):
    out, _ = meshes["model"]
    assert_same_store(out / "m24.zarr", out / "m14.zarr")
    assert_same_store(out / "m24.zarr", out / "m24r.zarr")


@pytest.mark.parametrize("mesh, names", [("model=3", "does not divide the 8 devices"),
                                         ("model=8", "does not divide the 4 attention heads"),
                                         ("data=3,model=2", "data=3 x model=2 does not divide the 8 devices"),
                                         ("model=4,data=x", "'data=x' is not AXIS=SIZE")])
def test_a_mesh_that_does_not_fit_is_one_line_and_exit_2_before_any_work(meshes, mesh, names):
    answer = meshes["model"][1]["errors"][mesh]
    assert answer["code"] == 2 and names in answer["stderr"], answer
    assert len(answer["stderr"].strip().splitlines()) == 1 and not answer["store_made"]


def test_streaming_load_holds_at_most_one_tensor_beyond_its_shards(meshes):
    load = meshes["model"][1]["load"]
    beyond = load["rss_peak"] - load["rss_before"] - load["resident_params"]
    assert load["resident_params"] >= load["checkpoint_bytes"]  # the shards are resident (plus 4 x the biases)
    assert beyond <= load["largest_tensor"] + LOAD_SLACK_BYTES, (
        f"peak RSS {beyond / 2**20:.1f} MiB beyond the resident shards; largest tensor "
        f"{load['largest_tensor'] / 2**20:.1f} MiB; whole checkpoint {load['checkpoint_bytes'] / 2**20:.1f} MiB")


# -- checks that need no devices ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Config:
    n_head: int = 8
    n_kv_head: int = 8
    d_mlp: int = 64
    n_embd: int = 32


@pytest.mark.parametrize("config, which", [(_Config(n_head=6), "6 attention heads (n_head)"),
                                           (_Config(n_kv_head=2), "2 key/value heads (n_kv_head)"),
                                           (_Config(d_mlp=66), "66 MLP width (d_mlp)"),
                                           (_Config(n_embd=34), "34 model width (d_model)")])
def test_check_divides_names_what_the_model_axis_does_not_divide(config, which):
    from jaxdiag.models.sharding import check_divides

    check_divides(_Config(), 4)
    with pytest.raises(JaxdiagError, match=re.escape(f"mesh model=4 does not divide the {which}")):
        check_divides(config, 4)


def test_mesh_shapes_parse_from_the_cli_and_run_configs(tmp_path):
    from jaxdiag.sweep.runconfig import load_config

    assert MeshShape.parse("data=2,model=4") == MeshShape(2, 4) == MeshShape.parse({"data": 2, "model": 4})
    assert MeshShape.parse(None) == MeshShape() and MeshShape.parse("model=2") == MeshShape(None, 2)
    for bad, says in (("tensor=2", "unknown mesh axis 'tensor'"), ({"model": 0}, "must be an integer >= 1"),
                      ("model", "is not AXIS=SIZE")):
        with pytest.raises(JaxdiagError, match=says):
            MeshShape.parse(bad)
    config = tmp_path / "run.toml"
    config.write_text('model = "gpt2"\nmesh = { data = 2, model = 4 }\n[prompts]\nsource = "ioi-blog"\n')
    assert load_config(str(config)).mesh == MeshShape(2, 4)
    assert load_config(str(config), overrides={"mesh": "model=2"}).mesh == MeshShape(None, 2)
    assert load_config(str(config)).to_dict()["mesh"] == {"model": 4}
    assert "mesh" not in load_config(str(config), overrides={"mesh": "data=8"}).to_dict()
