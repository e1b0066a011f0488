"""What causal effects cost: ``python -m benchmarks.effects [--family llama-style] [--smoke] [--out-dir DIR]``.

Measures, in one run on this machine, on a GPT-2-small-sized model (or, with ``--family
llama-style``, a Llama-style ~125M model with grouped-query attention and a SwiGLU MLP; random
weights cost what trained ones do) and pairs of 15-token prompts:

- jaxdiag's diagnostics alone (the sweep's step) — prompts/s;
- jaxdiag's sweep step with every head's exact ``patch`` effect, its attribution-patching
  estimate (AtP: one forward and one backward pass) and AtP* (GradDrop: one backward pass per
  layer), and with zero + mean + patch — prompts/s and prompt x head effects/s: the posts' cost
  argument ("forward passes only"), measured;
- TransformerLens 4's ``patching.get_act_patch_attn_head_out_all_pos`` on the same model (a
  ``TransformerBridge`` booted from the same checkpoint): one full forward (LM head included) per
  head, the field's standard all-heads patching — prompt x head effects/s;
- the FLOPs each needs and the machine's fp32 GEMM rate (torch, the model's shapes), so each
  rate is also a share of the ceiling.

jaxdiag restarts each edited run at the edited layer's MLP (``jaxdiag.causal.effects``): per prompt
``H * sum_l (L - l - 1/3)`` layer-forwards and one LM-head row, vs ``H * L`` layer-forwards and a
full LM head per position for one forward per head. Results: ``EFFECTS.md`` and
``effects.json`` (``EFFECTS_llama-style.md`` ... with ``--family``) in ``--out-dir`` (default: this
folder), with machine, CPU flags, date, command.
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
from typing import Any, Sequence

import numpy as np

from benchmarks.measure import best_of, forward_flops, lm_head_flops, load_average, random_prompts
from benchmarks.run import GPT2_SMALL, machine_info
from benchmarks.workers import FAMILY_CONFIGS, family_kwargs, make_checkpoint, make_family_checkpoint

HERE = Path(__file__).resolve().parent
PROFILES = {
    "full": dict(model=GPT2_SMALL, seq=15, n_pairs=8, repeats=3),
    "smoke": dict(model=dict(vocab_size=50257, n_positions=64, n_embd=64, n_layer=2, n_head=4), seq=15, n_pairs=2,
                  repeats=1),
}


def layer_flops(cfg: dict, seq: int) -> tuple[float, float]:
    """(FLOPs of one layer over ``seq`` tokens, the MLP's share of them), for GPT-2 or a Llama-style
    config (``n_kv_head`` key/value heads, a gated MLP of width ``d_mlp``)."""
    e, d_mlp = cfg["n_embd"], cfg.get("d_mlp", 4 * cfg["n_embd"])
    if "n_kv_head" not in cfg:
        return forward_flops(n_layer=1, n_embd=e, d_mlp=d_mlp, seq=seq), 2 / 3  # 8 e^2 of 12 e^2 per token
    kv = e * cfg["n_kv_head"] // cfg["n_head"]
    attention_linear, mlp = 2 * seq * (2 * e * e + 2 * e * kv), 2 * seq * 3 * e * d_mlp
    scores = 2 * 2 * e * seq * (seq + 1) / 2
    return attention_linear + mlp + scores, mlp / (attention_linear + mlp + scores)


def family_shape(family: str, *, tiny: bool) -> dict[str, int]:
    """The benchmark's shape keys (GPT-2's names) of a FAMILY_CONFIGS model."""
    raw = family_kwargs(family, tiny=tiny)
    shape = dict(vocab_size=raw["vocab_size"], n_embd=raw["hidden_size"], n_layer=raw["num_hidden_layers"],
                 n_head=raw["num_attention_heads"], d_mlp=raw["intermediate_size"])
    if "num_key_value_heads" in raw:
        shape["n_kv_head"] = raw["num_key_value_heads"]
    return shape


def effect_flops(cfg: dict, seq: int) -> dict[str, float]:
    """FLOPs per prompt: jaxdiag's all-heads effects of one kind vs one full forward per head."""
    layer, mlp_share = layer_flops(cfg, seq)
    n_layer, n_head = cfg["n_layer"], cfg["n_head"]
    # per head of layer l: its own MLP, then every later layer; plus the clean pass and one LM-head row
    ours = n_head * sum(mlp_share + (n_layer - 1 - l) for l in range(n_layer)) * layer
    ours += n_layer * layer + 2 * cfg["n_embd"] * cfg["vocab_size"] * (1 + n_layer * n_head)
    per_forward = n_layer * layer + lm_head_flops(n_embd=cfg["n_embd"], vocab_size=cfg["vocab_size"], seq=seq)
    return {"jaxdiag_patch": ours + n_layer * layer,  # + the partners' forward for their head outputs
            "one_forward_per_head": (n_layer * n_head + 1) * per_forward,
            "diagnostics": n_layer * layer}


# The effect runs measured by default: each exact kind alone, its AtP and AtP* estimates, and all three exact kinds.
EFFECT_RUNS = (("patch",), ("atp_patch",), ("atpstar_patch",), ("zero", "mean", "patch"))


def effect_inputs(n_pairs: int, seq: int, vocab_size: int) -> tuple[np.ndarray, ...]:
    """``(clean, corrupt, target, foil)``: random clean prompts, each corrupted ABC-style at tokens 2-4,
    and random target and foil ids (seeded)."""
    clean = random_prompts(n_pairs, seq, vocab_size, seed=0)
    corrupt = clean.copy()
    corrupt[:, 2:5] = random_prompts(n_pairs, 3, vocab_size, seed=1)
    rng = np.random.default_rng(2)
    target, foil = (rng.integers(0, vocab_size, n_pairs).astype(np.int32) for _ in range(2))
    return clean, corrupt, target, foil


def bench_jaxdiag(checkpoint: str, clean: np.ndarray, corrupt: np.ndarray, target: np.ndarray, foil: np.ndarray,
                  repeats: int, *, precision: str = "highest",
                  runs_of: Sequence[tuple[str, ...]] = EFFECT_RUNS) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import jaxdiag
    from jaxdiag.sweep.steps import sweep_step
    from jaxdiag.sweep.runner import diagnostics_step

    model = jaxdiag.load(checkpoint, precision=precision).model
    graphdef, state = nnx.split(model)
    tokens, partner = jnp.asarray(clean), jnp.asarray(corrupt)
    lengths = jnp.full((len(clean),), clean.shape[1], jnp.int32)
    target, foil = jnp.asarray(target), jnp.asarray(foil)
    n_heads = model.config.n_layer * model.config.n_head
    out: dict[str, Any] = {"jax_version": jax.__version__, "backend": jax.default_backend()}

    diagnose = diagnostics_step(graphdef, "last")
    runs = {"diagnostics": lambda: diagnose(state, tokens, lengths)}
    for kinds in runs_of:
        means = np.zeros((model.config.n_layer, model.config.n_head, model.config.d_head), np.float32)
        step = sweep_step(graphdef, "last", kinds, head_mean=means)
        runs["+".join(kinds)] = lambda step=step: step(state, tokens, lengths, target, foil, partner)
    for name, run in runs.items():
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        compile_s = time.perf_counter() - t0
        seconds = min(best_of(lambda: jax.block_until_ready(run()), repeats))
        kinds = 0 if name == "diagnostics" else len(name.split("+"))
        out[name] = {"seconds": seconds, "compile_and_first_s": round(compile_s, 2),
                     "prompts_per_s": len(clean) / seconds,
                     "head_effects_per_s": len(clean) * n_heads * kinds / seconds if kinds else None}
    return out


def bench_transformerlens(checkpoint: str, clean: np.ndarray, corrupt: np.ndarray, target: np.ndarray,
                          foil: np.ndarray, repeats: int, *, device: str = "cpu") -> dict[str, Any]:
    import torch
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(checkpoint, device=device)
    clean_t, corrupt_t = (torch.from_numpy(t).long().to(device) for t in (clean, corrupt))
    rows = torch.arange(len(clean), device=device)
    target_t, foil_t = (torch.from_numpy(t).long().to(device) for t in (target, foil))

    def metric(logits):  # the same task metric: logit(target) - logit(foil) at the last position
        last = logits[:, -1]
        return (last[rows, target_t] - last[rows, foil_t]).mean()

    with torch.inference_mode():
        _, clean_cache = bridge.run_with_cache(clean_t)

        def run():
            result = patching.get_act_patch_attn_head_out_all_pos(bridge, corrupt_t, clean_cache, metric)
            if device != "cpu":
                torch.cuda.synchronize()  # the GPU's queued work belongs to this call's time
            return result

        t0 = time.perf_counter()
        result = run()
        first = time.perf_counter() - t0
        seconds = min(best_of(run, repeats))
    n_heads = bridge.cfg.n_layers * bridge.cfg.n_heads
    return {"seconds": seconds, "first_s": round(first, 2), "prompts_per_s": len(clean) / seconds,
            "head_effects_per_s": len(clean) * n_heads / seconds, "shape": list(result.shape),
            "torch_threads": torch.get_num_threads(), "transformer_lens": _version("transformer-lens")}


def gemm_gflops(cfg: dict, rows: int) -> dict[str, float]:
    """Best fp32 GEMM rate of torch and of XLA over the model's linear shapes (the FLOP ceiling is the larger:
    on AVX-512 machines XLA's kernels outrun MKL's AVX2 path)."""
    from benchmarks.workers import gemm

    e, d_mlp = cfg["n_embd"], cfg.get("d_mlp", 4 * cfg["n_embd"])
    shapes = [(rows, e, 3 * e), (rows, e, d_mlp), (rows, d_mlp, e)]
    return {library: gemm({"library": library, "shapes": shapes, "device": "cpu"})["best_gflops"]
            for library in ("torch", "xla")}


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.effects", description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["gpt2", *FAMILY_CONFIGS], default="gpt2",
                        help="gpt2 (default: GPT-2 small's shape) or a benchmarks.workers.FAMILY_CONFIGS model")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, seconds: checks the script runs")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    p = PROFILES["smoke" if args.smoke else "full"]
    cfg = p["model"] if args.family == "gpt2" else family_shape(args.family, tiny=args.smoke)

    results: dict[str, Any] = {
        "command": "python -m benchmarks.effects " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
        "python": platform.python_version(), "model": cfg, "seq": p["seq"], "n_pairs": p["n_pairs"],
        "load_avg_start": load_average(),
    }
    clean, corrupt, target, foil = effect_inputs(p["n_pairs"], p["seq"], cfg["vocab_size"])
    with tempfile.TemporaryDirectory() as tmp:
        if args.family == "gpt2":
            checkpoint = make_checkpoint({"config": cfg, "checkpoint": f"{tmp}/model"})["checkpoint"]
        else:
            made = make_family_checkpoint({"family": args.family, "tiny": args.smoke, "checkpoint": f"{tmp}/model"})
            checkpoint, results["n_params"] = made["checkpoint"], made["n_params"]
        results["transformerlens"] = bench_transformerlens(checkpoint, clean, corrupt, target, foil, p["repeats"])
        results["jaxdiag"] = bench_jaxdiag(checkpoint, clean, corrupt, target, foil, p["repeats"])
    # rows of one lax.map step of the patch effects: every head of a layer over the batch's tokens
    results["gemm_gflops"] = gemm_gflops(cfg, cfg["n_head"] * p["n_pairs"] * p["seq"])
    flops = effect_flops(cfg, p["seq"])
    results["flops_per_prompt"] = flops
    jd, tl = results["jaxdiag"], results["transformerlens"]
    results["summary"] = {
        "patch_speedup_vs_transformerlens": jd["patch"]["head_effects_per_s"] / tl["head_effects_per_s"],
        "patch_cost_vs_diagnostics": jd["diagnostics"]["prompts_per_s"] / jd["patch"]["prompts_per_s"],
        "exact_patch_cost_vs_atp": jd["atp_patch"]["prompts_per_s"] / jd["patch"]["prompts_per_s"],
        "exact_patch_cost_vs_atpstar": jd["atpstar_patch"]["prompts_per_s"] / jd["patch"]["prompts_per_s"],
        "flop_ratio_one_forward_per_head_vs_jaxdiag": flops["one_forward_per_head"] / flops["jaxdiag_patch"],
        "jaxdiag_patch_gflops": flops["jaxdiag_patch"] * jd["patch"]["prompts_per_s"] / 1e9,
        "transformerlens_gflops": flops["one_forward_per_head"] * tl["prompts_per_s"] / 1e9,
    }
    results["load_avg_end"] = load_average()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "effects" + ("" if args.family == "gpt2" else f"_{args.family}") + ("_smoke" if args.smoke else "")
    results["family"] = args.family
    (args.out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out_dir / f"{stem.upper()}.md").write_text(render(results))
    print(json.dumps(results["summary"], indent=2))
    return results


def render(r: dict[str, Any]) -> str:
    m, s, jd, tl = r["machine"], r["summary"], r["jaxdiag"], r["transformerlens"]
    ceiling = max(r["gemm_gflops"].values())
    lines = [
        "# Causal-effect cost: jaxdiag vs TransformerLens (all-heads patching)", "",
        f"- **Command:** `{r['command']}` · **date:** {r['date']}",
        f"- **Machine:** {m.get('cpu')} ({m.get('cpu_flags') or 'flags not recorded'}) · {m.get('cpu_count')} CPUs · "
        f"load {r['load_avg_start']} -> {r['load_avg_end']} · backend {jd['backend']}, JAX {jd['jax_version']}, "
        f"TransformerLens {tl['transformer_lens']} ({tl['torch_threads']} torch threads)",
        f"- **Model:** {r.get('family', 'gpt2')}: {r['model']['n_layer']} layers x {r['model']['n_head']} heads"
        f"{' (' + str(r['model']['n_kv_head']) + ' key/value heads)' if 'n_kv_head' in r['model'] else ''}, "
        f"d_model {r['model']['n_embd']}{', ' + format(r['n_params'] / 1e6, '.0f') + 'M parameters' if 'n_params' in r else ''}, "
        f"random weights; {r['n_pairs']} clean/corrupted pairs of {r['seq']} tokens; best of repeats after compile",
        f"- **fp32 GEMM ceiling (the model's shapes, the faster library):** {ceiling} GFLOP/s "
        f"(torch {r['gemm_gflops']['torch']}, XLA {r['gemm_gflops']['xla']})", "",
        "| what | prompts/s | prompt x head effects/s | GFLOP per prompt | GFLOP/s (share of ceiling) |",
        "|---|---|---|---|---|",
    ]
    flops = r["flops_per_prompt"]
    rows = [("jaxdiag diagnostics alone", jd["diagnostics"], flops["diagnostics"]),
            ("jaxdiag diagnostics + patch effects", jd["patch"], flops["jaxdiag_patch"]),
            ("jaxdiag diagnostics + AtP (patch)", jd["atp_patch"], None),
            ("jaxdiag diagnostics + AtP* (patch)", jd["atpstar_patch"], None),
            ("jaxdiag diagnostics + zero, mean, patch", jd["zero+mean+patch"], None),
            ("TransformerLens get_act_patch_attn_head_out_all_pos", tl, flops["one_forward_per_head"])]
    for name, row, f in rows:
        effects = f"{row['head_effects_per_s']:.0f}" if row.get("head_effects_per_s") else "-"
        rate = f"{f * row['prompts_per_s'] / 1e9:.0f} ({f * row['prompts_per_s'] / 1e9 / ceiling:.0%})" if f else "-"
        gflop = f"{f / 1e9:.1f}" if f else "-"
        lines.append(f"| {name} | {row['prompts_per_s']:.3g} | {effects} | {gflop} | {rate} |")
    lines += ["",
              f"All-heads patching: jaxdiag **{s['patch_speedup_vs_transformerlens']:.2f}x** TransformerLens "
              f"(FLOP ratio {s['flop_ratio_one_forward_per_head_vs_jaxdiag']:.2f}x: TransformerLens runs every layer and "
              f"the full LM head once per head). Effects cost {s['patch_cost_vs_diagnostics']:.0f}x the diagnostics "
              "alone per prompt: the posts' \"forward passes only\" saving, measured. Exact all-heads patching costs "
              f"{s['exact_patch_cost_vs_atp']:.1f}x AtP and {s['exact_patch_cost_vs_atpstar']:.1f}x AtP* per prompt.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
