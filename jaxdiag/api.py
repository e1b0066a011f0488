"""The notebook API: load a model, diagnose prompts, get a labelled xarray Dataset.

    import jaxdiag
    model = jaxdiag.load("gpt2")                      # hub id or local directory
    ds = jaxdiag.diagnose(model, ["When Alice and Bob went to the store, Bob gave a drink to"])
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import xarray as xr
from jax.sharding import Mesh

from jaxdiag.checkpoint import Checkpoint, resolve
from jaxdiag.errors import JaxdiagError
from jaxdiag.models.family import Family
from jaxdiag.models.load import load_model, tokenizer_for
from jaxdiag.models.sharding import make_mesh
from jaxdiag.schema import MeshShape, Precision, QueryMode
from jaxdiag.sweep.prompts import Prompt
from jaxdiag.sweep.runner import run_diagnostics
from jaxdiag.sweep.store import prompts_dataset
from jaxdiag.tokenizer import Tokenizer


@dataclasses.dataclass
class LoadedModel:
    """A model of any family ready to diagnose: the Flax module, its tokenizer and where it came from."""

    model: Family
    tokenizer: Tokenizer | None
    checkpoint: Checkpoint
    precision: Precision
    mesh: Mesh | None = None  # the device mesh its parameters are sharded over (None: one device's copy)

    @property
    def config(self):
        """The family's config (``n_layer``, ``n_head``, ``d_head``, ``vocab_size``, ``model_type`` ...)."""
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
         revision: str | None = None, mesh: str | dict | MeshShape | None = None) -> LoadedModel:
    """Load a checkpoint (GPT-2, Llama/Qwen2/Mistral, GPT-NeoX, BERT, ALBERT: by ``config.json``'s
    ``model_type``) from a Hugging Face hub id or a local directory.

    ``mesh`` (``"data=2,model=4"``, ``{"model": 4}``): shard the parameters over ``model`` local
    devices, streamed from the checkpoint into their shards; diagnose then runs batches over ``data``.
    """
    shape = MeshShape.parse(mesh, source="mesh")
    checkpoint = resolve(model, revision)
    device_mesh = make_mesh(shape) if mesh is not None else None
    config, module = load_model(checkpoint, precision=precision, mesh=device_mesh)
    tokenizer = tokenizer_for(checkpoint.directory, config, prepend_bos=prepend_bos)
    return LoadedModel(module, tokenizer, checkpoint, precision, device_mesh)


def diagnose(model: LoadedModel, prompts: Sequence[str | Sequence[int]], *, query: QueryMode = "last",
             batch_size: int = 32) -> xr.Dataset:
    """Per-head diagnostics of each prompt as a Dataset with dims ``prompt, layer, head[, query]``."""
    token_lists = [model.encode(p) for p in prompts]
    values = run_diagnostics(model.model, token_lists, query=query, batch_size=batch_size, mesh=model.mesh)
    return to_dataset(values, token_lists, [p if isinstance(p, str) else "" for p in prompts], query=query)


def to_dataset(values: dict[str, np.ndarray], token_lists: Sequence[Sequence[int]], texts: Sequence[str],
               *, query: QueryMode) -> xr.Dataset:
    """The store's schema for one set of prompts (no ``condition`` dim): what a sweep writes for each condition."""
    prompts = [Prompt("", tuple(tokens), text) for tokens, text in zip(token_lists, texts)]
    return prompts_dataset(prompts, values, query=query)
