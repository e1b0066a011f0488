"""What the five head-taxonomy scores cost on the model step: ``python -m benchmarks.taxonomy [--smoke]``.

Times the sweep's compiled step with the seven diagnostics alone and with the diagnostics plus the
taxonomy (prev/self/dup/induction attention and log Z), on GPT-2-small shapes (random weights),
for ``query="last"`` (15-token prompts, batch 64) and ``query="all"`` (direct, 15 tokens; and
streaming, 512 tokens), interleaving the two variants over rounds and keeping each one's best.
Writes ``TAXONOMY.md`` and ``taxonomy.json`` (machine, CPU flags, date, command) to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import best_of, load_average, random_prompts
from benchmarks.run import GPT2_SMALL, machine_info

HERE = Path(__file__).resolve().parent
CASES = {"full": [("last", "direct", 15, 64), ("all", "direct", 15, 64), ("all", "streaming", 512, 4)],
         "smoke": [("last", "direct", 15, 8), ("all", "streaming", 64, 2)]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.taxonomy", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model: checks the script runs")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    import jax
    from flax import nnx

    from jaxdiag.models.gpt2 import GPT2, GPT2Config
    from jaxdiag.probes import DIAGNOSTICS_PROBE
    from jaxdiag.sweep.runner import SWEEP_PROBES, diagnostics_step

    cfg = dict(vocab_size=50257, n_positions=1024, n_embd=64, n_layer=2, n_head=4) if args.smoke else GPT2_SMALL
    graphdef, state = nnx.split(GPT2(GPT2Config(**cfg), rngs=nnx.Rngs(0)))
    rows = []
    for query, attention, seq, batch in CASES["smoke" if args.smoke else "full"]:
        tokens = random_prompts(batch, seq, cfg["vocab_size"])
        lengths = np.full((batch,), seq, np.int32)
        steps = {name: diagnostics_step(graphdef, query, probes, attention=attention)
                 for name, probes in (("diagnostics", (DIAGNOSTICS_PROBE,)), ("diagnostics+taxonomy", SWEEP_PROBES))}
        for step in steps.values():
            jax.block_until_ready(step(state, tokens, lengths))
        best = {name: float("inf") for name in steps}
        for _ in range(2 if args.smoke else 5):  # interleaved rounds: load drifts hit both alike
            for name, step in steps.items():
                best[name] = min(best[name], min(best_of(lambda: jax.block_until_ready(step(state, tokens, lengths)), 3)))
        rows.append({"query": query, "attention": attention, "seq": seq, "batch": batch,
                     "seconds": best, "overhead": best["diagnostics+taxonomy"] / best["diagnostics"] - 1})
    results = {"command": "python -m benchmarks.taxonomy " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv)),
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
               "jax_version": jax.__version__, "backend": jax.default_backend(), "model": cfg, "rows": rows,
               "load_avg": load_average()}
    stem = "taxonomy_smoke" if args.smoke else "taxonomy"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    lines = ["# Cost of the head-taxonomy scores on the model step", "",
             f"- **Command:** `{results['command']}` · **date:** {results['date']}",
             f"- **Machine:** {m.get('cpu')} ({m.get('cpu_flags') or 'flags not recorded'}) · {m.get('cpu_count')} CPUs · "
             f"load {results['load_avg']} · backend {results['backend']}, JAX {results['jax_version']}",
             f"- **Model:** {cfg['n_layer']} x {cfg['n_head']} heads, d_model {cfg['n_embd']}, random weights; best of "
             "interleaved rounds after compile", "",
             "| query | attention | tokens | batch | diagnostics (s) | + taxonomy (s) | overhead |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['query']} | {r['attention']} | {r['seq']} | {r['batch']} | {r['seconds']['diagnostics']:.4f} | "
                     f"{r['seconds']['diagnostics+taxonomy']:.4f} | {r['overhead']:+.1%} |")
    (args.out_dir / f"{stem.upper()}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
