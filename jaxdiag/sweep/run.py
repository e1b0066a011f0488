"""A sweep: a run config's prompts through the model on every device, into a resumable Zarr store.

Order of work, so that bad input fails before any device work and leaves nothing behind:

1. resolve the checkpoint, read its config and tokenizer (no weights yet);
2. plan: walk every prompt once -- tokenise, validate, count per condition, note the longest,
   the metadata keys and a digest of the whole prompt set (nothing kept in memory);
3. refuse an existing store unless --resume (same config, weights and prompts) or --overwrite;
4. load the weights, create the store (see ``jaxdiag.sweep.store``: by rename at a path, by claim and
   commit at a URL), then walk the prompts again.

A store URL of an unknown protocol or a missing fsspec backend is refused before step 1.

The second walk groups each condition's prompts into chunks of ``chunk_size`` (one chunk of the
store each) and each chunk into length-sorted units of ``batch_size`` (one device batch each),
whose keys name the chunk and row of each prompt, so every result finds its chunk.
Units depend only on the prompts and the config, so every prompt meets the same compiled shapes
however many devices or processes run the sweep and whether or not it was resumed: stores agree
bit for bit. Chunks are dealt to processes round-robin; a process skips chunks already written.
Device compute runs ahead of the host (``DeviceRunner`` keeps units in flight), and finished
chunks go to a one-thread pool with a bounded number waiting, so compute, copies and Zarr writes
overlap and memory stays bounded.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from jaxdiag import vocab
from jaxdiag.probes import Probe, stored_variables
from jaxdiag.sweep.steps import edits_per_step, effect_heads_per_step, head_sums_step, reference_means, sweep_step
from jaxdiag.errors import Interrupted, JaxdiagError
from jaxdiag.paths import StoreLocation
from jaxdiag.sweep.prompts import Prompt, induction_prompts, ioi_blog_prompts, ioi_prompts, jsonl_prompts
from jaxdiag.sweep.runconfig import RunConfig
from jaxdiag.sweep.runner import DeviceRunner, Progress, Unit, make_units, scatter
from jaxdiag.schema import COMPONENT_KINDS, POSITION_KINDS, edit_of, needs_partner
from jaxdiag.sweep.store import (
    SCHEMA_VERSION, Layout, StoreLike, already_exists, check_resumable, check_store_target, create_store, default_chunk_size, done_chunks, finalise,
    Column, prompt_columns, read_attrs, utc_now, write_chunk,
)

WRITE_QUEUE_CHUNKS = 4  # finished chunks in memory waiting for (or in) their write
# Fault injection for the kill-and-resume test: seconds to wait after a chunk's data is written
# and before its done marker is, widening the window a SIGKILL must survive.
FAULT_DELAY_ENV = "JAXDIAG_FAULT_DELAY_S"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the first walk over the prompts learnt."""

    conditions: tuple[str, ...]
    counts: tuple[int, ...]
    max_len: int
    metadata: dict[str, str]  # key -> "str" | "float"
    digest: str
    n_targets: int = 0  # prompts with a task target (counted when effects are asked for)
    # pair id -> its prompts' (condition, tokens), kept when patch effects are asked for
    pairs: dict[str, list[tuple[str, tuple[int, ...]]]] | None = None
    paired: bool = False  # some prompt names a pair partner
    roles: tuple[str, ...] = ()  # the prompts' named token roles (runs with component kinds): role_position

    def partner_tokens(self, prompt: Prompt) -> tuple[int, ...]:
        """The tokens of ``prompt``'s pair partner (the member of its pair in the other condition)."""
        return next(tokens for condition, tokens in self.pairs[prompt.pair] if condition != prompt.condition)


@dataclasses.dataclass(frozen=True)
class SweepResult:
    path: StoreLocation  # prints as given: the path or URL
    layout: Layout
    computed_prompts: int  # by this process, this time
    skipped_chunks: int  # already written by an earlier, interrupted run
    complete: bool
    seconds: float


def prompt_stream(config: RunConfig, encode: Callable[[str], list[int]] | None, *, vocab_size: int,
                  bos_id: int | None, mask_id: int = -1) -> Callable[[], Iterator[Prompt]]:
    """A function that starts a fresh walk over the run's prompts (the same ones each time);
    ``mask_id``: the tokenizer's ``[MASK]`` (encoders; -1: none), for JSONL ``mask``."""
    spec = config.prompts
    limit = spec.n_prompts

    def need_encoder() -> Callable[[str], list[int]]:
        if encode is None:
            raise JaxdiagError(f"prompt source {spec.source!r} is text and this model has no tokenizer")
        return encode

    if spec.source == "ioi-blog":
        def walk() -> Iterator[Prompt]:
            yield from ioi_blog_prompts(need_encoder(), limit or 50)
    elif spec.source == "ioi":
        def walk() -> Iterator[Prompt]:
            yield from ioi_prompts(need_encoder(), n_prompts=limit or 1000, n_tokens=spec.n_tokens,
                                   seed=config.seed, pairs=spec.pairs)
    elif spec.source == "induction":
        def walk() -> Iterator[Prompt]:
            yield from induction_prompts(n_prompts=limit or 100, segment_length=spec.segment_length,
                                         vocab_size=vocab_size, bos_id=bos_id if config.prepend_bos else None,
                                         seed=config.seed)
    else:
        def walk() -> Iterator[Prompt]:
            seen: collections.Counter = collections.Counter()
            for prompt in jsonl_prompts(spec.path, encode, mask_id):
                if limit is None or seen[prompt.condition] < limit:
                    seen[prompt.condition] += 1
                    yield prompt
    return walk


def plan_prompts(prompts: Iterable[Prompt], *, vocab_size: int, n_positions: int,
                 effects: tuple[str, ...] = ()) -> Plan:
    """Validate every prompt and summarise the set; raises JaxdiagError on the first bad one.

    With ``effects``, the task fields (target, foil, pair) are validated and enter the digest too;
    without, the digest is what earlier versions computed, so their stores still resume. Pairs are
    checked either way (two prompts in two conditions; equal lengths too for patch effects).
    """
    from jaxdiag.sweep.runner import check_prompt

    counts: dict[str, int] = {}
    kinds: dict[str, set[str]] = {}
    max_len = n_targets = 0
    pairs: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    patching = needs_partner(effects)
    roles: dict[str, None] = {}  # in first-seen order (the ioi source's IO, S1, S1+1, S2, END)
    digest = hashlib.sha256()
    for prompt in prompts:
        index = counts.get(prompt.condition, 0)
        label = f"prompt {index} of condition {prompt.condition!r}"
        check_prompt(prompt.tokens, vocab_size=vocab_size, n_positions=n_positions, label=label)
        counts[prompt.condition] = index + 1
        max_len = max(max_len, len(prompt.tokens))
        for key, value in prompt.metadata.items():
            kinds.setdefault(key, set()).add("str" if isinstance(value, str) else "float")
        record = [prompt.condition, list(prompt.tokens), prompt.text, sorted(prompt.metadata.items())]
        if effects:
            n_targets += _check_task(prompt, vocab_size, label)
            # the position enters the digest only where it is not the default (older stores still resume)
            record.append([prompt.target, prompt.foil, prompt.pair, *([prompt.position] if prompt.position >= 0 else [])])
            if prompt.roles and any(kind in COMPONENT_KINDS for kind in effects):  # older runs keep their digest
                record.append(sorted(prompt.roles.items()))
                roles.update(dict.fromkeys(prompt.roles))
        if patching and prompt.pair is None:
            raise JaxdiagError(f"{label} has no 'pair': patch effects (and patching by position) need every prompt's "
                               "pair partner")
        if prompt.pair is not None:
            # only patching needs the partners' tokens; the pairing itself is checked for every run
            pairs.setdefault(prompt.pair, []).append((prompt.condition, prompt.tokens if patching else ()))
        digest.update(json.dumps(record).encode() + b"\n")
    if not counts:
        raise JaxdiagError("the prompt set is empty")
    if effects and n_targets == 0:
        raise JaxdiagError("effects were asked for but no prompt has a target (JSONL 'target', or the ioi, "
                           "ioi-blog and induction sources)")
    for pair, members in pairs.items():
        _check_pair(pair, members)
    metadata = {key: "float" if kind == {"float"} else "str" for key, kind in kinds.items()}
    return Plan(tuple(counts), tuple(counts.values()), max_len, metadata, digest.hexdigest(), n_targets,
                pairs if patching else None, paired=bool(pairs), roles=tuple(roles))


def _check_task(prompt: Prompt, vocab_size: int, label: str) -> int:
    """1 if the prompt has a target, 0 if not; an error for ids outside the vocabulary."""
    for name, value in (("target", prompt.target), ("foil", prompt.foil)):
        if value >= vocab_size:
            raise JaxdiagError(f"{label}: {name} id {value} is outside the vocabulary [0, {vocab_size})")
    return int(prompt.target >= 0)


def _check_pair(pair: str, members: list[tuple[str, tuple[int, ...]]]) -> None:
    if len(members) != 2:
        what = "has no partner" if len(members) == 1 else f"has {len(members)} prompts"
        raise JaxdiagError(f"pair {pair!r} {what}: a pair is two prompts, one in each of two conditions")
    (first, a), (second, b) = members
    if first == second:
        raise JaxdiagError(f"pair {pair!r}: both prompts are in condition {first!r}; a pair spans two conditions")
    if len(a) != len(b):  # only patching keeps tokens (else both are ())
        raise JaxdiagError(f"pair {pair!r}: the prompts have {len(a)} and {len(b)} tokens; a patch needs equal lengths")


class RowKey(NamedTuple):
    """The key naming a prompt in a unit: its chunk and its row there, so each result carries its owner."""

    chunk: Chunk
    row: int


@dataclasses.dataclass(eq=False)  # identity, not value: a chunk is hashed as part of its rows' keys
class Chunk:
    """One chunk of the store from prompts to written region: rows ``start ..`` of condition ``condition``.

    ``values`` fills in as the chunk's units come back from the device; the last one finishes it.
    """

    condition: int
    index: int
    start: int
    prompts: list[Prompt]
    values: dict[str, np.ndarray]  # name -> [n, layer, head(, query)] float32, NaN until computed
    units_left: int = 0

    def units(self, *, batch_size: int, limit: int, plan: Plan | None = None) -> list[Unit]:
        """The chunk's device batches; the chunk is finished once that many results are in.

        With ``plan`` (a run with effects) each unit also carries its rows' task inputs.
        """
        rows = [(RowKey(self, row), prompt.tokens) for row, prompt in enumerate(self.prompts)]
        units = make_units(rows, batch_size=batch_size, limit=limit)
        if plan is not None:
            for unit in units:
                unit.inputs = task_inputs(unit, [self.prompts[key.row] for key in unit.keys],
                                          plan.partner_tokens if plan.pairs is not None else None)
        self.units_left = len(units)
        return units

    def add(self, unit: Unit, result: dict[str, np.ndarray]) -> bool:
        """Take in one unit's result; True when it was the last one."""
        scatter(self.values, [key.row for key in unit.keys], result)
        self.units_left -= 1
        return self.units_left == 0

    def columns(self, layout: Layout) -> dict[str, Column]:
        """The chunk's region of the store: the store's schema for these prompts."""
        return prompt_columns(self.prompts, self.values, query=layout.query, width=layout.max_len,
                              metadata=layout.metadata, paired=layout.paired, variables=layout.variables,
                              roles=layout.roles)


def task_inputs(unit: Unit, prompts: list[Prompt],
                partner_tokens: Callable[[Prompt], tuple[int, ...]] | None) -> dict[str, np.ndarray]:
    """A unit's ``target``/``foil`` ids (-1: none), metric ``position``s (dummy rows: their last) and,
    with ``partner_tokens`` (patch effects), its rows' partners' tokens."""
    batch = unit.tokens.shape[0]
    target, foil = np.full(batch, -1, np.int32), np.full(batch, -1, np.int32)
    position = np.maximum(np.asarray(unit.lengths, np.int32) - 1, 0)
    for row, prompt in enumerate(prompts):
        target[row], foil[row], position[row] = prompt.target, prompt.foil, prompt.metric_position
    inputs = {"target": target, "foil": foil, "position": position}
    if partner_tokens is not None:
        partner = unit.tokens.copy()  # dummy rows patch themselves
        for row, prompt in enumerate(prompts):
            partner[row, : len(prompt.tokens)] = partner_tokens(prompt)
        inputs["partner"] = partner
    return inputs


def iter_chunks(prompts: Iterable[Prompt], layout: Layout, wanted: set[tuple[int, int]]) -> Iterator[Chunk]:
    """The chunks in ``wanted``, each with its prompts; other chunks' prompts are passed over, not kept."""
    index = {name: i for i, name in enumerate(layout.conditions)}
    position = [0] * len(layout.conditions)
    buffers: dict[int, list[Prompt]] = collections.defaultdict(list)
    for prompt in prompts:
        c = index[prompt.condition]
        k = position[c] // layout.chunk_size
        position[c] += 1
        if (c, k) not in wanted:
            continue
        buffers[c].append(prompt)
        start, stop = layout.chunk_range(c, k)
        if len(buffers[c]) == stop - start:
            values = {name: np.full((stop - start, *shape), np.nan, dtype=np.float32)
                      for name, shape in layout.value_shapes().items()}
            yield Chunk(c, k, start, buffers.pop(c), values)


def finished_chunks(results: Iterable[tuple[Unit, dict[str, np.ndarray]]]) -> Iterator[Chunk]:
    """Each chunk as soon as the last of its units' results is in."""
    for unit, result in results:
        chunk = unit.keys[0].chunk  # a unit never spans chunks: each chunk makes its own
        if chunk.add(unit, result):
            yield chunk


def write_chunks(chunks: Iterable[Chunk], path: StoreLike, layout: Layout, progress: Progress) -> None:
    """Write each chunk on one worker thread while the next ones compute; raise the first failed write.

    At most ``WRITE_QUEUE_CHUNKS`` finished chunks wait in memory: beyond that the producer waits.
    """
    path = StoreLocation.of(path)
    delay = float(os.environ.get(FAULT_DELAY_ENV, "0") or 0)
    pause = (lambda: time.sleep(delay)) if delay else None

    def write(chunk: Chunk) -> None:
        write_chunk(path, chunk.columns(layout), chunk.condition, chunk.start, chunk.index, before_marker=pause)
        progress.update(len(chunk.prompts))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxdiag-store-writer") as pool:
        pending: collections.deque[Future] = collections.deque()
        for chunk in chunks:
            while pending and (pending[0].done() or len(pending) >= WRITE_QUEUE_CHUNKS):
                pending.popleft().result()  # re-raises a failed write's error
            pending.append(pool.submit(write, chunk))
        for future in pending:
            future.result()


def stored_prompts(path: StoreLike, layout: Layout) -> int:
    """Prompts whose chunks are written and marked done (what a --resume keeps)."""
    try:
        done = done_chunks(path)
    except OSError:
        return 0
    return sum(stop - start for start, stop in (layout.chunk_range(*cid) for cid in done & set(layout.chunk_ids())))


def _effects_step(config: RunConfig, model_config, plan: Plan, head_mean: np.ndarray | None,
                  probes: tuple[Probe, ...]):
    """The step builder of a run with effects (None: the runner's diagnostics step)."""
    if not config.effects:
        return None
    heads_per_step = effect_heads_per_step(config.batch_size, plan.max_len, model_config)
    patches_per_step = edits_per_step(config.batch_size, plan.max_len, model_config)
    return lambda graphdef: sweep_step(graphdef, config.query, config.effects, head_mean=head_mean,
                                       heads_per_step=heads_per_step, probes=probes, patches_per_step=patches_per_step)


def sweep_probes(config: RunConfig) -> tuple[Probe, ...]:
    """The built-in probes, then the run config's own (``probes = ["module:function"]``)."""
    from jaxdiag.probes.custom import resolve_probe
    from jaxdiag.sweep.runner import SWEEP_PROBES

    return SWEEP_PROBES + tuple(resolve_probe(spec, "run config") for spec in config.probes)


def _progress(total: int, quiet: bool, description: str):
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, unit="prompt", desc=description, disable=disable, dynamic_ncols=True, smoothing=0.1)


def _wait_for_all(process_count: int, name: str) -> None:
    if process_count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def run_sweep(config: RunConfig, out: StoreLike, *, resume: bool = False, overwrite: bool = False,
              quiet: bool = False, log: Callable[[str], None] | None = None,
              strict_vocab: bool = False) -> SweepResult:
    """Run ``config`` into the store ``out`` (a path or fsspec URL). Multi-process when ``jax.distributed``
    is initialised: every process writes its own chunks into the one store, which is why a store on
    object storage (a URL every host reaches) serves a multi-host run. Prompts holding token ids the
    model never trained are warned about and counted in the store's attributes (``strict_vocab``:
    refused; :mod:`jaxdiag.vocab`)."""
    import jax

    from jaxdiag import __version__
    from jaxdiag.checkpoint import resolve
    from jaxdiag.models.load import load_model, model_type_of, read_config, tokenizer_for, weights_attrs
    from jaxdiag.models.registry import registered, require_effects
    from jaxdiag.models.sharding import check_divides, make_mesh

    started = time.perf_counter()
    log = log or (lambda message: None)
    path = StoreLocation.of(out)  # a bad URL fails here, before any work
    process, n_processes = jax.process_index(), jax.process_count()
    if resume and overwrite:
        raise JaxdiagError("--resume and --overwrite exclude each other")
    # in a multi-process run the other processes may already see the store process 0 made
    if process == 0 and path.exists() and not (resume or overwrite):
        raise already_exists(path)
    if resume and path.exists() and not path.is_store():
        raise JaxdiagError(f"cannot resume {path}: it is not a Zarr store")
    if process == 0 and not (resume and path.exists()):
        check_store_target(path, overwrite)  # a foreign file or a read-only folder, before the model is read

    checkpoint = resolve(config.model, config.revision)
    model_config = read_config(checkpoint.directory)  # GPT-2 or another family, by model_type
    mesh = make_mesh(config.mesh)  # a mesh that does not fit the devices or the model fails here
    check_divides(model_config, config.mesh.model)
    if config.effects:
        require_effects(model_config, "causal effects (effects = [...])")
    position_kinds = [kind for kind in config.effects if kind in POSITION_KINDS]
    if position_kinds and registered(model_config.model_type).model.mask != "causal":
        raise JaxdiagError(f"effect {position_kinds[0]!r}: patching by position is for decoders; "
                           f"{model_config.model_type!r} is an encoder")
    tokenizer = tokenizer_for(checkpoint.directory, model_config, prepend_bos=config.prepend_bos)
    encode = tokenizer.encode if tokenizer is not None else None  # None: token-id prompts only
    walk = prompt_stream(config, encode, vocab_size=model_config.vocab_size, bos_id=model_config.bos_token_id,
                         mask_id=getattr(model_config, "mask_token_id", -1))
    plan = plan_prompts(walk(), vocab_size=model_config.vocab_size, n_positions=model_config.n_positions,
                        effects=config.effects)
    vocab_attrs, warning = vocab.check(checkpoint.directory, model_config.vocab_size, (p.tokens for p in walk()),
                                       strict=strict_vocab, describe=None if tokenizer is None else (lambda i: tokenizer.decode([i])))
    if warning and process == 0:
        print(f"jaxdiag: warning: {warning}", file=sys.stderr)
    if config.conditions:
        missing = [c for c in config.conditions if c not in plan.conditions]
        if missing:
            raise JaxdiagError(f"conditions {', '.join(missing)} named in the run config are not in the prompt set "
                               f"(it has {', '.join(plan.conditions)})")
    needs_mean = any(edit_of(kind) == "mean" for kind in config.effects)
    reference = config.reference_condition(plan.conditions) if needs_mean else None
    if needs_mean and reference not in plan.conditions:
        raise JaxdiagError(f"mean-ablation effects need a reference condition in the prompt set: {reference!r} is not "
                           f"one of {', '.join(plan.conditions)} (set effects_reference)")
    chunk_size = config.chunk_size or default_chunk_size(model_config.n_layer, model_config.n_head, plan.max_len,
                                                         config.query, config.batch_size)
    config = dataclasses.replace(config, chunk_size=chunk_size)
    probes = sweep_probes(config)
    layout = Layout(plan.conditions, plan.counts, model_config.n_layer, model_config.n_head, plan.max_len,
                    config.query, chunk_size, plan.metadata, config.effects, plan.paired, stored_variables(probes),
                    plan.roles)
    identity = {"config": config.to_json(), "weights_sha256": checkpoint.weights_sha256,
                "prompts_sha256": plan.digest}

    if process == 0 and resume and path.exists():
        check_resumable(path, identity)
    _, model = load_model(checkpoint, precision=config.precision, mesh=mesh)
    head_mean = None
    if reference is not None:  # every process computes the same means: same units, float64 sums in order
        log(f"mean head outputs over condition {reference!r}")
        reference_units = make_units([(i, p.tokens) for i, p in enumerate(walk()) if p.condition == reference],
                                     batch_size=config.batch_size, limit=model_config.n_positions)
        runner = DeviceRunner(model, config.query, make_step=head_sums_step, mesh=mesh)
        head_mean = reference_means(runner.run(reference_units))
    if process == 0 and not (resume and path.exists()):
        attrs = {
            "schema_version": SCHEMA_VERSION, "jaxdiag_version": __version__, "model": config.model,
            "model_type": model_type_of(checkpoint.directory),
            "n_layers": model_config.n_layer, "n_heads": model_config.n_head, "prepend_bos": config.prepend_bos,
            "query_positions": config.query, "precision": config.precision, "seed": config.seed,
            "created": utc_now(), "backend": jax.default_backend(), "jax_version": jax.__version__,
            "complete": False, **identity, **vocab_attrs, **weights_attrs(checkpoint, model),
        }
        if checkpoint.revision:
            attrs["model_revision"] = checkpoint.revision
        if config.effects:
            attrs["effects"] = list(config.effects)
            if reference is not None:
                attrs["effects_reference"] = reference
        try:
            create_store(path, layout, attrs, overwrite=overwrite, head_mean=head_mean)
        except OSError as exc:  # nothing is left behind: creation removes what it wrote
            raise JaxdiagError(f"cannot create {path}: {exc.strerror or exc}") from None
    _wait_for_all(n_processes, "jaxdiag-store-created")
    if n_processes > 1:
        check_resumable(path, identity)  # every process checks it joins the store it was meant to

    already = done_chunks(path) if not read_attrs(path).get("complete") else set(layout.chunk_ids())
    all_chunks = layout.chunk_ids()
    mine = {cid for i, cid in enumerate(all_chunks) if i % n_processes == process}
    todo = mine - already
    n_todo = sum(layout.chunk_range(*cid)[1] - layout.chunk_range(*cid)[0] for cid in todo)
    if already:
        log(f"resuming {path}: {len(already)} of {len(all_chunks)} chunks already written")

    progress = _progress(n_todo, quiet, "jaxdiag run" if n_processes == 1 else f"jaxdiag run [{process}]")
    total = sum(layout.counts)
    try:
        if todo:
            chunks = iter_chunks(walk(), layout, todo)
            task_plan = plan if config.effects else None
            units = (unit for chunk in chunks
                     for unit in chunk.units(batch_size=config.batch_size, limit=model_config.n_positions,
                                             plan=task_plan))
            runner = DeviceRunner(model, config.query, probes=probes,
                                  make_step=_effects_step(config, model_config, plan, head_mean, probes), mesh=mesh)
            write_chunks(finished_chunks(runner.run(units)), path, layout, progress)
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM as the CLI raises it: the writes in flight are flushed
        raise Interrupted(f"interrupted: {stored_prompts(path, layout)} of {total} prompts are stored in {path}; "
                          f"continue with `jaxdiag run ... --out {path} --resume`",
                          getattr(exc, "exit_status", 130)) from None
    except OSError as exc:  # no space, permission lost, the store removed under the run
        raise JaxdiagError(f"writing {path} failed: {exc.strerror or exc}; {stored_prompts(path, layout)} of {total} "
                           f"prompts are stored: fix the cause, then continue with `jaxdiag run ... --out {path} --resume`"
                           ) from None
    finally:
        progress.close()

    _wait_for_all(n_processes, "jaxdiag-chunks-written")
    complete = False
    if process == 0:
        missing = set(all_chunks) - done_chunks(path)
        if missing and not read_attrs(path).get("complete"):
            raise JaxdiagError(f"{len(missing)} chunks of {path} are still missing; run again with --resume")
        finalise(path)
        complete = True
    _wait_for_all(n_processes, "jaxdiag-finalised")
    return SweepResult(path, layout, n_todo, len(already & mine), complete or n_processes > 1,
                       time.perf_counter() - started)
