"""The GPU run: ``python -m benchmarks.gpu [--dry-run] [--out-dir DIR] [--budget-s 285]``.

One command, on a CUDA device, in at most ``--budget-s`` seconds (default 285: the lent device's
15 minutes also pay for its start, the transfers, the wheel install and one rerun). It measures, on
GPT-2-small shapes with random weights (the cost of trained ones):

- ``jax``: the backend, device and versions; XLA GEMM rates (bf16, fp32 TF32, fp32 full) on an
  8192^3 product and the model's shapes; jaxdiag's diagnostics step on 15-token prompts at batch
  256 ... 8192 and on 1024-token prompts, in ``bf16``, ``default`` (TF32) and ``highest``, with
  MFU against the datasheet peak and against the GEMM rate of the same precision; a
  ``jax.profiler`` trace of the bf16 step (``profile.tar.gz``);
- ``effects``: every head's exact ``patch`` effect, AtP and AtP* (prompt x head effects/s);
- ``torch``: transformers' eager GPT-2 (``output_attentions``, the same seven reductions, fp32 and
  bf16) and TransformerLens (``run_with_cache`` and ``get_act_patch_attn_head_out_all_pos``) on the
  same device and shapes, each at several batch sizes (the tables keep each one's best);
- ``process``: a whole-process ``jaxdiag run`` of 100,000 prompts writing its Zarr store (after a
  small run that fills the compilation cache), against the step's rate;
- ``drift``: how far each precision moves every diagnostic from a float64 CPU reference
  (transformers' GPT-2 in float64), on the random GPT-2 small and on the shipped trained models.

Each section runs in its own process (``benchmarks.workers``' ``points``) under a time box; each
finished point is logged as it ends, and ``GPU.md`` and ``gpu.json`` (device, driver, JAX and CUDA
versions, date, command) are rewritten after every section in ``--out-dir`` and in ``$OUT`` when it
is set (the device run's way back). ``--dry-run``: the same code path on the CPU with a 2-layer
model and tiny shapes, written as ``GPU_DRY_RUN.md`` / ``gpu_dry_run.json`` (the test suite runs it).
The device command, and the wheels it carries: ``benchmarks/GPU.md``, ``benchmarks/gpu_wheels.sh``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.measure import forward_flops
from benchmarks.process import timed_process, write_prompts
from benchmarks.run import GPT2_SMALL, GPU_PEAK_TFLOPS, HERE, TINY, Bench, gemm_shapes, machine_info

PRECISIONS = ("bf16", "default", "highest")  # most to least important: a time box cuts from the end
GEMM_PRECISIONS = {"bf16": ("bfloat16", "default"), "default": ("float32", "default"),
                   "highest": ("float32", "highest")}
TRAINED = ("builtin:ioi-4l8h", "builtin:induction-3l8h")

PROFILES: dict[str, dict[str, Any]] = {
    "device": dict(model=GPT2_SMALL, seq=15, batches=[8192, 4096, 1024, 256], long=(1024, 16, 64),
                   torch_batches=[1024, 4096, 256, 64], torch_long=(1024, 8, 32), gemm_square=8192,
                   precisions=PRECISIONS, effect_pairs=256,
                   effect_runs=[(["patch"], "highest"), (["atp_patch"], "highest"), (["atpstar_patch"], "highest"),
                                (["patch"], "bf16"), (["patch"], "default")],
                   process_prompts=100_000, process_fill=8192, process_runs=("fill_cache", "timed", "warm_small"),
                   drift_n=256, drift_models=("random", *TRAINED), drift_precisions=PRECISIONS,
                   repeats=3, min_seconds=0.5, budget_s=285.0),
    # The test suite's run: the same points on a 2-layer model, one of each kind where the device run
    # has several (one precision, one batch, the three effect kinds in one step, one ``jaxdiag run``,
    # drift on the trained models only), no long prompts: each process it starts and each program it
    # compiles costs seconds on a shared 2-core machine.
    "dry": dict(model=TINY, seq=15, batches=[4], long=None, torch_batches=[4], torch_long=None,
                gemm_square=128, precisions=("bf16",), effect_pairs=2,
                effect_runs=[(["patch", "atp_patch", "atpstar_patch"], "highest")],
                process_prompts=32, process_fill=8, process_runs=("timed",), drift_n=4,
                drift_models=TRAINED, drift_precisions=("highest", "bf16"),
                repeats=1, min_seconds=0.0, budget_s=3600.0),
}
# Each section's share of the budget (they add up to 1): the diagnostics sweep takes the most.
SHARES = {"jax": 0.34, "effects": 0.16, "torch": 0.22, "process": 0.18, "drift": 0.10}


def short_prompts(batch: int, p: dict) -> int:
    """Prompts per timed pass at ``batch``: several steps, so that dispatch overlaps the device work."""
    return max(4 * batch, 8 * p["batches"][-1])


# --------------------------------------------------------------------------- the sections' points


def jax_points(p: dict, ckpt: str, out_dir: Path) -> list[dict[str, Any]]:
    """Probe, GEMM rates, the diagnostics step over precisions x shapes, then the profile."""
    model, seq = p["model"], p["seq"]
    shapes = [[p["gemm_square"]] * 3, *gemm_shapes(model, p["batches"][0], seq)[:4]]
    points: list[dict[str, Any]] = [{"kind": "probe"}]
    points += [{"kind": "gemm", "library": "xla", "shapes": shapes, "repeats": 10, "dtype": dtype, "precision": prec,
                "label": name} for name, (dtype, prec) in GEMM_PRECISIONS.items()]
    common = dict(kind="jaxdiag_step", checkpoint=ckpt, repeats=p["repeats"], min_seconds=p["min_seconds"])
    short = {precision: [dict(common, precision=precision, seq=seq, batch=b, n_prompts=short_prompts(b, p))
                         for b in p["batches"]] for precision in p["precisions"]}
    profile = {"kind": "profile_step", "checkpoint": ckpt, "precision": p["precisions"][0], "batch": p["batches"][0],
               "seq": seq, "out": str(out_dir / "gpu_profile.tar.gz")}
    long = [dict(common, precision=precision, seq=p["long"][0], batch=p["long"][1], n_prompts=p["long"][2])
            for precision in p["precisions"] if p["long"]]
    # bf16 first, its profile next (where the goal's time goes), then TF32 and full fp32, long prompts last
    return points + short[p["precisions"][0]] + [profile] + sum((short[q] for q in p["precisions"][1:]), []) + long


def effects_points(p: dict, ckpt: str) -> list[dict[str, Any]]:
    common = dict(kind="effects_jaxdiag", checkpoint=ckpt, n_pairs=p["effect_pairs"], seq=p["seq"],
                  vocab_size=p["model"]["vocab_size"], repeats=p["repeats"])
    return [dict(common, kinds=kinds, precision=precision) for kinds, precision in p["effect_runs"]]


def torch_points(p: dict, ckpt: str, device: str) -> list[dict[str, Any]]:
    """GEMM rates, transformers (fp32, bf16) and TransformerLens at several batches, TL's all-heads patching."""
    seq = p["seq"]
    points: list[dict[str, Any]] = [
        {"kind": "gemm", "library": "torch", "shapes": [[p["gemm_square"]] * 3], "repeats": 10, "dtype": dtype,
         "precision": prec, "device": device, "label": name} for name, (dtype, prec) in GEMM_PRECISIONS.items()]
    common = dict(checkpoint=ckpt, repeats=p["repeats"], device=device, min_seconds=p["min_seconds"])
    short = lambda kind, b, **extra: dict(common, kind=kind, seq=seq, batch=b, n_prompts=short_prompts(b, p), **extra)
    points += [short("transformers", b) for b in p["torch_batches"]]
    points.append(dict(kind="effects_transformerlens", checkpoint=ckpt, n_pairs=p["effect_pairs"], seq=seq,
                       vocab_size=p["model"]["vocab_size"], repeats=1, device=device))
    points += [short("transformerlens", b) for b in p["torch_batches"]]
    points += [short("transformers", b, torch_dtype="bfloat16") for b in p["torch_batches"]]
    points += [dict(common, kind=kind, seq=p["torch_long"][0], batch=p["torch_long"][1], n_prompts=p["torch_long"][2])
               for kind in ("transformers", "transformerlens") if p["torch_long"]]
    return points


def drift_points(p: dict, ckpt: str) -> list[dict[str, Any]]:
    common = dict(kind="precision_drift", n=p["drift_n"], seq=16, precisions=list(p["drift_precisions"]))
    return [dict(common, checkpoint=ckpt, prompts="random", seq=p["seq"]) if name == "random"
            else dict(common, checkpoint=name, prompts="repeated") for name in p["drift_models"]]


def run_points(bench: Bench, points: list[dict[str, Any]], budget_s: float, log: Path) -> list[dict[str, Any]]:
    """The points in one worker process: it starts no point after 85% of the budget and is killed at
    the budget; the log keeps every finished point either way."""
    log.unlink(missing_ok=True)
    spec = {"kind": "points", "module": "benchmarks.gpu_workers", "points": points, "log": str(log),
            "deadline_s": 0.85 * budget_s}
    outcome = bench.run(spec, timeout=budget_s)
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    rows += [{"point": point, "result": {"skipped": "not reached: " + outcome.get("error", "time box")}}
             for point in points[len(rows):]]
    return rows


def process_section(p: dict, ckpt: str, budget_s: float, tmp: Path, batch: int) -> dict[str, Any]:
    """``jaxdiag run`` as a user runs it, start to exit, in bf16 at the step's best batch: a small cold run
    fills the compilation cache, then the timed run of ``process_prompts`` prompts writes its store, then
    the small run again warm: the difference of the two warm runs is the steady state (batching,
    transfers, the writer) without the start-up."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    runs = {}
    sizes = {"fill_cache": p["process_fill"], "timed": p["process_prompts"], "warm_small": p["process_fill"]}
    for name in p["process_runs"]:
        n = sizes[name]
        prompts = write_prompts(tmp / f"{name}.jsonl", n, p["model"]["vocab_size"])
        left = budget_s - (time.perf_counter() - started)
        if left <= 5:
            runs[name] = {"skipped": "time box", "n_prompts": n}
            continue
        runs[name] = timed_process([sys.executable, "-m", "jaxdiag.cli", "run", "--model", ckpt, "--prompts", str(prompts),
                                    "--batch-size", str(batch), "--precision", "bf16", "--out", str(tmp / f"{name}.zarr"),
                                    "--overwrite", "--compile-cache", str(tmp / "cache")], env, timeout=left)
        runs[name]["n_prompts"] = n
        rate = re.search(r"([\d.]+) prompts/s\)", runs[name].get("last_message", ""))
        runs[name]["reported_prompts_per_s"] = float(rate.group(1)) if rate else None
    return {"batch": batch, "precision": "bf16", "runs": runs}


# --------------------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same code path on the CPU, tiny shapes (seconds)")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where GPU.md and gpu.json go (and $OUT when set)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="time box of the whole run (default 285; dry 3600: a shared CPU's load must not cut it)")
    given = argv if argv is not None else sys.argv[1:]
    args = parser.parse_args(given)
    p = dict(PROFILES["dry" if args.dry_run else "device"])
    p["budget_s"] = args.budget_s or p["budget_s"]
    if args.dry_run:
        os.environ["JAX_PLATFORMS"] = "cpu"  # the workers inherit it
    stem = "gpu_dry_run" if args.dry_run else "gpu"
    out_dirs = [args.out_dir] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    for directory in out_dirs:
        directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "command": "python -m benchmarks.gpu" + (" " + shlex.join(given) if given else ""),
        "profile": "dry" if args.dry_run else "device", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "nvidia_smi": nvidia_smi(), "model": p["model"], "budget_s": p["budget_s"],
        "sections": {},
    }
    bench = Bench("", verbose=False)

    def save() -> None:
        results["elapsed_s"] = round(time.perf_counter() - started, 1)
        results["summary"] = summarise(results, p)
        for directory in out_dirs:
            (directory / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
            (directory / f"{stem.upper()}.md").write_text(render(results))

    def budget(section: str) -> float:
        left = p["budget_s"] - (time.perf_counter() - started)
        return max(1.0, min(SHARES[section] * p["budget_s"], left))

    with tempfile.TemporaryDirectory(prefix="jaxdiag-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        ckpt = str(tmp / "model")
        made = bench.run({"kind": "make_checkpoint", "checkpoint": ckpt, "config": p["model"]})
        if "error" in made:
            raise SystemExit(f"could not build the benchmark checkpoint: {made['error']}")
        device = "cpu" if args.dry_run else "gpu"
        sections: list[tuple[str, Callable[[], Any]]] = [
            ("jax", lambda: run_points(bench, jax_points(p, ckpt, out_dirs[-1]), budget("jax"), tmp / "jax.log")),
            ("effects", lambda: run_points(bench, effects_points(p, ckpt), budget("effects"), tmp / "effects.log")),
            ("torch", lambda: run_points(bench, torch_points(p, ckpt, device), budget("torch"), tmp / "torch.log")),
            ("process", lambda: process_section(p, ckpt, budget("process"), tmp, best_batch(results, "bf16", p))),
            ("drift", lambda: run_points(bench, drift_points(p, ckpt), budget("drift"), tmp / "drift.log")),
        ]
        for name, run_section in sections:
            t0 = time.perf_counter()
            results["sections"][name] = run_section()
            results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)
            save()
            print(f"{name}: {results['section_seconds'][name]} s", flush=True)
    print(render_summary(results["summary"]))
    return results


def nvidia_smi() -> dict[str, str] | None:
    """The GPU's name, driver, memory and clocks as nvidia-smi reports them (None without one)."""
    if not shutil.which("nvidia-smi"):
        return None
    fields = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu"
    try:
        line = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return None
    return dict(zip(fields.split(","), (v.strip() for v in line.split(","))))


# --------------------------------------------------------------------------- summary


def rows_of(results: dict, section: str, kind: str, **match: Any) -> list[dict[str, Any]]:
    """Finished points of ``kind`` in ``section`` whose spec has ``match``: ``[{**spec, **result}]``."""
    rows = results["sections"].get(section)
    if not isinstance(rows, list):
        return []
    return [{**r["point"], **r["result"]} for r in rows
            if r["point"].get("kind") == kind and all(r["point"].get(k) == v for k, v in match.items())
            and "error" not in r["result"] and "skipped" not in r["result"]]


def best_batch(results: dict, precision: str, p: dict) -> int:
    """The short-prompt batch at which the diagnostics step ran fastest in ``precision`` (default: the largest)."""
    rows = rows_of(results, "jax", "jaxdiag_step", precision=precision, seq=p["seq"])
    return max(rows, key=lambda r: r["prompts_per_s"])["batch"] if rows else p["batches"][0]


def device_peaks(results: dict) -> dict[str, float] | None:
    probe = next(iter(rows_of(results, "jax", "probe")), {})
    kind = f"{probe.get('device_kind', '')} {(results.get('nvidia_smi') or {}).get('name', '')}"
    return next((peaks for name, peaks in GPU_PEAK_TFLOPS.items() if name in kind), None)


def summarise(results: dict, p: dict) -> dict[str, Any]:
    model = p["model"]
    flops = lambda seq: forward_flops(n_layer=model["n_layer"], n_embd=model["n_embd"], d_mlp=4 * model["n_embd"], seq=seq)
    peaks = device_peaks(results)
    gemm = {r["label"]: r["best_gflops"] / 1e3 for r in rows_of(results, "jax", "gemm")}
    out: dict[str, Any] = {"flops_per_prompt": {str(s): flops(s) for s in (p["seq"], *(p["long"] or [])[:1])},
                           "peak_tflops": peaks, "xla_gemm_tflops": gemm,
                           "torch_gemm_tflops": {r["label"]: r["best_gflops"] / 1e3 for r in rows_of(results, "torch", "gemm")}}
    diagnostics = []
    for r in rows_of(results, "jax", "jaxdiag_step"):
        tflops = r["prompts_per_s"] * flops(r["seq"]) / 1e12
        diagnostics.append({"precision": r["precision"], "seq": r["seq"], "batch": r["batch"],
                            "prompts_per_s": r["prompts_per_s"], "tflops": tflops,
                            "mfu_peak": tflops / peaks[r["precision"]] if peaks else None,
                            "of_gemm": tflops / gemm[r["precision"]] if gemm.get(r["precision"]) else None,
                            "device_peak_mb": r.get("device_peak_mb")})
    out["diagnostics"] = diagnostics
    best = lambda rows: max((r["prompts_per_s"] for r in rows), default=None)
    short = {prec: best([d for d in diagnostics if d["precision"] == prec and d["seq"] == p["seq"]]) for prec in p["precisions"]}
    out["best_short_prompts_per_s"] = short
    baselines = {
        "transformers_fp32": best([r for r in rows_of(results, "torch", "transformers", seq=p["seq"]) if "torch_dtype" not in r]),
        "transformers_bf16": best(rows_of(results, "torch", "transformers", seq=p["seq"], torch_dtype="bfloat16")),
        "transformerlens": best(rows_of(results, "torch", "transformerlens", seq=p["seq"])),
    }
    out["baselines_best_prompts_per_s"] = baselines
    if short.get("bf16"):
        out["goal_100k_prompts_per_s_bf16_met"] = short["bf16"] >= 100_000
        fastest_eager = max([v for k, v in baselines.items() if k.startswith("transformers") and v] or [0]) or None
        if fastest_eager:
            out["bf16_speedup_vs_fastest_transformers"] = short["bf16"] / fastest_eager
            out["goal_10x_transformers_met"] = short["bf16"] / fastest_eager >= 10
    effects = {f"{'+'.join(r['kinds'])}@{r['precision']}": r["+".join(r["kinds"])]["head_effects_per_s"]
               for r in rows_of(results, "effects", "effects_jaxdiag")}
    out["head_effects_per_s"] = effects
    tl = next(iter(rows_of(results, "torch", "effects_transformerlens")), None)
    if tl:
        out["transformerlens_head_effects_per_s"] = tl["head_effects_per_s"]
        if effects.get("patch@highest"):
            out["patch_speedup_vs_transformerlens"] = effects["patch@highest"] / tl["head_effects_per_s"]
            out["goal_10x_transformerlens_patch_met"] = out["patch_speedup_vs_transformerlens"] >= 10
    out |= process_summary(results.get("sections", {}).get("process"), diagnostics, p)
    out["drift"] = {r["checkpoint"] if r["checkpoint"].startswith("builtin:") else "gpt2-small (random)":
                    {prec: {k: v["rel_norm"] for k, v in d.items()} for prec, d in r["drift"].items()}
                    for r in rows_of(results, "drift", "precision_drift")}
    return out


def process_summary(process: dict | None, diagnostics: list[dict], p: dict) -> dict[str, Any]:
    """The whole process against the step at the same batch and precision: start to exit, and steady
    state (the two warm runs' difference: no imports, load or cache read)."""
    ok = lambda run: run and run.get("seconds") and "error" not in run and "skipped" not in run
    runs = (process or {}).get("runs") or {}
    timed, small = runs.get("timed"), runs.get("warm_small")
    if not ok(timed):
        return {}
    out = {"process_prompts_per_s": timed["n_prompts"] / timed["seconds"]}
    if ok(small) and timed["seconds"] > small["seconds"]:
        out["process_steady_prompts_per_s"] = (timed["n_prompts"] - small["n_prompts"]) / (timed["seconds"] - small["seconds"])
    step = next((d["prompts_per_s"] for d in diagnostics if d["precision"] == process["precision"]
                 and d["batch"] == process["batch"] and d["seq"] == p["seq"]), None)
    if step and out.get("process_steady_prompts_per_s"):
        out["process_vs_step"] = out["process_steady_prompts_per_s"] / step
        out["goal_process_80pct_of_step_met"] = out["process_vs_step"] >= 0.8
    return out


# --------------------------------------------------------------------------- GPU.md


def fmt(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def render(results: dict) -> str:
    s, smi = results["summary"], results.get("nvidia_smi") or {}
    probe = next(iter(rows_of(results, "jax", "probe")), {})
    lines = ["# jaxdiag on a GPU: throughput, MFU, causal effects, baselines, whole process, precision drift", ""]
    if results["profile"] == "dry":
        lines += ["**Dry run on the CPU (2-layer model, tiny shapes): checks the code path; not a measurement.**", ""]
    lines += [
        f"- **Command:** `{results['command']}` · **date:** {results['date']} · **elapsed:** {results.get('elapsed_s')} s "
        f"of a {results['budget_s']:.0f} s budget (sections: {results.get('section_seconds')})",
        f"- **Device:** {probe.get('device_kind', '-')} · nvidia-smi: {smi.get('name', '-')}, driver "
        f"{smi.get('driver_version', '-')}, {smi.get('memory.total', '-')}, SM clock {smi.get('clocks.sm', '-')} "
        f"(max {smi.get('clocks.max.sm', '-')}) · host {results['machine'].get('cpu')} x {results['machine'].get('cpu_count')}",
        f"- **Software:** JAX {probe.get('jax', '-')} ({probe.get('backend', '-')}; "
        f"{' '.join(str(probe.get('platform_version', '-')).split())}) · torch {probe.get('torch', '-')} "
        f"(CUDA {probe.get('torch_cuda_version', '-')}) · transformers {probe.get('transformers', '-')} · "
        f"TransformerLens {probe.get('transformer_lens', '-')} · Flax {probe.get('flax', '-')}",
        f"- **Model:** {results['model']['n_layer']} layers x {results['model']['n_head']} heads, d_model "
        f"{results['model']['n_embd']}, random weights; FLOPs per prompt {s['flops_per_prompt']}",
        f"- **Peaks (datasheet, TFLOP/s):** {s['peak_tflops']} · **GEMM measured here (TFLOP/s):** XLA "
        f"{ {k: round(v, 1) for k, v in s['xla_gemm_tflops'].items()} }, torch "
        f"{ {k: round(v, 1) for k, v in s['torch_gemm_tflops'].items()} }", "",
        "## Goals", "",
        f"- bf16 diagnostics >= 100,000 prompts/s: {fmt(s['best_short_prompts_per_s'].get('bf16'))} "
        f"({s.get('goal_100k_prompts_per_s_bf16_met', '-')})",
        f"- >= 10x transformers eager: {fmt(s.get('bf16_speedup_vs_fastest_transformers'))}x "
        f"({s.get('goal_10x_transformers_met', '-')})",
        f"- whole-process `jaxdiag run` >= 80% of the step (steady state: the timed run minus a warm small run): "
        f"{fmt(s.get('process_vs_step'))}; start to exit {fmt(s.get('process_prompts_per_s'))} prompts/s "
        f"({s.get('goal_process_80pct_of_step_met', '-')})",
        f"- exact patch effects >= 10x TransformerLens: {fmt(s.get('patch_speedup_vs_transformerlens'))}x "
        f"({s.get('goal_10x_transformerlens_patch_met', '-')})", "",
        "## Diagnostics step", "",
        "| precision | seq | batch | prompts/s | TFLOP/s | MFU (peak) | of GEMM | device peak MiB (process, so far) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {d['precision']} | {d['seq']} | {d['batch']} | {fmt(d['prompts_per_s'])} | {fmt(d['tflops'])} | "
              f"{fmt(d['mfu_peak'], '.1%')} | {fmt(d['of_gemm'], '.1%')} | {fmt(d['device_peak_mb'])} |"
              for d in s["diagnostics"]]
    lines += ["", "## Baselines on the same device", "", "| tool | seq | batch | prompts/s |", "|---|---|---|---|"]
    for kind in ("transformers", "transformerlens"):
        for r in rows_of(results, "torch", kind):
            lines.append(f"| {kind} {r.get('torch_dtype', 'float32')} | {r['seq']} | {r['batch']} | {fmt(r['prompts_per_s'])} |")
    lines += ["", "## Causal effects (prompt x head effects/s)", "", "| what | effects/s |", "|---|---|"]
    lines += [f"| jaxdiag {k} | {fmt(v)} |" for k, v in s["head_effects_per_s"].items()]
    lines += [f"| TransformerLens get_act_patch_attn_head_out_all_pos | {fmt(s.get('transformerlens_head_effects_per_s'))} |",
              "", "## Whole process", ""]
    process = results["sections"].get("process") or {}
    for name, run in (process.get("runs") or {}).items():
        lines.append(f"- `{name}` ({run.get('n_prompts', '-')} prompts, batch {process.get('batch')}, bf16): "
                     f"{fmt(run.get('seconds'))} s start to exit; {run.get('error') or run.get('skipped') or run.get('last_message', '')}")
    lines += ["", "## Precision drift from a float64 CPU reference (||out - ref|| / ||ref||)", ""]
    for model, by_precision in s["drift"].items():
        names = list(next(iter(by_precision.values())))
        lines += [f"**{model}**", "", "| precision | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        lines += [f"| {prec} | " + " | ".join(fmt(v[n], ".2e") for n in names) + " |" for prec, v in by_precision.items()]
        lines.append("")
    failed = [(name, r["point"].get("kind"), r["result"].get("error") or r["result"].get("skipped"))
              for name, rows in results["sections"].items() if isinstance(rows, list) for r in rows
              if "error" in r["result"] or "skipped" in r["result"]]
    if failed:
        lines += ["## Failed or skipped points", ""] + [f"- {n} / {k}: {e}" for n, k, e in failed] + [""]
    return "\n".join(lines)


def render_summary(summary: dict) -> str:
    keys = ("best_short_prompts_per_s", "baselines_best_prompts_per_s", "bf16_speedup_vs_fastest_transformers",
            "head_effects_per_s", "patch_speedup_vs_transformerlens", "process_vs_step")
    return json.dumps({k: summary.get(k) for k in keys}, indent=1, default=str)


if __name__ == "__main__":
    main()
