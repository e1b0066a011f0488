"""The GPT-2 architecture hyper-parameters, read from a Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from jaxdiag.errors import JaxdiagError

ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu", "silu", "swish")


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """What the forward pass needs to know; frozen so it can be a static ``jit`` argument."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    bos_token_id: int = 50256

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise JaxdiagError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.activation_function not in ACTIVATIONS:
            raise JaxdiagError(
                f"unsupported activation_function {self.activation_function!r} (supported: {', '.join(ACTIVATIONS)})"
            )

    @property
    def d_head(self) -> int:
        return self.n_embd // self.n_head

    @property
    def d_mlp(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config") -> "GPT2Config":
        model_type = raw.get("model_type")
        if model_type != "gpt2":
            raise JaxdiagError(f"{source}: model_type is {model_type!r}, not 'gpt2'; jaxdiag runs GPT-2-family models only")
        if raw.get("add_cross_attention"):
            raise JaxdiagError(f"{source}: cross-attention GPT-2 variants are not supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in fields and v is not None})

    @classmethod
    def from_json(cls, path: str | Path) -> "GPT2Config":
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise JaxdiagError(f"cannot read model config {path}: {exc}") from None
        return cls.from_dict(raw, source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` body that transformers' ``GPT2Config`` reads back to the same model."""
        out = dataclasses.asdict(self)
        out.update(model_type="gpt2", architectures=["GPT2LMHeadModel"], eos_token_id=self.bos_token_id, n_ctx=self.n_positions)
        return out
