"""Where the first execution of a compiled step loses time: ``python -m benchmarks.first_execution [--smoke]``.

A warm ``jaxdiag run`` executes its first batch slower than the later ones (``benchmarks/PROCESS.md``,
"first execution ... beyond a later one"). This script compiles jaxdiag's diagnostics step for one
batch of 64 15-token prompts on a GPT-2-small-sized model with random weights, runs it ``--executions``
times under ``jax.profiler.trace`` and sums XLA's own per-operation events (the thunks on XLA's
worker threads) by kind (``ynn_fusion.178`` -> ``ynn_fusion``): how much longer each kind takes in
the first execution than in a later one (the median of the others).

Writes ``FIRST_EXECUTION.md`` and ``first_execution.json`` to ``--out-dir`` (default: this directory);
``--smoke`` (a 2-layer model) writes ``FIRST_EXECUTION_SMOKE.md`` and ``first_execution_smoke.json``.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.measure import cpu_name
from benchmarks.run import GPT2_SMALL, HERE, TINY, Bench, machine_info
from benchmarks.workers import one_batch_step

BATCH, SEQ = 64, 15


def op_kind(name: str) -> str:
    """An XLA operation's kind: its name without the numeric suffix (``ynn_fusion.178`` -> ``ynn_fusion``)."""
    return re.sub(r"\.\d+$", "", name)


def per_kind(events: list[tuple[str, int, int]], start: int, stop: int) -> dict[str, tuple[int, float]]:
    """kind -> (operations, milliseconds) of the XLA operation events ``(name, start_ns, duration_ns)``
    that start in ``[start, stop)``."""
    count: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    for name, begin, duration in events:
        if start <= begin < stop:
            count[op_kind(name)] += 1
            total[op_kind(name)] += duration / 1e6
    return {kind: (count[kind], total[kind]) for kind in total}


def profile_step(checkpoint: str, executions: int, trace_dir: Path) -> dict[str, Any]:
    """Compile the diagnostics step, run it ``executions`` times under the profiler; wall times and per-kind sums."""
    import jax

    import jaxdiag

    step, state, tokens, lengths = one_batch_step(jaxdiag.load(checkpoint).model, BATCH, SEQ)
    compiled = step.trace(state, tokens, lengths).lower().compile()
    walls = []
    with jax.profiler.trace(str(trace_dir)):
        for i in range(executions):
            with jax.profiler.TraceAnnotation(f"execution {i}"):
                start = time.perf_counter()
                jax.block_until_ready(compiled(state, tokens, lengths))
                walls.append(time.perf_counter() - start)
    data = jax.profiler.ProfileData.from_file(str(next(trace_dir.rglob("*.xplane.pb"))))
    windows, ops = {}, []
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name.startswith("execution "):
                    windows[int(event.name.split()[1])] = (event.start_ns, event.start_ns + event.duration_ns)
                elif line.name.startswith("tf_XLA") and "::" not in event.name and not event.name.startswith("end: "):
                    # XLA's operations, not its executor's events or the operations' end markers
                    ops.append((event.name, event.start_ns, event.duration_ns))
    kinds = [per_kind(ops, *windows[i]) for i in range(executions)]
    return {"wall_s": [round(w, 4) for w in walls], "per_kind": kinds}


def summarise(profile: dict[str, Any]) -> dict[str, Any]:
    """Per kind: operations, first-execution ms, a later execution's ms (median of the others), the excess."""
    first, later = profile["per_kind"][0], profile["per_kind"][1:]
    rows = {}
    for kind in sorted(set(first) | {k for p in later for k in p}):
        later_ms = statistics.median(p.get(kind, (0, 0.0))[1] for p in later)
        first_ms = first.get(kind, (0, 0.0))[1]
        rows[kind] = {"operations": first.get(kind, (0, 0))[0], "first_ms": round(first_ms, 2),
                      "later_ms": round(later_ms, 2), "excess_ms": round(first_ms - later_ms, 2)}
    walls = profile["wall_s"]
    return {"first_wall_s": walls[0], "later_wall_s": statistics.median(walls[1:]),
            "excess_wall_s": round(walls[0] - statistics.median(walls[1:]), 4),
            "kinds": dict(sorted(rows.items(), key=lambda kv: -kv[1]["excess_ms"]))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_execution", description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=8, help="executions of the compiled step (default 8)")
    parser.add_argument("--smoke", action="store_true", help="a 2-layer model (the test suite's check)")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if args.executions < 2:
        parser.error("--executions must be at least 2: the first is compared with the later ones")
    model = TINY if args.smoke else GPT2_SMALL
    given = argv if argv is not None else sys.argv[1:]
    results: dict[str, Any] = {
        "command": "python -m benchmarks.first_execution" + (" " + shlex.join(given) if given else ""),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
        "model": model, "batch": BATCH, "seq": SEQ, "executions": args.executions,
    }
    with tempfile.TemporaryDirectory(prefix="jaxdiag-first-execution-") as tmp:
        made = Bench("", verbose=False).run({"kind": "make_checkpoint", "checkpoint": f"{tmp}/model", "config": model})
        if "error" in made:
            raise SystemExit(f"could not build the benchmark checkpoint: {made['error']}")
        results["profile"] = profile_step(f"{tmp}/model", args.executions, Path(tmp) / "trace")
    import jax

    results["jax"] = jax.__version__
    results["summary"] = summarise(results["profile"])
    write(results, args.out_dir, "_SMOKE" if args.smoke else "")
    print(json.dumps({k: v for k, v in results["summary"].items() if k != "kinds"}))
    return results


def write(results: dict[str, Any], out_dir: Path, suffix: str = "") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"first_execution{suffix.lower()}.json").write_text(json.dumps(results, indent=1))
    s, m = results["summary"], results["machine"]
    lines = [
        "# First execution of the compiled diagnostics step", "",
        "Written by the benchmark itself; do not edit by hand. Re-run with the command below.", "",
        f"- **Command:** `{results['command']}`", f"- **Date (UTC):** {results['date']}",
        f"- **Machine:** {cpu_name(m)} · {m['cpu_count']} CPUs · {m['platform']}",
        f"- **CPU vector extensions:** {m['cpu_flags'] or 'unknown'}",
        f"- **Model:** {results['model']['n_layer']} layers × {results['model']['n_head']} heads, d_model "
        f"{results['model']['n_embd']}, random weights; one batch of {results['batch']} prompts of {results['seq']} "
        f"tokens; jax {results['jax']}, {results['executions']} executions under `jax.profiler.trace`.", "",
        f"Wall time: first execution {s['first_wall_s']:.3f} s, a later one {s['later_wall_s']:.3f} s "
        f"(median), excess **{s['excess_wall_s']:.3f} s**.", "",
        "XLA's operations summed by kind (times on XLA's worker threads, so two threads' work adds up):", "",
        "| kind | operations | first execution, ms | a later execution, ms | excess, ms |", "|---|---|---|---|---|",
    ]
    for kind, row in s["kinds"].items():
        lines.append(f"| `{kind}` | {row['operations']} | {row['first_ms']:.1f} | {row['later_ms']:.1f} | "
                     f"{row['excess_ms']:.1f} |")
    (out_dir / f"FIRST_EXECUTION{suffix}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
