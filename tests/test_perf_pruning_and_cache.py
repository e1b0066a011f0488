"""A diagnostics-only pass skips what no probe reads; JAX's persistent compilation cache for the commands."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiag.models.gpt2 import GPT2, GPT2Config
from jaxdiag.probes import HEAD_OUTPUT_PROBE
from jaxdiag.sweep.runner import SWEEP_PROBES, diagnostics_step

CONFIG = GPT2Config(vocab_size=97, n_positions=64, n_embd=48, n_layer=3, n_head=4)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, CONFIG.vocab_size, (6, 21)), jnp.int32)
    return tokens, jnp.asarray([21, 1, 2, 9, 20, 13], jnp.int32)  # padding, and a one-token prompt


@pytest.mark.parametrize("precision", ["highest", "bf16"])
@pytest.mark.parametrize("attention", ["direct", "streaming"])
def test_probes_only_pass_gives_the_full_pass_values_to_float32_rounding(batch, precision, attention):
    graphdef, state = nnx.split(GPT2(CONFIG, precision=precision, rngs=nnx.Rngs(1)))

    @jax.jit  # one program, not hundreds of eager ops
    def both(state, tokens, lengths):
        model = nnx.merge(graphdef, state)
        return (model(tokens, lengths, probes=SWEEP_PROBES, query="last", attention=attention),
                model(tokens, lengths, probes=SWEEP_PROBES, query="last", hidden=False, attention=attention))

    full, pruned = both(state, *batch)
    assert pruned.hidden is None and pruned.logits is None and full.hidden is not None
    assert set(pruned.probes) == set(full.probes)
    for name, value in full.probes.items():
        np.testing.assert_allclose(np.asarray(pruned.probes[name]), np.asarray(value), rtol=1e-6, atol=2e-7,
                                   equal_nan=True, err_msg=name)


def _step_flops(step, *args) -> float:
    analysis = step.lower(*args).compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


def test_the_sweep_step_never_computes_the_last_layers_values_or_other_rows(batch):
    """The compiled diagnostics step does fewer FLOPs than the same probes with the hidden states
    asked for, by at least the last layer's value projection over every position."""
    model = GPT2(CONFIG, rngs=nnx.Rngs(1))
    graphdef, state = nnx.split(model)

    @jax.jit
    def with_hidden(state, tokens, lengths):
        out = nnx.merge(graphdef, state)(tokens, lengths, probes=SWEEP_PROBES, query="last")
        return out.probes, out.hidden

    batch_size, seq = batch[0].shape
    values_flops = 2 * batch_size * seq * CONFIG.n_embd * CONFIG.n_embd
    saved = _step_flops(with_hidden, state, *batch) - _step_flops(diagnostics_step(graphdef, "last"), state, *batch)
    assert saved >= values_flops


def test_a_probe_of_head_outputs_keeps_every_layer_whole(batch):
    model = GPT2(CONFIG, rngs=nnx.Rngs(1))
    out = model(*batch, probes=(HEAD_OUTPUT_PROBE,), query="last", hidden=False)
    assert out.probes["head_out"].shape == (6, CONFIG.n_layer, 21, CONFIG.n_head, CONFIG.d_head)


_CACHED_RUN = """
import sys, hashlib, numpy as np, jax, jax.numpy as jnp
from flax import nnx
from jaxdiag.models.gpt2 import GPT2, GPT2Config
from jaxdiag.sweep.compile_cache import enable_compile_cache
from jaxdiag.sweep.runner import diagnostics_step
print(enable_compile_cache(sys.argv[1], min_compile_seconds=0))
model = GPT2(GPT2Config(vocab_size=97, n_positions=64, n_embd=48, n_layer=3, n_head=4), rngs=nnx.Rngs(1))
graphdef, state = nnx.split(model)
tokens = jnp.asarray(np.arange(40).reshape(2, 20) % 97, jnp.int32)
values = diagnostics_step(graphdef, "last")(state, tokens, jnp.asarray([20, 7], jnp.int32))
print(hashlib.sha256(b"".join(np.asarray(values[k]).tobytes() for k in sorted(values))).hexdigest())
"""


def test_a_second_process_reads_the_compiled_step_from_the_cache_and_gets_the_same_bits(tmp_path):
    cache = tmp_path / "xla"

    def run() -> list[str]:
        done = subprocess.run([sys.executable, "-c", _CACHED_RUN, str(cache)], capture_output=True, text=True,
                              check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        return done.stdout.split()

    first = run()
    entries = sorted(p.name for p in cache.iterdir())
    assert first[0] == str(cache) and any("step" in name for name in entries)
    second = run()
    assert second == first and sorted(p.name for p in cache.iterdir()) == entries  # read, not recompiled


def test_the_cache_directory_defaults_and_an_unusable_one_only_warns(tmp_path, monkeypatch, capsys):
    from jaxdiag.sweep.compile_cache import CACHE_ENV, default_cache_dir, enable_compile_cache

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "jaxdiag" / "xla"
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    previous = jax.config.jax_compilation_cache_dir
    assert enable_compile_cache(blocker / "xla") is None
    assert jax.config.jax_compilation_cache_dir == previous
    warning = capsys.readouterr().err
    assert warning.startswith("jaxdiag: warning: no compilation cache") and warning.count("\n") == 1


def test_run_flags_choose_the_cache(tiny_checkpoint, tmp_path, monkeypatch):
    from jaxdiag.sweep import compile_cache
    from jaxdiag.cli import main

    from jaxdiag.cli import _parser, _use_compile_cache

    chosen: list = []
    monkeypatch.setattr(compile_cache, "enable_compile_cache", lambda directory=None, **_: chosen.append(directory))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"condition": "a", "tokens": [1, 2, 3]}\n{"condition": "b", "tokens": [4, 5]}\n')
    base = ["run", "--model", str(tiny_checkpoint), "--prompts", str(prompts), "--quiet", "--out", "s.zarr"]
    assert main([*base[:-1], str(tmp_path / "s.zarr"), "--compile-cache", str(tmp_path / "c")]) == 0
    for flags in ([], ["--no-compile-cache"]):
        _use_compile_cache(_parser().parse_args(base + flags))
    assert chosen == [str(tmp_path / "c"), None]  # and nothing for --no-compile-cache
    with pytest.raises(SystemExit):
        _parser().parse_args([*base, "--no-compile-cache", "--compile-cache", "x"])


def test_prefetched_weights_are_the_files_bytes_and_a_replaced_file_is_read_again(tiny_checkpoint, tmp_path):
    """What the CLI starts reading before JAX imports is what reading the file now gives; a file replaced
    in between (new size/mtime/inode) is read afresh, never served stale; errors reach the reader."""
    import hashlib
    import shutil

    from safetensors.numpy import load_file

    from jaxdiag import prefetch

    weights = tmp_path / "model.safetensors"
    shutil.copy(tiny_checkpoint / "model.safetensors", weights)
    prefetch.start(weights)
    assert prefetch.sha256(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")  # cannot be memory-mapped: hashed by reading
    assert prefetch.sha256(empty) == hashlib.sha256(b"").hexdigest()
    fresh = load_file(str(weights))
    got = prefetch.safetensors(weights)
    assert got.keys() == fresh.keys() and all(np.array_equal(got[k], fresh[k]) for k in fresh)

    prefetch.start(weights)
    weights.unlink()  # replaced by other weights after the run started reading
    other = {"wte.weight": np.ones((2, 3), np.float32)}
    from safetensors.numpy import save_file

    save_file(other, str(weights))
    assert prefetch.sha256(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert list(prefetch.safetensors(weights)) == ["wte.weight"]

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    prefetch.start(broken)
    with pytest.raises(Exception):
        prefetch.safetensors(broken)


_RUN_IMPORTS = """
import sys
from jaxdiag.cli import main
code = main(sys.argv[1:])
print(code, *sorted(m for m in ("xarray", "pandas", "dask", "matplotlib", "scipy") if m in sys.modules))
"""


def test_jaxdiag_run_imports_neither_xarray_nor_dask(tiny_checkpoint, tmp_path):
    """`jaxdiag run` writes its store through Zarr directly: xarray, pandas and dask (~1 s of start-up) stay out."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"condition": "a", "tokens": [1, 2, 3]}\n{"condition": "b", "tokens": [4, 5]}\n')
    done = subprocess.run([sys.executable, "-c", _RUN_IMPORTS, "run", "--model", str(tiny_checkpoint), "--prompts",
                           str(prompts), "--quiet", "--no-compile-cache", "--out", str(tmp_path / "s.zarr")],
                          capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0"], done.stdout


def test_the_command_freezes_the_collector_and_main_leaves_it_alone(tmp_path, monkeypatch, capsys):
    """`jaxdiag` (cli.command) exits with main's status after gc.freeze(), which skips the interpreter's
    final walk over every live object; main() called in-process (tests, notebooks) never freezes."""
    import gc

    from jaxdiag import cli

    missing = str(tmp_path / "missing.zarr")
    before = gc.get_freeze_count()
    assert cli.main(["info", missing]) == 2 and gc.get_freeze_count() == before
    monkeypatch.setattr(cli, "_OWN_PROCESS", False)  # restored after the test, as command() sets it
    monkeypatch.setattr(sys, "argv", ["jaxdiag", "info", missing])
    try:
        with pytest.raises(SystemExit) as exited:
            cli.command()
        assert exited.value.code == 2 and "jaxdiag: error:" in capsys.readouterr().err
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
