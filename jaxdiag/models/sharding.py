"""The device mesh and the rules that shard a model's parameters over it, Megatron-style.

A mesh has two axes (:data:`jaxdiag.schema.MESH_AXES`): ``data`` and ``model``. Parameters are
sharded over ``model`` and replicated over ``data``; a sweep deals its units (one batch each) to
the mesh's ``data`` rows, and each row runs the batch as one GSPMD program over its ``model``
devices (:class:`jaxdiag.sweep.runner.DeviceRunner`). With ``model = 1`` nothing here is used and a
run is today's data-parallel one, bit for bit.

The rules (by the parameter's module name, as HF and MaxText/EasyDeL name them):

* q/k/v and the MLP's input projections are split **column-wise** (``[in, out]`` kernels over
  ``out``): each device holds whole heads (``n_head`` and ``n_kv_head`` divide by ``model``) and a
  slice of the MLP's hidden units;
* the attention output projection and the MLP's output projection are split **row-wise** (over
  ``in``), so their matmul ends in a sum across devices that GSPMD inserts, and the bias, which is
  replicated, is added once after that sum (GSPMD keeps the program's meaning: a replicated
  operand added to a reduced result);
* embeddings and the LM head are split over **d_model** (every vocabulary size works, GPT-2's
  50,257 included; no padded vocabulary is needed);
* norms and biases (``scale``, ``bias``) are **replicated**: they are the named remainder a device
  holds beyond its 1/model share.

Fused projections are reshaped to a head axis first: NeoX's ``query_key_value`` already stores its
columns ``[head, (q, k, v), d_head]``; GPT-2's ``c_attn`` stores ``[(q, k, v), head, d_head]``,
which a contiguous split would cut across q, k and v, so a sharded GPT-2 holds its columns in the
head-major order (:func:`head_major_layouts`) and its attention reads them that way.

Arithmetic: a row-wise projection sums ``model`` partial products in another order than one
device does, so a sharded run agrees with a replicated one to float32 rounding, not bit for bit;
the same mesh gives the same bits every time (one compiled program, deterministic collectives).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiag.errors import JaxdiagError
from jaxdiag.schema import MeshShape

DATA, MODEL = "data", "model"

COLUMN = PartitionSpec(None, MODEL)  # [in, out] kernels over out: whole heads / MLP units per device
ROW = PartitionSpec(MODEL, None)  # [in, out] kernels over in: partial sums, then one cross-device sum
EMBEDDING = PartitionSpec(None, MODEL)  # [vocab or positions, d_model] over d_model
REPLICATED = PartitionSpec()

# Kernels by the name path of their module, longest match first. Names are HF's for every family
# (jaxdiag.models.{gpt2,llama,neox,bert}); GPT-2 calls both output projections c_proj.
KERNEL_RULES: tuple[tuple[tuple[str, ...], PartitionSpec], ...] = (
    (("attention", "output", "dense"), ROW),  # BERT
    (("intermediate", "dense"), COLUMN),  # BERT
    (("output", "dense"), ROW),  # BERT's MLP output
    (("attention", "dense"), ROW),  # NeoX, ALBERT
    (("embedding_hidden_mapping_in",), ROW),  # ALBERT: [embedding_size, d_model], its input over model
    (("c_attn",), COLUMN), (("query_key_value",), COLUMN),
    (("q_proj",), COLUMN), (("k_proj",), COLUMN), (("v_proj",), COLUMN),
    (("query",), COLUMN), (("key",), COLUMN), (("value",), COLUMN),
    (("c_fc",), COLUMN), (("gate_proj",), COLUMN), (("up_proj",), COLUMN), (("dense_h_to_4h",), COLUMN),
    (("ffn",), COLUMN),
    (("c_proj",), ROW), (("o_proj",), ROW), (("down_proj",), ROW), (("dense_4h_to_h",), ROW), (("ffn_output",), ROW),
    (("lm_head",), ROW), (("embed_out",), ROW),  # LM heads [d_model, vocab] over d_model
)
REPLICATED_LEAVES = ("scale", "bias")  # norms and biases: the replicated remainder


def uses_model_axis(mesh: Mesh | None) -> bool:
    """Whether ``mesh`` shards parameters (a ``model`` axis of more than one device)."""
    return mesh is not None and dict(mesh.shape).get(MODEL, 1) > 1


def make_mesh(shape: MeshShape, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, model)`` mesh of ``devices`` (default: the local ones); ``data=None`` takes every
    device not on ``model``. A one-line error unless ``data x model`` divides the device count."""
    devices = list(devices) if devices is not None else jax.local_devices()
    n = len(devices)
    if n % shape.model:
        raise JaxdiagError(f"mesh model={shape.model} does not divide the {n} devices")
    data = shape.data if shape.data is not None else n // shape.model
    if n % (data * shape.model):
        raise JaxdiagError(f"mesh data={data} x model={shape.model} does not divide the {n} devices")
    return Mesh(np.array(devices[: data * shape.model]).reshape(data, shape.model), (DATA, MODEL))


def check_divides(config: Any, model: int) -> None:
    """A one-line error, before any work, when ``model`` devices cannot each hold whole heads, whole
    key/value heads, an equal share of the MLP width and of d_model."""
    if model == 1:
        return
    sizes = [("attention heads (n_head)", config.n_head),
             ("key/value heads (n_kv_head)", getattr(config, "n_kv_head", config.n_head)),
             ("MLP width (d_mlp)", getattr(config, "d_mlp", None) or 4 * config.n_embd),
             ("model width (d_model)", config.n_embd)]
    if getattr(config, "embedding_size", config.n_embd) != config.n_embd:
        sizes.append(("embedding width (embedding_size)", config.embedding_size))
    for what, size in sizes:
        if size % model:
            raise JaxdiagError(f"mesh model={model} does not divide the {size} {what} of this model")


def partition_spec(path: Sequence[Any], ndim: int) -> PartitionSpec:
    """The sharding of the parameter at nnx state ``path`` (e.g. ``('h', 0, 'attn', 'c_attn', 'kernel')``)."""
    names = tuple(str(p) for p in path)
    leaf, module = names[-1], names[:-1]
    if leaf in REPLICATED_LEAVES:
        return REPLICATED
    if leaf == "embedding" and ndim == 2:
        return EMBEDDING
    if leaf == "kernel" and ndim == 2:
        for suffix, spec in KERNEL_RULES:
            if module[-len(suffix):] == suffix:
                return spec
    raise JaxdiagError(f"no sharding rule for parameter {'.'.join(names)} (shape rank {ndim}): "
                       "add its module to jaxdiag.models.sharding.KERNEL_RULES")


def head_major_columns(n_head: int, d_head: int) -> np.ndarray:
    """Column ``j`` of the head-major ``[head, (q, k, v), d]`` layout is HF's column ``perm[j]``
    of ``[(q, k, v), head, d]``."""
    return np.arange(3 * n_head * d_head).reshape(3, n_head, d_head).transpose(1, 0, 2).reshape(-1)


def head_major_layouts(model: nnx.Module) -> dict[tuple, np.ndarray]:
    """Switch every fused q/k/v module stored ``[(q, k, v), head, d]`` (``qkv_layout == "qkv"``) to
    the head-major layout, in place; ``{param path: column permutation}`` of the parameters whose
    columns must be reordered to match (the kernel's and the bias's last axis)."""
    permutations = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Module) and getattr(node, "qkv_layout", None) == "qkv":
            node.qkv_layout = "head"
            perm = head_major_columns(node.n_head, node.d_head)
            for leaf in ("kernel", "bias"):
                permutations[(*path, "c_attn", leaf)] = perm
    return permutations


def parameter_shardings(model: nnx.Module, mesh: Mesh) -> dict[tuple, NamedSharding]:
    """``{param path: NamedSharding}`` of every parameter of ``model`` (abstract or not) on ``mesh``."""
    return {path: NamedSharding(mesh, partition_spec(path, len(var.shape)))
            for path, var in nnx.to_flat_state(nnx.state(model))}


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """A copy of an in-memory ``model`` with its parameters sharded over ``mesh`` (fused q/k/v made
    head-major first); ``model`` itself is left as it was."""
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state, copy=True)
    permutations = head_major_layouts(copy)
    shardings = parameter_shardings(copy, mesh)
    graphdef, state = nnx.split(copy)
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        value = var[...]
        if path in permutations:
            value = np.asarray(value)[..., permutations[path]]
        var.set_value(jax.device_put(value, shardings[path]))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


class SliceableTensor(Protocol):
    """A checkpoint tensor read in parts: a numpy array, or a reader that maps only the part asked for."""

    shape: tuple[int, ...]

    def __getitem__(self, index: Any) -> np.ndarray: ...


def stream_into_shards(tensor: SliceableTensor, shape: tuple[int, ...], dtype, sharding: NamedSharding, *,
                       transpose: bool = False, columns: np.ndarray | None = None) -> jax.Array:
    """A parameter of ``shape`` on ``sharding`` whose every shard is read from ``tensor`` alone
    (``jax.make_array_from_callback``): the whole tensor is never asked for unless a shard is all of it.

    ``transpose``: ``tensor`` is stored ``[out, in]`` (``nn.Linear``) for an ``[in, out]`` kernel;
    ``columns``: the parameter's last axis is ``tensor``'s (after the transpose) in this order
    (:func:`head_major_columns`).
    """
    def read(index: tuple[slice, ...]) -> np.ndarray:
        index = tuple(index)
        last = index[-1] if columns is None else columns[index[-1]]
        if len(shape) == 1:
            part = tensor[last]
        elif transpose:
            part = tensor[last, index[0]].T
        else:
            part = tensor[index[0], last]
        return np.ascontiguousarray(part, dtype=dtype)

    return jax.make_array_from_callback(shape, sharding, read)


def row_states(state: Any, mesh: Mesh) -> list[Any]:
    """The parameters as each ``data`` row of ``mesh`` holds them: for row ``r``, arrays sharded over
    that row's ``model`` devices (built from the shards already there: no transfer)."""
    return [jax.tree.map(lambda x, row=row: _row_array(x, row), state) for row in row_meshes(mesh)]


def _row_array(x: jax.Array, row: Mesh) -> jax.Array:
    shards = {s.device: s.data for s in x.addressable_shards}
    return jax.make_array_from_single_device_arrays(
        x.shape, NamedSharding(row, x.sharding.spec), [shards[d] for d in row.devices.flat])


def row_meshes(mesh: Mesh) -> list[Mesh]:
    """One ``(model,)`` mesh per ``data`` row of ``mesh``."""
    return [Mesh(np.array(devices), (MODEL,)) for devices in mesh.devices]


def bytes_per_device(state: Any) -> dict[jax.Device, int]:
    """The parameter bytes each device holds, summed over the arrays' shards on it."""
    held: dict[jax.Device, int] = {}
    for leaf in jax.tree.leaves(state):
        for shard in leaf.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return held


def replicated_remainder(model: nnx.Module) -> dict[str, int]:
    """``{parameter name: bytes}`` of the parameters every device holds whole (norms and biases)."""
    return {".".join(map(str, path)): int(np.prod(var.shape)) * np.dtype(var.dtype).itemsize
            for path, var in nnx.to_flat_state(nnx.state(model))
            if partition_spec(path, len(var.shape)) == REPLICATED}


def place_parameters(abstract: nnx.Module, tensor_of: Callable[[tuple], tuple[SliceableTensor, bool]],
                     mesh: Mesh) -> nnx.Module:
    """``abstract`` (a shapes-only model, :meth:`jaxdiag.models.family.Family.abstract`) with every
    parameter streamed into its shards on ``mesh``: ``tensor_of(path)`` gives the checkpoint tensor
    of a parameter and whether it is stored transposed. Fused q/k/v are made head-major and read in
    that order."""
    permutations = head_major_layouts(abstract)
    shardings = parameter_shardings(abstract, mesh)
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        tensor, transpose = tensor_of(path)
        var.set_value(stream_into_shards(tensor, tuple(var.shape), var.dtype, shardings[path],
                                         transpose=transpose, columns=permutations.get(path)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))

