"""Faults during a sweep: a full disk and SIGTERM end in one line with the completed chunks kept, and
--resume finishes the store bit for bit as an uninterrupted run would have written it."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import jaxdiag.sweep.run
from jaxdiag.cli import main
from jaxdiag.sweep.store import PROGRESS_DIR
from tests.sweep_helpers import (REPO, TOKEN_MODEL, assert_same_store, disk_fills_after, save_tiny_model,
                                 write_token_prompts)

COUNTS = {"a": 21, "b": 13}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    model = save_tiny_model(root / "model", **TOKEN_MODEL)
    prompts = write_token_prompts(root / "p.jsonl", COUNTS)
    args = ["--model", str(model), "--prompts", str(prompts), "--batch-size", "4", "--chunk-size", "4", "--quiet"]
    reference = root / "reference.zarr"
    assert main(["run", *args, "--out", str(reference)]) == 0
    return root, args, reference


def test_a_full_disk_is_one_line_and_resume_completes_the_store(setup, monkeypatch, capsys):
    root, args, reference = setup
    out = root / "full.zarr"
    real = jaxdiag.sweep.run.write_chunk
    monkeypatch.setattr(jaxdiag.sweep.run, "write_chunk", disk_fills_after(3))
    assert main(["run", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and "--resume" in err and str(out) in err
    assert "12 of 34 prompts are stored" in err  # the three chunks written before the disk filled
    assert len(list((out / PROGRESS_DIR).iterdir())) == 3
    monkeypatch.setattr(jaxdiag.sweep.run, "write_chunk", real)  # space is back
    assert main(["run", *args, "--out", str(out), "--resume"]) == 0
    assert_same_store(reference, out)


@pytest.mark.parametrize("form", ["path", "file URL"])
def test_sigterm_flushes_reports_and_resumes_to_the_same_store(setup, capsys, form):
    root, args, reference = setup
    out = root / f"term-{form.replace(' ', '-')}.zarr"
    target = str(out) if form == "path" else out.as_uri()  # a URL: markers and resume through fsspec
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu",
               JAXDIAG_FAULT_DELAY_S="0.3")  # slow chunk writes: the signal lands mid-sweep
    proc = subprocess.Popen([sys.executable, "-m", "jaxdiag.cli", "run", *args, "--out", target], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    markers = out / PROGRESS_DIR

    def marked() -> list[str]:  # done markers only (a URL store's creation claim lives there too)
        return [m.name for m in markers.iterdir() if re.fullmatch(r"\d+-\d+", m.name)] if markers.is_dir() else []

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len(marked()) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the signal"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jaxdiag: interrupted:") and "--resume" in lines[0]
    assert f"--out {target} --resume" in lines[0]
    assert 2 <= len(marked()) < 9  # what was written is kept; not everything was
    assert main(["run", *args, "--out", target, "--resume"]) == 0
    assert_same_store(reference, target)


def test_a_store_that_cannot_be_created_is_one_line_and_leaves_nothing(setup, monkeypatch, capsys):
    root, args, _ = setup
    out = root / "nospace.zarr"

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(jaxdiag.sweep.run, "create_store", no_space)
    assert main(["run", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"jaxdiag: error: cannot create {out}: No space left on device"
    assert not out.exists()
