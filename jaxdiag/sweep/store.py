"""The sweep's Zarr v3 store (CONTRACT.md schema_version 1): its schema, creation, chunk writes, resume, finalise.

The schema is written once, as columns: :func:`prompt_columns` turns prompts and their diagnostics
into named per-prompt arrays with dims ``prompt, layer, head[, query]``. :func:`prompts_dataset`
wraps them as the xarray Dataset ``jaxdiag.diagnose`` returns; the store is the same columns with a
leading ``condition`` dim. The store's template is the columns of an empty prompt (their values are
the fill values) laid out as Zarr arrays by :func:`create_store`; a chunk of the sweep is the
columns of its prompts, written into its region by :func:`write_chunk`. The run path talks to Zarr
directly: xarray (and the dask it pulls in) costs a second of start-up and ~15 ms per chunk, and
a test checks that the store is what xarray's ``to_zarr`` writes for the same Dataset.

A store lives at a local path or an fsspec URL (:class:`jaxdiag.paths.StoreLocation`); everything
below holds for both, through fsspec, except creation.

Layout: every variable is chunked one condition by ``chunk_size`` prompts by everything else, so a
chunk is one unit of work, written once, by one process: processes (hosts) writing different chunks
never write the same object. A chunk is known to be written when its empty marker object
``.jaxdiag-progress/<condition>-<chunk>`` exists inside the store; the marker is written (one
object, so it exists fully or not at all) only after the chunk's data and coordinates are all
written, so a run killed at any point resumes by redoing exactly the chunks without a marker.
Chunks that hold only padding (a condition with fewer prompts) are never written: Zarr returns the
fill values (NaN, 0, -1, "") the contract asks for.

Creation. A place holds a store once its root ``zarr.json`` exists, and creation makes that object
last, so a store is never visible half-made:

- at a path, the template is written in a temporary folder beside the target and renamed into
  place; an existing store is replaced (``--overwrite``) only once its successor is ready, and a
  rename onto a store another run made meanwhile fails, so one of two racing runs is refused;
- at a URL (object stores cannot rename), the run first takes the claim object
  ``.jaxdiag-progress/creating`` by exclusive create (O_EXCL for ``file://``, a conditional put
  where the backend has one; fsspec's mode "xb"), so of two racing runs one is refused before it
  writes anything; it then uploads the template written in a local temporary folder, every object
  but the root ``zarr.json``, and that object last, again by exclusive create: the commit. The
  claim stays until finalising removes the markers, so from the claim on a place always holds a
  claim or a ``zarr.json``, and a run that takes the claim yet finds a ``zarr.json`` gives it back
  and is refused. A failed creation removes what it uploaded. A claim without a ``zarr.json`` is a
  creation that was killed: ``run`` refuses the place until ``--overwrite``.

Finalising sets ``complete`` to true, removes the markers and writes consolidated metadata.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import json
import os
import re
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from jaxdiag.errors import JaxdiagError
from jaxdiag.paths import StoreLocation
from jaxdiag.sweep.prompts import Prompt
from jaxdiag.schema import (COMPONENT_ATTRS, COMPONENT_VARIABLES, DIAGNOSTICS, HEAD_VARIABLE_ATTRS, PROMPT_COORDS,
                            ROLE_ATTRS, SCHEMA_VERSION, SCORES_NOTE, TASK_ATTRS, TASK_COORDS, TAXONOMY, QueryMode,
                            head_effect_kinds)

if TYPE_CHECKING:
    import xarray as xr

PROGRESS_DIR = ".jaxdiag-progress"
CLAIM = "creating"  # in PROGRESS_DIR: taken by the run creating a store at a URL (see the module docstring)
# Chunk size when the config leaves it open: at most this many prompts, and at most this many
# bytes per variable per chunk (query = "all" stores a row per position).
DEFAULT_CHUNK_PROMPTS = 256
MAX_CHUNK_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class Layout:
    """The store's shape: what the template needs and what every writer agrees on."""

    conditions: tuple[str, ...]
    counts: tuple[int, ...]  # real prompts per condition
    n_layers: int
    n_heads: int
    max_len: int  # longest prompt: the position (and, for query = "all", query) dimension
    query: str
    chunk_size: int
    metadata: dict[str, str]  # per-prompt metadata coordinate -> "str" | "float"
    effects: tuple[str, ...] = ()  # causal-effect kinds: adds metric, effect_<kind> and the task coordinates
    paired: bool = False  # some prompts name a pair partner: the ``pair`` coordinate (paired statistics)
    # the per-head variables, name -> (long_name, units): the sweep's probes' attrs
    # (jaxdiag.probes.stored_variables); the built-in probes give schema.HEAD_VARIABLE_ATTRS
    variables: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=lambda: dict(HEAD_VARIABLE_ATTRS))
    roles: tuple[str, ...] = ()  # named token roles: the role_position coordinate (runs with component kinds)

    @property
    def n_prompts(self) -> int:
        return max(self.counts)

    def chunk_ids(self) -> list[tuple[int, int]]:
        """(condition index, chunk index) of every chunk that holds a real prompt, in sweep order."""
        return [(c, k) for c, count in enumerate(self.counts) for k in range(-(-count // self.chunk_size))]

    def chunk_range(self, condition: int, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.counts[condition])

    def diagnostic_shape(self) -> tuple[int, ...]:
        return (self.n_layers, self.n_heads) + ((self.max_len,) if self.query == "all" else ())

    def value_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every per-prompt variable a chunk computes, with its shape for one prompt."""
        shapes = dict.fromkeys(self.variables, self.diagnostic_shape())
        if self.effects:
            shapes["metric"] = ()
            shapes.update({f"effect_{kind}": (self.n_layers, self.n_heads) for kind in head_effect_kinds(self.effects)})
            sizes = {"layer": self.n_layers, "head": self.n_heads, "position": self.max_len}
            for kind in self.effects:
                for name in COMPONENT_VARIABLES.get(kind, ()):
                    shapes[name] = tuple(sizes[d] for d in COMPONENT_ATTRS[name][2])
        return shapes

    @property
    def by_position(self) -> bool:
        """Whether some variable has the position dimension (then it has its index coordinate)."""
        return any("position" in COMPONENT_ATTRS[name][2] for kind in self.effects
                   for name in COMPONENT_VARIABLES.get(kind, ()))

    def coordinates(self) -> str:
        """Every per-prompt coordinate's name (a data variable's ``coordinates`` attribute)."""
        task = TASK_COORDS if self.effects else ("pair",) if self.paired else ()
        return " ".join([*PROMPT_COORDS, *task, *(("role_position",) if self.roles else ()), *self.metadata])


def default_chunk_size(n_layers: int, n_heads: int, max_len: int, query: str, batch_size: int = 1) -> int:
    """At most DEFAULT_CHUNK_PROMPTS prompts and MAX_CHUNK_BYTES per variable, rounded down to whole
    batches when a chunk holds one: a chunk's last batch is padded with dummy rows that cost a full
    batch's compute (256 prompts in batches of 48 would waste 2/3 of a batch per chunk)."""
    per_prompt = 4 * n_layers * n_heads * (max_len if query == "all" else 1)
    size = max(1, min(DEFAULT_CHUNK_PROMPTS, MAX_CHUNK_BYTES // per_prompt))
    return size - size % batch_size if size >= batch_size else size


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# zarr notes, on every store, that consolidated metadata and variable-length strings are not yet
# part of the v3 spec; xarray relies on both, so the notes say nothing a user can act on.
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
warnings.filterwarnings("ignore", message=r"The data type \(.*\) does not have a Zarr V3 specification")


StoreLike = str | os.PathLike | StoreLocation  # a path, an fsspec URL, or either already parsed


def is_store(path: StoreLike) -> bool:
    return StoreLocation.of(path).is_store()


# ---------------------------------------------------------------------------------------------
# The schema, once.


@dataclasses.dataclass(frozen=True)
class Column:
    """One per-prompt array of the schema: a data variable or a per-prompt coordinate."""

    dims: tuple[str, ...]  # "prompt" first
    values: np.ndarray
    attrs: dict[str, str]
    data: bool  # a data variable (its `coordinates` attribute names the per-prompt coordinates)


def prompt_columns(prompts: Sequence[Prompt], values: Mapping[str, np.ndarray], *, query: QueryMode,
                   width: int | None = None, metadata: Mapping[str, str] | None = None,
                   paired: bool = False, variables: Mapping[str, tuple[str, str]] = HEAD_VARIABLE_ATTRS,
                   roles: Sequence[str] = ()) -> dict[str, Column]:
    """The per-prompt arrays of ``prompts``: data variables in store order, then coordinates.

    ``values`` maps every per-head variable of ``variables`` (name -> (long_name, units): the
    probes' attrs) to ``[n, layer, head(, query)]`` float32 (used as given, not copied), and, in a run
    with effects, ``metric`` to ``[n]`` and each ``effect_<kind>`` to ``[n, layer, head]`` (then the
    task coordinates ``target``, ``foil``, ``pair``, ``metric_position`` come too; ``pair``
    alone with ``paired``, for the report's paired statistics);
    ``tokens`` is -1-padded to ``width`` (default: the longest prompt); ``metadata`` names the
    per-prompt metadata coordinates and their kinds ("str" | "float"), missing values being "" and NaN.
    The component variables (schema 3: dla*, lens_*, effect_patch_<activation>) have their dims from
    ``schema.COMPONENT_ATTRS``; ``roles`` names the columns of ``role_position [n, role]`` (-1: absent).
    """
    metadata = metadata or {}
    n = len(prompts)
    width = max(len(p.tokens) for p in prompts) if width is None else width
    dims = ("prompt", "layer", "head") + (("query",) if query == "all" else ())
    # the built-in head variables say which scores they read (soft-capped ones included); user probes say their own
    scores = lambda name: {"scores": SCORES_NOTE} if name in HEAD_VARIABLE_ATTRS else {}
    columns = {name: Column(dims, values[name], {"long_name": long_name, "units": units, **scores(name)}, True)
               for name, (long_name, units) in variables.items()}
    for name in values:
        if name in TASK_ATTRS:
            long_name, units = TASK_ATTRS[name]
            columns[name] = Column(("prompt",) if name == "metric" else ("prompt", "layer", "head"), values[name],
                                   {"long_name": long_name, "units": units}, True)
        elif name in COMPONENT_ATTRS:
            long_name, units, dims = COMPONENT_ATTRS[name]
            columns[name] = Column(("prompt", *dims), values[name], {"long_name": long_name, "units": units}, True)
    tokens = np.full((n, width), -1, dtype=np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt.tokens)] = prompt.tokens

    def coordinate(name: str, dims: tuple[str, ...], array: np.ndarray) -> None:
        columns[name] = Column(dims, array, {}, False)

    coordinate("text", ("prompt",), np.asarray([p.text for p in prompts], dtype=str))
    coordinate("n_tokens", ("prompt",), np.asarray([len(p.tokens) for p in prompts], dtype=np.int32))
    coordinate("tokens", ("prompt", "position"), tokens)
    task = "metric" in values
    if task:
        coordinate("target", ("prompt",), np.asarray([p.target for p in prompts], dtype=np.int32))
        coordinate("foil", ("prompt",), np.asarray([p.foil for p in prompts], dtype=np.int32))
        coordinate("metric_position", ("prompt",), np.asarray([p.metric_position for p in prompts], dtype=np.int32))
    if task or paired:
        coordinate("pair", ("prompt",), np.asarray([p.pair or "" for p in prompts], dtype=str))
    if roles:
        table = np.asarray([[p.roles.get(role, -1) for role in roles] for p in prompts], dtype=np.int32)
        columns["role_position"] = Column(("prompt", "role"), table.reshape(n, len(roles)), dict(ROLE_ATTRS), False)
    for key, kind in metadata.items():
        coordinate(key, ("prompt",), _metadata_column(prompts, key, kind))
    return columns


def index_coordinates(shape: tuple[int, ...], query: QueryMode, start: int, n: int) -> dict[str, np.ndarray]:
    """The dimension coordinates of ``n`` prompts' diagnostics shaped ``[layer, head(, query)]``: ``prompt``
    (counting from ``start``), ``layer``, ``head`` and, for query="all", ``query``."""
    n_layers, n_heads, *rest = shape
    out = {"prompt": np.arange(start, start + n), "layer": np.arange(n_layers), "head": np.arange(n_heads)}
    if query == "all":
        out["query"] = np.arange(rest[0])
    return out


def prompts_dataset(prompts: Sequence[Prompt], values: Mapping[str, np.ndarray], *, query: QueryMode,
                    width: int | None = None, metadata: Mapping[str, str] | None = None,
                    start: int = 0, paired: bool = False,
                    variables: Mapping[str, tuple[str, str]] = HEAD_VARIABLE_ATTRS) -> xr.Dataset:
    """Diagnostics of ``prompts`` with their per-prompt coordinates as a Dataset: dims ``prompt, layer,
    head[, query]``, ``prompt`` counting from ``start`` (:func:`prompt_columns` says what is in it)."""
    import xarray as xr

    columns = prompt_columns(prompts, values, query=query, width=width, metadata=metadata, paired=paired,
                             variables=variables)
    first = next(iter(values.values()))
    coords: dict[str, Any] = index_coordinates(first.shape[1:], query, start, len(prompts))
    coords.update({name: (c.dims, c.values) for name, c in columns.items() if not c.data})
    data = {name: xr.Variable(c.dims, c.values, attrs=c.attrs) for name, c in columns.items() if c.data}
    return xr.Dataset(data, coords=coords)


def _metadata_column(prompts: Sequence[Prompt], key: str, kind: str) -> np.ndarray:
    if kind == "float":
        return np.asarray([float(p.metadata.get(key, np.nan)) for p in prompts], dtype=np.float64)
    return np.asarray([_as_text(p.metadata.get(key)) for p in prompts], dtype=str)


def _as_text(value) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _zarr_dtype(values: np.ndarray) -> Any:
    """Zarr's dtype for ``values``: ``str`` (variable-length UTF-8) for text, as xarray stores it."""
    return str if values.dtype.kind == "U" else values.dtype


HEAD_MEAN_ATTRS = {"long_name": "each head's output (before c_proj) averaged over every real position of the "
                                "reference condition's prompts: what mean-ablation puts in its place",
                   "units": "activation"}


@dataclasses.dataclass(frozen=True)
class ArraySpec:
    """One Zarr array of the store: what creating it needs, and, for arrays written at creation, its values."""

    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: Any  # a numpy dtype, or str for variable-length UTF-8
    fill_value: Any
    attrs: dict[str, Any]
    values: np.ndarray | None = None


def store_template(layout: Layout, attrs: Mapping[str, Any], *,
                   head_mean: np.ndarray | None = None) -> tuple[dict[str, Any], dict[str, ArraySpec]]:
    """The whole store holding nothing yet: its root attributes and every array.

    The per-prompt arrays are the columns of one empty prompt, whose values are the fill values
    (NaN, 0, -1, ""), so nothing of the store's size is allocated. The index coordinates (one
    chunk each, Zarr's default fill value) and ``head_mean [layer, head, d_head]`` (the reference
    means of a run with mean-ablation effects, known before any prompt runs) carry their values.
    """
    values = {name: np.full((1, *shape), np.nan, np.float32) for name, shape in layout.value_shapes().items()}
    empty = prompt_columns([Prompt("", ())], values, query=layout.query, width=layout.max_len,
                           metadata=layout.metadata, paired=layout.paired, variables=layout.variables,
                           roles=layout.roles)
    coordinates = layout.coordinates()
    n_conditions, n = len(layout.conditions), layout.n_prompts
    arrays: dict[str, ArraySpec] = {}
    index = {"condition": np.asarray(layout.conditions, dtype=str),
             **index_coordinates(layout.diagnostic_shape(), layout.query, 0, n)}
    if layout.by_position:
        index["position"] = np.arange(layout.max_len)
    if layout.roles:
        index["role"] = np.asarray(layout.roles, dtype=str)
    for name, column in empty.items():
        rest = column.values.shape[1:]
        arrays[name] = ArraySpec(
            ("condition", *column.dims), (n_conditions, n, *rest), (1, layout.chunk_size, *rest),
            _zarr_dtype(column.values), column.values.flat[0].item(),
            # every per-prompt coordinate, as schema 1 has it
            {**column.attrs, "coordinates": coordinates} if column.data else dict(column.attrs))
    for name, array in index.items():
        dtype = _zarr_dtype(array)
        arrays[name] = ArraySpec((name,), array.shape, array.shape, dtype, "" if dtype is str else 0, {}, array)
    if head_mean is not None:
        head_mean = np.asarray(head_mean, np.float32)
        arrays["head_mean"] = ArraySpec(("layer", "head", "d_head"), head_mean.shape, head_mean.shape, np.float32,
                                        float("nan"), dict(HEAD_MEAN_ATTRS), head_mean)
    # the root "coordinates" attribute makes xarray treat per-prompt arrays (tokens has no data
    # variable sharing its position dimension) as coordinates, not data variables
    return {**attrs, "coordinates": coordinates}, arrays


# ---------------------------------------------------------------------------------------------
# Writing.


def check_store_target(location: StoreLocation, overwrite: bool) -> None:
    """Refuse a place a new store cannot go, before any work: one that holds a store (unless overwrite) or something
    that is not a store, or a local folder that cannot be written."""
    from jaxdiag.paths import check_output_dir

    if location.exists() and not overwrite:
        raise already_exists(location)
    if location.exists() and not (location.is_store() or _claimed(location)):
        raise JaxdiagError(f"{location} exists and is not a Zarr store: refusing to replace it")
    if location.local_path is not None:  # the store is made beside its place and renamed into it
        check_output_dir(str(location.local_path.parent), what=f"--out {location}: its folder")


def create_store(path: StoreLike, layout: Layout, attrs: dict[str, Any], *, overwrite: bool,
                 head_mean: np.ndarray | None = None) -> None:
    """Write an empty store (all metadata, index coordinates) at ``path`` (a path or URL); replace one only
    if ``overwrite``. Refuses (JaxdiagError) a place that another run fills first."""
    location = StoreLocation.of(path)
    check_store_target(location, overwrite)
    template = store_template(layout, attrs, head_mean=head_mean)
    if location.local_path is not None:
        _create_by_rename(location, template, overwrite)
    else:
        _create_by_upload(location, template, overwrite)


def _write_template(template: tuple[dict[str, Any], dict[str, ArraySpec]], folder: Path) -> None:
    # Only metadata and the small index arrays are written: a chunk never written reads as fill values.
    import zarr

    attrs, arrays = template
    store = zarr.storage.LocalStore(folder)
    root = zarr.create_group(store, zarr_format=3, attributes=attrs)
    for name, spec in arrays.items():
        array = root.create_array(name, shape=spec.shape, chunks=spec.chunks, dtype=spec.dtype,
                                  fill_value=spec.fill_value, attributes=spec.attrs, dimension_names=spec.dims)
        if spec.values is not None:
            array[...] = spec.values
    zarr.consolidate_metadata(store)  # chunk writes open the store from the consolidated metadata
    (folder / PROGRESS_DIR).mkdir()


def already_exists(location: StoreLocation) -> JaxdiagError:
    """The refusal of a run without --resume or --overwrite whose store is there, or being made by another run."""
    if _claimed(location) and not location.is_store():
        return JaxdiagError(f"{location} already exists (another run is creating it; if none is, a creation was "
                            "killed: pass --overwrite to replace it)")
    return JaxdiagError(f"{location} already exists: pass --resume to continue it or --overwrite to replace it")


def _create_by_rename(location: StoreLocation, template: tuple, overwrite: bool) -> None:
    path = location.local_path
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temps(path)
    temp = path.parent / f".{path.name}.creating-{os.getpid()}"
    try:
        _write_template(template, temp)
        if overwrite:
            location.remove()
        try:
            os.rename(temp, path)  # onto a non-empty folder it fails: never replaces a store it was not told to
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise already_exists(location) from None
            raise
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _create_by_upload(location: StoreLocation, template: tuple, overwrite: bool) -> None:
    fs = location.fs
    if overwrite:
        location.remove()
    fs.makedirs(location.child(PROGRESS_DIR), exist_ok=True)  # a folder for file://; nothing on object stores
    claim = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": utc_now()}).encode()
    try:
        _create_exclusively(fs, location.child(PROGRESS_DIR, CLAIM), claim)
    except FileExistsError:
        raise already_exists(location) from None
    # The claim stays until finalise removes the progress folder, and the commit comes before that, so
    # a run that gets the claim after another's finalise finds the other's zarr.json here.
    if location.is_store():
        location.remove(PROGRESS_DIR, CLAIM)
        raise already_exists(location)
    try:
        with tempfile.TemporaryDirectory(prefix="jaxdiag-template-") as folder:
            _write_template(template, Path(folder))
            files = [p.relative_to(folder).as_posix() for p in sorted(Path(folder).rglob("*")) if p.is_file()]
            objects = [name for name in files if name != "zarr.json"]
            for directory in sorted({name.rpartition("/")[0] for name in objects}):
                fs.makedirs(location.child(directory), exist_ok=True)  # folders for file://; no-ops on object stores
            for name in objects:
                fs.put_file(str(Path(folder) / name), location.child(name))
            # the commit: from here the place holds a store; exclusive, so it never replaces one
            _create_exclusively(fs, location.child("zarr.json"), (Path(folder) / "zarr.json").read_bytes())
    except BaseException:
        location.remove()  # what this run uploaded, its claim included: the place is as it found it
        raise


def _create_exclusively(fs: Any, path: str, data: bytes) -> None:
    """Write the object ``path`` only if it does not exist (FileExistsError if it does)."""
    try:
        file = fs.open(path, "xb")
    except (ValueError, NotImplementedError):  # a backend without exclusive create: check, then write
        if fs.exists(path):  # (not atomic: the README says not to race two creations on such a backend)
            raise FileExistsError(path) from None
        file = fs.open(path, "wb")
    with file:
        file.write(data)


def _claimed(location: StoreLocation) -> bool:
    return bool(location.fs.exists(location.child(PROGRESS_DIR, CLAIM)))


def _remove_abandoned_temps(path: Path) -> None:
    """Temp directories of creations killed before their rename (their process is gone)."""
    for temp in path.parent.glob(f".{path.name}.creating-*"):
        pid = temp.name.rpartition("-")[2]
        try:
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(temp, ignore_errors=True)
        except PermissionError:
            pass  # someone else's live process


def write_chunk(path: StoreLike, columns: Mapping[str, Column], condition: int, start: int, chunk: int, *,
                before_marker: Callable[[], None] | None = None) -> None:
    """Write one chunk's columns (from :func:`prompt_columns`, prompts ``start`` on) into its region of
    condition ``condition``, then its done marker."""
    import zarr

    location = StoreLocation.of(path)
    # the consolidated metadata written at creation: no listing, no metadata read per array; only
    # the per-prompt arrays are written (index coordinates came with the template), so processes
    # writing neighbouring chunks never touch the same object
    root = zarr.open_group(location.zarr_store(), mode="r+", use_consolidated=True)
    for name, column in columns.items():
        root[name][condition, start:start + len(column.values)] = column.values
    if before_marker is not None:
        before_marker()
    mark_done(location, condition, chunk)


def mark_done(path: StoreLike, condition: int, chunk: int) -> None:
    """The chunk's done marker: one empty object, which exists fully or not at all."""
    location = StoreLocation.of(path)
    location.fs.pipe_file(location.child(PROGRESS_DIR, f"{condition}-{chunk}"), b"")


def done_chunks(path: StoreLike) -> set[tuple[int, int]]:
    """(condition, chunk) of every chunk with a done marker (by any process or host)."""
    location = StoreLocation.of(path)
    folder = location.child(PROGRESS_DIR)
    location.fs.invalidate_cache(folder)  # other hosts write markers: never a cached listing
    try:
        names = location.fs.ls(folder, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    out = set()
    for name in names:
        # the claim, and "<marker>.tmp" files of versions that renamed markers into place, are no markers
        marker = re.fullmatch(r"(\d+)-(\d+)", name.rstrip("/").rpartition("/")[2])
        if marker:
            out.add((int(marker[1]), int(marker[2])))
    return out


def read_attrs(path: StoreLike) -> dict[str, Any]:
    import zarr

    location = StoreLocation.of(path)
    try:
        return dict(zarr.open_group(location.zarr_store(read_only=True), mode="r").attrs)
    except Exception as exc:  # zarr raises several types for "not a store"
        raise JaxdiagError(f"cannot open {location} as a jaxdiag store: {type(exc).__name__}") from None


def check_resumable(path: StoreLike, expected: dict[str, Any]) -> None:
    """Refuse to resume a store made by a different run: the keys in ``expected`` must all match."""
    path = StoreLocation.of(path)
    attrs = read_attrs(path)
    version = expected.get("schema_version", SCHEMA_VERSION)
    if attrs.get("schema_version") != version:
        raise JaxdiagError(f"cannot resume {path}: schema_version {attrs.get('schema_version')!r}, this run writes {version}")
    for key, value in expected.items():
        if attrs.get(key) != value:
            if key == "config":
                old, new = json.loads(attrs.get("config") or "{}"), json.loads(value)
                keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise JaxdiagError(f"cannot resume {path}: it was made with a different run config "
                                   f"({', '.join(keys)} {'differs' if len(keys) == 1 else 'differ'})")
            what = {"weights_sha256": "model weights", "prompts_sha256": "prompt set"}.get(key, key)
            raise JaxdiagError(f"cannot resume {path}: it was made with a different {what} ({key} differs)")


def finalise(path: StoreLike) -> None:
    """Mark the store complete, consolidate its metadata and drop the progress markers (idempotent)."""
    import zarr

    location = StoreLocation.of(path)
    root = zarr.open_group(location.zarr_store(), mode="r+")
    root.attrs["complete"] = True
    # markers go before consolidation, which would warn about a folder that is not Zarr; a kill in
    # between leaves a complete store whose --resume just consolidates again
    location.remove(PROGRESS_DIR)
    zarr.consolidate_metadata(location.zarr_store())


def open_dataset(path: StoreLike) -> xr.Dataset:
    """The store as a lazy xarray Dataset (exactly what ``xr.open_zarr`` gives)."""
    import xarray as xr

    path = StoreLocation.of(path)
    if not path.is_store():
        raise JaxdiagError(f"{path} is not a Zarr store (no zarr.json)")
    try:
        return xr.open_zarr(path.zarr_store(read_only=True), chunks=None)
    except Exception as exc:  # zarr/xarray raise several types for a broken store
        raise JaxdiagError(f"cannot open {path} as a Zarr store: {type(exc).__name__}: {exc}".splitlines()[0]) from None


PROVENANCE_KEYS = ("jaxdiag_version", "model", "model_revision", "weights_sha256", "weights_manifest", "weights_dtype",
                   "weights_upcast", "n_layers", "n_heads",
                   "prepend_bos", "query_positions", "precision", "seed", "backend", "jax_version", "created",
                   "prompts_sha256")


# What `jaxdiag info` shows of the run config (the rest, e.g. a circuit file's tables, is in --json).
CONFIG_DIGEST_KEYS = ("model", "revision", "prompts", "query", "precision", "prepend_bos", "batch_size", "chunk_size",
                      "seed", "conditions", "circuit", "effects", "effects_reference")
MAX_VALUE_CHARS = 120  # a store attribute's value in the text, at most (the middle elided)


def info(path: StoreLike) -> dict[str, Any]:
    """Everything ``jaxdiag info`` knows about a store, as JSON-ready values: ``store``, ``attrs`` (the
    ``config`` attribute parsed), ``dims``, ``variables`` (name -> dtype), ``conditions`` (name, prompts,
    min/max tokens: of the prompts written so far if the store is incomplete), ``complete``, and
    ``metadata_coordinates``, and ``chunks_written`` for an incomplete store."""
    path = StoreLocation.of(path)
    ds = open_dataset(path)
    attrs = {key: _plain(value) for key, value in read_attrs(path).items()}  # all of them (xarray hides some)
    if isinstance(attrs.get("config"), str):
        try:
            attrs["config"] = json.loads(attrs["config"])
        except ValueError:
            pass  # not JSON: kept as the text it is
    conditions = []
    n_tokens = np.asarray(ds["n_tokens"].values) if "n_tokens" in ds.coords else None
    for i, name in enumerate(ds["condition"].values if "condition" in ds.coords else ()):
        real = n_tokens[i][n_tokens[i] > 0] if n_tokens is not None else np.zeros(0, int)
        conditions.append({"name": str(name), "prompts": int(real.size),
                           "min_tokens": int(real.min()) if real.size else None,
                           "max_tokens": int(real.max()) if real.size else None})
    out: dict[str, Any] = {
        "store": str(path), "complete": bool(attrs.get("complete")),
        "dims": {str(d): int(n) for d, n in ds.sizes.items()},
        "variables": {str(n): str(ds[n].dtype) for n in ds.data_vars},
        "conditions": conditions,
        "metadata_coordinates": [str(n) for n in ds.coords if n not in ds.dims and n not in (*PROMPT_COORDS, *TASK_COORDS)],
        "attrs": attrs,
    }
    if not out["complete"]:
        out["chunks_written"] = len(done_chunks(path))
    return out


def _plain(value: Any) -> Any:
    """A Zarr attribute as plain JSON values (numpy scalars and arrays to numbers and lists)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _clip(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    text = " ".join(str(value).split())  # one line, whatever the attribute holds
    return text if len(text) <= limit else text[: limit // 2 - 2] + " ... " + text[-(limit // 2 - 3):]


def _config_digest(config: Any) -> list[str]:
    """The run config's preset-level keys, one per line (a circuit by its name only)."""
    if not isinstance(config, dict):
        return [f"  {_clip(config)}"]
    lines = []
    for key in CONFIG_DIGEST_KEYS:
        value = config.get(key)
        if value is None:
            continue
        if key == "prompts" and isinstance(value, dict):  # the source first
            value = ", ".join(f"{k}={v}" for k, v in sorted(value.items(), key=lambda kv: kv[0] != "source")
                              if v is not None)
        elif key == "circuit" and isinstance(value, dict):  # a circuit file kept inline: its name, not its tables
            value = f"{value.get('name', '(unnamed)')} (inline circuit file)"
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        lines.append(f"  {key}: {_clip(value)}")
    return lines


def describe(path: StoreLike) -> str:
    """The text ``jaxdiag info`` prints: dims, conditions with counts, completeness, model, variables,
    provenance and a digest of the run config (``jaxdiag info --json`` / :func:`info` give everything)."""
    summary = info(path)
    path, attrs = summary["store"], summary["attrs"]
    lines = [f"store: {path}", f"schema_version: {attrs.get('schema_version')}"]
    if summary["complete"]:
        lines.append("status: complete")
    else:
        lines.append(f"status: INCOMPLETE ({summary['chunks_written']} chunks written)")
        lines.append(f"  resume: jaxdiag run <the same config and flags> --out {path} --resume")
    lines.append("dims: " + ", ".join(f"{d}={n}" for d, n in summary["dims"].items()))
    if attrs.get("model") is not None:
        family = f"{attrs['model_type']}, " if attrs.get("model_type") else ""
        shape = (f" ({family}{attrs['n_layers']} layers x {attrs['n_heads']} heads)"
                 if attrs.get("n_layers") is not None and attrs.get("n_heads") is not None else "")
        lines.append(f"model: {_clip(attrs['model'])}{shape}")
    if summary["conditions"]:
        lines.append("conditions:" if summary["complete"] else "conditions (prompts written so far):")
        for c in summary["conditions"]:
            span = f", {c['min_tokens']}-{c['max_tokens']} tokens" if c["prompts"] else ""
            lines.append(f"  {c['name']}: {c['prompts']} prompts{span}")
    variables = summary["variables"]
    groups = {"diagnostics": [n for n in DIAGNOSTICS if n in variables],
              "taxonomy": [n for n in TAXONOMY if n in variables]}
    effects, reference = attrs.get("effects"), ""
    if effects:
        reference = f" (mean-ablation reference: {attrs['effects_reference']})" if attrs.get("effects_reference") else ""
        groups["effects"] = [f"effect_{kind}" for kind in effects if f"effect_{kind}" in variables]
        groups["logit attribution and lens"] = list(dict.fromkeys(
            name for kind in effects for name in COMPONENT_VARIABLES.get(kind, ())
            if name in variables and not name.startswith("effect_")))
    shown = {n for names in groups.values() for n in names}
    groups["other variables"] = [n for n in variables if n not in shown]
    for title, names in groups.items():
        if names:
            dtypes = sorted({variables.get(n, "?") for n in names})
            suffix = reference if title == "effects" else ""
            lines.append(f"{title}: {', '.join(names)} ({', '.join(dtypes)}){suffix}")
    if summary["metadata_coordinates"]:
        lines.append("metadata coordinates: " + ", ".join(summary["metadata_coordinates"]))
    lines.append("provenance:")
    for key in PROVENANCE_KEYS:
        if attrs.get(key) is not None and key not in ("model", "n_layers", "n_heads"):  # on the model line
            lines.append(f"  {key}: {_clip(attrs[key])}")
    if attrs.get("config") is not None:
        lines.append("config (digest; `jaxdiag info --json` prints all of it):")
        lines.extend(_config_digest(attrs["config"]))
    return "\n".join(lines)

