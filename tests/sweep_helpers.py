"""Shared pieces of the sweep tests: tiny checkpoints, prompt files, CLI subprocesses, store comparison."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
# A GPT-2-vocabulary model small enough for CI (text prompts need GPT-2's 50257 ids), and a
# token-id model with a 1000-token vocabulary (BOS = 0), as the induction model has.
TEXT_MODEL = dict(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4)
TOKEN_MODEL = dict(vocab_size=1000, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0)


def save_tiny_model(directory: Path, seed: int = 0, **config) -> Path:
    from flax import nnx

    from jaxdiag.models.load import save_checkpoint
    from jaxdiag.models.gpt2 import GPT2, GPT2Config

    return save_checkpoint(GPT2(GPT2Config(**config), rngs=nnx.Rngs(seed)), directory)


def write_token_prompts(path: Path, counts: dict[str, int], *, seed: int = 0, max_len: int = 40) -> Path:
    """Token-id prompts of varied lengths (several buckets, partial batches) with metadata."""
    rng = random.Random(seed)
    lines = []
    for condition, count in counts.items():
        for i in range(count):
            n = rng.randint(1, max_len)
            lines.append({"condition": condition, "tokens": [rng.randrange(1000) for _ in range(n)],
                          "source_id": f"{condition}-{i}", "difficulty": rng.random()})
    rng.shuffle(lines)  # conditions interleaved, as a real file may have them
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def jaxdiag(*args: str, devices: int = 1, env: dict | None = None, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``jaxdiag ARGS`` in a fresh interpreter (XLA flags must be set before JAX starts)."""
    full_env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                    JAX_PLATFORMS="cpu", **(env or {}))
    result = subprocess.run([sys.executable, "-m", "jaxdiag.cli", *args], env=full_env, cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"jaxdiag {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def assert_same_store(a: Path, b: Path) -> None:
    """Same schema, coordinates and attributes (but ``created``), and data variables equal bit for bit."""
    left, right = xr.open_zarr(a, chunks=None).load(), xr.open_zarr(b, chunks=None).load()
    for ds in (left, right):
        ds.attrs.pop("created")
    xr.testing.assert_identical(left, right)
    for name in left.data_vars:
        assert left[name].dtype == np.float32
        np.testing.assert_array_equal(left[name].values.view(np.uint32), right[name].values.view(np.uint32),
                                      err_msg=f"{name} differs in its bits")


def disk_fills_after(writes: int):
    """A stand-in for ``jaxdiag.sweep.run.write_chunk`` that writes ``writes`` chunks, then fails as a full disk does."""
    import errno

    import jaxdiag.sweep.run

    real, calls = jaxdiag.sweep.run.write_chunk, []

    def fills_up(*a, **k):
        calls.append(1)
        if len(calls) > writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*a, **k)

    return fills_up
