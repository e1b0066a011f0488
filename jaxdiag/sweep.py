"""A sweep: a run config's prompts through the model on every device, into a resumable Zarr store.

Order of work, so that bad input fails before any device work and leaves nothing behind:

1. resolve the checkpoint, read its config and tokenizer (no weights yet);
2. plan: walk every prompt once -- tokenise, validate, count per condition, note the longest,
   the metadata keys and a digest of the whole prompt set (nothing kept in memory);
3. refuse an existing store unless --resume (same config, weights and prompts) or --overwrite;
4. load the weights, create the store (temp directory + rename), then walk the prompts again.

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
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Protocol

import numpy as np
import xarray as xr

from jaxdiag.errors import JaxdiagError
from jaxdiag.prompts import Prompt, induction_prompts, ioi_blog_texts, ioi_prompts, jsonl_prompts
from jaxdiag.runconfig import RunConfig
from jaxdiag.runner import DeviceRunner, Unit, make_units, scatter
from jaxdiag.schema import DIAGNOSTICS
from jaxdiag.store import (
    SCHEMA_VERSION, Layout, check_resumable, create_store, default_chunk_size, done_chunks, finalise, is_store,
    prompts_dataset, read_attrs, utc_now, with_condition, write_chunk,
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


@dataclasses.dataclass(frozen=True)
class SweepResult:
    path: Path
    layout: Layout
    computed_prompts: int  # by this process, this time
    skipped_chunks: int  # already written by an earlier, interrupted run
    complete: bool
    seconds: float


def prompt_stream(config: RunConfig, encode: Callable[[str], list[int]] | None, *, vocab_size: int,
                  bos_id: int | None) -> Callable[[], Iterator[Prompt]]:
    """A function that starts a fresh walk over the run's prompts (the same ones each time)."""
    spec = config.prompts
    limit = spec.n_prompts

    def need_encoder() -> Callable[[str], list[int]]:
        if encode is None:
            raise JaxdiagError(f"prompt source {spec.source!r} is text and this model has no tokenizer")
        return encode

    if spec.source == "ioi-blog":
        def walk() -> Iterator[Prompt]:
            enc = need_encoder()
            for condition, text, metadata in ioi_blog_texts(limit or 50):
                yield Prompt(condition, tuple(enc(text)), text, metadata)
    elif spec.source == "ioi":
        def walk() -> Iterator[Prompt]:
            yield from ioi_prompts(need_encoder(), n_prompts=limit or 1000, n_tokens=spec.n_tokens, seed=config.seed)
    elif spec.source == "induction":
        def walk() -> Iterator[Prompt]:
            yield from induction_prompts(n_prompts=limit or 100, segment_length=spec.segment_length,
                                         vocab_size=vocab_size, bos_id=bos_id if config.prepend_bos else None,
                                         seed=config.seed)
    else:
        def walk() -> Iterator[Prompt]:
            seen: collections.Counter = collections.Counter()
            for prompt in jsonl_prompts(spec.path, encode):
                if limit is None or seen[prompt.condition] < limit:
                    seen[prompt.condition] += 1
                    yield prompt
    return walk


def plan_prompts(prompts: Iterable[Prompt], *, vocab_size: int, n_positions: int) -> Plan:
    """Validate every prompt and summarise the set; raises JaxdiagError on the first bad one."""
    from jaxdiag.runner import check_prompt

    counts: dict[str, int] = {}
    kinds: dict[str, set[str]] = {}
    max_len = 0
    digest = hashlib.sha256()
    for prompt in prompts:
        index = counts.get(prompt.condition, 0)
        check_prompt(prompt.tokens, vocab_size=vocab_size, n_positions=n_positions,
                     label=f"prompt {index} of condition {prompt.condition!r}")
        counts[prompt.condition] = index + 1
        max_len = max(max_len, len(prompt.tokens))
        for key, value in prompt.metadata.items():
            kinds.setdefault(key, set()).add("str" if isinstance(value, str) else "float")
        record = [prompt.condition, list(prompt.tokens), prompt.text, sorted(prompt.metadata.items())]
        digest.update(json.dumps(record).encode() + b"\n")
    if not counts:
        raise JaxdiagError("the prompt set is empty")
    metadata = {key: "float" if kind == {"float"} else "str" for key, kind in kinds.items()}
    return Plan(tuple(counts), tuple(counts.values()), max_len, metadata, digest.hexdigest())


class Progress(Protocol):
    def update(self, n: int) -> object: ...


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

    def units(self, *, batch_size: int, limit: int) -> list[Unit]:
        """The chunk's device batches; the chunk is finished once that many results are in."""
        rows = [(RowKey(self, row), prompt.tokens) for row, prompt in enumerate(self.prompts)]
        units = make_units(rows, batch_size=batch_size, limit=limit)
        self.units_left = len(units)
        return units

    def add(self, unit: Unit, result: dict[str, np.ndarray]) -> bool:
        """Take in one unit's result; True when it was the last one."""
        scatter(self.values, [key.row for key in unit.keys], result)
        self.units_left -= 1
        return self.units_left == 0

    def dataset(self, layout: Layout) -> xr.Dataset:
        """The chunk as its region of the store: the store's schema for these prompts, condition included."""
        ds = prompts_dataset(self.prompts, self.values, query=layout.query, width=layout.max_len,
                             metadata=layout.metadata, start=self.start)
        return with_condition(ds, [layout.conditions[self.condition]])


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
            shape = (stop - start, *layout.diagnostic_shape())
            values = {name: np.full(shape, np.nan, dtype=np.float32) for name in DIAGNOSTICS}
            yield Chunk(c, k, start, buffers.pop(c), values)


def finished_chunks(results: Iterable[tuple[Unit, dict[str, np.ndarray]]]) -> Iterator[Chunk]:
    """Each chunk as soon as the last of its units' results is in."""
    for unit, result in results:
        chunk = unit.keys[0].chunk  # a unit never spans chunks: each chunk makes its own
        if chunk.add(unit, result):
            yield chunk


def write_chunks(chunks: Iterable[Chunk], path: Path, layout: Layout, progress: Progress) -> None:
    """Write each chunk on one worker thread while the next ones compute; raise the first failed write.

    At most ``WRITE_QUEUE_CHUNKS`` finished chunks wait in memory: beyond that the producer waits.
    """
    delay = float(os.environ.get(FAULT_DELAY_ENV, "0") or 0)
    pause = (lambda: time.sleep(delay)) if delay else None

    def write(chunk: Chunk) -> None:
        write_chunk(path, chunk.dataset(layout), chunk.condition, chunk.index, before_marker=pause)
        progress.update(len(chunk.prompts))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxdiag-store-writer") as pool:
        pending: collections.deque[Future] = collections.deque()
        for chunk in chunks:
            while pending and (pending[0].done() or len(pending) >= WRITE_QUEUE_CHUNKS):
                pending.popleft().result()  # re-raises a failed write's error
            pending.append(pool.submit(write, chunk))
        for future in pending:
            future.result()


def _progress(total: int, quiet: bool, description: str):
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, unit="prompt", desc=description, disable=disable, dynamic_ncols=True, smoothing=0.1)


def _wait_for_all(process_count: int, name: str) -> None:
    if process_count > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def run_sweep(config: RunConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False,
              quiet: bool = False, log: Callable[[str], None] | None = None) -> SweepResult:
    """Run ``config`` into the store ``out``. Multi-process when ``jax.distributed`` is initialised."""
    import jax

    from jaxdiag import __version__
    from jaxdiag.checkpoint import load_checkpoint, resolve
    from jaxdiag.config import GPT2Config
    from jaxdiag.tokenizer import Tokenizer

    started = time.perf_counter()
    log = log or (lambda message: None)
    path = Path(out)
    process, n_processes = jax.process_index(), jax.process_count()
    if resume and overwrite:
        raise JaxdiagError("--resume and --overwrite exclude each other")
    # in a multi-process run the other processes may already see the store process 0 made
    if process == 0 and path.exists() and not (resume or overwrite):
        raise JaxdiagError(f"{path} already exists: pass --resume to continue it or --overwrite to replace it")
    if resume and path.exists() and not is_store(path):
        raise JaxdiagError(f"cannot resume {path}: it is not a Zarr store")

    checkpoint = resolve(config.model_location(), config.revision)
    model_config = GPT2Config.from_json(checkpoint.directory / "config.json")
    tokenizer = Tokenizer.for_checkpoint(checkpoint.directory, vocab_size=model_config.vocab_size,
                                         bos_id=model_config.bos_token_id, prepend_bos=config.prepend_bos)
    encode = tokenizer.encode if tokenizer is not None else None  # None: token-id prompts only
    walk = prompt_stream(config, encode, vocab_size=model_config.vocab_size, bos_id=model_config.bos_token_id)
    plan = plan_prompts(walk(), vocab_size=model_config.vocab_size, n_positions=model_config.n_positions)
    if config.conditions:
        missing = [c for c in config.conditions if c not in plan.conditions]
        if missing:
            raise JaxdiagError(f"conditions {', '.join(missing)} named in the run config are not in the prompt set "
                               f"(it has {', '.join(plan.conditions)})")
    chunk_size = config.chunk_size or default_chunk_size(model_config.n_layer, model_config.n_head, plan.max_len,
                                                         config.query)
    config = dataclasses.replace(config, chunk_size=chunk_size)
    layout = Layout(plan.conditions, plan.counts, model_config.n_layer, model_config.n_head, plan.max_len,
                    config.query, chunk_size, plan.metadata)
    identity = {"config": config.to_json(), "weights_sha256": checkpoint.weights_sha256,
                "prompts_sha256": plan.digest}

    if process == 0 and resume and path.exists():
        check_resumable(path, identity)
    _, model = load_checkpoint(checkpoint, precision=config.precision)
    if process == 0 and not (resume and path.exists()):
        attrs = {
            "schema_version": SCHEMA_VERSION, "jaxdiag_version": __version__, "model": config.model,
            "n_layers": model_config.n_layer, "n_heads": model_config.n_head, "prepend_bos": config.prepend_bos,
            "query_positions": config.query, "precision": config.precision, "seed": config.seed,
            "created": utc_now(), "backend": jax.default_backend(), "jax_version": jax.__version__,
            "complete": False, **identity,
        }
        if checkpoint.revision:
            attrs["model_revision"] = checkpoint.revision
        create_store(path, layout, attrs, overwrite=overwrite)
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
    try:
        if todo:
            chunks = iter_chunks(walk(), layout, todo)
            units = (unit for chunk in chunks
                     for unit in chunk.units(batch_size=config.batch_size, limit=model_config.n_positions))
            write_chunks(finished_chunks(DeviceRunner(model, config.query).run(units)), path, layout, progress)
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
