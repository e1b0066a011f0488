"""Parameter bytes per device on a ``(data, model)`` mesh: ``python -m benchmarks.mesh_memory``.

For Llama-3.1-70B and Qwen2.5-32B (their HF ``config.json`` values) on 8 devices, each parameter's
shard shape under jaxdiag's sharding rules (``jaxdiag.models.sharding``) from the abstract model
(``Family.abstract``: nothing is allocated), for ``model`` = 1, 2, 4, 8, in float32 (how jaxdiag
holds parameters) and bfloat16. Then the check on virtual devices: a GPT-2-shaped model of ~110 MB
and a Llama-shaped one (grouped-query attention) really loaded onto ``model=4`` and ``data=2,
model=4``, their bytes per device summed over the arrays' shards, against the same abstract count.

Writes ``MESH_MEMORY.md`` and ``mesh_memory.json`` next to this file (``--out-dir`` to change).
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # before JAX starts
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxdiag.models.registry import registered  # noqa: E402
from jaxdiag.models.sharding import (bytes_per_device, head_major_layouts, make_mesh, parameter_shardings,  # noqa: E402
                                     replicated_remainder, shard_model)
from jaxdiag.schema import MeshShape  # noqa: E402

# The HF config.json values that decide the parameter shapes.
MODELS = {
    "Llama-3.1-70B": dict(model_type="llama", hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                          num_key_value_heads=8, intermediate_size=28672, vocab_size=128256,
                          max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=False),
    "Qwen2.5-32B": dict(model_type="qwen2", hidden_size=5120, num_hidden_layers=64, num_attention_heads=40,
                        num_key_value_heads=8, intermediate_size=27648, vocab_size=152064,
                        max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=False),
}
# Small enough to allocate here, with the same rules at work (fused c_attn; grouped-query attention).
CHECKED = {
    "gpt2-110MB": dict(model_type="gpt2", vocab_size=4096, n_positions=64, n_embd=512, n_layer=8, n_head=8),
    "llama-gqa-small": dict(model_type="llama", hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                            num_key_value_heads=4, intermediate_size=688 * 4, vocab_size=4000),
}


def abstract_model(raw: dict):
    entry = registered(raw["model_type"])
    config = entry.config.from_dict(raw)
    return config, entry.model.abstract(config)


def abstract_bytes_per_device(model, mesh, itemsize: int = 4) -> int:
    """The most bytes any device of ``mesh`` holds, from each parameter's shard shape (no allocation)."""
    head_major_layouts(model)
    per_device = {d: 0 for d in mesh.devices.flat}
    flat = dict(nnx.to_flat_state(nnx.state(model)))
    for path, sharding in parameter_shardings(model, mesh).items():
        shard = int(np.prod(sharding.shard_shape(tuple(flat[path].shape))))
        for device in per_device:  # every device holds one shard of every parameter
            per_device[device] += shard * itemsize
    return max(per_device.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    from benchmarks.run import machine_info

    rows, checks = [], []
    for name, raw in MODELS.items():
        _, model = abstract_model(raw)
        total = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model)))
        remainder = sum(replicated_remainder(model).values()) // 4
        for m in (1, 2, 4, 8):
            mesh = make_mesh(MeshShape(data=8 // m, model=m))
            fp32 = abstract_bytes_per_device(abstract_model(raw)[1], mesh)
            rows.append({"model": name, "params": total, "replicated_params": remainder, "mesh": f"data={8 // m},model={m}",
                         "fp32_gb_per_device": fp32 / 1e9, "bf16_gb_per_device": fp32 / 2e9})
    for name, raw in CHECKED.items():
        entry = registered(raw["model_type"])
        concrete = entry.model(entry.config.from_dict(raw), rngs=nnx.Rngs(0))
        for shape in (MeshShape(data=1, model=4), MeshShape(data=2, model=4)):
            mesh = make_mesh(shape)
            held = bytes_per_device(nnx.state(shard_model(concrete, mesh)))
            predicted = abstract_bytes_per_device(abstract_model(raw)[1], mesh)
            checks.append({"model": name, "mesh": f"data={shape.data},model={shape.model}",
                           "measured_max_bytes": max(held.values()), "measured_min_bytes": min(held.values()),
                           "predicted_bytes": predicted, "devices": len(held)})
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "python -m benchmarks.mesh_memory " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_info(), "jax": jax.__version__, "rows": rows, "checks": checks}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "mesh_memory.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Parameter bytes per device on a mesh ({result['date']})", "",
             f"Command: `{result['command']}`; machine: {result['machine']['cpu']} "
             f"({result['machine']['cpu_flags']}), 8 virtual CPU devices; JAX {result['jax']}.", "",
             "| model | params | mesh | fp32 GB / device | bf16 GB / device |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['params'] / 1e9:.2f} B | {r['mesh']} | {r['fp32_gb_per_device']:.2f} | "
              f"{r['bf16_gb_per_device']:.2f} |" for r in rows]
    lines += ["", "Measured on virtual devices (bytes summed over each array's shards on a device) against the "
              "abstract count above:", "", "| model | mesh | devices | measured max | measured min | predicted |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {c['model']} | {c['mesh']} | {c['devices']} | {c['measured_max_bytes']:,} | {c['measured_min_bytes']:,} | "
              f"{c['predicted_bytes']:,} |" for c in checks]
    (args.out_dir / "MESH_MEMORY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(c["measured_max_bytes"] == c["predicted_bytes"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
