"""A sweep: a run config's prompts through the model on every device, into a resumable Zarr store.

Order of work, so that bad input fails before any device work and leaves nothing behind:

1. resolve the checkpoint, read its config and tokenizer (no weights yet);
2. plan: walk every prompt once -- tokenise, validate, count per condition, note the longest,
   the metadata keys and a digest of the whole prompt set (nothing kept in memory);
3. refuse an existing store unless --resume (same config, weights and prompts) or --overwrite;
4. load the weights, create the store (temp directory + rename), then walk the prompts again.

The second walk groups each condition's prompts into chunks of ``chunk_size`` (one chunk of the
store each) and each chunk into length-sorted units of ``batch_size`` (one device batch each).
Units depend only on the prompts and the config, so every prompt meets the same compiled shapes
however many devices or processes run the sweep and whether or not it was resumed: stores agree
bit for bit. Chunks are dealt to processes round-robin; a process skips chunks already written.
Device compute runs ahead of the host (``DeviceRunner`` keeps units in flight), and finished
chunks go through a bounded queue to a writer thread, so compute, copies and Zarr writes overlap
and memory stays bounded.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from jaxdiag.errors import JaxdiagError
from jaxdiag.prompts import Prompt, induction_prompts, ioi_blog_texts, ioi_prompts, jsonl_prompts
from jaxdiag.runconfig import RunConfig
from jaxdiag.store import (
    SCHEMA_VERSION, ChunkData, Layout, StoreWriter, check_resumable, create_store, default_chunk_size,
    done_chunks, finalise, is_store, read_attrs, utc_now,
)

WRITE_QUEUE_CHUNKS = 4
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


@dataclasses.dataclass
class _Chunk:
    condition: int
    chunk: int
    start: int
    prompts: list[Prompt]


def iter_chunks(prompts: Iterable[Prompt], layout: Layout, wanted: set[tuple[int, int]]) -> Iterator[_Chunk]:
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
            yield _Chunk(c, k, start, buffers.pop(c))


class _ChunkBuffer:
    """Collects a chunk's unit results; complete when every unit has reported."""

    def __init__(self, chunk: _Chunk, layout: Layout, n_units: int):
        self.chunk = chunk
        self.remaining = n_units
        shape = (len(chunk.prompts), *layout.diagnostic_shape())
        from jaxdiag.diagnostics import DIAGNOSTICS

        self.values = {name: np.full(shape, np.nan, dtype=np.float32) for name in DIAGNOSTICS}

    def to_data(self, layout: Layout) -> ChunkData:
        prompts = self.chunk.prompts
        tokens = np.full((len(prompts), layout.max_len), -1, dtype=np.int32)
        for row, prompt in enumerate(prompts):
            tokens[row, : len(prompt.tokens)] = prompt.tokens
        metadata = {}
        for key, kind in layout.metadata.items():
            if kind == "float":
                metadata[key] = np.asarray([float(p.metadata.get(key, np.nan)) for p in prompts], dtype=np.float64)
            else:
                metadata[key] = np.asarray([_as_text(p.metadata.get(key)) for p in prompts], dtype=str)
        return ChunkData(self.chunk.condition, self.chunk.chunk, self.chunk.start, self.values, tokens,
                         np.asarray([len(p.tokens) for p in prompts], dtype=np.int32),
                         [p.text for p in prompts], metadata)


def _as_text(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


class _Writer(threading.Thread):
    """Writes finished chunks from a bounded queue; the first error stops it and is re-raised by ``join_checked``."""

    def __init__(self, path: Path, layout: Layout, progress):
        super().__init__(name="jaxdiag-store-writer", daemon=True)
        self.queue: queue.Queue = queue.Queue(maxsize=WRITE_QUEUE_CHUNKS)
        self.path, self.layout, self.progress = path, layout, progress
        self.error: BaseException | None = None
        self.delay = float(os.environ.get(FAULT_DELAY_ENV, "0") or 0)

    def run(self) -> None:
        writer = StoreWriter(self.path)
        while (item := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain, so the producer never blocks on a dead writer
            try:
                data = item.to_data(self.layout)
                writer.write(data, before_marker=self._pause if self.delay else None)
                self.progress.update(len(data.text))
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self.error = exc

    def _pause(self) -> None:
        time.sleep(self.delay)

    def put(self, buffer: _ChunkBuffer) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(buffer)

    def join_checked(self) -> None:
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error


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
    from jaxdiag.runner import DeviceRunner, make_units, scatter
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
    writer = _Writer(path, layout, progress)
    writer.start()
    try:
        if todo:
            owners: collections.deque = collections.deque()

            def units():
                for chunk in iter_chunks(walk(), layout, todo):
                    rows = [(row, prompt.tokens) for row, prompt in enumerate(chunk.prompts)]
                    chunk_units = make_units(rows, batch_size=config.batch_size, limit=model_config.n_positions)
                    buffer = _ChunkBuffer(chunk, layout, len(chunk_units))
                    for unit in chunk_units:
                        owners.append(buffer)
                        yield unit

            for unit, result in DeviceRunner(model, config.query).run(units()):
                buffer = owners.popleft()
                scatter(buffer.values, unit.keys, result)
                buffer.remaining -= 1
                if buffer.remaining == 0:
                    writer.put(buffer)
    finally:
        try:
            writer.join_checked()
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
