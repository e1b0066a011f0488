"""One mesh test process (``XLA_FLAGS`` gives it 8 virtual CPU devices before JAX starts); run by
tests/test_mesh.py as ``python -m tests.mesh_worker ROLE OUT MODEL PROMPTS [BIG_CHECKPOINT]``.

``data``: stores of a run without a mesh and with ``--mesh data=2`` (data-only meshes);
``model``: the streaming load's peak RSS, per-device bytes and probe shardings, stores of
``data=2,model=4``, ``data=1,model=4`` and ``data=2,model=4`` interrupted then resumed, and the
CLI's answers to meshes that do not fit, random Llama / NeoX diagnostics sharded against replicated.
What it measures goes to ``OUT/measured.json``.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

from benchmarks.rss import peak_rss_bytes, reset_peak_rss, rss_bytes

EFFECTS = "zero,mean,patch,atp_zero,atp_mean,atp_patch,atpstar_zero,atpstar_mean,atpstar_patch"


def run(args: list[str], out: Path, *extra: str) -> int:
    from jaxdiag.cli import main

    return main(["run", "--model", args[0], "--prompts", args[1], "--no-bos", "--batch-size", "4", "--chunk-size", "3",
                 "--effects", EFFECTS, "--quiet", "--out", str(out), *extra])


def measure_streaming_load(checkpoint: str) -> dict:
    """Peak RSS over a ``model=4`` load of ``checkpoint`` against what the load leaves resident."""
    import jax
    import numpy as np
    from flax import nnx

    from jaxdiag.checkpoint import resolve, tensor_slices
    from jaxdiag.models.load import load_model
    from jaxdiag.models.sharding import bytes_per_device, make_mesh
    from jaxdiag.schema import MeshShape

    mesh = make_mesh(MeshShape(data=1, model=4))
    resolved = resolve(checkpoint)
    jax.block_until_ready(jax.device_put(np.zeros(4), mesh.devices.flat[0]))  # the CPU client exists before
    reset_peak_rss()
    before = rss_bytes()
    _, model = load_model(resolved, mesh=mesh)
    jax.block_until_ready(nnx.state(model))
    peak = peak_rss_bytes()
    resident = sum(bytes_per_device(nnx.state(model)).values())
    tensors = tensor_slices(resolved.weights_file)
    largest = max(int(np.prod(t.shape)) * t.dtype.itemsize for t in tensors.values())
    total = sum(int(np.prod(t.shape)) * t.dtype.itemsize for t in tensors.values())
    return {"rss_before": before, "rss_peak": peak, "resident_params": resident, "largest_tensor": largest,
            "checkpoint_bytes": total}


def measure_sharding(model_dir: str) -> dict:
    """Per-device parameter bytes of a ``data=2, model=4`` load, and where the probes' heads end up."""
    import jax
    import numpy as np
    from flax import nnx

    from jaxdiag.checkpoint import resolve
    from jaxdiag.models.load import load_model
    from jaxdiag.models.sharding import bytes_per_device, make_mesh, replicated_remainder, row_meshes, row_states
    from jaxdiag.schema import MeshShape
    from jaxdiag.sweep.runner import diagnostics_step

    mesh = make_mesh(MeshShape(data=2, model=4))
    _, model = load_model(resolve(model_dir), mesh=mesh)
    graphdef, state = nnx.split(model)
    held = bytes_per_device(state)
    total = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state))
    # the diagnostics of one batch on the first data row: the head axis stays split over model
    row = row_meshes(mesh)[0]
    place = jax.sharding.NamedSharding(row, jax.sharding.PartitionSpec())
    tokens = jax.device_put(np.ones((4, 8), np.int32), place)
    lengths = jax.device_put(np.full((4,), 8, np.int32), place)
    out = diagnostics_step(graphdef, "last")(row_states(state, mesh)[0], tokens, lengths)
    return {"bytes_per_device": {str(d.id): n for d, n in held.items()}, "total_bytes": total,
            "replicated": replicated_remainder(model),
            "probe_specs": {name: [str(a) for a in value.sharding.spec] for name, value in out.items()},
            "probe_devices": {name: len(value.sharding.device_set) for name, value in out.items()}}


# Random models of the other decoder families: grouped-query attention (key/value heads split over
# model) and NeoX's interleaved fused query_key_value.
FAMILY_CONFIGS = {
    "llama": dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
                  intermediate_size=64, vocab_size=50, max_position_embeddings=32),
    "gpt_neox": dict(model_type="gpt_neox", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, vocab_size=50, max_position_embeddings=32),
}


def family_differences() -> dict:
    """Largest |sharded - replicated| of the diagnostics of random Llama and NeoX models on ``model=4``,
    and whether their NaNs (one-token prompts) fall in the same places."""
    import numpy as np
    from flax import nnx

    from jaxdiag.models.registry import registered
    from jaxdiag.models.sharding import make_mesh
    from jaxdiag.schema import MeshShape
    from jaxdiag.sweep.runner import run_diagnostics

    prompts = [np.random.default_rng(n).integers(0, 50, n).tolist() for n in (1, 5, 9, 12)]
    out = {}
    for name, raw in FAMILY_CONFIGS.items():
        entry = registered(raw["model_type"])
        model = entry.model(entry.config.from_dict(raw), rngs=nnx.Rngs(3))
        replicated = run_diagnostics(model, prompts, batch_size=4)
        sharded = run_diagnostics(model, prompts, batch_size=4, mesh=make_mesh(MeshShape(data=2, model=4)))
        out[name] = {"max_abs": max(float(np.nanmax(np.abs(sharded[k] - replicated[k]), initial=0.0)) for k in sharded),
                     "max_value": max(float(np.nanmax(np.abs(replicated[k]), initial=0.0)) for k in sharded),
                     "same_nans": all(bool((np.isnan(sharded[k]) == np.isnan(replicated[k])).all()) for k in sharded)}
    return out


def mesh_errors(args: list[str], out: Path) -> dict:
    """Exit status and stderr of runs whose mesh does not fit the devices or the model."""
    import contextlib
    import io

    answers = {}
    for mesh in ("model=3", "model=8", "data=3,model=2", "model=4,data=x"):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = run(args, out / f"bad-{mesh}.zarr", "--mesh", mesh)
        answers[mesh] = {"code": code, "stderr": err.getvalue(), "store_made": (out / f"bad-{mesh}.zarr").exists()}
    return answers


def interrupted_then_resumed(args: list[str], out: Path, mesh: str) -> int:
    import jaxdiag.sweep.run
    from tests.sweep_helpers import disk_fills_after

    real = jaxdiag.sweep.run.write_chunk
    jaxdiag.sweep.run.write_chunk = disk_fills_after(2)
    try:
        code = run(args, out, "--mesh", mesh)
    finally:
        jaxdiag.sweep.run.write_chunk = real
    assert code == 2, code
    return run(args, out, "--mesh", mesh, "--resume")


def main(argv: list[str]) -> None:
    role, out, model_dir, prompts = argv[:4]
    out = Path(out)
    args = [model_dir, prompts]
    measured: dict = {"role": role, "max_rss_kib": None}
    if role == "data":
        measured["codes"] = [run(args, out / "d0.zarr"), run(args, out / "d2.zarr", "--mesh", "data=2")]
    elif role == "model":
        measured["load"] = measure_streaming_load(argv[4])  # first: the peak is the load's own
        measured["sharding"] = measure_sharding(model_dir)
        measured["codes"] = [run(args, out / "m24.zarr", "--mesh", "data=2,model=4"),
                             run(args, out / "m14.zarr", "--mesh", "data=1,model=4"),
                             interrupted_then_resumed(args, out / "m24r.zarr", "data=2,model=4")]
        measured["errors"] = mesh_errors(args, out)
        measured["families"] = family_differences()
    measured["max_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (out / "measured.json").write_text(json.dumps(measured, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
