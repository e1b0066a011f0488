"""Stores agree bit for bit whatever runs the sweep: 1 or 8 devices, 1 or 2 processes, killed and resumed."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from jaxdiag.cli import main
from jaxdiag.sweep.store import PROGRESS_DIR
from tests.sweep_helpers import REPO, TOKEN_MODEL, assert_same_store, jaxdiag, save_tiny_model, write_token_prompts

COUNTS = {"alpha": 37, "beta": 29}  # unequal: the shorter condition is NaN-padded


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sweep-parallel")
    model = save_tiny_model(root / "model", **TOKEN_MODEL)
    prompts = write_token_prompts(root / "prompts.jsonl", COUNTS, max_len=30)  # two length buckets: 16, 32
    config = root / "run.toml"
    config.write_text(f'model = "{model}"\nbatch_size = 4\nchunk_size = 8\nconditions = ["alpha", "beta"]\n'
                      f'[prompts]\nsource = "jsonl"\npath = "{prompts}"\n')
    reference = root / "one-device.zarr"
    jaxdiag("run", str(config), "--out", str(reference), "--quiet", devices=1)
    return {"root": root, "config": config, "reference": reference}


def test_eight_devices_give_the_single_device_store(setup):
    out = setup["root"] / "eight-devices.zarr"
    jaxdiag("run", str(setup["config"]), "--out", str(out), "--quiet", devices=8)
    assert_same_store(setup["reference"], out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_single_process_store(setup):
    out = setup["root"] / "two-processes.zarr"
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen([sys.executable, "-m", "jaxdiag.cli", "run", str(setup["config"]), "--out", str(out),
                          "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                         env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    # each process computed only its own chunks (round-robin), and together all of them
    computed = [int(re.search(r"(\d+) prompts computed", err).group(1)) for _, err in outputs]
    assert sum(computed) == sum(COUNTS.values()) and min(computed) > 0
    assert_same_store(setup["reference"], out)


def test_killed_run_resumes_to_the_uninterrupted_store(setup, capsys):
    out = setup["root"] / "killed.zarr"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
               JAXDIAG_FAULT_DELAY_S="0.4")  # each chunk waits between its data and its done marker
    proc = subprocess.Popen([sys.executable, "-m", "jaxdiag.cli", "run", str(setup["config"]), "--out", str(out),
                             "--quiet"], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = out / PROGRESS_DIR

    def written_unmarked() -> list[str]:
        """Chunks whose data is on disk (n_tokens is written after every diagnostic) but whose marker is not."""
        done = {m.name for m in markers.iterdir() if not m.name.endswith(".tmp")}
        return [f"{c}-{k}" for c in range(2) for k in range(5)
                if (out / "n_tokens" / "c" / str(c) / str(k)).exists() and f"{c}-{k}" not in done]

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        # kill inside the worst window: a chunk written, its done marker not yet
        if markers.is_dir() and len(list(markers.iterdir())) >= 2 and written_unmarked():
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert written_unmarked(), "the kill missed the written-but-unmarked window"

    n_chunks = 5 + 4  # ceil(37 / 8) + ceil(29 / 8)
    done = [m.name for m in markers.iterdir() if not m.name.endswith(".tmp")]
    assert 2 <= len(done) < n_chunks
    # in this process from here on: no new interpreter, and this process has one device as well
    assert main(["info", str(out)]) == 0 and "INCOMPLETE" in capsys.readouterr().out
    assert main(["run", str(setup["config"]), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err

    assert main(["run", str(setup["config"]), "--out", str(out), "--resume"]) == 0
    resumed_log = capsys.readouterr().err
    done_rows = 0
    for name in done:
        condition, chunk = map(int, name.split("-"))
        count = list(COUNTS.values())[condition]
        done_rows += min(8, count - 8 * chunk)
    computed = int(re.search(r"(\d+) prompts computed", resumed_log).group(1))
    assert computed == sum(COUNTS.values()) - done_rows  # nothing redone, nothing lost
    assert not markers.exists()
    assert_same_store(setup["reference"], out)
