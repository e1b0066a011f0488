"""Stores named by fsspec URL: ``memory://`` in-process (run, a failed write, info, resume, report),
``file://`` across processes (two racing runs, two jax.distributed processes writing one store), and
one-line refusals of URLs fsspec cannot serve."""

from __future__ import annotations

import dataclasses
import errno
import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

import jaxdiag.sweep.run
from jaxdiag.cli import main
from jaxdiag.errors import JaxdiagError
from jaxdiag.paths import StoreLocation
from jaxdiag.sweep.store import CLAIM, PROGRESS_DIR, create_store, done_chunks, is_store
from tests.test_sweep_chunks import LAYOUT
from tests.sweep_helpers import (REPO, TOKEN_MODEL, assert_same_store, disk_fills_after, save_tiny_model,
                                 write_token_prompts)
from tests.test_sweep_parallel import _free_port

COUNTS = {"a": 21, "b": 13}  # chunks of 4: 6 + 4 = 10 chunks
CIRCUIT = '[roles]\n"Mover" = ["1.2", "1.3"]\n"Previous Token" = ["0.1"]\n'


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("urls")
    model = save_tiny_model(root / "model", **TOKEN_MODEL)
    prompts = write_token_prompts(root / "p.jsonl", COUNTS)
    args = ["--model", str(model), "--prompts", str(prompts), "--batch-size", "4", "--chunk-size", "4", "--quiet"]
    reference = root / "reference.zarr"
    assert main(["run", *args, "--out", str(reference)]) == 0
    (root / "circuit.toml").write_text(CIRCUIT)
    return {"root": root, "args": args, "reference": reference, "circuit": root / "circuit.toml"}


@pytest.fixture
def memory_url():
    """A fresh memory:// store, removed afterwards (memory:// is one global filesystem per process)."""
    name = f"jaxdiag-test-{uuid.uuid4().hex}"
    yield f"memory://{name}/run.zarr"
    memory = fsspec.filesystem("memory")
    if memory.exists(f"/{name}"):
        memory.rm(f"/{name}", recursive=True)


def _env() -> dict:
    return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jaxdiag.cli", *args], env=env or _env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_memory_url_runs_fails_resumes_and_reports_like_a_path(setup, memory_url, monkeypatch, capsys):
    args, url = setup["args"], memory_url
    real = jaxdiag.sweep.run.write_chunk
    monkeypatch.setattr(jaxdiag.sweep.run, "write_chunk", disk_fills_after(3))
    assert main(["run", *args, "--out", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "12 of 34 prompts are stored" in err and url in err and "--resume" in err
    monkeypatch.setattr(jaxdiag.sweep.run, "write_chunk", real)

    assert main(["info", url]) == 0
    text = capsys.readouterr().out
    assert f"store: {url}\n" in text and "status: INCOMPLETE (3 chunks written)" in text and f"--out {url} --resume" in text
    assert main(["run", *args, "--out", url]) == 2  # an existing store at a URL is refused as at a path
    assert "already exists" in capsys.readouterr().err
    assert main(["run", *args, "--out", url, "--resume"]) == 0
    assert_same_store(setup["reference"], url)
    assert not fsspec.filesystem("memory").exists(url.removeprefix("memory://") + "/" + PROGRESS_DIR)

    assert main(["info", url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["store"] == url and out["complete"] is True

    reports = {}
    for name, store in (("path", str(setup["reference"])), ("url", url)):
        directory = setup["root"] / f"report-{name}-{uuid.uuid4().hex}"
        assert main(["report", store, "--out", str(directory), "--circuit", str(setup["circuit"]),
                     "--n-boot", "50", "--n-perm", "50"]) == 0, capsys.readouterr().err
        reports[name] = json.loads((directory / "summary.json").read_text())
        assert store in (directory / "report.md").read_text()
    for summary in reports.values():
        assert {"path", "created"} <= set(summary["store"])
        del summary["store"]["path"], summary["store"]["created"]  # how the store was named, and when made
    assert reports["path"] == reports["url"]  # the same numbers, whichever way the store was reached


def test_overwrite_at_a_url_replaces_only_jaxdiag_stores(setup, memory_url, capsys):
    args, url = setup["args"], memory_url
    fs, root = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{root}/notes.txt", b"mine")
    assert main(["run", *args, "--out", url, "--overwrite"]) == 2
    assert "not a Zarr store" in capsys.readouterr().err and fs.cat_file(f"{root}/notes.txt") == b"mine"
    fs.rm(root, recursive=True)

    fs.pipe_file(f"{root}/{PROGRESS_DIR}/{CLAIM}", b"{}")  # what a creation killed before its commit leaves
    assert main(["run", *args, "--out", url]) == 2
    assert "another run is creating it" in capsys.readouterr().err
    assert main(["run", *args, "--out", url, "--resume"]) == 2
    assert "not a Zarr store" in capsys.readouterr().err
    assert main(["run", *args, "--out", url, "--overwrite"]) == 0
    assert not fs.exists(f"{root}/{PROGRESS_DIR}")  # the claim went with the abandoned creation
    assert_same_store(setup["reference"], url)


def _missing_backend() -> str:
    for protocol, package in (("s3", "s3fs"), ("gs", "gcsfs"), ("abfs", "adlfs"), ("oci", "ocifs")):
        if importlib.util.find_spec(package) is None:
            return protocol
    pytest.skip("every object-store backend tried is installed")


@pytest.mark.parametrize("kind", ["unknown protocol", "missing backend"])
def test_urls_fsspec_cannot_serve_are_one_line_and_write_nothing(setup, tmp_path, monkeypatch, capsys, kind):
    protocol = "nope" if kind == "unknown protocol" else _missing_backend()
    url = f"{protocol}://bucket/run.zarr"
    expected = "Protocol not known: nope" if kind == "unknown protocol" else "Install"
    monkeypatch.chdir(tmp_path)
    # a model that does not exist: the URL is refused first, before the run looks at anything else
    for argv in (["run", "--model", str(tmp_path / "no-model"), "--out", url, "--quiet"], ["info", url],
                 ["info", url, "--json"], ["report", url, "--out", str(tmp_path / "report")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"jaxdiag: error: cannot use the store URL '{url}'") and err.count("\n") == 1, err
        assert expected in err
    assert list(tmp_path.iterdir()) == []


# `jaxdiag run` whose store template waits until every racer has passed the checks for an existing
# store: both then create at once, the race the creation protocol must settle.
RACER = """import os, sys, time
import jaxdiag.sweep.store as store
barrier, real = sys.argv.pop(1), store.store_template
def template(*args, **kwargs):
    open(os.path.join(barrier, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 120
    while len(os.listdir(barrier)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    return real(*args, **kwargs)
store.store_template = template
from jaxdiag.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("form", ["path", "file URL"])
def test_two_runs_racing_for_one_store_give_one_store_and_one_refusal(setup, tmp_path, form):
    out, barrier = tmp_path / "stores" / "raced.zarr", tmp_path / "barrier"
    barrier.mkdir()
    target = str(out) if form == "path" else out.as_uri()
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(barrier), "run", *setup["args"], "--out", target],
                              env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    assert len(os.listdir(barrier)) == 2  # both got as far as creating the store
    assert sorted(code for code, _ in results) == [0, 2], results
    refusal = next(err for code, err in results if code == 2).strip()
    assert refusal.startswith("jaxdiag: error:") and len(refusal.splitlines()) == 1 and "already exists" in refusal
    assert os.listdir(out.parent) == ["raced.zarr"]  # no temp folder left over
    assert not (out / PROGRESS_DIR).exists()  # nor a claim: the winner finalised
    assert_same_store(setup["reference"], target)


def test_two_processes_write_one_store_through_a_file_url(setup, tmp_path):
    """The multi-host case: two jax.distributed processes, each writing its own chunks of one store by URL.
    Slowed chunk writes make their writes interleave; the store is the single-process one bit for bit."""
    url = (tmp_path / "hosts.zarr").as_uri()
    port = _free_port()
    env = dict(_env(), JAXDIAG_FAULT_DELAY_S="0.2")
    procs = [_cli("run", *[a for a in setup["args"] if a != "--quiet"], "--out", url,
                  "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i), env=env)
             for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    computed = [int(re.search(r"(\d+) prompts computed", err).group(1)) for _, err in outputs]
    assert sum(computed) == sum(COUNTS.values()) and min(computed) > 0
    assert_same_store(setup["reference"], url)


# Creation at a URL without JAX: the store's layout from the chunk tests, a memory:// place reached
# through filesystems that lack exclusive create or fail mid-upload.
class _NoExclusiveCreate(MemoryFileSystem):
    def _open(self, path, mode="rb", **kwargs):
        if "x" in mode:
            raise ValueError(f"unsupported file mode: {mode!r}")
        return super()._open(path, mode, **kwargs)


class _FullAfterTwoUploads(MemoryFileSystem):
    uploads = 0

    def put_file(self, lpath, rpath, **kwargs):
        type(self).uploads += 1
        if type(self).uploads > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().put_file(lpath, rpath, **kwargs)


def _place(url: str, fs_class: type) -> StoreLocation:
    # memory:// is one store per process whatever the instance, so zarr (its own instance) sees the same objects
    return dataclasses.replace(StoreLocation.of(url), fs=fs_class(skip_instance_cache=True))


def test_a_url_creation_without_exclusive_create_checks_then_writes(memory_url):
    place = _place(memory_url, _NoExclusiveCreate)
    create_store(place, LAYOUT, {"schema_version": 1}, overwrite=False)
    assert is_store(memory_url) and done_chunks(memory_url) == set()
    with pytest.raises(JaxdiagError, match="already exists"):
        create_store(place, LAYOUT, {"schema_version": 1}, overwrite=False)


def test_a_failed_url_creation_leaves_nothing(memory_url):
    place = _place(memory_url, _FullAfterTwoUploads)
    with pytest.raises(OSError, match="No space left"):
        create_store(place, LAYOUT, {"schema_version": 1}, overwrite=False)
    assert not place.exists()  # neither the objects uploaded nor the claim
    create_store(memory_url, LAYOUT, {"schema_version": 1}, overwrite=False)  # the place is free again
    assert is_store(memory_url)
