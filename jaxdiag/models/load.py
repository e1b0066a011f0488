"""How a family's model is built from a checkpoint directory: its config, parameters and tokenizer.

Where a checkpoint is (hub, local, builtin, wheel; hashes; tensor reads) is
:mod:`jaxdiag.checkpoint`'s question; this module answers how one becomes a model, by one rule for
every family (:mod:`jaxdiag.models.registry`): the model's nnx parameter paths mirror the HF weight
names once the family's prefix is stripped, with ``kernel``/``scale``/``embedding`` for HF's
``weight``. Every parameter is checked name by name, shape by shape and dtype by dtype.

Parameters are read one at a time from the memory-mapped file and put on the device, so a model
costs its own size once. Their dtype: ``precision="bf16"`` keeps a bfloat16 checkpoint's bfloat16
(host and device); otherwise parameters are float32, upcast from whatever the file stores, and the
model's ``weights_dtype`` says what that was (the store records it as ``weights_upcast``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxdiag.checkpoint import FLOAT_DTYPES, Checkpoint, StoredTensor, Tensor, read_tensors, tensor_slices
from jaxdiag.errors import JaxdiagError
from jaxdiag.models.family import Family, WeightNames
from jaxdiag.models.registry import registered
from jaxdiag.models.sharding import SliceableTensor, check_divides, place_parameters, uses_model_axis
from jaxdiag.schema import Precision


def read_raw_config(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JaxdiagError(f"cannot read model config {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise JaxdiagError(f"{path}: a model config is a JSON object, not {type(raw).__name__}")
    return raw


def model_type_of(directory: Path) -> str | None:
    return read_raw_config(Path(directory) / "config.json").get("model_type")


def read_config(directory: Path):
    """The family config of a checkpoint directory, by its ``model_type``."""
    directory = Path(directory)
    path = directory / "config.json"
    raw = read_raw_config(path)
    model_type = raw.get("model_type")
    entry = registered(model_type, source=str(path))
    try:
        config = entry.config.from_dict(raw, source=str(path))
    except KeyError as exc:
        raise JaxdiagError(f"{path}: a {model_type} config needs {exc.args[0]!r}, which this one lacks") from None
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:  # a wrong-typed value its reader computed with
        raise JaxdiagError(f"{path}: a {model_type} config with a value of the wrong type ({exc})") from None
    check_field_types(config, str(path))
    if model_type in ("bert", "albert"):
        cls_id, mask_id = _vocab_id(directory, "[CLS]"), _vocab_id(directory, "[MASK]")
        config = dataclasses.replace(config, bos_token_id=cls_id if cls_id is not None else 0,
                                     mask_token_id=mask_id if mask_id is not None else -1)
    return config


def check_field_types(config: Any, source: str) -> None:
    """Every field of a family's config dataclass (and of the dataclasses it holds, e.g. its ``Rope``) holds a
    value of its declared type, every float is finite and every int that is not an ``*_id`` is a size, >= 0
    (read from the dataclass, not listed per field): config.json is user input, and a string where a count
    belongs, a negative width or a NaN theta would fail deep in JAX or compute garbage."""
    import typing

    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value, allowed = getattr(config, field.name), typing.get_args(hints[field.name]) or (hints[field.name],)
        if value is None and type(None) in allowed:
            continue
        ok = any(_is_a(value, t) for t in allowed if t is not type(None))
        if not ok:
            names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
            raise JaxdiagError(f"{source}: {field.name} must be {names}, not {json.dumps(value, default=repr)}")
        for item in value if isinstance(value, tuple) else (value,):
            if dataclasses.is_dataclass(item):
                check_field_types(item, source)
            elif isinstance(item, float) and not math.isfinite(item):
                raise JaxdiagError(f"{source}: {field.name} must be a finite number, not {item}")
            elif (isinstance(item, int) and not isinstance(item, bool) and item < 0
                  and not field.name.endswith("_id")):
                raise JaxdiagError(f"{source}: {field.name} must be a size (>= 0), not {item}")


def _is_a(value: Any, kind: Any) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:  # JSON true is not a count
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return not isinstance(kind, type) or isinstance(value, kind)  # Literal and other forms: left to the family


def _vocab_id(directory: Path, token: str) -> int | None:
    """The id of ``token`` in the checkpoint's ``tokenizer.json`` or ``vocab.txt``, if any."""
    if (directory / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(directory / "tokenizer.json")).token_to_id(token)
    if (directory / "vocab.txt").is_file():
        lines = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
        return lines.index(token) if token in lines else None
    return None


def hf_names(weights: dict[str, Tensor], rule: WeightNames) -> dict[str, Tensor]:
    """HF tensor names -> ours: the family's prefix stripped, buffers and heads dropped, and the old
    ``LayerNorm.gamma/beta`` spelling renamed."""
    out = {}
    for name, value in weights.items():
        for prefix in rule.prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        if name.endswith(rule.ignored) or name.startswith(rule.ignored_prefixes):
            continue
        if name.endswith(".gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith(".beta"):
            name = name[: -len("beta")] + "bias"
        out[name] = value
    return out


def _hf_name(path: tuple) -> str:
    """nnx state path (``('h', 3, 'attn', 'c_attn', 'kernel')``) -> HF weight name."""
    *parents, leaf = (str(p) for p in path)
    suffix = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}[leaf]
    return ".".join([*parents, suffix])


def fill_model(abstract: nnx.Module, weights: dict[str, Tensor], *, source: str, what: str,
               rule: WeightNames, keep_bf16: bool = False) -> nnx.Module:
    """``abstract`` (an ``nnx.eval_shape`` model) with its parameters set from HF-named ``weights``
    (names already mapped by :func:`hf_names`), checked name by name, shape by shape and dtype by
    dtype. Each is read (memory-mapped) and put on the device in turn; ``keep_bf16``: a bfloat16
    tensor stays bfloat16, else every parameter takes the model's dtype (float32)."""
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    matched = match_weights(flat, weights, source=source, what=what, rule=rule)

    def on_device(path, var) -> jax.Array:
        name, transpose = matched[path]
        value = weights[name]
        value = value.read() if isinstance(value, StoredTensor) else value
        dtype = value.dtype if keep_bf16 and value.dtype == jnp.bfloat16 else var.dtype
        return jnp.asarray(value.T if transpose else value, dtype=dtype)  # the tensor's pages unmapped after

    # a few tensors at a time (the copies release the GIL): the cores share the work, and the host holds
    # at most that many tensors' pages besides the parameters already on the device
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for (path, var), array in zip(flat, pool.map(lambda item: on_device(*item), flat)):
            var.set_value(array)
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def match_weights(flat, weights: Mapping[str, Any], *, source: str, what: str,
                  rule: WeightNames) -> dict[tuple, tuple[str, bool]]:
    """``{param path: (tensor name, stored transposed)}`` for the flat state ``flat`` of a model and
    HF-named ``weights`` (anything with a ``shape``): a one-line error unless every parameter has
    exactly one tensor of its shape."""
    expected = {_hf_name(path): var for path, var in flat}
    # a tied tensor the checkpoint stores under its other name only is read under ours
    lookup = {name: name for name in weights}
    for stored, ours in rule.aliases:
        if ours in expected and ours not in lookup and stored in lookup and stored not in expected:
            lookup[ours] = lookup.pop(stored)
    names = {name for name in lookup if name in expected or name not in rule.tied_heads}
    missing = sorted(set(expected) - names)
    unexpected = sorted(names - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weights (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise JaxdiagError(f"{source} does not match {what} with this config: {'; '.join(parts)}")
    matched = {}
    for path, var in flat:  # every check before the first read: a bad checkpoint costs no device memory
        name = lookup[_hf_name(path)]
        value = weights[name]
        # a read tensor is named as its file names it, in the file (the shard) that holds it
        where, stored = (value.file, value.name) if isinstance(value, StoredTensor) else (source, name)
        transpose = rule.transpose_kernels and str(path[-1]) == "kernel"
        shape = tuple(value.shape)
        if (shape[::-1] if transpose else shape) != tuple(var.shape):
            raise JaxdiagError(f"{where}: weight {stored} has shape {shape}, config implies "
                               f"{tuple(var.shape)[::-1] if transpose else tuple(var.shape)}")
        if np.dtype(value.dtype) not in FLOAT_DTYPES:
            raise JaxdiagError(f"{where}: weight {stored} has dtype {np.dtype(value.dtype).name}, not a floating-point type")
        matched[path] = (name, transpose)
    return matched


def stored_dtype(weights: dict[str, Tensor]) -> str:
    """The checkpoint's floating-point dtype(s), e.g. ``bfloat16`` (``a+b`` when mixed)."""
    names = {np.dtype(v.dtype).name for v in weights.values() if np.dtype(v.dtype) in FLOAT_DTYPES}
    return "+".join(sorted(names))


def build_model(config, weights: dict[str, np.ndarray], *, precision: Precision = "highest",
                source: str = "checkpoint") -> Family:
    """The family model of ``config`` whose parameters are the HF-named ``weights``."""
    entry = registered(config.model_type, source=source)
    weights = hf_names(weights, entry.weights)
    config = entry.model.configure(config, list(weights))  # e.g. an encoder's MLM head, when stored
    abstract = nnx.eval_shape(lambda: entry.model(config, precision=precision, rngs=nnx.Rngs(0)))
    model = fill_model(abstract, weights, source=source, what=f"a {config.model_type} model", rule=entry.weights,
                       keep_bf16=precision == "bf16")
    model.weights_dtype = stored_dtype(weights)
    return model


def load_model(checkpoint: Checkpoint, *, precision: Precision = "highest",
               mesh: Mesh | None = None) -> tuple[Any, Family]:
    """(config, model) of a resolved checkpoint, of whichever family its ``model_type`` names; with a
    ``mesh`` whose ``model`` axis has several devices, its parameters sharded over it
    (:mod:`jaxdiag.models.sharding`), each tensor streamed into its shards."""
    config = read_config(checkpoint.directory)
    source = str(checkpoint.weights_file)
    if uses_model_axis(mesh):
        check_divides(config, dict(mesh.shape)["model"])
        model = build_sharded_model(config, tensor_slices(checkpoint.weights_file), mesh, precision=precision,
                                    source=source)
    else:
        model = build_model(config, read_tensors(checkpoint.weights_file), precision=precision, source=source)
    return model.config, model  # the weights settle what the config left open (an encoder's MLM head)


def build_sharded_model(config, tensors: Mapping[str, SliceableTensor], mesh: Mesh, *,
                        precision: Precision = "highest", source: str = "checkpoint") -> Family:
    """As :func:`build_model`, with each parameter read shard by shard from ``tensors`` straight onto
    ``mesh``: no buffer ever holds more of the model than one tensor."""
    entry = registered(config.model_type, source=source)
    weights = hf_names(tensors, entry.weights)
    config = entry.model.configure(config, list(weights))
    abstract = nnx.eval_shape(lambda: entry.model(config, precision=precision, rngs=nnx.Rngs(0)))
    matched = match_weights(nnx.to_flat_state(nnx.state(abstract)), weights, source=source,
                            what=f"a {config.model_type} model", rule=entry.weights)

    def tensor_of(path: tuple) -> tuple[SliceableTensor, bool]:
        name, transpose = matched[path]
        return weights[name], transpose

    return place_parameters(abstract, tensor_of, mesh)


def weights_attrs(checkpoint: Checkpoint, model: Family) -> dict[str, str]:
    """What a store records of the weights beyond ``weights_sha256``: the shards' manifest (whose
    sha256 ``weights_sha256`` is), and any upcast of stored half-precision parameters to float32."""
    attrs = {}
    if checkpoint.manifest:
        attrs["weights_manifest"] = checkpoint.manifest_json()
    stored = getattr(model, "weights_dtype", "float32")
    held = {str(v.dtype) for v in jax.tree.leaves(nnx.state(model, nnx.Param))}
    if stored not in ("float32", ""):
        attrs["weights_dtype"] = stored
        if held == {"float32"}:
            attrs["weights_upcast"] = f"{stored} -> float32 (parameters stored in {stored} are held in float32)"
    return attrs


def export_weights(model: Family) -> dict[str, np.ndarray]:
    """The model's parameters under their HF names, without the family's prefix (the inverse of
    :func:`build_model` for a model whose kernels are stored as the model holds them)."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {_hf_name(path): np.asarray(jax.device_get(var[...]), dtype=np.float32) for path, var in flat}


def save_checkpoint(model: Family, directory: str | Path, *, extra_config: dict | None = None) -> Path:
    """Write a GPT-2's ``config.json`` + ``model.safetensors`` that transformers and jaxdiag both load."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_hf_dict() | (extra_config or {})
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # "transformer." prefix + contiguous arrays: the layout GPT2LMHeadModel.from_pretrained expects.
    tensors = {f"transformer.{k}": np.ascontiguousarray(v) for k, v in sorted(export_weights(model).items())}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def tokenizer_for(directory: Path, config, *, prepend_bos: bool = True):
    """The checkpoint's own tokenizer (``tokenizer.json``; GPT-2: also vocab.json + merges.txt or the
    bundled GPT-2 BPE), ``None`` when it has none. Encoders get ``[CLS] ... [SEP]`` (BOS = [CLS])."""
    from jaxdiag.tokenizer import Tokenizer

    tokenizer = Tokenizer.for_checkpoint(directory, vocab_size=config.vocab_size, bos_id=config.bos_token_id,
                                         prepend_bos=prepend_bos)
    if tokenizer is not None:  # a tokenizer.json may pad or truncate to a fixed length (all-MiniLM: 128)
        tokenizer.backend.no_padding()
        tokenizer.backend.no_truncation()
    if tokenizer is not None and config.model_type in ("bert", "albert"):
        tokenizer.eos_id = tokenizer.backend.token_to_id("[SEP]")
    return tokenizer
