"""Time and peak memory of the streamed `jaxdiag report` at sweep scale (issue 17).

    python benchmarks/analysis_scale.py [--prompts 10000 100000 1000000] [--dir /tmp/scale] [--memory 2GB]
                                        [--in-memory] [--record benchmarks/SCALE.md]

For each size it writes (once; kept in --dir) a synthetic store shaped like analysis.synthetic.make_dataset's
(12 x 12 heads, the seven diagnostics, Gaussian noise around per-head baselines, planted shifts on three heads),
written block by block in Zarr chunks of --chunk prompts (make_dataset + write_store would hold a 10^6-prompt
store in memory and write it as one chunk, which no reader can stream), then runs the default report
(1,000 bootstrap resamples and permutations) in a fresh process and records its wall time and peak resident
memory (ru_maxrss of that process). --in-memory times the pre-scale path instead (analysis.pipeline).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHIFTS = {(9, 6): 0.02, (9, 9): 0.015, (10, 0): 0.01}  # kl_norm shifts planted on condition a (ioi23 heads)


def write_store(path: Path, n: int, chunk: int, seed: int = 0) -> None:
    """A 12 x 12-head synthetic store with n prompts per condition, written chunk by chunk."""
    import warnings

    import xarray as xr

    from analysis.synthetic import make_dataset

    warnings.filterwarnings("ignore", message=".*(Zarr V3 specification|Consolidated metadata).*")
    template = make_dataset(n_layers=12, n_heads=12, n_prompts=1, seed=seed)
    rng = np.random.default_rng(seed)
    layer_trend = np.linspace(0.25, 0.55, 12)[:, None]
    base_kl = layer_trend + rng.uniform(-0.1, 0.1, size=(12, 12))
    base_chi = 0.3 * layer_trend + rng.uniform(0.0, 0.1, size=(12, 12))
    log_n = np.log(15)
    shift = np.zeros((12, 12))
    for (l, h), d in SHIFTS.items():
        shift[l, h] = d
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        block_rng = np.random.default_rng([seed, start])
        data = {}
        e1 = block_rng.standard_normal((2, size, 12, 12), dtype=np.float32)
        e2 = block_rng.standard_normal((2, size, 12, 12), dtype=np.float32)
        kl_norm = base_kl + 0.05 * e1
        kl_norm[0] += shift
        chi = base_chi + 0.05 * (0.5 * e1 + np.sqrt(0.75) * e2)
        kl = kl_norm * log_n
        data = {"kl_norm": kl_norm, "chi": chi, "kl": kl, "entropy": log_n - kl,
                "max_attn": np.clip(0.2 + 0.7 * kl_norm, 0, 1), "bos_attn": np.clip(0.5 * kl_norm, 0, 1),
                "z_excess": 2.0 * kl_norm + 0.1 * block_rng.standard_normal((2, size, 12, 12), dtype=np.float32)}
        dims = ("condition", "prompt", "layer", "head")
        ds = xr.Dataset({v: (dims, x.astype(np.float32)) for v, x in data.items()},
                        coords={"condition": template["condition"].values, "prompt": np.arange(start, start + size),
                                "layer": np.arange(12), "head": np.arange(12),
                                "n_tokens": (("condition", "prompt"), np.full((2, size), 15, dtype=np.int32))},
                        attrs=template.attrs)
        if start == 0:
            encoding = {v: {"chunks": (1, chunk, 12, 12)} for v in data}
            encoding["n_tokens"] = {"chunks": (1, chunk)}
            ds.to_zarr(path, zarr_format=3, consolidated=True, mode="w-", encoding=encoding)
        else:
            ds.to_zarr(path, zarr_format=3, consolidated=True, append_dim="prompt")


def run_one(store: Path, out: Path, memory: str | None, in_memory: bool, scheduler: str | None) -> dict:
    """The report in a fresh process: wall time and that process's peak RSS."""
    code = ("import sys, time, resource, json; t = time.perf_counter(); from analysis.report import write_report; "
            f"write_report({str(store)!r}, {str(out)!r}, memory={memory!r}, in_memory={in_memory!r}, "
            f"scheduler={scheduler!r}); "
            "print(json.dumps({'seconds': time.perf_counter() - t, "
            "'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))")
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])  # peak RSS of the report's process (not of any
    # dask.distributed workers it used: measure those on the cluster)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dir", default="/tmp/jaxdiag-scale")
    p.add_argument("--chunk", type=int, default=8192, help="Zarr chunk (prompts) of the written stores")
    p.add_argument("--memory", default=None, help="--memory of the report (default: its default)")
    p.add_argument("--scheduler", default=None)
    p.add_argument("--in-memory", action="store_true", help="time the in-memory path instead")
    p.add_argument("--record", default=None, help="append a Markdown row per size to this file")
    args = p.parse_args()
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.prompts:
        store = root / f"synthetic_{n}.zarr"
        if not store.exists():
            t = time.perf_counter()
            write_store(store, n, args.chunk)
            print(f"wrote {store} in {time.perf_counter() - t:.0f} s", flush=True)
        load = os.getloadavg()[0]
        result = run_one(store, root / f"report_{n}", args.memory, args.in_memory, args.scheduler)
        row = {"prompts_per_condition": n, **result, "load_at_start": load}
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = " ".join(["python", *sys.argv])
    header = (f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()}; `{command}`\n\n"
              "| prompts per condition | report wall time | peak memory (RSS) | load average at start |\n"
              "|---|---|---|---|\n")
    table = header + "".join(f"| {r['prompts_per_condition']:,} | {r['seconds']:.0f} s | {r['peak_rss_gb']:.2f} GB | "
                             f"{r['load_at_start']:.1f} |\n" for r in rows)
    print(table)
    if args.record:
        with open(args.record, "a") as f:
            f.write(table)


if __name__ == "__main__":
    main()
