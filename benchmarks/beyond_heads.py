"""What patching by position, DLA and the logit lens cost: ``python -m benchmarks.beyond_heads [--smoke] [--out-dir DIR]``.

Measures, in one run on this machine, on a GPT-2-small-shaped random model (``--smoke``: a tiny one)
and pairs of equal-length prompts:

- residual patching of every (layer, position) and head-by-position patching of every (layer, head,
  position): jaxdiag's sweep step (``--effects patch_resid`` / ``patch_head_pos``; restarts at the edited
  layer, edits batched in one compiled step) against TransformerLens 4's ``patching.get_act_patch_resid_pre``
  and ``get_act_patch_attn_head_out_by_pos`` on the same weights (a ``TransformerBridge`` booted from the
  same checkpoint), in patches per second (prompt x edit);
- the cost of ``dla`` and of ``lens`` over the diagnostics alone (the sweep's step with and without them).

Results: ``BEYOND_HEADS.md`` and ``beyond_heads.json`` in ``--out-dir`` (default: this folder), with
the machine, its CPU flags, the date and the command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import best_of, random_prompts
from benchmarks.run import GPT2_SMALL, machine_info
from benchmarks.workers import make_checkpoint

HERE = Path(__file__).resolve().parent
PROFILES = {
    "full": dict(model=GPT2_SMALL, seq=12, n_pairs=2, repeats=1),
    "smoke": dict(model=dict(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4), seq=6, n_pairs=2,
                  repeats=1),
}


def bench_jaxdiag(checkpoint: str, clean: np.ndarray, corrupt: np.ndarray, target: np.ndarray, foil: np.ndarray,
                  repeats: int) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import jaxdiag
    from jaxdiag.sweep.runner import diagnostics_step
    from jaxdiag.sweep.steps import edits_per_step, sweep_step

    model = jaxdiag.load(checkpoint).model
    cfg = model.config
    graphdef, state = nnx.split(model)
    tokens, partner = jnp.asarray(clean), jnp.asarray(corrupt)
    lengths = jnp.full((len(clean),), clean.shape[1], jnp.int32)
    target, foil = jnp.asarray(target), jnp.asarray(foil)
    per_step = edits_per_step(len(clean), clean.shape[1], cfg)
    diagnose = diagnostics_step(graphdef, "last")
    runs = {"diagnostics": lambda: diagnose(state, tokens, lengths)}
    for kind in ("dla", "lens", "patch_resid", "patch_head_pos"):
        step = sweep_step(graphdef, "last", (kind,), patches_per_step=per_step)
        runs[kind] = lambda step=step: step(state, tokens, lengths, target, foil, partner)
    edits = {"patch_resid": cfg.n_layer * clean.shape[1], "patch_head_pos": cfg.n_layer * cfg.n_head * clean.shape[1]}
    out: dict[str, Any] = {"jax_version": jax.__version__, "backend": jax.default_backend(), "patches_per_step": per_step}
    for name, run in runs.items():
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        compile_s = time.perf_counter() - t0
        seconds = min(best_of(lambda: jax.block_until_ready(run()), repeats))
        out[name] = {"seconds": seconds, "compile_and_first_s": round(compile_s, 2)}
        if name in edits:
            out[name]["patches_per_s"] = len(clean) * edits[name] / seconds
    base = out["diagnostics"]["seconds"]
    for name in ("dla", "lens"):
        out[name]["overhead_vs_diagnostics"] = (out[name]["seconds"] - base) / base
    return out


def bench_transformerlens(checkpoint: str, clean: np.ndarray, corrupt: np.ndarray, target: np.ndarray,
                          foil: np.ndarray, repeats: int) -> dict[str, Any]:
    import torch
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(checkpoint, device="cpu")
    prompt_t, source_t = (torch.from_numpy(t).long() for t in (clean, corrupt))
    rows = torch.arange(len(clean))
    target_t, foil_t = (torch.from_numpy(t).long() for t in (target, foil))

    def metric(logits):  # the task metric: logit(target) - logit(foil) at the last position
        last = logits[:, -1]
        return (last[rows, target_t] - last[rows, foil_t]).mean()

    out: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    functions = {"patch_resid": patching.get_act_patch_resid_pre,
                 "patch_head_pos": patching.get_act_patch_attn_head_out_by_pos}
    with torch.inference_mode():
        _, cache = bridge.run_with_cache(source_t)
        for name, function in functions.items():
            result = function(bridge, prompt_t, cache, metric)
            seconds = min(best_of(lambda: function(bridge, prompt_t, cache, metric), repeats))
            out[name] = {"seconds": seconds, "patches_per_s": len(clean) * result.numel() / seconds,
                         "shape": list(result.shape)}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.beyond_heads", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model, seconds: checks the script runs")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    p = PROFILES["smoke" if args.smoke else "full"]
    cfg = p["model"]
    with tempfile.TemporaryDirectory(prefix="jaxdiag-beyond-") as folder:
        checkpoint = make_checkpoint({"config": cfg, "checkpoint": str(Path(folder) / "model")})["checkpoint"]
        clean = random_prompts(p["n_pairs"], p["seq"], cfg["vocab_size"], seed=0)
        corrupt = clean.copy()
        corrupt[:, -3:] = random_prompts(p["n_pairs"], 3, cfg["vocab_size"], seed=1)
        target, foil = random_prompts(2, p["n_pairs"], cfg["vocab_size"], seed=2)
        results: dict[str, Any] = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m benchmarks.beyond_heads " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "machine": machine_info(), "python": platform.python_version(), "model": cfg,
            "prompts": {"pairs": p["n_pairs"], "tokens": p["seq"]},
            "jaxdiag": bench_jaxdiag(checkpoint, clean, corrupt, target, foil, p["repeats"]),
            "transformer_lens": bench_transformerlens(checkpoint, clean, corrupt, target, foil, p["repeats"]),
        }
    for kind in ("patch_resid", "patch_head_pos"):
        results[f"{kind}_speedup"] = (results["jaxdiag"][kind]["patches_per_s"]
                                      / results["transformer_lens"][kind]["patches_per_s"])
    name = "BEYOND_HEADS_smoke" if args.smoke else "BEYOND_HEADS"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name.lower()}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out_dir / f"{name}.md").write_text(report(results))
    return results


def report(r: dict[str, Any]) -> str:
    j, t = r["jaxdiag"], r["transformer_lens"]
    m = r["machine"]
    lines = [f"# Patching by position, DLA and the logit lens: cost", "",
             f"- date: {r['date']}", f"- command: `{r['command']}`",
             f"- machine: {json.dumps(m, default=str)}",
             f"- model: {json.dumps(r['model'])}; {r['prompts']['pairs']} pairs of {r['prompts']['tokens']} tokens",
             f"- jax {j['jax_version']} ({j['backend']}), {j['patches_per_step']} edits per step; torch threads "
             f"{t['torch_threads']}", "",
             "| what | jaxdiag patches/s | TransformerLens patches/s | speed-up |", "|---|---|---|---|"]
    for kind in ("patch_resid", "patch_head_pos"):
        lines.append(f"| {kind} | {j[kind]['patches_per_s']:.1f} | {t[kind]['patches_per_s']:.1f} | "
                     f"{r[f'{kind}_speedup']:.2f}x |")
    lines += ["", "| step | seconds | over the diagnostics alone |", "|---|---|---|",
              f"| diagnostics | {j['diagnostics']['seconds']:.4f} | |"]
    for name in ("dla", "lens"):
        lines.append(f"| diagnostics + {name} | {j[name]['seconds']:.4f} | {100 * j[name]['overhead_vs_diagnostics']:+.0f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
