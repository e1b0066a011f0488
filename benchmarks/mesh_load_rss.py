"""Peak RSS of a streaming sharded load, one process per device: ``python -m benchmarks.mesh_load_rss``.

As on real hosts: ``--processes`` (default 4) ``jax.distributed`` processes of one CPU device each
form one ``model=4`` mesh, and each loads a ~2 GB GPT-2-shaped float32 checkpoint (random weights,
written tensor by tensor so that the writer never holds it either) into its own shards. Each
process reports its peak RSS over the load (VmHWM, reset just before) beside its share of the
parameters (the bytes of its shards); the claim checked is peak - start <= 1.2 x share + a constant.

Writes ``MESH_LOAD_RSS.md`` and ``mesh_load_rss.json`` next to this file (``--out-dir`` to change).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# ~2.0 GB of float32: 10 layers of 12 x 2048^2 (201 MB each) plus the embeddings.
MODEL = dict(vocab_size=8192, n_positions=128, n_embd=2048, n_layer=10, n_head=16, bos_token_id=0)
CONSTANT_BYTES = 64 * 2**20  # what a process may hold beyond 1.2 x its share: one shard in flight, slack


def write_checkpoint(directory: Path, config: dict) -> Path:
    """A GPT-2 ``config.json`` + ``model.safetensors`` of random float32 weights, one tensor in memory at a time."""
    e, v, p, layers = config["n_embd"], config["vocab_size"], config["n_positions"], config["n_layer"]
    shapes = {"transformer.wte.weight": (v, e), "transformer.wpe.weight": (p, e),
              "transformer.ln_f.weight": (e,), "transformer.ln_f.bias": (e,)}
    for i in range(layers):
        for name, shape in (("ln_1.weight", (e,)), ("ln_1.bias", (e,)), ("attn.c_attn.weight", (e, 3 * e)),
                            ("attn.c_attn.bias", (3 * e,)), ("attn.c_proj.weight", (e, e)), ("attn.c_proj.bias", (e,)),
                            ("ln_2.weight", (e,)), ("ln_2.bias", (e,)), ("mlp.c_fc.weight", (e, 4 * e)),
                            ("mlp.c_fc.bias", (4 * e,)), ("mlp.c_proj.weight", (4 * e, e)), ("mlp.c_proj.bias", (e,))):
            shapes[f"transformer.h.{i}.{name}"] = shape
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(directory / "model.safetensors", "wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        for shape in shapes.values():
            out.write((0.02 * rng.standard_normal(shape, dtype=np.float32)).tobytes())
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt2", **config}))
    return directory


def worker(checkpoint: str, coordinator: str, processes: int, process: int) -> dict:
    import jax

    jax.distributed.initialize(coordinator_address=coordinator, num_processes=processes, process_id=process)
    from flax import nnx

    from jaxdiag.checkpoint import resolve
    from jaxdiag.models.load import load_model
    from jaxdiag.models.sharding import bytes_per_device, make_mesh
    from jaxdiag.schema import MeshShape
    from benchmarks.rss import peak_rss_bytes, reset_peak_rss, rss_bytes

    mesh = make_mesh(MeshShape(data=1, model=processes), jax.devices())  # one mesh over every process's device
    resolved = resolve(checkpoint)
    reset_peak_rss()
    start = rss_bytes()
    _, model = load_model(resolved, mesh=mesh)
    jax.block_until_ready(nnx.state(model))
    peak = peak_rss_bytes()
    share = sum(bytes_per_device(nnx.state(model)).values())  # this process's shards only
    return {"process": process, "rss_start": start, "rss_peak": peak, "share": share}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--worker", nargs=4, metavar=("CHECKPOINT", "COORDINATOR", "N", "I"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        checkpoint, coordinator, n, i = args.worker
        print(json.dumps(worker(checkpoint, coordinator, int(n), int(i))))
        return 0
    from benchmarks.run import machine_info

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "ckpt", MODEL)
        size = (checkpoint / "model.safetensors").stat().st_size
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            coordinator = f"127.0.0.1:{s.getsockname()[1]}"
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.mesh_load_rss", "--worker", str(checkpoint),
                                   coordinator, str(args.processes), str(i)], env=env, stdout=subprocess.PIPE, text=True)
                 for i in range(args.processes)]
        outs = [p.communicate(timeout=1800)[0] for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit(f"a worker failed: {[p.returncode for p in procs]}")
    rows = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    for row in rows:
        row["bound"] = 1.2 * row["share"] + CONSTANT_BYTES
        row["within"] = row["rss_peak"] - row["rss_start"] <= row["bound"]
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "command": "python -m benchmarks.mesh_load_rss " + shlex.join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_info(), "checkpoint_bytes": size, "model": MODEL, "constant_bytes": CONSTANT_BYTES,
              "processes": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "mesh_load_rss.json").write_text(json.dumps(result, indent=1) + "\n")
    mib = 2**20
    lines = [f"# Peak RSS of a sharded streaming load, one process per device ({result['date']})", "",
             f"Command: `{result['command']}`; machine: {result['machine']['cpu']} ({result['machine']['cpu_flags']}), "
             f"{result['machine']['cpu_count']} cores; {args.processes} `jax.distributed` processes of one CPU device, "
             f"mesh `model={args.processes}`; checkpoint {size / mib:.0f} MiB float32 (GPT-2 shapes {MODEL}).", "",
             "| process | share (MiB) | RSS at start | peak RSS | peak - start | bound 1.2 x share + "
             f"{CONSTANT_BYTES // mib} MiB | within |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['process']} | {r['share'] / mib:.0f} | {r['rss_start'] / mib:.0f} | {r['rss_peak'] / mib:.0f} | "
              f"{(r['rss_peak'] - r['rss_start']) / mib:.0f} | {r['bound'] / mib:.0f} | {'yes' if r['within'] else 'NO'} |"
              for r in rows]
    (args.out_dir / "MESH_LOAD_RSS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["within"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
