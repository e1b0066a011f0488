"""Time and peak memory of the streamed `jaxdiag report` at sweep scale (issue 17).

    python benchmarks/analysis_scale.py [--prompts 10000 100000 1000000] [--dir /tmp/scale] [--memory 2GB]
                                        [--effects | --diagnostics-only] [--in-memory] [--record benchmarks/SCALE.md]

For each size it writes (once; kept in --dir, named by store shape) a synthetic 12 x 12-head store with two
conditions, written block by block in Zarr chunks of --chunk prompts (make_dataset + write_store would hold a
10^6-prompt store in memory and write it as one chunk, which no reader can stream; here memory holds one block
whatever the size), then runs the default report (1,000 bootstrap resamples and permutations) in a fresh process
and records its wall time and peak resident memory (ru_maxrss of that process). --in-memory times the in-memory
path instead (the loaded store, units of one prompt: analysis.pipeline.run_analysis).

Store shapes (the recorded row names the one used):
  default ("sweep"): shaped like a real sweep store (schema 2): every per-head variable of jaxdiag.schema's
      HEAD_VARIABLES -- the seven diagnostics (Gaussian noise around per-head baselines, planted kl_norm shifts
      on three heads of condition a) and the taxonomy scores prev_attn, self_attn, dup_attn, induction_attn
      (attention fractions in [0, 1]: ~0.05 background, ~0.7 on a few planted role heads), dup_attn and
      induction_attn NaN on every head of the prompts whose query token has no earlier copy (40% of condition a's,
      70% of b's), log_z finite -- so the report also streams its head-taxonomy section.
  --effects: that plus the variables of a run with `--effects zero`: effect_zero (planted means on five heads
      plus noise) and metric on condition a, NaN on b (no task target there), with the target and foil (-1: none)
      and pair ("": unpaired) coordinates; the report also streams its causal-effects section.
  --diagnostics-only ("diagnostics"): the store this script wrote before schema 2 (the seven diagnostics only,
      no taxonomy), so new rows stay comparable with older ones. The diagnostics hold the same values in every
      shape (the other variables draw from their own random streams).
Text and token coordinates are not written (the report does not read them).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHIFTS = {(9, 6): 0.02, (9, 9): 0.015, (10, 0): 0.01}  # kl_norm shifts planted on condition a (ioi23 heads)
# Planted head roles of the taxonomy scores (GPT-2 small's best-known heads): role score ~0.7 on these heads,
# background ~0.05 elsewhere, so the report's taxonomy labels a few heads per role as on a real model.
ROLE_HEADS = {"prev_attn": [(2, 2), (4, 11)], "self_attn": [(1, 5)], "dup_attn": [(0, 1), (3, 0)],
              "induction_attn": [(5, 5), (6, 9)]}
REPEAT_SHARE = (0.6, 0.3)  # share of prompts (condition a, b) whose query token has an earlier copy: dup_attn and
# induction_attn are defined there and NaN on every head of the other prompts, as in a real sweep
EFFECT_HEADS = {(9, 6): -0.8, (9, 9): -0.6, (10, 0): -0.4, (10, 7): 0.3, (11, 10): 0.2}  # effect_zero means (a)
SHAPES = {"sweep": "sweep-shaped (diagnostics + head taxonomy)",
          "effects": "sweep-shaped + effect_zero (diagnostics + head taxonomy + causal effects)",
          "diagnostics": "diagnostics only (the store before schema 2)"}


def write_store(path: Path, n: int, chunk: int, seed: int = 0, shape: str = "sweep") -> None:
    """A 12 x 12-head synthetic store with n prompts per condition, written chunk by chunk (memory holds one
    block of `chunk` prompts, whatever n).

    shape "sweep": every per-head variable a real sweep store has (jaxdiag.schema.HEAD_VARIABLES: the seven
    diagnostics and the taxonomy scores prev_attn, self_attn, dup_attn, induction_attn, log_z; schema 2);
    "effects": that plus a run with --effects zero (metric, effect_zero, the target, foil and pair coordinates;
    targets on condition a only, so condition b's metric and effects are NaN and its target/foil -1);
    "diagnostics": the seven diagnostics only (the store this script wrote before: its figures stay comparable).
    The diagnostics are the same values in every shape (the other variables draw from their own streams).
    """
    import warnings

    import xarray as xr

    from analysis.synthetic import make_dataset
    from jaxdiag.schema import DIAGNOSTICS, HEAD_VARIABLE_ATTRS, HEAD_VARIABLES, SCHEMA_VERSION, TASK_ATTRS

    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}")
    warnings.filterwarnings("ignore", message=".*(Zarr V3 specification|Consolidated metadata).*")
    template = make_dataset(n_layers=12, n_heads=12, n_prompts=1, seed=seed)
    attrs = dict(template.attrs)
    if shape != "diagnostics":
        attrs["schema_version"] = SCHEMA_VERSION
    if shape == "effects":
        attrs["effects"] = ["zero"]
    rng = np.random.default_rng(seed)
    layer_trend = np.linspace(0.25, 0.55, 12)[:, None]
    base_kl = layer_trend + rng.uniform(-0.1, 0.1, size=(12, 12))
    base_chi = 0.3 * layer_trend + rng.uniform(0.0, 0.1, size=(12, 12))
    log_n = np.log(15)
    shift = np.zeros((12, 12))
    for (l, h), d in SHIFTS.items():
        shift[l, h] = d
    # taxonomy baselines (own stream: the diagnostics above are the old store's)
    trng = np.random.default_rng([seed, 7])
    base_tax = {v: trng.uniform(0.02, 0.08, size=(12, 12)) for v in ROLE_HEADS}
    for v, heads in ROLE_HEADS.items():
        for l, h in heads:
            base_tax[v][l, h] = 0.7
    base_log_z = 2.0 + 3.0 * layer_trend + trng.uniform(-0.5, 0.5, size=(12, 12))
    planted = np.zeros((12, 12))
    for (l, h), d in EFFECT_HEADS.items():
        planted[l, h] = d
    variables = list(DIAGNOSTICS if shape == "diagnostics" else HEAD_VARIABLES)
    if shape == "effects":
        variables.append("effect_zero")
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
        coords = {"condition": template["condition"].values, "prompt": np.arange(start, start + size),
                  "layer": np.arange(12), "head": np.arange(12),
                  "n_tokens": (("condition", "prompt"), np.full((2, size), 15, dtype=np.int32))}
        if shape != "diagnostics":
            tax_rng = np.random.default_rng([seed, start, 1])
            for v, base in base_tax.items():
                data[v] = np.clip(base + 0.05 * tax_rng.standard_normal((2, size, 12, 12), dtype=np.float32), 0, 1)
            repeats = tax_rng.random((2, size)) < np.asarray(REPEAT_SHARE)[:, None]  # query token seen before
            for v in ("dup_attn", "induction_attn"):
                data[v] = np.where(repeats[:, :, None, None], data[v], np.nan)
            data["log_z"] = base_log_z + 0.3 * tax_rng.standard_normal((2, size, 12, 12), dtype=np.float32)
        if shape == "effects":
            eff_rng = np.random.default_rng([seed, start, 2])
            effect = np.full((2, size, 12, 12), np.nan, dtype=np.float32)
            effect[0] = planted + 0.2 * eff_rng.standard_normal((size, 12, 12), dtype=np.float32)
            data["effect_zero"] = effect
            metric = np.full((2, size), np.nan, dtype=np.float32)
            metric[0] = 3.0 + 1.0 * eff_rng.standard_normal(size, dtype=np.float32)
            target, foil = (np.full((2, size), -1, dtype=np.int32) for _ in range(2))
            target[0], foil[0] = eff_rng.integers(0, 50257, size=(2, size), dtype=np.int32)
            coords.update(target=(("condition", "prompt"), target), foil=(("condition", "prompt"), foil),
                          pair=(("condition", "prompt"), np.full((2, size), "", dtype=object)),
                          # the metric is read at each prompt's last token, as a decoder run stores it
                          metric_position=(("condition", "prompt"), np.full((2, size), 14, dtype=np.int32)))
        dims = ("condition", "prompt", "layer", "head")
        ds = xr.Dataset({v: (dims, data[v].astype(np.float32)) for v in variables}, coords=coords, attrs=attrs)
        if shape == "effects":
            ds["metric"] = (("condition", "prompt"), metric)
        for v in ds.data_vars:
            long_name, units = HEAD_VARIABLE_ATTRS.get(v) or TASK_ATTRS[v]
            ds[v].attrs.update(long_name=long_name, units=units)
        if start == 0:
            encoding = {v: {"chunks": (1, chunk, 12, 12)} for v in variables}
            encoding.update({c: {"chunks": (1, chunk)} for c in ("n_tokens", "metric", "target", "foil", "pair",
                                                                     "metric_position") if c in ds.variables})
            ds.to_zarr(path, zarr_format=3, consolidated=True, mode="w-", encoding=encoding)
        else:
            ds.to_zarr(path, zarr_format=3, consolidated=True, append_dim="prompt")


def run_one(store: Path, out: Path, memory: str | None, in_memory: bool, scheduler: str | None) -> dict:
    """The report in a fresh process: wall time, that process's peak RSS, the sections the report computed
    (summary.json's top-level keys of interest) and, streamed, the report's scale.execution (blocks, and the
    sections computed from the loaded store: `in_memory`, [] when everything streamed)."""
    code = ("import sys, time, resource, json; t = time.perf_counter(); from analysis.report import write_report; "
            "import analysis.pipeline as S; box = {}; run = S.run_analysis_streamed\n"
            "def spy(*a, **k):\n r = run(*a, **k); box['execution'] = r.comparison.scale['execution']; return r\n"
            "S.run_analysis_streamed = spy\n"
            f"s = write_report({str(store)!r}, {str(out)!r}, memory={memory!r}, in_memory={in_memory!r}, "
            f"scheduler={scheduler!r})\n"
            "print(json.dumps({'seconds': time.perf_counter() - t, "
            "'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "
            "'sections': [k for k in ('taxonomy', 'causal', 'cheap_vs_exact') if s.get(k)], "
            "'execution': box.get('execution')}))")
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


def store_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dir", default="/tmp/jaxdiag-scale")
    p.add_argument("--chunk", type=int, default=8192, help="Zarr chunk (prompts) of the written stores")
    p.add_argument("--memory", default=None, help="--memory of the report (default: its default)")
    p.add_argument("--scheduler", default=None)
    p.add_argument("--in-memory", action="store_true", help="time the in-memory path instead")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--effects", action="store_true",
                       help="the store also holds effect_zero (a run with --effects zero): times the causal sections")
    shape.add_argument("--diagnostics-only", action="store_true",
                       help="the old store: the seven diagnostics only, no taxonomy (rows comparable to older ones)")
    p.add_argument("--record", default=None, help="append a Markdown row per size to this file")
    args = p.parse_args()
    kind = "effects" if args.effects else "diagnostics" if args.diagnostics_only else "sweep"
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.prompts:
        # the diagnostics-only store keeps the name this script always gave it (older stores are reused)
        store = root / (f"synthetic_{n}.zarr" if kind == "diagnostics" else f"synthetic_{kind}_{n}.zarr")
        if not store.exists():
            partial = store.with_name(store.name + ".partial")  # an interrupted write is never reused
            if partial.exists():
                shutil.rmtree(partial)
            t = time.perf_counter()
            write_store(partial, n, args.chunk, shape=kind)
            partial.rename(store)
            print(f"wrote {store} ({store_gb(store):.2f} GB) in {time.perf_counter() - t:.0f} s", flush=True)
        load = os.getloadavg()[0]
        result = run_one(store, root / f"report_{kind}_{n}", args.memory, args.in_memory, args.scheduler)
        row = {"prompts_per_condition": n, "store": kind, "store_gb": store_gb(store), **result, "load_at_start": load}
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = " ".join(["python", *sys.argv])
    header = (f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()}; `{command}`; "
              f"store: {SHAPES[kind]}\n\n"
              "| prompts per condition | store | report wall time | peak memory (RSS) | load average at start |\n"
              "|---|---|---|---|---|\n")
    table = header + "".join(f"| {r['prompts_per_condition']:,} | {r['store']} ({r['store_gb']:.2f} GB) | "
                             f"{r['seconds']:.0f} s | {r['peak_rss_gb']:.2f} GB | {r['load_at_start']:.1f} |\n"
                             for r in rows)
    print(table)
    if args.record:
        with open(args.record, "a") as f:
            f.write(table)


if __name__ == "__main__":
    main()
