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
    """As :func:`_hash` through one reused 16 MiB buffer: for shards hashed while a model is being
    built, whose mapped pages would otherwise count in the process's RSS next to the parameters
    (16 MiB reads release the GIL for all but a few switches per shard)."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
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


def start_hash(path: Path) -> None:
    """Begin hashing ``path`` (streamed, :func:`_hash_streamed`) in a daemon thread; :func:`sha256` takes the result."""
    try:
        key = _identity("sha256", path)
    except OSError:
        return
    with _lock:
        if key in _started:
            return
        future: Future = Future()
        _started[key] = future
    threading.Thread(target=_fill, args=(future, _hash_streamed, path), name="jaxdiag-sha256", daemon=True).start()


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
