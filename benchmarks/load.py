"""Loading a sharded bf16 checkpoint: ``python -m benchmarks.load [--smoke] [--gb 2] [--repeats 2]``.

Makes a random-weight Llama checkpoint of about ``--gb`` GB with transformers, saved in bfloat16
and sharded (``save_pretrained(max_shard_size="500MB")``) like the hub's, then loads it in fresh
processes, alternating, ``--repeats`` times each:

- ``jaxdiag``: ``jaxdiag.load(DIR, precision="bf16")`` and its ``weights_sha256`` (every shard hashed for the store's manifest, in background threads while
  building the model with bf16 parameters on the device);
- ``transformers``: ``AutoModelForCausalLM.from_pretrained(DIR, dtype=torch.bfloat16)``.

For each: the load call's wall time (imports excluded, measured separately: the package and its
entry point, ``jaxdiag.load`` / ``transformers.AutoModelForCausalLM``, which both packages import
lazily), the process's peak RSS (``VmHWM``, its own high-water mark) and its RSS after the imports,
against the checkpoint's size on disk.
Goal (issue 27): jaxdiag's peak RSS <= 1.2x the checkpoint, and no slower than transformers.
Writes ``LOAD.md`` and ``load.json`` here (``--smoke``: a tiny checkpoint, ``LOAD_SMOKE.md`` /
``load_smoke.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.run import HERE, machine_info

# A Llama-shaped ~1B model: 18 layers of d_model 2048 -> 0.98e9 parameters, 1.96 GB in bf16.
FULL = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=16, num_key_value_heads=8,
            num_hidden_layers=18, vocab_size=32000, max_position_embeddings=2048)
SMOKE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             num_hidden_layers=2, vocab_size=1000, max_position_embeddings=128)

CHILD = r"""
import json, sys, time
def status_mb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"): return int(line.split()[1]) / 1024
# the peak is this process's own high-water mark (VmHWM): ru_maxrss survives fork + exec on Linux, so
# every child reported at least the RSS of the parent that had just made the 2 GB checkpoint
def rss_mb(): return status_mb("VmHWM")
def current_mb(): return status_mb("VmRSS")
which, directory = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
# each library's entry point resolved with the imports: both packages import their API lazily on first
# access (jaxdiag.api brings xarray and pandas, ~2 s on a loaded machine), which is import, not loading
if which == "jaxdiag":
    import jax, jaxdiag
    load = jaxdiag.load
    jax.numpy.zeros(1).block_until_ready()  # the backend up, as any run has it before loading
else:
    import torch, transformers
    auto = transformers.AutoModelForCausalLM
imported = time.perf_counter()
after_imports = current_mb()
if which == "jaxdiag":
    loaded = load(directory, precision="bf16")
    loaded.checkpoint.weights_sha256  # the shards are hashed in the background while the model is built: wait for them
    jax.block_until_ready(jax.tree.leaves(__import__("flax").nnx.state(loaded.model)))
    dtypes = sorted({str(v.dtype) for v in jax.tree.leaves(__import__("flax").nnx.state(loaded.model))})
else:
    model = auto.from_pretrained(directory, dtype=torch.bfloat16)
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
done = time.perf_counter()
print(json.dumps({"import_s": imported - t0, "load_s": done - imported, "rss_after_imports_mb": after_imports,
                  "peak_rss_mb": rss_mb(), "rss_after_load_mb": current_mb(), "param_dtypes": dtypes}))
"""


def make_checkpoint(directory: Path, config: dict, shard: str) -> int:
    """A random bf16 Llama saved sharded; returns its weights' size in bytes."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM._from_config(transformers.LlamaConfig(**config), dtype=torch.bfloat16)
    model.save_pretrained(directory, max_shard_size=shard)
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def measure(which: str, directory: Path) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, "-c", CHILD, which, str(directory)], capture_output=True, text=True,
                            env=env, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{which} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny checkpoint (checks the script runs)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the checkpoint (default: a temp dir)")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    config, shard = (SMOKE, "100KB") if args.smoke else (FULL, "500MB")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        directory = Path(tmp) / "llama-bf16"
        size = make_checkpoint(directory, config, shard)
        shards = len(list(directory.glob("model-*.safetensors")))
        runs: dict[str, list[dict]] = {"jaxdiag": [], "transformers": []}
        for _ in range(args.repeats):
            for which in runs:  # alternating, so both see the same page cache and machine load
                runs[which].append(measure(which, directory))
    summary = {}
    for which, results in runs.items():
        summary[which] = {
            "load_s_median": statistics.median(r["load_s"] for r in results),
            "import_s_median": statistics.median(r["import_s"] for r in results),
            "peak_rss_mb_max": max(r["peak_rss_mb"] for r in results),
            "rss_after_imports_mb": statistics.median(r["rss_after_imports_mb"] for r in results),
            "peak_rss_over_checkpoint": max(r["peak_rss_mb"] for r in results) * 2**20 / size,
            "param_dtypes": results[0]["param_dtypes"],
        }
    record = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.load" + (" --smoke" if args.smoke else "") + f" --repeats {args.repeats}",
        "machine": machine_info(), "load_average": os.getloadavg(),
        "checkpoint": {"config": config, "bytes": size, "shards": shards, "dtype": "bfloat16"},
        "summary": summary, "runs": runs,
    }
    stem = "load_smoke" if args.smoke else "load"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out_dir / f"{stem.upper()}.md").write_text(report(record))
    print(report(record))
    return 0


def report(record: dict) -> str:
    m, ck = record["machine"], record["checkpoint"]
    gb = ck["bytes"] / 1e9
    lines = [
        "# Loading a sharded bf16 checkpoint: jaxdiag.load vs transformers", "",
        f"- date: {record['date']}", f"- command: `{record['command']}`",
        f"- machine: {m['cpu']} ({m['cpu_family_model']}), {m['cpu_count']} CPUs, {m['memory_gb']} GiB; "
        f"flags: {m['cpu_flags']}; load average at the end {', '.join(f'{x:.1f}' for x in record['load_average'])}",
        f"- checkpoint: random Llama, {ck['config']['num_hidden_layers']} layers x d_model {ck['config']['hidden_size']}, "
        f"{gb:.2f} GB of bfloat16 in {ck['shards']} shards (`save_pretrained(max_shard_size=...)`)", "",
        "| loader | load (s, median) | imports (s) | RSS after imports (MB) | peak RSS (MB) | peak RSS / checkpoint | parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for which, s in record["summary"].items():
        call = "`jaxdiag.load(d, precision=\"bf16\")`" if which == "jaxdiag" else \
            "`AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16)`"
        lines.append(f"| {call} | {s['load_s_median']:.2f} | {s['import_s_median']:.2f} | "
                     f"{s['rss_after_imports_mb']:.0f} | {s['peak_rss_mb_max']:.0f} | "
                     f"{s['peak_rss_over_checkpoint']:.2f} | {', '.join(s['param_dtypes'])} |")
    lines += ["", "Each run is a fresh process; the load call is timed after the imports (the package and its "
              "entry point, `jaxdiag.load` / `transformers.AutoModelForCausalLM`, both imported lazily; for "
              "jaxdiag, also the backend's start). jaxdiag's load includes hashing every shard (the store's "
              "weights manifest). "
              f"Reproduce: `{shlex.quote(record['command'])}` from the repository root.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
