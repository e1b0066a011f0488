"""The one registry of model families: ``config.json``'s ``model_type`` -> config, model, weight names.

A family is added by adding its file under :mod:`jaxdiag.models` and one line here.
"""

from __future__ import annotations

import dataclasses

from jaxdiag.errors import JaxdiagError
from jaxdiag.models import bert, gemma, gpt2, llama, neox
from jaxdiag.models.family import Family, WeightNames, require_causal_effects


@dataclasses.dataclass(frozen=True)
class Registered:
    """What jaxdiag knows of one ``model_type``."""

    config: type  # has from_dict(raw, *, source) -> config
    model: type[Family]
    weights: WeightNames  # how HF's tensor names map to the model's parameters


FAMILIES: dict[str, Registered] = {
    "gpt2": Registered(gpt2.GPT2Config, gpt2.GPT2, gpt2.WEIGHT_NAMES),
    "llama": Registered(llama.LlamaConfig, llama.Llama, llama.WEIGHT_NAMES),
    "qwen2": Registered(llama.LlamaConfig, llama.Llama, llama.WEIGHT_NAMES),
    "qwen3": Registered(llama.LlamaConfig, llama.Llama, llama.WEIGHT_NAMES),
    "mistral": Registered(llama.LlamaConfig, llama.Llama, llama.WEIGHT_NAMES),
    "gemma2": Registered(gemma.GemmaConfig, gemma.Gemma, gemma.WEIGHT_NAMES),
    "gemma3_text": Registered(gemma.GemmaConfig, gemma.Gemma, gemma.WEIGHT_NAMES),
    "gemma3": Registered(gemma.GemmaConfig, gemma.Gemma, gemma.WEIGHT_NAMES),
    "gpt_neox": Registered(neox.NeoXConfig, neox.NeoX, neox.WEIGHT_NAMES),
    "bert": Registered(bert.EncoderConfig, bert.Bert, bert.WEIGHT_NAMES),
    "albert": Registered(bert.EncoderConfig, bert.Albert, bert.WEIGHT_NAMES),
}
SUPPORTED: tuple[str, ...] = tuple(FAMILIES)


def registered(model_type: str | None, *, source: str = "config") -> Registered:
    """The registry entry of ``model_type``, or a one-line error listing the supported ones."""
    if not isinstance(model_type, str) or model_type not in FAMILIES:  # config.json may hold any JSON there
        raise JaxdiagError(f"{source}: model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED)})")
    return FAMILIES[model_type]


def require_effects(config, what: str = "causal effects") -> None:
    """A one-line error, before any work, when the family cannot measure ``what`` (an encoder without
    its masked-LM head, as its config.json's architecture says; the weights settle it at load time)."""
    require_causal_effects(registered(config.model_type).model, what, config)
