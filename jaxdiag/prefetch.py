"""Read a checkpoint on the second core while the run imports JAX.

A run needs its weights file twice before the first prompt: hashed (the store records the digest)
and read. For GPT-2 small (0.5 GB) that is ~0.3 s each, and both release the GIL (hashlib while it
hashes the mapped file, safetensors while it reads), so :func:`start` hands them to background
threads the moment the CLI knows the file, and :func:`sha256` / :func:`safetensors` return the
threads' results (or do the work then, for a file nobody started). Results are keyed by the file's identity (path,
size, mtime, inode), so a file replaced in between is read again; each is handed out once.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Callable

import numpy as np

_started: dict[tuple, Future] = {}
_lock = threading.Lock()


def _identity(kind: str, path: Path) -> tuple:
    stat = os.stat(path)
    return (kind, str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def _hash(path: Path) -> str:
    # One update over the mapped file: hashlib releases the GIL for the whole 0.5 GB. Chunked reads
    # (hashlib.file_digest) retake it per 256 KiB chunk and, while the main thread imports JAX,
    # wait up to a switch interval for each: the hash then finished ~0.25 s after the imports
    # instead of long before them.
    with open(path, "rb") as handle:
        try:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                return hashlib.sha256(mapped).hexdigest()
        except (ValueError, OSError):  # an empty file, or one that cannot be mapped
            return hashlib.file_digest(handle, "sha256").hexdigest()


def _hash_streamed(path: Path, chunk: int = 16 * 2**20) -> str:
    """As :func:`_hash`, mapping the file 16 MiB at a time: for shards hashed while a model is being
    built, whose mapped pages would otherwise count in the process's RSS next to the parameters. A
    window, unlike a read into a buffer, costs no copy out of the page cache (that copy's system time
    was a fifth to a third of a shard's hashing CPU time), and each update releases the GIL for the
    whole window (offsets are multiples of 16 MiB, as mmap needs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        for start in range(0, size, chunk):
            with mmap.mmap(handle.fileno(), min(chunk, size - start), access=mmap.ACCESS_READ,
                           offset=start) as window:
                digest.update(window)
    return digest.hexdigest()


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


_WORK: dict[str, Callable[[Path], object]] = {"sha256": _hash, "safetensors": _read_safetensors}


def start(path: Path) -> None:
    """Begin hashing ``path`` and, for a ``.safetensors`` file, reading its tensors, in daemon threads."""
    for kind in ("sha256", "safetensors") if Path(path).suffix == ".safetensors" else ("sha256",):
        try:
            key = _identity(kind, path)
        except OSError:
            return  # a missing file is reported where the run opens it
        with _lock:
            if key in _started:
                continue
            future: Future = Future()
            _started[key] = future
        threading.Thread(target=_fill, args=(future, _WORK[kind], path), name=f"jaxdiag-{kind}", daemon=True).start()


# One daemon thread hashes the shards in turn: a thread per shard ran them all at once on the cores the
# model's build needs; one at a time, the build keeps a core and the hashes still finish before it on
# a 2 GB checkpoint (benchmarks/LOAD.md).
_shards: queue.SimpleQueue | None = None


def _no_thread_in_child() -> None:
    global _shards
    _shards = None  # threads are not forked: a child queues its shards for a thread of its own


os.register_at_fork(after_in_child=_no_thread_in_child)


def start_hash(path: Path) -> None:
    """Queue ``path`` for hashing (streamed, :func:`_hash_streamed`) by the shard-hashing daemon thread;
    :func:`sha256` takes the result."""
    global _shards
    try:
        key = _identity("sha256", path)
    except OSError:
        return
    with _lock:
        if key in _started:
            return
        future: Future = Future()
        _started[key] = future
        if _shards is None:
            _shards = queue.SimpleQueue()
            threading.Thread(target=_hash_queued, args=(_shards,), name="jaxdiag-sha256", daemon=True).start()
    _shards.put((future, path))


def _hash_queued(shards: queue.SimpleQueue) -> None:
    while True:
        future, path = shards.get()
        _fill(future, _hash_streamed, path)


def _fill(future: Future, work: Callable[[Path], object], path: Path) -> None:
    try:
        future.set_result(work(path))
    except BaseException as exc:  # raised again to whoever asks for the result
        future.set_exception(exc)


def _result(kind: str, path: Path):
    with _lock:
        future = _started.pop(_identity(kind, path), None)
    return future.result() if future is not None else _WORK[kind](path)


def sha256(path: Path) -> str:
    """The hex SHA-256 of ``path``'s bytes."""
    return _result("sha256", path)


def safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``.safetensors`` file, as stored (safetensors' own errors for a corrupt file)."""
    return _result("safetensors", path)


def taken_safetensors(path: Path) -> dict[str, np.ndarray] | None:
    """The tensors :func:`start` read in the background, or None when nobody did or the read failed
    (a dtype numpy's safetensors reader does not know, bfloat16; or a corrupt file): the caller then
    maps the file itself, tensor by tensor, and reports what is wrong with it."""
    try:
        key = _identity("safetensors", path)
    except OSError:
        return None
    with _lock:
        future = _started.pop(key, None)
    if future is None:
        return None
    try:
        return future.result()
    except Exception:  # safetensors raises its own error types
        return None
