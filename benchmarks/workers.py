"""One measurement per fresh process: ``python -m benchmarks.workers '<json spec>'``.

A fresh process per measurement keeps peak memory (VmHWM) honest and keeps one library's thread
pools from competing with another's. The spec's ``kind`` picks the function below; the result is
printed as one ``RESULT {json}`` line on stdout.

Timed work: ``n_prompts`` prompts of ``seq`` tokens in batches of ``batch``, diagnostics of the
last query position of every layer and head, copied to host memory as numpy. One warm-up pass
(compilation for jaxdiag), then the best of ``repeats`` passes. Peak memory is reported twice:
``peak_rss_mb`` over the whole process (loading, compiling, running) and ``run_peak_rss_mb`` over
the timed passes only (VmHWM reset after the warm-up), next to ``setup_rss_mb`` (after loading).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import sys
import time
from typing import Any

import numpy as np

from benchmarks.measure import best_of, random_prompts, reset_peak_rss, rss_mb


def _timed(spec: dict, run_pass, n_prompts: int) -> dict[str, Any]:
    setup_rss = rss_mb("VmRSS")
    t0 = time.perf_counter()
    run_pass()  # warm-up: compilation, allocator growth, lazy imports
    warmup_s = time.perf_counter() - t0
    warmup_peak = rss_mb("VmHWM")
    reset = reset_peak_rss()
    times = best_of(run_pass, spec.get("repeats", 3), min_seconds=spec.get("min_seconds", 0.0))
    best = min(times)
    run_peak = rss_mb("VmHWM")
    return {
        "prompts_per_s": n_prompts / best,
        "best_s": best,
        "times_s": [round(t, 4) for t in times],
        "warmup_s": round(warmup_s, 3),
        "setup_rss_mb": round(setup_rss, 1),
        "run_peak_rss_mb": round(run_peak, 1) if reset else None,
        "peak_rss_mb": round(max(warmup_peak, run_peak), 1),
    }


# --------------------------------------------------------------------------- jaxdiag


def _jax_setup(spec: dict):
    import jax

    if spec.get("matmul_precision_default"):
        jax.config.update("jax_default_matmul_precision", spec["matmul_precision_default"])
    return jax, _loaded_model(spec["checkpoint"], spec.get("precision", "highest"))


@functools.lru_cache(maxsize=4)
def _loaded_model(checkpoint: str, precision: str):
    """The model, loaded once per process for each precision: ``points`` runs many measurements of one
    checkpoint in one process, and hashing and reading GPT-2 small's weights each time costs seconds."""
    import jaxdiag

    return jaxdiag.load(checkpoint, precision=precision).model


def jaxdiag_runner(spec: dict) -> dict[str, Any]:
    """The sweep engine's path: length-bucketed units through ``runner.DeviceRunner`` on all local devices."""
    jax, model = _jax_setup(spec)
    from jaxdiag.sweep.runner import DeviceRunner, make_units

    prompts = random_prompts(spec["n_prompts"], spec["seq"], model.config.vocab_size, spec.get("seed", 0))
    units = make_units(list(enumerate(prompts.tolist())), batch_size=spec["batch"], limit=model.config.n_positions)
    runner = DeviceRunner(model, spec.get("query", "last"))
    collected: dict[int, dict[str, np.ndarray]] = {}

    def run_pass():
        for unit, result in runner.run(units):
            collected[id(unit)] = result

    out = _timed(spec, run_pass, len(prompts))
    out["devices"] = len(runner.devices)
    out["padded_seq"] = int(units[0].tokens.shape[1])
    out["result_sha256"] = _digest([collected[id(u)] for u in units])
    out |= _device_memory(jax)
    return out


def jaxdiag_step(spec: dict) -> dict[str, Any]:
    """One jitted model step at exactly ``seq`` tokens with a chosen attention path ("direct"/"streaming")."""
    jax, model = _jax_setup(spec)
    from flax import nnx

    graphdef, state = nnx.split(model)
    query, attention = spec.get("query", "last"), spec.get("attention", "auto")

    from jaxdiag.sweep.runner import diagnostics_step

    step = diagnostics_step(graphdef, query, attention=attention)

    prompts = random_prompts(spec["n_prompts"], spec["seq"], model.config.vocab_size, spec.get("seed", 0))
    batches = [prompts[i : i + spec["batch"]] for i in range(0, len(prompts), spec["batch"])]
    lengths = np.full((spec["batch"],), spec["seq"], np.int32)
    results: list = []

    def run_pass():
        results.clear()
        pending = [step(state, b, lengths[: len(b)]) for b in batches]  # dispatch all, then sync once
        results.extend(jax.device_get(pending))

    out = _timed(spec, run_pass, len(prompts))
    out["result_sha256"] = _digest(results)
    if spec.get("return_values"):
        out["values"] = {k: np.concatenate([r[k] for r in results]).tolist() for k in results[0]}
    out |= _device_memory(jax)
    return out


def _device_memory(jax) -> dict[str, Any]:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return {"device_peak_mb": round(peak / 2**20, 1)} if peak else {}


def _digest(results: list[dict[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for r in results:
        for k in sorted(r):
            h.update(np.ascontiguousarray(r[k]).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- PyTorch tools


def torch_diagnostics(patterns: list, torch, dtype=None) -> dict[str, Any]:
    """The seven diagnostics of the last query row from each layer's ``[b, h, q, k]`` probabilities,
    computed in ``dtype`` (default float32; float64 for a reference).

    Equal-length prompts, so every key is visible to the last row (n = seq). ``z`` is known only up
    to a per-row constant from the probabilities (log pi = z - logsumexp z), and every diagnostic is
    invariant to that constant, so log pi stands in for z. Same definitions as jaxdiag.probes.diagnostics.
    """
    dtype = dtype or torch.float32
    pi = torch.stack([p[:, :, -1, :] for p in patterns], dim=1).to(dtype)  # [b, layer, head, n]
    n = pi.shape[-1]
    log_n = float(np.log(n))
    log_pi = torch.log(pi.clamp_min(torch.finfo(dtype).tiny))
    entropy = -(pi * log_pi).sum(-1)
    kl = (pi * (log_pi + log_n)).sum(-1).clamp_min(0.0)
    mean_log_pi = (pi * log_pi).sum(-1, keepdim=True)
    var = (pi * (log_pi - mean_log_pi).square()).sum(-1)
    centred = log_pi - log_pi.mean(-1, keepdim=True)
    out = {
        "kl": kl, "kl_norm": kl / log_n, "chi": var / log_n**2, "entropy": entropy,
        "max_attn": pi.max(-1).values, "bos_attn": pi[..., 0], "z_excess": (pi * centred).sum(-1),
    }
    return {k: v.cpu().numpy() for k, v in out.items()}


def _torch_setup(spec: dict):
    import torch

    if spec.get("torch_threads"):
        torch.set_num_threads(spec["torch_threads"])
    device = "cuda" if spec.get("device") == "gpu" else "cpu"
    return torch, device


def transformers_eager(spec: dict) -> dict[str, Any]:
    """``GPT2Model`` (no LM head), eager attention, ``output_attentions=True``, reductions in torch;
    weights and activations in ``spec["torch_dtype"]`` (default float32), reductions in float32."""
    torch, device = _torch_setup(spec)
    from transformers import AutoModel, GPT2Model

    model_class = AutoModel if spec.get("auto") else GPT2Model  # auto: another family's base model
    dtype = getattr(torch, spec.get("torch_dtype", "float32"))
    model = model_class.from_pretrained(spec["checkpoint"], attn_implementation="eager").eval().to(device, dtype)
    prompts = random_prompts(spec["n_prompts"], spec["seq"], model.config.vocab_size, spec.get("seed", 0))
    batches = [torch.from_numpy(prompts[i : i + spec["batch"]]).long().to(device) for i in range(0, len(prompts), spec["batch"])]

    def run_pass():
        with torch.inference_mode():
            for tokens in batches:
                torch_diagnostics(model(tokens, output_attentions=True).attentions, torch)

    out = _timed(spec, run_pass, len(prompts))
    out["torch_threads"] = torch.get_num_threads()
    return out


def transformerlens_bridge(spec: dict) -> dict[str, Any]:
    """TransformerLens 4: ``TransformerBridge.boot_transformers`` + pattern-only ``run_with_cache``.

    The bridge always runs the LM head (``stop_at_layer`` cannot stop after the last block), so its
    pass costs ``lm_head_flops`` more than the other tools'; that is its user-facing cost.
    """
    torch, device = _torch_setup(spec)
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(spec["checkpoint"], device=device)
    n_layers = bridge.cfg.n_layers
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(n_layers)]
    prompts = random_prompts(spec["n_prompts"], spec["seq"], bridge.cfg.d_vocab, spec.get("seed", 0))
    batches = [torch.from_numpy(prompts[i : i + spec["batch"]]).long().to(device) for i in range(0, len(prompts), spec["batch"])]

    def run_pass():
        with torch.inference_mode():
            for tokens in batches:
                _, cache = bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
                torch_diagnostics([cache[name] for name in names], torch)

    out = _timed(spec, run_pass, len(prompts))
    out["torch_threads"] = torch.get_num_threads()
    return out


# --------------------------------------------------------------------------- whole processes


def _jsonl_token_prompts(path: str) -> list[list[int]]:
    return [json.loads(line)["tokens"] for line in open(path)]


def torch_process(spec: dict) -> dict[str, Any]:
    """A PyTorch tool's whole job, as a user script does it: import, load, read the prompts, run every
    batch once (no warm-up), reduce, write the results to ``spec["out"]`` (npz). The caller times the
    process from start to exit; the phase times here show where the time goes."""
    t0 = time.perf_counter()
    torch, device = _torch_setup(spec)
    prompts = _jsonl_token_prompts(spec["prompts"])
    tokens = torch.tensor(prompts, dtype=torch.long, device=device)  # one length: no padding
    t_imported = time.perf_counter()
    if spec["tool"] == "transformers":
        from transformers import GPT2Model

        model = GPT2Model.from_pretrained(spec["checkpoint"], attn_implementation="eager").eval().to(device)
        patterns = lambda batch: model(batch, output_attentions=True).attentions
    else:
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(spec["checkpoint"], device=device)
        names = [f"blocks.{i}.attn.hook_pattern" for i in range(bridge.cfg.n_layers)]

        def patterns(batch):
            _, cache = bridge.run_with_cache(batch, names_filter=lambda name: name.endswith("hook_pattern"))
            return [cache[name] for name in names]
    t_loaded = time.perf_counter()
    results: list[dict[str, np.ndarray]] = []
    with torch.inference_mode():
        for start in range(0, len(tokens), spec["batch"]):
            results.append(torch_diagnostics(patterns(tokens[start : start + spec["batch"]]), torch))
    t_ran = time.perf_counter()
    np.savez(spec["out"], **{k: np.concatenate([r[k] for r in results]) for k in results[0]})
    return {"import_read_s": round(t_imported - t0, 3), "load_s": round(t_loaded - t_imported, 3),
            "run_s": round(t_ran - t_loaded, 3), "write_s": round(time.perf_counter() - t_ran, 3),
            "torch_threads": torch.get_num_threads()}


def one_batch_step(model, batch: int, seq: int, *, query: str = "last", seed: int = 0):
    """jaxdiag's jitted diagnostics step and its inputs for one batch of ``batch`` random ``seq``-token
    prompts: ``(step, state, tokens, lengths)``, run as ``step(state, tokens, lengths)``."""
    from flax import nnx

    from jaxdiag.sweep.runner import diagnostics_step

    graphdef, state = nnx.split(model)
    tokens = random_prompts(batch, seq, model.config.vocab_size, seed)
    return diagnostics_step(graphdef, query), state, tokens, np.full((batch,), seq, np.int32)


def startup_phases(spec: dict) -> dict[str, Any]:
    """Where a warm ``jaxdiag run`` spends its start-up, piece by piece, in one fresh process.

    The pieces in the order the run takes them: imports (JAX, Flax NNX, Zarr and the sweep engine),
    resolving the checkpoint (its sha256), loading the weights into the model, tracing and lowering
    the diagnostics step, and getting the executable (from the compilation cache ``spec["cache"]``
    once a first call of this worker has filled it). Then ``executions`` runs of one batch of the
    compiled step: the first one's excess over the later ones is the first-execution cost.
    """
    t = time.perf_counter()
    phases: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        phases[name] = round(now - t, 4)
        t = now

    import jax
    import zarr  # noqa: F401  (the run writes its store with it)
    from flax import nnx  # noqa: F401

    import jaxdiag.sweep.run  # noqa: F401
    lap("import_s")
    from jaxdiag.checkpoint import resolve
    from jaxdiag.models.load import load_model
    from jaxdiag.sweep.compile_cache import enable_compile_cache

    enable_compile_cache(spec["cache"])
    checkpoint = resolve(spec["checkpoint"])
    lap("resolve_s")
    _, model = load_model(checkpoint, precision=spec.get("precision", "highest"))
    lap("load_s")
    step, state, tokens, lengths = one_batch_step(model, spec["batch"], spec["seq"], query=spec.get("query", "last"),
                                                  seed=spec.get("seed", 0))
    traced = step.trace(state, tokens, lengths)
    lap("trace_s")
    lowered = traced.lower()
    lap("lower_s")
    compiled = lowered.compile()
    lap("compile_s")
    executions = []
    for _ in range(spec.get("executions", 4)):
        start = time.perf_counter()
        jax.block_until_ready(compiled(state, tokens, lengths))
        executions.append(round(time.perf_counter() - start, 4))
    later = float(np.median(executions[1:]))
    return {"phases_s": phases, "executions_s": executions,
            "first_execution_excess_s": round(executions[0] - later, 4)}


# --------------------------------------------------------------------------- GEMM rate


def gemm(spec: dict) -> dict[str, Any]:
    """Best GEMM rate (GFLOP/s) of one library over the given shapes: float32 with full-precision
    products by default; ``spec["dtype"]`` "bfloat16", or ``spec["precision"]`` "default" (TF32 on
    NVIDIA GPUs) for the other rates jaxdiag's precisions run at."""
    shapes = [tuple(s) for s in spec["shapes"]]
    repeats = spec.get("repeats", 10)
    dtype_name, precision = spec.get("dtype", "float32"), spec.get("precision", "highest")
    rates = {}
    rng = np.random.default_rng(0)
    if spec["library"] == "torch":
        torch, device = _torch_setup(spec)
        torch.backends.cuda.matmul.allow_tf32 = precision == "default"
        dtype = getattr(torch, dtype_name)
        for m, k, n in shapes:
            a = torch.from_numpy(rng.standard_normal((m, k), dtype=np.float32)).to(device, dtype)
            b = torch.from_numpy(rng.standard_normal((k, n), dtype=np.float32)).to(device, dtype)
            sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

            def once():
                a @ b
                sync()

            once()
            rates[f"{m}x{k}x{n}"] = 2 * m * k * n / min(best_of(once, repeats)) / 1e9
    else:
        import jax
        import jax.numpy as jnp

        lax_precision = jax.lax.Precision.HIGHEST if precision == "highest" else jax.lax.Precision.DEFAULT
        for m, k, n in shapes:
            a = jnp.asarray(rng.standard_normal((m, k), dtype=np.float32), dtype=dtype_name)
            b = jnp.asarray(rng.standard_normal((k, n), dtype=np.float32), dtype=dtype_name)
            f = jax.jit(lambda x, y: jnp.dot(x, y, precision=lax_precision))
            f(a, b).block_until_ready()
            rates[f"{m}x{k}x{n}"] = 2 * m * k * n / min(best_of(lambda: f(a, b).block_until_ready(), repeats)) / 1e9
    return {"gflops": {k: round(v, 1) for k, v in rates.items()}, "best_gflops": round(max(rates.values()), 1),
            "dtype": dtype_name, "precision": precision}


# --------------------------------------------------------------------------- setup and environment


def make_checkpoint(spec: dict) -> dict[str, Any]:
    """A randomly initialised GPT-2 of ``spec["config"]`` in HF format, with GPT-2's tokenizer files.

    Random weights cost exactly what trained ones do. The tokenizer files let TransformerLens boot
    from the directory without a hub (it builds a tokenizer from the model directory).
    """
    from flax import nnx
    from transformers import PreTrainedTokenizerFast

    from jaxdiag.models.load import save_checkpoint
    from jaxdiag.models.gpt2 import GPT2, GPT2Config
    from jaxdiag.tokenizer import _byte_level_bpe, bundled_gpt2_files

    config = GPT2Config(**spec["config"])
    directory = save_checkpoint(GPT2(config, rngs=nnx.Rngs(spec.get("seed", 0))), spec["checkpoint"])
    eos = "<|endoftext|>"
    PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_bpe(*bundled_gpt2_files()), bos_token=eos, eos_token=eos, unk_token=eos
    ).save_pretrained(directory)
    return {"checkpoint": str(directory)}


# Families beyond GPT-2, as HF configs: the Pythia-160M shape and a Llama-style GQA model of the same
# width; ``tiny`` sizes for the smoke run.
FAMILY_CONFIGS = {
    "pythia-160m": ("GPTNeoXConfig", dict(vocab_size=50304, hidden_size=768, num_hidden_layers=12,
                                          num_attention_heads=12, intermediate_size=3072, rotary_pct=0.25,
                                          max_position_embeddings=2048, use_parallel_residual=True)),
    "llama-style": ("LlamaConfig", dict(vocab_size=32000, hidden_size=768, num_hidden_layers=12,
                                        num_attention_heads=12, num_key_value_heads=4, intermediate_size=2048,
                                        max_position_embeddings=2048)),
}
TINY_FAMILY = dict(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def _word_level_tokenizer(vocab_size: int):
    """A tokenizer of ``vocab_size`` made-up words (TransformerLens boots a model only with one)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="w0")),
                                   bos_token="w0", eos_token="w0", unk_token="w0")


def family_kwargs(family: str, *, tiny: bool = False) -> dict[str, Any]:
    """The HF config keywords of a FAMILY_CONFIGS model (``tiny``: the smoke run's sizes)."""
    kwargs = FAMILY_CONFIGS[family][1]
    if tiny:
        kwargs = kwargs | TINY_FAMILY | ({"num_key_value_heads": 2} if "num_key_value_heads" in kwargs else {})
    return kwargs


def make_family_checkpoint(spec: dict) -> dict[str, Any]:
    """A randomly initialised HF model of ``spec["family"]`` (a key of FAMILY_CONFIGS), saved to ``checkpoint``."""
    import torch
    import transformers

    config_name = FAMILY_CONFIGS[spec["family"]][0]
    kwargs = family_kwargs(spec["family"], tiny=bool(spec.get("tiny")))
    torch.manual_seed(spec.get("seed", 0))
    config = getattr(transformers, config_name)(**kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(spec["checkpoint"])
    _word_level_tokenizer(kwargs["vocab_size"]).save_pretrained(spec["checkpoint"])
    n_params = sum(p.numel() for p in model.parameters())
    return {"checkpoint": spec["checkpoint"], "n_params": n_params, "config": kwargs}


def probe(spec: dict) -> dict[str, Any]:
    """Backend, devices and library versions, as the workers see them."""
    import jax

    out: dict[str, Any] = {
        "jax": jax.__version__, "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()], "device_kind": jax.devices()[0].device_kind,
        # the backend's own version line: the CUDA and cuDNN versions on a GPU
        "platform_version": getattr(jax.devices()[0].client, "platform_version", None),
    }
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda"] = bool(torch.cuda.is_available())
        out["torch_cuda_version"] = torch.version.cuda
        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        out["torch"] = None
    from importlib.metadata import PackageNotFoundError, version

    for module, dist in (("transformers", "transformers"), ("transformer_lens", "transformer-lens"), ("flax", "flax")):
        try:
            out[module] = version(dist)
        except PackageNotFoundError:
            out[module] = None
    return out


KINDS = {
    "jaxdiag_runner": jaxdiag_runner, "jaxdiag_step": jaxdiag_step, "transformers": transformers_eager,
    "transformerlens": transformerlens_bridge, "torch_process": torch_process, "gemm": gemm,
    "startup_phases": startup_phases, "probe": probe, "make_checkpoint": make_checkpoint,
    "make_family_checkpoint": make_family_checkpoint,
}


def kinds_of(spec: dict) -> dict[str, Any]:
    """The worker kinds a spec can name: this module's, or those of ``spec["module"]`` (its ``KINDS``)."""
    return importlib.import_module(spec["module"]).KINDS if spec.get("module") else KINDS


def points(spec: dict) -> dict[str, Any]:
    """Several measurements in one process, in order, each appended to ``spec["log"]`` (JSON lines) as it
    ends, so a caller that kills this process at its time box still has every finished point. A point
    that would start after ``spec["deadline_s"]`` seconds is logged as skipped; one that raises is
    logged with its error and the next one runs."""
    start = time.perf_counter()
    kinds = kinds_of(spec)
    done = 0
    with open(spec["log"], "a") as log:
        for point in spec["points"]:
            if time.perf_counter() - start > spec.get("deadline_s", float("inf")):
                result: dict[str, Any] = {"skipped": "time box"}
            else:
                try:
                    result = kinds[point["kind"]](point)
                    done += 1
                except Exception as error:  # noqa: BLE001 (one failed point must not lose the others)
                    result = {"error": f"{type(error).__name__}: {error}"[:500]}
            result.pop("values", None)
            log.write(json.dumps({"point": point, "result": result}) + "\n")
            log.flush()
    return {"points_done": done, "seconds": round(time.perf_counter() - start, 2)}


KINDS["points"] = points


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    result = kinds_of(spec)[spec["kind"]](spec)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
