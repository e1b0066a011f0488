"""Batches of token sequences through one compiled diagnostics step, on every local device.

Prompts are right-padded to a small set of bucket lengths and every batch is padded to the same
batch size, so a sweep compiles once per bucket (and device), never per batch.

Data parallelism: the parameters are replicated over a ``Mesh`` of the local devices with a
``NamedSharding``, and each batch ("unit") runs the *single-device* program on one device, units
dealt round-robin. A prompt's numbers therefore depend only on its unit (which prompts, padded to
which shape), never on how many devices there are: on XLA:CPU an SPMD-partitioned program over N
devices gives ``z_excess`` values a few ULP away from the single-device program's (measured:
|diff| <= 4e-9 with 2 or 8 devices), which would break the bit-identity of stores made on
different device counts. With a ``model`` axis (a model larger than one device,
:mod:`jaxdiag.models.sharding`) the parameters are sharded over it and a unit runs on one ``data``
row of the mesh as one GSPMD program: the numbers then depend on the model axis's size, still
never on the data axis's. Dispatch is asynchronous and several units stay in flight, so device
compute overlaps the host copies of earlier results and whatever the caller does with them.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Hashable, Iterable, Iterator, Protocol, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiag.errors import JaxdiagError
from jaxdiag.models.family import AttentionImpl, Family
from jaxdiag.models.sharding import row_meshes, row_states, shard_model, uses_model_axis
from jaxdiag.probes import DIAGNOSTICS_PROBE, TAXONOMY_PROBE, Probe, stored_variables
from jaxdiag.schema import QueryMode
from jaxdiag.sweep.store import default_chunk_size


# What a sweep stores per head and probed row: the seven diagnostics and the five taxonomy scores.
SWEEP_PROBES: tuple[Probe, ...] = (DIAGNOSTICS_PROBE, TAXONOMY_PROBE)


def bucket_length(n: int, limit: int) -> int:
    """Smallest bucket >= n: multiples of 16 up to 128, then powers of two, capped at ``limit``."""
    bucket = -(-n // 16) * 16 if n <= 128 else 1 << (n - 1).bit_length()
    return min(bucket, limit)


def check_prompt(tokens: Sequence[int], *, vocab_size: int, n_positions: int, label: str) -> None:
    """Raise JaxdiagError naming ``label`` unless ``tokens`` is a non-empty in-vocabulary sequence that fits."""
    if len(tokens) == 0:
        raise JaxdiagError(f"{label} is empty: a prompt needs at least one token")
    if len(tokens) > n_positions:
        raise JaxdiagError(f"{label} has {len(tokens)} tokens, more than the model's context window of {n_positions}")
    low, high = min(tokens), max(tokens)
    if low < 0 or high >= vocab_size:
        raise JaxdiagError(f"{label} has token id {low if low < 0 else high} outside the vocabulary [0, {vocab_size})")


def check_tokens(token_lists: Sequence[Sequence[int]], *, vocab_size: int, n_positions: int) -> None:
    for i, tokens in enumerate(token_lists):
        check_prompt(tokens, vocab_size=vocab_size, n_positions=n_positions, label=f"prompt {i}")


def pad_batch(token_lists: Sequence[Sequence[int]], batch_size: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to ``[batch_size, seq_len]``; missing rows are one-token dummies whose results are dropped."""
    tokens = np.zeros((batch_size, seq_len), dtype=np.int32)
    lengths = np.ones((batch_size,), dtype=np.int32)
    for row, seq in enumerate(token_lists):
        tokens[row, : len(seq)] = seq
        lengths[row] = len(seq)
    return tokens, lengths


@dataclasses.dataclass
class Unit:
    """One device batch: ``keys[i]`` names the prompt in row ``i``; rows past ``len(keys)`` are dummies."""

    keys: list[Hashable]
    tokens: np.ndarray  # [batch_size, seq_len] int32
    lengths: np.ndarray  # [batch_size] int32
    inputs: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # more per-row step inputs


def make_units(items: Sequence[tuple[Hashable, Sequence[int]]], *, batch_size: int, limit: int) -> list[Unit]:
    """Sort ``(key, tokens)`` by length (stable), cut into batches of ``batch_size``, pad each to its bucket.

    When every prompt has the same length (templated sweeps such as IOI), that length is the one
    shape: nothing is padded and nothing is lost to bucket rounding. The units depend only on
    ``items`` and ``batch_size``: the same prompts always meet the same compiled shapes, whatever
    runs them.
    """
    order = sorted(range(len(items)), key=lambda i: len(items[i][1]))
    uniform = len({len(t) for _, t in items}) == 1
    units = []
    for start in range(0, len(order), batch_size):
        rows = [items[i] for i in order[start : start + batch_size]]
        longest = max(len(t) for _, t in rows)
        seq_len = longest if uniform else bucket_length(longest, limit)
        tokens, lengths = pad_batch([t for _, t in rows], batch_size, seq_len)
        units.append(Unit([k for k, _ in rows], tokens, lengths))
    return units


def chunked_units(items: Sequence[tuple[Hashable, Sequence[int]]], *, batch_size: int, chunk_size: int,
                  limit: int) -> list[Unit]:
    """The units a sweep makes of one condition's prompts: :func:`make_units` of each run of
    ``chunk_size`` prompts (one store chunk), so the same prompts meet the same compiled shapes."""
    return [unit for start in range(0, len(items), chunk_size)
            for unit in make_units(items[start:start + chunk_size], batch_size=batch_size, limit=limit)]


def probe_values(model: Family, tokens: jax.Array, lengths: jax.Array, query: QueryMode,
                 probes: tuple[Probe, ...] = SWEEP_PROBES, attention: AttentionImpl = "auto") -> dict[str, jax.Array]:
    """``probes``' values ``{name: [b, layer, head(, seq)]}``; for ``query="last"`` the one row is squeezed away."""
    values = model(tokens, lengths, probes=probes, query=query, hidden=False, attention=attention).probes
    return {name: value[..., 0] for name, value in values.items()} if query == "last" else values


def diagnostics_step(graphdef, query: QueryMode, probes: tuple[Probe, ...] = SWEEP_PROBES, *,
                     attention: AttentionImpl = "auto"):
    """A jitted ``(state, tokens, lengths) -> probe_values(...)``."""
    @jax.jit
    def step(state, tokens, lengths):
        return probe_values(nnx.merge(graphdef, state), tokens, lengths, query, probes, attention)

    return step


class DeviceRunner:
    """Runs units on all local devices with a bounded number in flight; results come back in order."""

    def __init__(self, model: Family, query: QueryMode, *, make_step: Callable | None = None,
                 devices: Sequence[jax.Device] | None = None, in_flight_per_device: int = 2,
                 probes: tuple[Probe, ...] = SWEEP_PROBES, mesh: Mesh | None = None):
        """``make_step(graphdef)`` builds the jitted ``step(state, tokens, lengths, **unit.inputs) -> {name: [b, ...]}``
        (default: :func:`diagnostics_step` of ``probes``).

        ``mesh`` (:func:`jaxdiag.models.sharding.make_mesh`): with a ``model`` axis of more than one
        device, the parameters are sharded over it and a unit runs on one ``data`` row as one GSPMD
        program; otherwise its devices run units as above (``devices`` or all local ones without it).
        """
        if uses_model_axis(mesh):
            graphdef, state = nnx.split(shard_model(model, mesh))
            self._replicas = row_states(state, mesh)
            # each row's inputs are replicated over its model devices
            self._places: list = [NamedSharding(row, PartitionSpec()) for row in row_meshes(mesh)]
            self.mesh = mesh
        else:
            self.devices = list(mesh.devices.flat) if mesh is not None else (
                list(devices) if devices is not None else jax.local_devices())
            self.mesh = Mesh(np.array(self.devices), ("data",))
            graphdef, state = nnx.split(model)
            replicated = jax.device_put(state, NamedSharding(self.mesh, PartitionSpec()))
            self._replicas = [_replica(replicated, d) for d in self.devices]
            self._places = list(self.devices)
        self._step = make_step(graphdef) if make_step is not None else diagnostics_step(graphdef, query, probes)
        self.max_in_flight = in_flight_per_device * len(self._places)

    def run(self, units: Iterable[Unit]) -> Iterator[tuple[Unit, dict[str, np.ndarray]]]:
        """``(unit, {name: [batch_size, layer, head(, seq)] float32 numpy})`` for each unit, in order."""
        pending: collections.deque = collections.deque()
        for i, unit in enumerate(units):
            slot = i % len(self._places)
            place = self._places[slot]
            inputs = {name: jax.device_put(value, place) for name, value in unit.inputs.items()}
            out = self._step(self._replicas[slot], jax.device_put(unit.tokens, place),
                             jax.device_put(unit.lengths, place), **inputs)
            for value in out.values():
                value.copy_to_host_async()  # the copy overlaps later units' compute
            pending.append((unit, out))
            if len(pending) >= self.max_in_flight:
                yield self._collect(*pending.popleft())
        while pending:
            yield self._collect(*pending.popleft())

    @staticmethod
    def _collect(unit: Unit, out: dict[str, jax.Array]) -> tuple[Unit, dict[str, np.ndarray]]:
        return unit, {name: np.asarray(value) for name, value in jax.device_get(out).items()}


def _replica(replicated, device: jax.Device):
    """The copy of every replicated parameter that lives on ``device`` (no transfer)."""
    return jax.tree.map(lambda x: next(s.data for s in x.addressable_shards if s.device == device), replicated)


def run_diagnostics(
    model: Family,
    token_lists: Sequence[Sequence[int]],
    *,
    query: QueryMode = "last",
    batch_size: int = 32,
    chunk_size: int | None = None,
    probes: tuple[Probe, ...] = SWEEP_PROBES,
    progress: Progress | None = None,
    mesh: Mesh | None = None,
) -> dict[str, np.ndarray]:
    """The probes' per-head variables for every sequence: ``[n, layer, head]`` (``last``) or
    ``[n, layer, head, max_len]`` (``all``), batched as a sweep batches one condition of these
    prompts (``chunk_size`` None: the sweep's default), so the values equal its store's bit for bit."""
    config = model.config
    check_tokens(token_lists, vocab_size=config.vocab_size, n_positions=config.n_positions)
    n = len(token_lists)
    max_len = max(len(t) for t in token_lists)
    shape = (n, config.n_layer, config.n_head) + ((max_len,) if query == "all" else ())
    out = {name: np.full(shape, np.nan, dtype=np.float32) for name in stored_variables(probes)}
    chunk_size = chunk_size or default_chunk_size(config.n_layer, config.n_head, max_len, query, batch_size)
    units = chunked_units(list(enumerate(token_lists)), batch_size=batch_size, chunk_size=chunk_size,
                          limit=config.n_positions)
    for unit, result in DeviceRunner(model, query, probes=probes, mesh=mesh).run(units):
        scatter(out, unit.keys, result)
        if progress is not None:
            progress.update(len(unit.keys))
    return out


class Progress(Protocol):
    def update(self, n: int) -> object: ...


def scatter(out: dict[str, np.ndarray], rows: Sequence[int], result: dict[str, np.ndarray]) -> None:
    """Copy a unit's real rows into ``out[name][rows]`` for every name of ``out``; query positions
    (``query="all"``) and the positions of patching by position are cut or NaN-padded to fit."""
    for name in out:
        values = result[name][: len(rows)]
        if values.ndim == 4 or (values.ndim == 3 and values.shape[-1] != out[name].shape[-1]):
            # the last axis is positions: the bucket may be longer or shorter than the output
            width = min(values.shape[-1], out[name].shape[-1])
            out[name][rows, ..., :width] = values[..., :width]
        else:
            out[name][rows] = values
