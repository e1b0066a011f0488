"""The notebook API: load a model, diagnose prompts, get a labelled xarray Dataset.

    import jaxdiag
    model = jaxdiag.load("gpt2")                      # hub id or local directory
    ds = jaxdiag.diagnose(model, ["When Alice and Bob went to the store, Bob gave a drink to"])
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import numpy as np
import xarray as xr

from jaxdiag import vocab
from jaxdiag.checkpoint import Checkpoint, load_checkpoint, resolve
from jaxdiag.config import GPT2Config
from jaxdiag.errors import JaxdiagError
from jaxdiag.model import GPT2, Precision, QueryMode
from jaxdiag.models.load import tokenizer_for
from jaxdiag.prompts import Prompt
from jaxdiag.runner import run_diagnostics
from jaxdiag.store import prompts_dataset
from jaxdiag.tokenizer import Tokenizer


@dataclasses.dataclass
class LoadedModel:
    """A GPT-2 ready to diagnose: the Flax module, its tokenizer and where it came from."""

    model: GPT2
    tokenizer: Tokenizer | None
    checkpoint: Checkpoint
    precision: Precision

    @property
    def config(self) -> GPT2Config:
        return self.model.config

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """Token ids of a prompt: text is tokenised (BOS prepended if set); id lists pass through."""
        if not isinstance(prompt, str):
            return [int(t) for t in prompt]
        if self.tokenizer is None:
            raise JaxdiagError(
                f"model {self.checkpoint.name!r} has no tokenizer files and a non-GPT-2 vocabulary: "
                "give prompts as token ids"
            )
        return self.tokenizer.encode(prompt)


def load(model: str = "gpt2", *, precision: Precision = "highest", prepend_bos: bool = True,
         revision: str | None = None) -> LoadedModel:
    """Load a checkpoint (GPT-2, Llama/Qwen2/Mistral, GPT-NeoX, BERT, ALBERT: by ``config.json``'s
    ``model_type``) from a Hugging Face hub id or a local directory."""
    checkpoint = resolve(model, revision)
    config, module = load_checkpoint(checkpoint, precision=precision)
    tokenizer = tokenizer_for(checkpoint.directory, config, prepend_bos=prepend_bos)
    return LoadedModel(module, tokenizer, checkpoint, precision)


def diagnose(model: LoadedModel, prompts: Sequence[str | Sequence[int]], *, query: QueryMode = "last",
             batch_size: int = 32, strict_vocab: bool = False) -> xr.Dataset:
    """Per-head diagnostics of each prompt as a Dataset with dims ``prompt, layer, head[, query]``.

    Prompts holding token ids the model never trained (:mod:`jaxdiag.vocab`) are counted in the
    attributes ``untrained_prompts`` / ``untrained_token_ids`` and warned about
    (:class:`~jaxdiag.vocab.UntrainedTokensWarning`); ``strict_vocab`` makes them an error.
    """
    token_lists = [model.encode(p) for p in prompts]
    describe = (lambda i: model.tokenizer.decode([i])) if model.tokenizer is not None else None
    vocab_attrs, warning = vocab.check(model.checkpoint.directory, model.config.vocab_size, token_lists,
                                       strict=strict_vocab, describe=describe)
    if warning:
        warnings.warn(warning, vocab.UntrainedTokensWarning, stacklevel=2)
    values = run_diagnostics(model.model, token_lists, query=query, batch_size=batch_size)
    ds = to_dataset(values, token_lists, [p if isinstance(p, str) else "" for p in prompts], query=query)
    ds.attrs.update(vocab_attrs)
    return ds


def to_dataset(values: dict[str, np.ndarray], token_lists: Sequence[Sequence[int]], texts: Sequence[str],
               *, query: QueryMode) -> xr.Dataset:
    """The store's schema for one set of prompts (no ``condition`` dim): what a sweep writes for each condition."""
    prompts = [Prompt("", tuple(tokens), text) for tokens, text in zip(token_lists, texts)]
    return prompts_dataset(prompts, values, query=query)
