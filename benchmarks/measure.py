"""Shared pieces of a measurement: FLOP counts, prompts, timing, peak memory of this process."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np


def forward_flops(*, n_layer: int, n_embd: int, d_mlp: int, seq: int) -> float:
    """Multiply-add FLOPs of one GPT-2 forward over ``seq`` tokens, without the LM head.

    Linear layers: 2 FLOPs per weight per token (``c_attn``, ``c_proj``, ``c_fc``, ``mlp.c_proj``).
    Attention: q.k and pi.v over the causal triangle only (``seq (seq + 1) / 2`` pairs), the useful
    work; counting the full square would flatter every tool's efficiency at long lengths.
    """
    linear = 2 * seq * n_layer * (4 * n_embd * n_embd + 2 * n_embd * d_mlp)
    attention = 2 * 2 * n_layer * n_embd * seq * (seq + 1) / 2
    return float(linear + attention)


def lm_head_flops(*, n_embd: int, vocab_size: int, seq: int) -> float:
    return float(2 * seq * n_embd * vocab_size)


def random_prompts(n: int, seq: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """``[n, seq]`` int32 token ids, the same for every tool (seeded)."""
    return np.random.default_rng(seed).integers(0, vocab_size, size=(n, seq), dtype=np.int32)


def rss_mb(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` (peak resident set) of this process, MiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: ``5 > /proc/self/clear_refs``); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def best_of(run_once: Callable[[], None], repeats: int, *, min_seconds: float = 0.0) -> list[float]:
    """Wall times of ``repeats`` calls (at least until ``min_seconds`` have passed in all)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 * max(repeats, 1):
            break
    return times


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_name(machine: dict) -> str:
    """The recorded CPU for the results' headers: ``AMD EPYC (family 25 model 17)``."""
    family = machine.get("cpu_family_model")
    return f"{machine.get('cpu')}" + (f" ({family})" if family else "")
