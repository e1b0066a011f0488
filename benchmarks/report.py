"""RESULTS.md from the benchmark's results dict (the same data as results.json)."""

from __future__ import annotations

from typing import Any

from benchmarks.measure import cpu_name, forward_flops

TOOL_NAMES = {
    "jaxdiag": "jaxdiag (sweep engine: DeviceRunner, bucketed units)",
    "jaxdiag_exact_length": "jaxdiag model step at the exact length (no bucket padding)",
    "jaxdiag_direct": "jaxdiag step, direct attention",
    "jaxdiag_streaming": "jaxdiag step, streaming attention",
    "transformers": "transformers GPT2Model, eager, output_attentions + torch reductions",
    "transformerlens": "TransformerLens 4 bridge, run_with_cache(pattern only) + torch reductions",
}


def _f(x: Any, digits: int = 1) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return lines + [""]


def _mem(r: dict) -> tuple:
    return r.get("setup_rss_mb"), r.get("run_peak_rss_mb"), r.get("peak_rss_mb")


def render_markdown(res: dict[str, Any]) -> str:
    s = res.get("summary", {})
    m, env = res["machine"], res.get("env", {})
    model = res["model"]
    flops = lambda seq: forward_flops(n_layer=model["n_layer"], n_embd=model["n_embd"], d_mlp=4 * model["n_embd"], seq=seq)
    out = [
        "# jaxdiag benchmark results", "",
        "Written by the benchmark itself; do not edit by hand. Re-run with the command below.", "",
        f"- **Command:** `{res['command']}` (profile `{res['profile']}`)",
        f"- **Date (UTC):** {res['date']}",
        f"- **Machine:** {cpu_name(m)} ({m.get('cpu_flags') or 'flags not recorded'}) · {m.get('cpu_count')} CPUs · {m.get('memory_gb')} GiB · {m.get('platform')} · host `{m.get('hostname')}`",
        f"- **Backend:** {env.get('backend')} ({env.get('device_kind')}); jax {env.get('jax')}, flax {env.get('flax')}, "
        f"torch {env.get('torch')} ({env.get('torch_threads')} threads), transformers {env.get('transformers')}, "
        f"transformer_lens {env.get('transformer_lens')}",
        f"- **Load average** (1, 5, 15 min) at start {res.get('load_avg_start')}, at end {res.get('load_avg_end')}"
        " — on a shared machine a high load depresses every number; each figure is the best of several repeats,"
        " and each row records the load when it started.",
        f"- **jaxdiag XLA_FLAGS:** `{res.get('jaxdiag_xla_flags') or '(none)'}`",
        f"- **Model:** GPT-2 architecture {model['n_layer']} layers × {model['n_head']} heads, d_model {model['n_embd']}, "
        "random weights (same cost as trained ones). Diagnostics of the last query position, all layers and heads, "
        "copied to host memory.", "",
    ]

    out += ["## Targets (15-token prompts)", ""]
    out += _table(["quantity", "value"], [
        ["jaxdiag prompts/s", s.get("jaxdiag_prompts_per_s")],
        ["faster PyTorch tool, prompts/s", max([x for x in (
            (res.get("short") or {}).get("tools", {}).get(t, {}).get("prompts_per_s") for t in ("transformers", "transformerlens")) if x] or [None])],
        ["speed-up vs the faster PyTorch tool (target ≥ 1.3)", s.get("speedup_vs_faster_pytorch_tool")],
        ["target ≥ 1.3× met", s.get("target_speedup_1_3x_met")],
        ["best fp32 GEMM rate measured in this run, GFLOP/s", s.get("best_gemm_gflops")],
        ["forward GFLOP per prompt (no LM head)", (s.get("flops_per_prompt") or {}).get("15", 0) / 1e9 if s.get("flops_per_prompt") else None],
        ["FLOP ceiling, prompts/s", s.get("ceiling_prompts_per_s")],
        ["jaxdiag fraction of the ceiling (target ≥ 0.60)", s.get("fraction_of_ceiling")],
        ["target ≥ 60 % met", s.get("target_60pct_ceiling_met")],
    ])

    short = res.get("short")
    if short:
        out += [f"## Short prompts: {short['seq']} tokens, batch {short['batch']}, {short['n_prompts']} prompts, "
                f"best of {short.get('rounds', 1)} round(s)", ""]
        rows = []
        for name, r in short["tools"].items():
            pps = r.get("prompts_per_s")
            rounds = ", ".join(f"{x:.1f}" if x else "—" for x in r.get("round_prompts_per_s", []))
            rows.append([TOOL_NAMES.get(name, name), pps, pps * flops(short["seq"]) / 1e9 if pps else None, rounds,
                         *_mem(r), r.get("padded_seq"), str(r.get("load_avg_start", "")), r.get("error", "")])
        out += _table(["tool", "prompts/s", "useful GFLOP/s", "each round", "RSS after load (MiB)",
                       "peak while running (MiB)", "peak incl. load+compile (MiB)", "padded to",
                       "load avg at start (best round)", "error"], rows)
        out += ["TransformerLens's bridge also computes the LM head, which its API cannot skip "
                f"(+{_f(s.get('tl_lm_head_flops_per_prompt', 0) / 1e9, 2)} GFLOP per prompt); the other tools do not.", ""]

    gemm = res.get("gemm")
    if gemm:
        out += ["## fp32 GEMM rate (GFLOP/s, best of 10, the model's shapes)", ""]
        shapes = list((gemm.get("torch") or {}).get("gflops", {}) or (gemm.get("xla") or {}).get("gflops", {}))
        out += _table(["library", *shapes, "best"], [
            [lib, *[(gemm.get(lib) or {}).get("gflops", {}).get(k) for k in shapes], (gemm.get(lib) or {}).get("best_gflops")]
            for lib in ("torch", "xla")
        ])

    if res.get("long"):
        out += ["## Long prompts", ""]
        rows = []
        for row in res["long"]:
            for name, r in row["tools"].items():
                pps = r.get("prompts_per_s")
                rows.append([str(row["seq"]), str(row["batch"]), TOOL_NAMES.get(name, name), pps,
                             pps * flops(row["seq"]) / 1e9 if pps else None, *_mem(r), r.get("error", "")])
        out += _table(["tokens", "batch", "tool", "prompts/s", "useful GFLOP/s", "RSS after load (MiB)",
                       "peak while running (MiB)", "peak incl. load+compile (MiB)", "error"], rows)

    if res.get("memory"):
        out += ["## Peak memory vs sequence length: direct vs streaming attention", "",
                "One jitted step per fresh process; 'working set' = peak RSS while running minus RSS after loading "
                "(weights, libraries). Direct attention forms each layer's [batch, head, query, key] scores; "
                "streaming visits keys in blocks of 128 with O(batch × head × query) state.", ""]
        rows = []
        for r in res["memory"]:
            setup, run_peak, _ = _mem(r)
            rows.append([str(r["seq"]), r["query"], r["attention"], str(r["batch"]),
                         run_peak - setup if run_peak and setup else None, run_peak,
                         f"{r['best_s']:.3f}" if r.get("best_s") else "—", r.get("error", "")])
        out += _table(["tokens", "query", "attention", "batch", "working set (MiB)", "peak RSS (MiB)", "step (s)", "error"], rows)

    if res.get("scale"):
        out += ["## Scale-out: virtual CPU devices (`--xla_force_host_platform_device_count=N`)", "",
                "The sweep engine's DeviceRunner deals units round-robin to the devices. All devices share the same "
                "2 cores here, so this shows correctness and overhead, not speed-up; the digest column shows that "
                "the results are bit-identical for every device count.", ""]
        rows = [[str(r["devices"]), r.get("prompts_per_s"), r.get("result_sha256"), r.get("peak_rss_mb"),
                 str(r.get("load_avg_start", "")), r.get("error", "")] for r in res["scale"]]
        out += _table(["devices", "prompts/s", "result digest", "peak RSS (MiB)", "load avg at start", "error"], rows)

    gpu = res.get("gpu")
    out += ["## GPU", ""]
    if not gpu:
        out += ["GPU figures are pending: this run had no accelerator (JAX backend "
                f"`{env.get('backend')}`). The same command on a GPU machine measures fp32 (`highest`), TF32 "
                "(`default`) and bf16 throughput, TFLOP/s, MFU, the diagnostics' deviation from fp32-highest, and the "
                "transformers / TransformerLens baselines on the same GPU (needs a CUDA build of torch).", ""]
    else:
        kind = env.get("device_kind", "")
        peaks = next((v for k, v in _gpu_peaks().items() if k in kind), None)
        rows = []
        for precision, r in gpu["precisions"].items():
            pps = r.get("prompts_per_s")
            tflops = pps * flops(gpu["seq"]) / 1e12 if pps else None
            mfu = tflops / peaks[precision] if tflops and peaks else None
            dev = r.get("max_abs_dev_vs_highest") or {}
            rows.append([precision, pps, tflops, mfu, max(dev.values()) if dev else None, r.get("device_peak_mb"), r.get("error", "")])
        out += _table(["precision", "prompts/s", "TFLOP/s", "MFU", "max |diag − fp32 highest|", "device peak (MiB)", "error"], rows)
        base = [[name, (gpu.get(name) or {}).get("prompts_per_s"), (gpu.get(name) or {}).get("error", "")]
                for name in ("transformers", "transformerlens")]
        out += _table(["PyTorch tool on the same GPU", "prompts/s", "error"], base)
    if res.get("families"):
        out += ["", "## Other families (random weights, last query position)", "",
                "A Pythia-160M-sized GPT-NeoX (partial rotary, parallel residual) and a Llama-style model "
                "(RMSNorm, SwiGLU, rotary, 12 query heads over 4 key/value heads), 12 layers × 12 heads, "
                "d_model 768 (the smoke profile: 2 layers, d_model 64). jaxdiag's compiled model step vs "
                "transformers' eager model with `output_attentions=True` and the same reductions in torch.", ""]
        rows = []
        for r in res["families"]:
            tools = r.get("tools", {})
            jd, tf = (tools.get(k, {}).get("prompts_per_s") for k in ("jaxdiag", "transformers"))
            err = r.get("error") or " ".join(t.get("error", "") for t in tools.values()).strip()
            rows.append([r["family"], f"{(r.get('n_params') or 0) / 1e6:.0f}M", r["seq"], r["batch"], jd, tf,
                         jd / tf if jd and tf else None, str(tools.get("jaxdiag", {}).get("load_avg_start", "")), err])
        out += _table(["family", "params", "seq", "batch", "jaxdiag prompts/s", "transformers prompts/s",
                       "speed-up", "load at start", "error"], rows)
    return "\n".join(out) + "\n"


def _gpu_peaks() -> dict:
    from benchmarks.run import GPU_PEAK_TFLOPS

    return GPU_PEAK_TFLOPS
