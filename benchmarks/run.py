"""The jaxdiag benchmark: ``python -m benchmarks.run [--quick | --smoke] [--out-dir DIR]``.

One command measures, on this machine and in this run, prompts/s and peak memory of

- jaxdiag (the sweep engine's ``DeviceRunner`` path, length-bucketed units),
- transformers' PyTorch ``GPT2Model`` (eager attention, ``output_attentions=True``) + the same
  seven reductions in torch,
- TransformerLens 4 (``TransformerBridge.boot_transformers`` on a local directory,
  ``run_with_cache`` with a pattern-only ``names_filter``) + the same reductions,
- the FLOP ceiling: forward FLOPs per prompt over the best fp32 GEMM rate measured here (torch and
  XLA, the model's own matrix shapes),

on 15-token prompts (batch 64) and long prompts (256 and 1024 tokens), then jaxdiag's direct vs
streaming attention (speed and peak memory vs sequence length) and throughput on 1, 2, 4, 8
virtual CPU devices. On a GPU backend it also measures fp32 / TF32 / bf16 throughput, TFLOP/s,
MFU and how far each precision moves the diagnostics from fp32-highest.

Every measurement runs in a fresh subprocess (``benchmarks.workers``), takes the best of several
repeats and records the load average, since shared machines are noisy. Results go to
``RESULTS.md`` and ``results.json`` in ``--out-dir`` (default: this directory), with machine, date
and command. GPT-2-small-sized models with random weights: the cost is the same as trained ones.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.measure import forward_flops, lm_head_flops, load_average
from benchmarks.report import render_markdown

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

GPT2_SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
TINY = dict(vocab_size=50257, n_positions=256, n_embd=64, n_layer=2, n_head=4)

# Peak dense tensor throughput (TFLOP/s) by precision, for MFU on known accelerators.
GPU_PEAK_TFLOPS = {
    "H100": {"highest": 67.0, "default": 494.7, "bf16": 989.4},
    "H200": {"highest": 67.0, "default": 494.7, "bf16": 989.4},
    "A100": {"highest": 19.5, "default": 156.0, "bf16": 312.0},
}

PROFILES: dict[str, dict[str, Any]] = {
    # The recorded run. ~20-30 minutes on a quiet 2-core CPU.
    "full": dict(
        model=GPT2_SMALL, short_seq=15, short_batch=64, short_prompts=256, repeats=3, rounds=3,
        long=[(256, 8, 16), (1024, 2, 4)], memory_seqs=[128, 256, 512, 1024], memory_batch=2,
        scale_devices=[1, 2, 4, 8], scale_batch=32, scale_prompts=512,
        gemm_shapes="model", gpu_batch=2048, gpu_prompts=16384,
    ),
    # CI: the same model, fewer prompts and lengths; < 10 minutes on 2 cores.
    "quick": dict(
        model=GPT2_SMALL, short_seq=15, short_batch=64, short_prompts=128, repeats=2, rounds=1,
        long=[(256, 4, 4)], memory_seqs=[128, 512], memory_batch=1,
        scale_devices=[1, 2], scale_batch=32, scale_prompts=128,
        gemm_shapes="model", gpu_batch=1024, gpu_prompts=4096,
    ),
    # The test suite's end-to-end check of this command: a 2-layer model, seconds.
    "smoke": dict(
        model=TINY, short_seq=15, short_batch=8, short_prompts=16, repeats=1,
        long=[(64, 2, 2)], memory_seqs=[64], memory_batch=1,
        scale_devices=[1, 2], scale_batch=4, scale_prompts=16,
        gemm_shapes="model", gpu_batch=64, gpu_prompts=128,
    ),
}


class Bench:
    """Runs workers in subprocesses and collects their results (failures recorded, not fatal)."""

    def __init__(self, xla_flags: str, verbose: bool):
        self.xla_flags = xla_flags
        self.verbose = verbose

    def run(self, spec: dict[str, Any], *, devices: int | None = None, timeout: float = 1800) -> dict[str, Any]:
        env = dict(os.environ)
        flags = [self.xla_flags] if spec["kind"].startswith("jaxdiag") or spec.get("library") == "xla" else []
        if devices:
            flags.append(f"--xla_force_host_platform_device_count={devices}")
        env["XLA_FLAGS"] = " ".join(f for f in [env.get("XLA_FLAGS", ""), *flags] if f).strip()
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        load = load_average()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.workers", json.dumps(spec)], cwd=REPO, env=env,
                capture_output=True, text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s", "load_avg_start": load}
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            if self.verbose:
                print(proc.stderr, file=sys.stderr)
            return {"error": f"exit {proc.returncode}: {' | '.join(tail)}", "load_avg_start": load}
        result = json.loads(lines[-1][len("RESULT "):])
        result["load_avg_start"] = load
        result["xla_flags"] = env["XLA_FLAGS"] if flags or env.get("XLA_FLAGS") else ""
        return result


def gemm_shapes(model: dict[str, int], batch: int, seq: int) -> list[list[int]]:
    rows = batch * (-(-seq // 16) * 16)
    d, d_mlp = model["n_embd"], 4 * model["n_embd"]
    return [[rows, d, 3 * d], [rows, d, d], [rows, d, d_mlp], [rows, d_mlp, d], [2048, 2048, 2048]]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI-sized run (GPT-2 small, fewer prompts and lengths)")
    size.add_argument("--smoke", action="store_true", help="seconds-long run on a 2-layer model (the test suite's check)")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where RESULTS.md and results.json go")
    parser.add_argument("--xla-flags", default=None,
                        help="extra XLA_FLAGS for jaxdiag's processes (default: jaxdiag's own CPU defaults)")
    parser.add_argument("--skip", default="",
                        help="comma-separated sections to skip: short,long,memory,scale,gpu,families")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    profile_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    p = PROFILES[profile_name]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    xla_flags = args.xla_flags or ""  # jaxdiag itself sets no XLA flags: measure what users get
    bench = Bench(xla_flags, args.verbose)
    command = "python -m benchmarks.run" + (" " + shlex.join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else "")

    results: dict[str, Any] = {
        "command": command, "profile": profile_name,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "load_avg_start": load_average(), "jaxdiag_xla_flags": xla_flags,
        "model": p["model"],
    }
    results["env"] = bench.run({"kind": "probe"})
    on_gpu = results["env"].get("backend") == "gpu"
    steps = [s for s in ("gemm", "short", "long", "memory", "scale", "gpu", "families") if s not in skip]
    if on_gpu:
        steps = [s for s in steps if s not in ("scale",)]
    else:
        steps = [s for s in steps if s != "gpu"]

    with tempfile.TemporaryDirectory(prefix="jaxdiag-bench-") as tmp:
        ckpt = str(Path(tmp) / "model")
        made = bench.run({"kind": "make_checkpoint", "checkpoint": ckpt, "config": p["model"]})
        if "error" in made:
            raise SystemExit(f"could not build the benchmark checkpoint: {made['error']}")
        for step in tqdm(steps, desc="benchmark", unit="section"):
            results[step] = SECTIONS[step](bench, p, ckpt, on_gpu)
            write_results(results, p, args.out_dir)  # after every section: an interrupted run keeps its data
    write_results(results, p, args.out_dir)
    print(json.dumps(results["summary"], indent=2))
    return results


def write_results(results: dict[str, Any], p: dict, out_dir: Path) -> None:
    results["load_avg_end"] = load_average()
    results["summary"] = summarise(results, p)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "RESULTS.md").write_text(render_markdown(results))


def machine_info() -> dict[str, Any]:
    cpu = first_cpu()
    mem_gb = None
    try:
        mem_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    # A virtual machine's CPU is often named only "AMD EPYC": its family and model tell the generation,
    # hence what its flags mean for GEMM speed (AMD family 25 model 17 is Zen 4, EPYC Genoa, whose
    # AVX-512 instructions execute on 256-bit units).
    family = f"family {cpu['cpu family']} model {cpu['model']}" if {"cpu family", "model"} <= cpu.keys() else ""
    return {"hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu.get("model name", ""), "cpu_family_model": family, "cpu_flags": simd_flags(cpu),
            "cpu_count": os.cpu_count(), "memory_gb": mem_gb}


def first_cpu() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ({} where there is none)."""
    try:
        block = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in block.splitlines())}


def simd_flags(cpu: dict[str, str]) -> str:
    """The CPU's vector extensions that decide XLA's and MKL's GEMM speed (AVX2 vs AVX-512 machines)."""
    flags = cpu.get("flags", "").split()
    return " ".join(f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile") if f in flags)


# --------------------------------------------------------------------------- sections


def section_gemm(bench: Bench, p: dict, ckpt: str, on_gpu: bool) -> dict[str, Any]:
    shapes = gemm_shapes(p["model"], p["short_batch"], p["short_seq"])
    device = "gpu" if on_gpu else "cpu"
    out = {lib: bench.run({"kind": "gemm", "library": lib, "shapes": shapes, "repeats": 10, "device": device})
           for lib in ("torch", "xla")}
    rates = [r["best_gflops"] for r in out.values() if "best_gflops" in r]
    out["best_gflops"] = max(rates) if rates else None
    return out


def _tool_specs(p: dict, ckpt: str, seq: int, batch: int, n: int, device: str) -> dict[str, dict]:
    common = dict(checkpoint=ckpt, seq=seq, batch=batch, n_prompts=n, repeats=p["repeats"], device=device)
    return {
        "jaxdiag": dict(kind="jaxdiag_runner", **common),
        "transformers": dict(kind="transformers", **common),
        "transformerlens": dict(kind="transformerlens", **common),
    }


def section_short(bench: Bench, p: dict, ckpt: str, on_gpu: bool) -> dict[str, Any]:
    seq, batch, n = p["short_seq"], p["short_batch"], p["short_prompts"]
    device = "gpu" if on_gpu else "cpu"
    specs = _tool_specs(p, ckpt, seq, batch, n, device)
    # The model step at exactly 15 tokens (no bucket padding to 16): what the padding costs.
    specs["jaxdiag_exact_length"] = dict(kind="jaxdiag_step", checkpoint=ckpt, seq=seq, batch=batch, n_prompts=n,
                                         repeats=p["repeats"])
    # The headline comparison: tools take turns over several rounds and each keeps its best round,
    # so a burst of load from other processes on a shared machine does not land on one tool only.
    out: dict[str, dict] = {}
    for round_ in range(p.get("rounds", 1)):
        for name, spec in specs.items():
            r = bench.run(spec)
            rates = out.get(name, {}).get("round_prompts_per_s", []) + [r.get("prompts_per_s")]
            if name not in out or (r.get("prompts_per_s") or 0) > (out[name].get("prompts_per_s") or 0):
                out[name] = r
            out[name]["round_prompts_per_s"] = rates
    return {"seq": seq, "batch": batch, "n_prompts": n, "rounds": p.get("rounds", 1), "tools": out}


def section_long(bench: Bench, p: dict, ckpt: str, on_gpu: bool) -> list[dict[str, Any]]:
    rows = []
    for seq, batch, n in p["long"]:
        if seq > p["model"]["n_positions"]:
            continue
        device = "gpu" if on_gpu else "cpu"
        tools = {name: bench.run(spec) for name, spec in _tool_specs(p, ckpt, seq, batch, n, device).items()}
        for attention in ("direct", "streaming"):
            tools[f"jaxdiag_{attention}"] = bench.run(dict(
                kind="jaxdiag_step", checkpoint=ckpt, seq=seq, batch=batch, n_prompts=n,
                repeats=p["repeats"], attention=attention,
            ))
        rows.append({"seq": seq, "batch": batch, "n_prompts": n, "tools": tools})
    return rows


def section_memory(bench: Bench, p: dict, ckpt: str, on_gpu: bool) -> list[dict[str, Any]]:
    """Peak memory vs sequence length, direct vs streaming attention, both query modes."""
    rows = []
    for seq in p["memory_seqs"]:
        if seq > p["model"]["n_positions"]:
            continue
        for query in ("last", "all"):
            for attention in ("direct", "streaming"):
                r = bench.run(dict(kind="jaxdiag_step", checkpoint=ckpt, seq=seq, batch=p["memory_batch"],
                                   n_prompts=p["memory_batch"], repeats=1, attention=attention, query=query))
                rows.append({"seq": seq, "query": query, "attention": attention, "batch": p["memory_batch"], **r})
    return rows


def section_scale(bench: Bench, p: dict, ckpt: str, on_gpu: bool) -> list[dict[str, Any]]:
    rows = []
    for n_dev in p["scale_devices"]:
        r = bench.run(dict(kind="jaxdiag_runner", checkpoint=ckpt, seq=p["short_seq"], batch=p["scale_batch"],
                           n_prompts=p["scale_prompts"], repeats=p["repeats"]), devices=n_dev)
        rows.append({"devices": n_dev, **r})
    return rows


def section_gpu(bench: Bench, p: dict, ckpt: str, on_gpu: bool) -> dict[str, Any]:
    seq, batch, n = p["short_seq"], p["gpu_batch"], p["gpu_prompts"]
    out: dict[str, Any] = {"seq": seq, "batch": batch, "n_prompts": n, "precisions": {}}
    values = {}
    for precision in ("highest", "default", "bf16"):
        r = bench.run(dict(kind="jaxdiag_step", checkpoint=ckpt, seq=seq, batch=batch, n_prompts=n,
                           repeats=p["repeats"], precision=precision, return_values=True, min_seconds=2.0))
        values[precision] = r.pop("values", None)
        out["precisions"][precision] = r
    if values.get("highest"):
        import numpy as np

        ref = {k: np.asarray(v, dtype=np.float64) for k, v in values["highest"].items()}
        for precision in ("default", "bf16"):
            if values.get(precision):
                out["precisions"][precision]["max_abs_dev_vs_highest"] = {
                    k: float(np.nanmax(np.abs(np.asarray(v, dtype=np.float64) - ref[k]))) for k, v in values[precision].items()
                }
    torch_batch = min(batch, 256)
    for name, spec in _tool_specs(p, ckpt, seq, torch_batch, min(n, 4 * torch_batch), "gpu").items():
        if name != "jaxdiag":
            out[name] = bench.run(spec)
    return out


def section_families(bench: Bench, p: dict, ckpt: str, on_gpu: bool) -> list[dict[str, Any]]:
    """Other model families with random weights: a Pythia-160M-sized GPT-NeoX and a Llama-style GQA model
    (12 x 12 heads, d_model 768), jaxdiag's model step vs transformers' eager model (same reductions)."""
    seq, batch, n = p["short_seq"], p["short_batch"], p["short_prompts"]
    device = "gpu" if on_gpu else "cpu"
    rows = []
    with tempfile.TemporaryDirectory(prefix="jaxdiag-bench-family-") as tmp:
        for family in ("pythia-160m", "llama-style"):
            directory = str(Path(tmp) / family)
            made = bench.run({"kind": "make_family_checkpoint", "family": family, "checkpoint": directory,
                              "tiny": p["model"] is TINY})
            row = {"family": family, "seq": seq, "batch": batch, "n_prompts": n, "n_params": made.get("n_params"),
                   "config": made.get("config"), "tools": {}}
            if "error" in made:
                row["error"] = made["error"]
            else:
                common = dict(checkpoint=directory, seq=seq, batch=batch, n_prompts=n, repeats=p["repeats"])
                row["tools"]["jaxdiag"] = bench.run(dict(kind="jaxdiag_step", **common))
                row["tools"]["transformers"] = bench.run(dict(kind="transformers", auto=True, device=device, **common))
            rows.append(row)
    return rows


SECTIONS = {"gemm": section_gemm, "short": section_short, "long": section_long, "memory": section_memory,
            "scale": section_scale, "gpu": section_gpu, "families": section_families}


# --------------------------------------------------------------------------- summary


def summarise(results: dict[str, Any], p: dict) -> dict[str, Any]:
    model = p["model"]
    d_mlp = 4 * model["n_embd"]
    flops = lambda seq: forward_flops(n_layer=model["n_layer"], n_embd=model["n_embd"], d_mlp=d_mlp, seq=seq)
    out: dict[str, Any] = {"flops_per_prompt": {str(p["short_seq"]): flops(p["short_seq"])},
                           "tl_lm_head_flops_per_prompt": lm_head_flops(n_embd=model["n_embd"],
                                                                        vocab_size=model["vocab_size"], seq=p["short_seq"])}
    gemm_rate = (results.get("gemm") or {}).get("best_gflops")
    short = (results.get("short") or {}).get("tools", {})
    rate = lambda name: short.get(name, {}).get("prompts_per_s")
    if gemm_rate:
        out["best_gemm_gflops"] = gemm_rate
        out["ceiling_prompts_per_s"] = gemm_rate * 1e9 / flops(p["short_seq"])
    jd, tf, tl = rate("jaxdiag"), rate("transformers"), rate("transformerlens")
    if jd:
        out["jaxdiag_prompts_per_s"] = jd
        best_torch = max([r for r in (tf, tl) if r] or [0]) or None
        if best_torch:
            out["speedup_vs_faster_pytorch_tool"] = jd / best_torch
            out["target_speedup_1_3x_met"] = jd / best_torch >= 1.3
        if gemm_rate:
            out["fraction_of_ceiling"] = jd / out["ceiling_prompts_per_s"]
            out["target_60pct_ceiling_met"] = out["fraction_of_ceiling"] >= 0.6
            out["achieved_gflops"] = jd * flops(p["short_seq"]) / 1e9
    for row in results.get("long") or []:
        seq = row["seq"]
        out["flops_per_prompt"][str(seq)] = flops(seq)
        r = {k: v.get("prompts_per_s") for k, v in row["tools"].items()}
        torch_best = max([x for x in (r.get("transformers"), r.get("transformerlens")) if x] or [0]) or None
        if r.get("jaxdiag") and torch_best:
            out[f"speedup_vs_faster_pytorch_tool_seq{seq}"] = r["jaxdiag"] / torch_best
    return out


if __name__ == "__main__":
    main()
