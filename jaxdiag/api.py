"""The notebook API: load a model; diagnose prompts, measure heads' effects, gather attention patterns.

    import jaxdiag
    model = jaxdiag.load("gpt2")                      # hub id or local directory
    ds = jaxdiag.diagnose(model, ["When Alice and Bob went to the store, Bob gave a drink to"])
    fx = jaxdiag.effects(model, prompts, target=[" Alice", ...], foil=[" Bob", ...], kinds=["zero"])
    parts = jaxdiag.effects(model, prompts, target=[" Alice", ...], foil=[" Bob", ...], pairs=[0, 1, ...],
                            kinds=["dla", "lens", "patch_resid"])  # DLA, the logit lens, patching by position
    pattern = jaxdiag.attention(model, prompts[0], layers=[9], heads=[6, 9])

Every result is labelled xarray with the store's names, dims and coordinates, computed by the
sweep's own steps on the units a sweep would make of the same prompts, so a notebook result equals
the matching slice of a ``jaxdiag run`` store bit for bit.
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
from typing import Hashable, Sequence

import numpy as np
import xarray as xr
from jax.sharding import Mesh

from jaxdiag import vocab
from jaxdiag.checkpoint import Checkpoint, resolve
from jaxdiag.errors import JaxdiagError
from jaxdiag.models.family import Family
from jaxdiag.models.load import load_model, tokenizer_for
from jaxdiag.models.registry import require_effects
from jaxdiag.probes import Probe, stored_variables
from jaxdiag.probes.custom import resolve_probe
from jaxdiag.models.patterns import layer_patterns
from jaxdiag.models.sharding import make_mesh
from jaxdiag.schema import RUN_KINDS, MeshShape, Precision, QueryMode, edit_of, needs_partner
from jaxdiag.sweep.prompts import Prompt, single_token
from jaxdiag.sweep.run import task_inputs
from jaxdiag.sweep.runner import (SWEEP_PROBES, DeviceRunner, check_tokens, chunked_units, make_units,
                                  run_diagnostics, scatter)
from jaxdiag.sweep.steps import head_sums_step, reference_means, sweep_step_builder
from jaxdiag.sweep.store import HEAD_MEAN_ATTRS, Layout, default_chunk_size, prompts_dataset
from jaxdiag.tokenizer import Tokenizer

# jaxdiag.attention refuses results above this size (float32 values) with one line: patterns grow
# with prompts x layers x heads x length^2 and are meant for looking at, not for sweeps.
MAX_PATTERN_BYTES = 256 * 2**20

PromptLike = str | Sequence[int]


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

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Each token's text as the tokenizer decodes it alone (its id as text without a tokenizer)."""
        if self.tokenizer is None:
            return [str(int(i)) for i in ids]
        return [self.tokenizer.decode([int(i)]) for i in ids]


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


def diagnose(model: LoadedModel, prompts: Sequence[PromptLike], *, query: QueryMode = "last",
             batch_size: int = 32, probes: Sequence[Probe | str] = (), progress: bool = True,
             strict_vocab: bool = False) -> xr.Dataset:
    """Per-head diagnostics (and ``probes``' variables) of each prompt: dims ``prompt, layer, head[, query]``.

    ``probes``: user probes (:func:`jaxdiag.probe`, or ``"module:function"`` names), stored beside
    the built-in ones as a sweep with ``probes = [...]`` stores them. Prompts holding token ids the
    model never trained are warned about and counted in the attributes (``strict_vocab``: refused;
    see :func:`_vocab_attrs`).
    """
    prompts = _prompt_list(prompts)
    token_lists = [model.encode(p) for p in prompts]
    vocab_attrs = _vocab_attrs(model, token_lists, strict_vocab)
    chosen = SWEEP_PROBES + tuple(resolve_probe(p, "diagnose(probes=...)") for p in probes)
    with _bar(len(prompts), progress, "jaxdiag.diagnose") as bar:
        values = run_diagnostics(model.model, token_lists, query=query, batch_size=batch_size, probes=chosen,
                                 progress=bar, mesh=model.mesh)
    ds = prompts_dataset(_sweep_prompts(prompts, token_lists), values, query=query,
                         variables=stored_variables(chosen))
    ds.attrs.update(vocab_attrs)
    return ds


def effects(model: LoadedModel, prompts: Sequence[PromptLike], *, target, foil=None,
            kinds: Sequence[str] = ("zero",), pairs: Sequence[Hashable] | None = None,
            reference: Sequence[PromptLike] | None = None, query: QueryMode = "last", batch_size: int = 32,
            probes: Sequence[Probe | str] = (), progress: bool = True, strict_vocab: bool = False) -> xr.Dataset:
    """Every head's causal effect on the task metric, as a sweep with ``effects = kinds`` stores it.

    Args:
      target, foil: per prompt a token id or a one-token string (e.g. ``" Mary"``), or None for
        none; one value serves every prompt. The metric is ``logit(target) - logit(foil)`` at the
        last position, ``log p(target)`` without a foil.
      kinds: every kind of ``--effects`` (``schema.RUN_KINDS``): whole-head effects (zero, mean,
        patch, atp_*, atpstar_*), direct logit attribution (``dla``), the logit lens (``lens``,
        ``lens_rank``) and patching by position (``patch_resid``, ``patch_attn_out``,
        ``patch_mlp_out``, ``patch_head_pos``; decoders only).
      pairs: one id per prompt; the two prompts sharing an id are patched from each other (patch
        kinds and patching by position need it; the two must have the same number of tokens).
      reference: the prompts whose mean head outputs ``mean`` puts in place of a head's output.

    Returns the store's variables for these prompts: the diagnostics, ``metric``, ``effect_<kind>``
    (dims ``prompt, layer, head``), the component variables with the store's dims (``dla``
    ``prompt, layer, head``; ``lens_metric`` ``prompt, layer``; ``effect_patch_resid``
    ``prompt, layer, position``, NaN past a prompt's end; ...), ``head_mean`` for mean kinds, and
    the coordinates ``target``, ``foil``, ``pair``. Prompts are batched as a sweep batches a
    condition, each pair's first prompts together and its second prompts together (a sweep's two
    conditions), so the values equal those of a store made from the same prompts bit for bit.

    Example (patching the residual stream by position, DLA and the lens of IOI pairs)::

        parts = jaxdiag.effects(model, ioi + abc, target=[" Mary", ...], foil=[" John", ...],
                                pairs=[0, 1, ..., 0, 1, ...], kinds=["patch_resid", "dla", "lens"])
        parts.effect_patch_resid.mean("prompt")  # [layer, position]
        parts.dla.mean("prompt")                 # [layer, head]: each head's direct logit attribution
    """
    prompts = _prompt_list(prompts)
    kinds = _check_kinds(kinds)
    require_effects(model.config, "jaxdiag.effects")
    token_lists = [model.encode(p) for p in prompts]
    config = model.config
    check_tokens(token_lists, vocab_size=config.vocab_size, n_positions=config.n_positions)
    vocab_attrs = _vocab_attrs(model, token_lists, strict_vocab)
    n = len(prompts)
    targets = _task_ids(model, target, n, "target")
    foils = _task_ids(model, foil, n, "foil")
    if all(t < 0 for t in targets):
        raise JaxdiagError("effects(): no prompt has a target; give target= (a token id or one-token string per prompt)")
    patching = needs_partner(kinds)
    pair_ids = _check_pairs(pairs, token_lists, patching)
    swept = [dataclasses.replace(p, target=t, foil=f, pair=pair)
             for p, t, f, pair in zip(_sweep_prompts(prompts, token_lists), targets, foils, pair_ids)]
    chosen = SWEEP_PROBES + tuple(resolve_probe(p, "effects(probes=...)") for p in probes)
    n_reference = len(reference) if reference is not None else 0
    with _bar(n + n_reference * any(edit_of(k) == "mean" for k in kinds), progress, "jaxdiag.effects") as bar:
        head_mean = _reference_means(model, reference, kinds, batch_size, bar)
        max_len = max(len(t) for t in token_lists)
        step = sweep_step_builder(query, kinds, batch_size=batch_size, max_len=max_len, config=config,
                                  head_mean=head_mean, probes=chosen)
        values = _effect_values(model, swept, kinds, chosen, query, max_len, batch_size, patching, step, bar)
    ds = prompts_dataset(swept, values, query=query, variables=stored_variables(chosen), paired=pairs is not None)
    if head_mean is not None:
        ds["head_mean"] = xr.Variable(("layer", "head", "d_head"), head_mean, attrs=dict(HEAD_MEAN_ATTRS))
    ds.attrs.update(vocab_attrs)
    return ds


def attention(model: LoadedModel, prompts: PromptLike | Sequence[PromptLike], *,
              layers: Sequence[int] | int | None = None, heads: Sequence[int] | int | None = None,
              batch_size: int = 8, progress: bool = True) -> xr.DataArray:
    """Attention weights ``[prompt, layer, head, query, key]`` of whole prompts (one prompt or a list).

    Gathered one layer at a time (:mod:`jaxdiag.models.patterns`); positions past a prompt's length
    are NaN. Coordinates: ``layer``, ``head`` (the ones asked for), ``text``, ``n_tokens``, and
    ``query_token`` / ``key_token``, each position's token text. Results above
    ``MAX_PATTERN_BYTES`` (256 MiB of float32) are refused: ask for fewer layers, heads or prompts.
    """
    prompts = [prompts] if isinstance(prompts, str) or _is_token_list(prompts) else _prompt_list(prompts)
    config = model.config
    layers = _check_indices(layers, config.n_layer, "layer")
    heads = _check_indices(heads, config.n_head, "head")
    token_lists = [model.encode(p) for p in prompts]
    check_tokens(token_lists, vocab_size=config.vocab_size, n_positions=config.n_positions)
    width = max(len(t) for t in token_lists)
    size = 4 * len(prompts) * len(layers) * len(heads) * width * width
    if size > MAX_PATTERN_BYTES:
        raise JaxdiagError(f"attention(): {len(prompts)} prompts x {len(layers)} layers x {len(heads)} heads x "
                           f"{width} x {width} positions is {size / 2**20:.0f} MiB, above the "
                           f"{MAX_PATTERN_BYTES >> 20} MiB limit: ask for fewer layers=, heads= or prompts")
    out = np.full((len(prompts), len(layers), len(heads), width, width), np.nan, np.float32)
    units = make_units(list(enumerate(token_lists)), batch_size=batch_size, limit=config.n_positions)
    with _bar(len(prompts), progress, "jaxdiag.attention") as bar:
        for unit in units:
            rows = len(unit.keys)
            for index, (_, weights) in enumerate(layer_patterns(model.model, unit.tokens, unit.lengths, layers)):
                cut = min(width, weights.shape[-1])
                out[unit.keys, index, :, :cut, :cut] = weights[:rows][:, heads, :cut, :cut]
            bar.update(rows)
    strings = np.full((len(prompts), width), "", dtype=object)
    for row, tokens in enumerate(token_lists):
        strings[row, : len(tokens)] = model.token_strings(tokens)
    strings = strings.astype(str)
    return xr.DataArray(out, dims=("prompt", "layer", "head", "query", "key"), name="attention", coords={
        "prompt": np.arange(len(prompts)), "layer": np.asarray(layers), "head": np.asarray(heads),
        "query": np.arange(width), "key": np.arange(width),
        "text": ("prompt", np.asarray([p if isinstance(p, str) else "" for p in prompts], dtype=str)),
        "n_tokens": ("prompt", np.asarray([len(t) for t in token_lists], np.int32)),
        "query_token": (("prompt", "query"), strings), "key_token": (("prompt", "key"), strings)},
        attrs={"long_name": "attention weight of the query position on the key position", "units": "1"})


# ---------------------------------------------------------------------------------------------
# Checking the arguments: each error is one sentence naming the argument and the prompt.


def _vocab_attrs(model: LoadedModel, token_lists: Sequence[Sequence[int]], strict: bool) -> dict:
    """``untrained_prompts`` / ``untrained_token_ids`` of these prompts (:mod:`jaxdiag.vocab`), after one
    :class:`~jaxdiag.vocab.UntrainedTokensWarning` line when some prompt holds an untrained id; a
    :class:`JaxdiagError` instead with ``strict``."""
    describe = (lambda i: model.tokenizer.decode([i])) if model.tokenizer is not None else None
    attrs, warning = vocab.check(model.checkpoint.directory, model.config.vocab_size, token_lists,
                                 strict=strict, describe=describe)
    if warning:
        warnings.warn(warning, vocab.UntrainedTokensWarning, stacklevel=3)
    return attrs


def _prompt_list(prompts) -> list[PromptLike]:
    if isinstance(prompts, str) or _is_token_list(prompts):
        raise JaxdiagError("prompts must be a list of prompts (texts or token-id lists), not one prompt")
    prompts = list(prompts)
    if not prompts:
        raise JaxdiagError("prompts is empty: give at least one prompt")
    return prompts


def _is_token_list(value) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and bool(value) \
        and all(isinstance(t, (int, np.integer)) for t in value)


def _sweep_prompts(prompts: Sequence[PromptLike], token_lists: Sequence[Sequence[int]]) -> list[Prompt]:
    return [Prompt("", tuple(tokens), p if isinstance(p, str) else "") for p, tokens in zip(prompts, token_lists)]


def _check_kinds(kinds: Sequence[str] | str) -> tuple[str, ...]:
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if not kinds:
        raise JaxdiagError(f"effects(): kinds is empty (choose from {', '.join(RUN_KINDS)})")
    for kind in kinds:
        if kind not in RUN_KINDS:
            raise JaxdiagError(f"effects(): unknown kind {kind!r} (choose from {', '.join(RUN_KINDS)})")
    return tuple(kind for kind in RUN_KINDS if kind in kinds)  # the store's order


def _per_prompt(values, n: int, name: str) -> list:
    if values is None or isinstance(values, (str, int, np.integer)):
        return [values] * n
    values = list(values)
    if len(values) != n:
        raise JaxdiagError(f"effects(): {name} has {len(values)} entries for {n} prompts; give one per prompt")
    return values


def _task_ids(model: LoadedModel, values, n: int, name: str) -> list[int]:
    """Token ids (-1: none) of ``target=`` or ``foil=``, checked against the vocabulary."""
    out = []
    for i, value in enumerate(_per_prompt(values, n, name)):
        if value is None:
            out.append(-1)
            continue
        if isinstance(value, str):
            if model.tokenizer is None:
                raise JaxdiagError(f"effects(): {name} of prompt {i} is text, and this model has no tokenizer")
            value = single_token(model.encode, value, f"effects(): {name} of prompt {i}")
        if not isinstance(value, (int, np.integer)) or not 0 <= value < model.config.vocab_size:
            raise JaxdiagError(f"effects(): {name} of prompt {i} is {value!r}, not a token id in "
                               f"[0, {model.config.vocab_size}) or a one-token string")
        out.append(int(value))
    return out


def _check_pairs(pairs, token_lists: Sequence[Sequence[int]], patching: bool) -> list[str | None]:
    """One pair id per prompt (as text), each shared by exactly two prompts of equal length."""
    n = len(token_lists)
    if pairs is None:
        if patching:
            raise JaxdiagError("effects(): patch kinds need pairs= (one pair id per prompt; the two prompts "
                               "sharing an id are patched from each other)")
        return [None] * n
    pairs = list(pairs)
    if len(pairs) != n:
        raise JaxdiagError(f"effects(): pairs has {len(pairs)} ids for {n} prompts; give one per prompt")
    members: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        members.setdefault(str(pair), []).append(i)
    for pair, rows in members.items():
        if len(rows) != 2:
            raise JaxdiagError(f"effects(): pair {pair!r} has {len(rows)} prompt(s) ({', '.join(map(str, rows))}); "
                               "a pair is two prompts")
        first, second = (len(token_lists[r]) for r in rows)
        if patching and first != second:
            raise JaxdiagError(f"effects(): pair {pair!r} joins prompt {rows[0]} ({first} tokens) and prompt "
                               f"{rows[1]} ({second} tokens); a patch needs equal lengths")
    return [str(p) for p in pairs]


def _check_indices(chosen, size: int, what: str) -> list[int]:
    if chosen is None:
        return list(range(size))
    chosen = [chosen] if isinstance(chosen, (int, np.integer)) else list(chosen)
    if not chosen:
        raise JaxdiagError(f"attention(): {what}s is empty: name at least one {what}")
    for index in chosen:
        if not isinstance(index, (int, np.integer)) or not 0 <= index < size:
            raise JaxdiagError(f"attention(): {what} {index!r} is out of range: the model has {what}s 0-{size - 1}")
    return [int(i) for i in chosen]


# ---------------------------------------------------------------------------------------------
# The sweep's pieces, run for one set of prompts.


def _bar(total: int, progress: bool, description: str):
    """A progress bar in prompts: a notebook widget in Jupyter, a terminal bar in a shell."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="prompt", desc=description, disable=not progress, leave=False)


def _reference_means(model: LoadedModel, reference, kinds: tuple[str, ...], batch_size: int, bar) -> np.ndarray | None:
    """``head_mean`` over ``reference`` as a sweep computes it for its reference condition."""
    if not any(edit_of(kind) == "mean" for kind in kinds):
        return None
    if reference is None:
        raise JaxdiagError("effects(): kind 'mean' needs reference= (the prompts whose mean head outputs replace a head's)")
    token_lists = [model.encode(p) for p in _prompt_list(reference)]
    config = model.config
    check_tokens(token_lists, vocab_size=config.vocab_size, n_positions=config.n_positions)
    units = make_units(list(enumerate(token_lists)), batch_size=batch_size, limit=config.n_positions)

    def counted():
        for unit, result in DeviceRunner(model.model, "last", make_step=head_sums_step, mesh=model.mesh).run(units):
            bar.update(len(unit.keys))
            yield unit, result

    return reference_means(counted())


def _effect_values(model: LoadedModel, prompts: list[Prompt], kinds, probes, query, max_len: int, batch_size: int,
                   patching: bool, step, bar) -> dict[str, np.ndarray]:
    """The sweep step's values for every prompt, batched per pair side (first members, then second)."""
    config = model.config
    members: dict[str | None, list[tuple[int, ...]]] = collections.defaultdict(list)
    side = []  # 0 for a pair's first prompt (and unpaired ones), 1 for its second
    for prompt in prompts:
        side.append(len(members[prompt.pair]) if prompt.pair is not None else 0)
        members[prompt.pair].append(prompt.tokens)
    # the other member's tokens (a pair of two equal prompts patches itself either way)
    partner = (lambda p: next((t for t in members[p.pair] if t != p.tokens), p.tokens)) if patching else None
    chunk_size = default_chunk_size(config.n_layer, config.n_head, max_len, query, batch_size)
    n = len(prompts)
    # every variable the store of these kinds holds, with its shape there
    layout = Layout(("",), (n,), config.n_layer, config.n_head, max_len, query, chunk_size, {}, tuple(kinds),
                    variables=stored_variables(probes))
    values = {name: np.full((n, *shape), np.nan, np.float32) for name, shape in layout.value_shapes().items()}
    units = []
    for which in (0, 1):
        rows = [(row, prompts[row].tokens) for row in range(n) if side[row] == which]
        for unit in chunked_units(rows, batch_size=batch_size, chunk_size=chunk_size, limit=config.n_positions):
            unit.inputs = task_inputs(unit, [prompts[row] for row in unit.keys], partner)
            units.append(unit)
    for unit, result in DeviceRunner(model.model, query, make_step=step, mesh=model.mesh).run(units):
        scatter(values, unit.keys, result)
        bar.update(len(unit.keys))
    return values
