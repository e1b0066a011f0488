"""``config.json``'s ``model_type`` -> the family's config, model, weights and tokenizer.

GPT-2 keeps its own loader (:mod:`jaxdiag.checkpoint`); every other family is built here, by one
rule: the model's nnx parameter paths mirror the HF weight names once the family's prefix
(``model.``, ``gpt_neox.``, ``bert.`` ...) is stripped, with ``kernel``/``scale``/``embedding``
for HF's ``weight``; HF's ``nn.Linear`` weights ``[out, in]`` are transposed to ``[in, out]``
kernels. Every parameter is checked name by name and shape by shape.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from flax import nnx

from jaxdiag.checkpoint import fill_model, read_tensors
from jaxdiag.errors import JaxdiagError
from jaxdiag.schema import Precision


def _families() -> dict[str, tuple[ModuleType, str]]:
    from jaxdiag.models import bert, llama, neox

    return {
        "llama": (llama, "Llama"), "qwen2": (llama, "Llama"), "mistral": (llama, "Llama"),
        "gpt_neox": (neox, "NeoX"),
        "bert": (bert, "Bert"), "albert": (bert, "Albert"),
    }


SUPPORTED = ("gpt2", "llama", "qwen2", "mistral", "gpt_neox", "bert", "albert")
_CONFIGS = {"llama": "LlamaConfig", "gpt_neox": "NeoXConfig", "bert": "EncoderConfig"}


def read_raw_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise JaxdiagError(f"cannot read model config {path}: {exc}") from None


def model_type_of(directory: Path) -> str | None:
    return read_raw_config(Path(directory) / "config.json").get("model_type")


def read_config(directory: Path):
    """The family config of a checkpoint directory (GPT-2: :class:`jaxdiag.config.GPT2Config`)."""
    directory = Path(directory)
    path = directory / "config.json"
    raw = read_raw_config(path)
    model_type = raw.get("model_type")
    if model_type == "gpt2":
        from jaxdiag.config import GPT2Config

        return GPT2Config.from_dict(raw, source=str(path))
    families = _families()
    if model_type not in families:
        raise JaxdiagError(f"{path}: model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED)})")
    module, _ = families[model_type]
    config_cls = next(getattr(module, name) for name in _CONFIGS.values() if hasattr(module, name))
    try:
        config = config_cls.from_dict(raw, source=str(path))
    except KeyError as exc:
        raise JaxdiagError(f"{path}: a {model_type} config needs {exc.args[0]!r}, which this one lacks") from None
    if model_type in ("bert", "albert"):
        cls_id = _vocab_id(directory, "[CLS]")
        config = dataclasses.replace(config, bos_token_id=cls_id if cls_id is not None else 0)
    return config


def _vocab_id(directory: Path, token: str) -> int | None:
    """The id of ``token`` in the checkpoint's ``tokenizer.json`` or ``vocab.txt``, if any."""
    if (directory / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(directory / "tokenizer.json")).token_to_id(token)
    if (directory / "vocab.txt").is_file():
        lines = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
        return lines.index(token) if token in lines else None
    return None


def model_class(config):
    if getattr(config, "model_type", "gpt2") == "gpt2" or type(config).__name__ == "GPT2Config":
        from jaxdiag.model import GPT2

        return GPT2
    module, name = _families()[config.model_type]
    return getattr(module, name)


def hf_names(weights: dict[str, np.ndarray], module: ModuleType) -> dict[str, np.ndarray]:
    """HF tensor names -> ours: the family's prefix stripped, buffers and heads dropped, and the old
    ``LayerNorm.gamma/beta`` spelling renamed."""
    out = {}
    for name, value in weights.items():
        for prefix in getattr(module, "PREFIXES", ()):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        if name.endswith(getattr(module, "IGNORED", ())) or name.startswith(getattr(module, "IGNORED_PREFIXES", ())):
            continue
        if name.endswith(".gamma"):
            name = name[: -len("gamma")] + "weight"
        elif name.endswith(".beta"):
            name = name[: -len("beta")] + "bias"
        out[name] = value
    return out


def build_family_model(config, weights: dict[str, np.ndarray], *, precision: Precision = "highest",
                       source: str = "checkpoint"):
    """A family model whose parameters are the HF ``weights``, checked name by name and shape by shape."""
    cls = model_class(config)
    module = __import__(cls.__module__, fromlist=["_"])
    weights = hf_names(weights, module)
    abstract = nnx.eval_shape(lambda: cls(config, precision=precision, rngs=nnx.Rngs(0)))
    return fill_model(abstract, weights, source=source, what=f"a {config.model_type} model",
                      transpose_kernels=True, ignored=tuple(getattr(module, "TIED_HEADS", ())))


def load_family(checkpoint, *, precision: Precision = "highest"):
    """(config, model) of a non-GPT-2 checkpoint (:class:`jaxdiag.checkpoint.Checkpoint`)."""
    config = read_config(checkpoint.directory)
    model = build_family_model(config, read_tensors(checkpoint.weights_file), precision=precision,
                               source=str(checkpoint.weights_file))
    return config, model


def is_gpt2(config) -> bool:
    return type(config).__name__ == "GPT2Config"


def require_gpt2(config, what: str) -> None:
    """A one-line error for features that are GPT-2 only for now (effects, streaming, AtP)."""
    if not is_gpt2(config):
        raise JaxdiagError(f"{what} is GPT-2 only for now; this model is {config.model_type!r}")


def tokenizer_for(directory: Path, config, *, prepend_bos: bool = True):
    """The checkpoint's own tokenizer (``tokenizer.json``; GPT-2: also vocab.json + merges.txt or the
    bundled GPT-2 BPE), ``None`` when it has none. Encoders get ``[CLS] ... [SEP]`` (BOS = [CLS])."""
    from jaxdiag.tokenizer import Tokenizer

    tokenizer = Tokenizer.for_checkpoint(directory, vocab_size=config.vocab_size, bos_id=config.bos_token_id,
                                         prepend_bos=prepend_bos)
    if tokenizer is not None:  # a tokenizer.json may pad or truncate to a fixed length (all-MiniLM: 128)
        tokenizer.backend.no_padding()
        tokenizer.backend.no_truncation()
    if tokenizer is not None and getattr(config, "model_type", None) in ("bert", "albert"):
        tokenizer.eos_id = tokenizer.backend.token_to_id("[SEP]")
    return tokenizer
