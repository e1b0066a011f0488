"""Whole-process speed: ``python -m benchmarks.process [--prompts 4096] [--rounds 3] [--smoke]``.

What a user waits for, start to exit: ``jaxdiag run`` on N 15-token prompts (imports, load, compile
or compilation-cache read, the sweep, the Zarr store) against a script doing the same job with
each PyTorch tool (import, load, every batch once, the same seven reductions, an npz file), on a
GPT-2-small-sized model with random weights (the same cost as trained ones). Tools take turns in
rotating order over several rounds; the table reports the median and the spread of the rounds.

Also measured in the same run:

- start-up: a 64-prompt ``jaxdiag run`` with an empty compilation cache (cold), with the cache
  that run filled (warm), and with ``--no-compile-cache``;
- the FLOP ceiling: the best fp32 GEMM rate of torch and XLA on the model's own shapes, over the
  FLOPs a dense forward pass needs (``benchmarks.measure.forward_flops``; jaxdiag's diagnostics
  step does less, so pruning shows as a higher fraction);
- the CPU model and its vector extensions, which decide the GEMM rates (AVX2 vs AVX-512 machines).

This shared machine drifts: the same tool ran 11-21 % slower from one run to the next. So each round
also measures the GEMM rate again right before and right after its jaxdiag run, and the summary
gives, beside the run-wide figures (medians over rounds against the best GEMM rate of the run), the
median over rounds of each round's own figures: jaxdiag against that round's ceiling (the mean of
the two GEMM rates around it) and against the faster PyTorch tool of that round. A
``startup_phases`` worker times the pieces of a warm start-up in one process (imports, checkpoint
hash, load, trace, lower, cache read, first execution).

Writes ``PROCESS.md`` and ``process.json`` to ``--out-dir`` (default: this directory); ``--smoke``
writes ``PROCESS_SMOKE.md`` and ``process_smoke.json``.
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
import time
from pathlib import Path
from typing import Any

from benchmarks.measure import cpu_name, forward_flops, load_average, random_prompts
from benchmarks.run import GPT2_SMALL, HERE, REPO, TINY, Bench, gemm_shapes, machine_info

TOOLS = ("jaxdiag", "transformers", "transformerlens")
SEQ, BATCH, STARTUP_PROMPTS = 15, 64, 64


def write_prompts(path: Path, n: int, vocab_size: int) -> Path:
    """``n`` random 15-token prompts, half in condition ``a`` and half in ``b``, as JSONL token lists."""
    tokens = random_prompts(n, SEQ, vocab_size)
    with open(path, "w") as f:
        for i, row in enumerate(tokens.tolist()):
            f.write(json.dumps({"condition": "ab"[i % 2], "tokens": row}) + "\n")
    return path


def timed_process(argv: list[str], env: dict[str, str], timeout: float | None = None) -> dict[str, Any]:
    """Wall time of one process from start to exit, and its result line if it prints one; a process
    still running after ``timeout`` seconds is killed and recorded as an error."""
    load = load_average()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": round(time.perf_counter() - t0, 3), "load_avg_start": load,
                "error": f"timed out after {timeout:.0f} s"}
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"seconds": round(seconds, 3), "load_avg_start": load}
    if proc.returncode != 0:
        out["error"] = f"exit {proc.returncode}: " + " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if lines:
        out["phases"] = json.loads(lines[-1][len("RESULT "):])
    messages = proc.stderr.strip().splitlines()
    if messages:  # e.g. ``jaxdiag run``'s closing line: prompts computed, seconds, prompts/s
        out["last_message"] = messages[-1][-300:]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.process", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=None, help="prompts per whole-process run (default 4096; smoke 64)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every tool, in rotating order (default 3; smoke 1)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long run on a 2-layer model (the test suite's check)")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    model = TINY if args.smoke else GPT2_SMALL
    args.prompts = args.prompts or (64 if args.smoke else 4096)
    args.rounds = args.rounds or (1 if args.smoke else 3)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    bench = Bench("", verbose=False)
    given = argv if argv is not None else sys.argv[1:]
    results: dict[str, Any] = {
        "command": "python -m benchmarks.process" + (" " + shlex.join(given) if given else ""),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "env": bench.run({"kind": "probe"}), "model": model,
        "n_prompts": args.prompts, "seq": SEQ, "batch": BATCH, "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory(prefix="jaxdiag-process-") as tmp:
        tmp = Path(tmp)
        ckpt = str(tmp / "model")
        made = bench.run({"kind": "make_checkpoint", "checkpoint": ckpt, "config": model})
        if "error" in made:
            raise SystemExit(f"could not build the benchmark checkpoint: {made['error']}")
        prompts = write_prompts(tmp / "prompts.jsonl", args.prompts, model["vocab_size"])
        startup = write_prompts(tmp / "startup.jsonl", STARTUP_PROMPTS, model["vocab_size"])
        shapes = gemm_shapes(model, BATCH, SEQ)
        gemm = {lib: bench.run({"kind": "gemm", "library": lib, "shapes": shapes, "repeats": 10})
                for lib in ("torch", "xla")}
        results["gemm"] = gemm

        def jaxdiag(prompt_file: Path, *cache: str) -> dict[str, Any]:
            return timed_process([sys.executable, "-m", "jaxdiag.cli", "run", "--model", ckpt, "--prompts",
                                  str(prompt_file), "--batch-size", str(BATCH), "--out", str(tmp / "out.zarr"),
                                  "--overwrite", "--quiet", *cache], env)

        def torch_tool(tool: str) -> dict[str, Any]:
            spec = {"kind": "torch_process", "tool": tool, "checkpoint": ckpt, "prompts": str(prompts),
                    "batch": BATCH, "out": str(tmp / f"{tool}.npz")}
            return timed_process([sys.executable, "-m", "benchmarks.workers", json.dumps(spec)], env)

        rows: dict[str, list] = {"cold cache": [], "warm cache": [], "no cache": []}
        for round_ in range(args.rounds):
            cache = tmp / f"cache-{round_}"
            rows["cold cache"].append(jaxdiag(startup, "--compile-cache", str(cache)))
            rows["warm cache"].append(jaxdiag(startup, "--compile-cache", str(cache)))
            rows["no cache"].append(jaxdiag(startup, "--no-compile-cache"))
        results["startup"] = rows
        phases_spec = {"kind": "startup_phases", "checkpoint": ckpt, "cache": str(tmp / "cache-phases"),
                       "batch": BATCH, "seq": SEQ}
        bench.run(phases_spec)  # fills the cache for the step's shapes
        results["startup_phases"] = [bench.run(phases_spec) for _ in range(args.rounds)]

        warm = tmp / "cache-sweep"
        jaxdiag(prompts, "--compile-cache", str(warm))  # fills the cache for the sweep's shapes
        runs: dict[str, list] = {tool: [] for tool in TOOLS}

        def round_ceiling() -> dict[str, Any]:
            return {lib: bench.run({"kind": "gemm", "library": lib, "shapes": shapes, "repeats": 5})
                    for lib in ("torch", "xla")}

        results["round_gemm"] = []
        for round_ in range(args.rounds):
            order = TOOLS[round_ % len(TOOLS):] + TOOLS[:round_ % len(TOOLS)]
            for tool in order:
                if tool == "jaxdiag":
                    before = round_ceiling()
                    runs[tool].append(jaxdiag(prompts, "--compile-cache", str(warm)))
                    results["round_gemm"].append({"before": before, "after": round_ceiling()})
                else:
                    runs[tool].append(torch_tool(tool))
        results["whole_process"] = runs
    results["summary"] = summarise(results)
    write(results, args.out_dir, "_SMOKE" if args.smoke else "")
    print(json.dumps(results["summary"], indent=1))
    return results


def _rates(runs: list[dict[str, Any]], n: int) -> list[float]:
    return [n / r["seconds"] for r in runs if "error" not in r]


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    model, n = results["model"], results["n_prompts"]
    dense = forward_flops(n_layer=model["n_layer"], n_embd=model["n_embd"], d_mlp=4 * model["n_embd"], seq=SEQ)
    gemm = max(r.get("best_gflops") or 0 for r in results["gemm"].values())
    out: dict[str, Any] = {"dense_gflop_per_prompt": dense / 1e9, "best_gemm_gflops": gemm,
                           "ceiling_prompts_per_s": gemm * 1e9 / dense if gemm else None, "tools": {}}
    for tool, runs in results["whole_process"].items():
        rates = _rates(runs, n)
        if rates:
            out["tools"][tool] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
    for name, runs in results["startup"].items():
        seconds = [r["seconds"] for r in runs if "error" not in r]
        if seconds:
            out.setdefault("startup_s", {})[name] = {"median": statistics.median(seconds), "min": min(seconds),
                                                     "max": max(seconds)}
    jd = out["tools"].get("jaxdiag", {}).get("median")
    torch_best = max((out["tools"].get(t, {}).get("median") or 0 for t in TOOLS[1:]), default=0)
    if jd and torch_best:
        out["speedup_vs_faster_pytorch_tool"] = jd / torch_best
    if jd and out["ceiling_prompts_per_s"]:
        out["fraction_of_ceiling"] = jd / out["ceiling_prompts_per_s"]
    out.update(_per_round(results, dense, n))
    out["startup_phases_s"] = _phases(results)
    return out


def _per_round(results: dict[str, Any], dense_flops: float, n: int) -> dict[str, Any]:
    """Each round's jaxdiag rate against that round's GEMM ceiling and its faster PyTorch tool; medians."""
    runs = results["whole_process"]
    fractions, ratios = [], []
    for r, gemm in enumerate(results.get("round_gemm", [])):
        jd = runs["jaxdiag"][r] if r < len(runs["jaxdiag"]) else {"error": "missing"}
        if "error" in jd:
            continue
        rate = n / jd["seconds"]
        best = round_gemm_rate(gemm)
        if best:
            fractions.append(rate / (best * 1e9 / dense_flops))
        others = [n / runs[t][r]["seconds"] for t in TOOLS[1:] if r < len(runs[t]) and "error" not in runs[t][r]]
        if others:
            ratios.append(rate / max(others))
    out: dict[str, Any] = {"round_fraction_of_ceiling": fractions, "round_speedup": ratios}
    if fractions:
        out["median_round_fraction_of_ceiling"] = statistics.median(fractions)
    if ratios:
        out["median_round_speedup"] = statistics.median(ratios)
    return out


def round_gemm_rate(gemm: dict[str, Any]) -> float:
    """A round's GEMM rate: the mean of the best rates measured right before and right after its
    jaxdiag run, so drift of the machine during the run moves the ceiling too; 0 if either is missing."""
    rates = [max(g.get("best_gflops") or 0 for g in gemm[when].values()) for when in ("before", "after")]
    return statistics.mean(rates) if all(rates) else 0.0


def _phases(results: dict[str, Any]) -> dict[str, Any]:
    """Median over the start-up-phase workers of each piece, and of the first execution's excess."""
    ok = [r for r in results.get("startup_phases", []) if "error" not in r]
    if not ok:
        return {}
    out = {name: statistics.median(r["phases_s"][name] for r in ok) for name in ok[0]["phases_s"]}
    out["first_execution_excess_s"] = statistics.median(r["first_execution_excess_s"] for r in ok)
    out["later_execution_s"] = statistics.median(statistics.median(r["executions_s"][1:]) for r in ok)
    return out


def write(results: dict[str, Any], out_dir: Path, suffix: str = "") -> None:
    """``PROCESS{suffix}.md`` and ``process{suffix.lower()}.json`` (a smoke run never overwrites the record)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"process{suffix.lower()}.json").write_text(json.dumps(results, indent=1))
    s, m = results["summary"], results["machine"]
    fmt = lambda x, d=1: "—" if x is None else f"{x:,.{d}f}"
    lines = [
        "# Whole-process speed", "",
        "Written by the benchmark itself; do not edit by hand. Re-run with the command below.", "",
        f"- **Command:** `{results['command']}`",
        f"- **Date (UTC):** {results['date']}",
        f"- **Machine:** {cpu_name(m)} · {m['cpu_count']} CPUs · {m['memory_gb']} GiB · {m['platform']}",
        f"- **CPU vector extensions:** {m['cpu_flags'] or 'unknown'}",
        f"- **Backend:** {results['env'].get('backend')}; jax {results['env'].get('jax')}, torch "
        f"{results['env'].get('torch')} ({results['env'].get('torch_threads')} threads), transformers "
        f"{results['env'].get('transformers')}, transformer_lens {results['env'].get('transformer_lens')}",
        f"- **Model:** GPT-2 architecture, {results['model']['n_layer']} layers × {results['model']['n_head']} heads, "
        f"d_model {results['model']['n_embd']}, random weights; {results['n_prompts']:,} prompts of {SEQ} tokens, "
        f"batch {BATCH}, {results['rounds']} round(s) in rotating order.",
        "",
        "## Whole process, start to exit", "",
        "| tool | prompts/s, median | min | max | each round (s) | load avg at start |",
        "|---|---|---|---|---|---|",
    ]
    for tool, runs in results["whole_process"].items():
        t = s["tools"].get(tool, {})
        each = ", ".join(fmt(r["seconds"]) if "error" not in r else "error" for r in runs)
        lines.append(f"| {tool} | {fmt(t.get('median'))} | {fmt(t.get('min'))} | {fmt(t.get('max'))} | {each} | "
                     f"{runs[0]['load_avg_start'] if runs else ''} |")
    lines += [
        "", "jaxdiag runs with a warm compilation cache (filled by one untimed run of the same shapes); "
        "the PyTorch scripts need no compilation. Errors, if any: "
        + ("; ".join(f"{tool}: {r['error']}" for tool, runs in results["whole_process"].items()
                     for r in runs if "error" in r) or "none") + ".",
        "", "| quantity | value |", "|---|---|",
        f"| dense forward GFLOP per prompt (no LM head) | {fmt(s['dense_gflop_per_prompt'], 2)} |",
        f"| best fp32 GEMM rate in this run, GFLOP/s (torch {fmt(results['gemm']['torch'].get('best_gflops'))}, "
        f"XLA {fmt(results['gemm']['xla'].get('best_gflops'))}) | {fmt(s['best_gemm_gflops'])} |",
        f"| FLOP ceiling, prompts/s | {fmt(s['ceiling_prompts_per_s'])} |",
        f"| jaxdiag median, fraction of the ceiling (goal ≥ 0.90) | {fmt(s.get('fraction_of_ceiling'), 2)} |",
        f"| jaxdiag median / faster PyTorch tool's median (goal ≥ 1.3) | {fmt(s.get('speedup_vs_faster_pytorch_tool'), 2)} |",
        f"| each round: jaxdiag / that round's ceiling (mean GEMM rate measured right before and right after it) | "
        f"{', '.join(fmt(x, 2) for x in s.get('round_fraction_of_ceiling', [])) or '—'}; median "
        f"{fmt(s.get('median_round_fraction_of_ceiling'), 2)} |",
        f"| each round: jaxdiag / that round's faster PyTorch tool | "
        f"{', '.join(fmt(x, 2) for x in s.get('round_speedup', [])) or '—'}; median {fmt(s.get('median_round_speedup'), 2)} |",
        "", f"## Start-up: `jaxdiag run` on {STARTUP_PROMPTS} prompts", "",
        "| compilation cache | seconds, median | min | max |", "|---|---|---|---|",
    ]
    for name, t in s.get("startup_s", {}).items():
        lines.append(f"| {name} | {fmt(t['median'], 2)} | {fmt(t['min'], 2)} | {fmt(t['max'], 2)} |")
    phases = s.get("startup_phases_s") or {}
    if phases:
        labels = {"import_s": "imports (JAX, Flax NNX, Zarr, the sweep engine)",
                  "resolve_s": "resolve the checkpoint (sha256 of the weights)",
                  "load_s": "load the weights into the model", "trace_s": "trace the diagnostics step",
                  "lower_s": "lower it to StableHLO", "compile_s": "executable from the warm compilation cache",
                  "first_execution_excess_s": f"first execution of one batch of {BATCH}, beyond a later one",
                  "later_execution_s": f"a later execution of one batch of {BATCH} (for scale)"}
        lines += ["", "### Start-up piece by piece (`startup_phases` worker, one process each, medians of "
                  f"{len(results.get('startup_phases', []))})", "",
                  "In-process timings of the pieces a warm `jaxdiag run` goes through, without the CLI's "
                  "background prefetch of the weights.", "", "| piece | seconds |", "|---|---|"]
        lines += [f"| {labels.get(k, k)} | {fmt(v, 3)} |" for k, v in phases.items()]
    (out_dir / f"PROCESS{suffix}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
