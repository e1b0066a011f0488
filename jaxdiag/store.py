"""The sweep's Zarr v3 store (CONTRACT.md schema_version 1): template, chunk writes, resume, finalise.

Layout: dims ``condition, prompt, layer, head[, query]``; every variable is chunked one condition
by ``chunk_size`` prompts by everything else, so a chunk is one unit of work, written once, by one
process. A chunk is known to be written when its marker file exists in ``.jaxdiag-progress/``
inside the store; the marker is created (atomically, by rename) only after the chunk's data and
coordinates are all written, so a run killed at any point resumes by redoing exactly the chunks
without a marker. Chunks that hold only padding (a condition with fewer prompts) are never written:
Zarr returns the fill values (NaN, 0, -1, "") the contract asks for.

The store is created in a temporary directory beside the target and renamed into place, so a
failure during creation leaves nothing behind and an existing store is only replaced once its
successor is ready. Finalising sets ``complete`` to true, writes consolidated metadata and removes
the markers.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jaxdiag.errors import JaxdiagError
from jaxdiag.schema import SCHEMA_VERSION

PROGRESS_DIR = ".jaxdiag-progress"
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


def default_chunk_size(n_layers: int, n_heads: int, max_len: int, query: str) -> int:
    per_prompt = 4 * n_layers * n_heads * (max_len if query == "all" else 1)
    return max(1, min(DEFAULT_CHUNK_PROMPTS, MAX_CHUNK_BYTES // per_prompt))


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# zarr notes, on every store, that consolidated metadata and variable-length strings are not yet
# part of the v3 spec; xarray relies on both, so the notes say nothing a user can act on.
warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
warnings.filterwarnings("ignore", message=r"The data type \(.*\) does not have a Zarr V3 specification")


def is_store(path: Path) -> bool:
    return (path / "zarr.json").is_file()


def create_store(path: Path, layout: Layout, attrs: dict[str, Any], *, overwrite: bool) -> None:
    """Write an empty store (all metadata, index coordinates) at ``path``; replace one only if ``overwrite``."""
    import zarr

    if path.exists() and not overwrite:
        raise JaxdiagError(f"{path} already exists: pass --resume to continue it or --overwrite to replace it")
    if path.exists() and not is_store(path):
        raise JaxdiagError(f"{path} exists and is not a Zarr store: refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temps(path)
    temp = path.parent / f".{path.name}.creating-{os.getpid()}"
    try:
        root = zarr.open_group(str(temp), mode="w", zarr_format=3)
        _write_template(root, layout, attrs)
        zarr.consolidate_metadata(str(temp))
        (temp / PROGRESS_DIR).mkdir()
        if path.exists():
            shutil.rmtree(path)
        os.rename(temp, path)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


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


def _write_template(root, layout: Layout, attrs: dict[str, Any]) -> None:
    from jaxdiag.api import ATTRS  # long names and units of the diagnostics, as the notebook API gives them

    c = layout.chunk_size
    n_c, n_p = len(layout.conditions), layout.n_prompts
    dims = ["condition", "prompt", "layer", "head"] + (["query"] if layout.query == "all" else [])

    def index(name: str, values: np.ndarray) -> None:
        dtype = str if values.dtype.kind == "U" else values.dtype  # variable-length strings, like "text"
        root.create_array(name, shape=values.shape, dtype=dtype, chunks=values.shape,
                          dimension_names=[name])[...] = values

    index("condition", np.asarray(layout.conditions, dtype=str))
    index("prompt", np.arange(n_p, dtype=np.int64))
    index("layer", np.arange(layout.n_layers, dtype=np.int64))
    index("head", np.arange(layout.n_heads, dtype=np.int64))
    if layout.query == "all":
        index("query", np.arange(layout.max_len, dtype=np.int64))

    per_prompt = ["text", "n_tokens", "tokens", *layout.metadata]
    coordinates = " ".join(per_prompt)
    shape = (n_c, n_p, *layout.diagnostic_shape())
    for name, (long_name, units) in ATTRS.items():
        root.create_array(name, shape=shape, dtype="float32", chunks=(1, c, *shape[2:]), fill_value=np.nan,
                          dimension_names=dims,
                          attributes={"long_name": long_name, "units": units, "coordinates": coordinates})
    root.create_array("text", shape=(n_c, n_p), dtype=str, chunks=(1, c), fill_value="",
                      dimension_names=["condition", "prompt"])
    root.create_array("n_tokens", shape=(n_c, n_p), dtype="int32", chunks=(1, c), fill_value=0,
                      dimension_names=["condition", "prompt"])
    root.create_array("tokens", shape=(n_c, n_p, layout.max_len), dtype="int32", chunks=(1, c, layout.max_len),
                      fill_value=-1, dimension_names=["condition", "prompt", "position"])
    for name, kind in layout.metadata.items():
        if kind == "str":
            root.create_array(name, shape=(n_c, n_p), dtype=str, chunks=(1, c), fill_value="",
                              dimension_names=["condition", "prompt"])
        else:
            root.create_array(name, shape=(n_c, n_p), dtype="float64", chunks=(1, c), fill_value=np.nan,
                              dimension_names=["condition", "prompt"])
    # the root "coordinates" attribute makes xarray treat per-prompt arrays (tokens has no data
    # variable sharing its position dimension) as coordinates, not data variables
    root.attrs.update({**attrs, "coordinates": coordinates})


@dataclasses.dataclass
class ChunkData:
    """Everything one chunk writes: rows ``start .. start + n`` of condition ``condition``."""

    condition: int
    chunk: int
    start: int
    diagnostics: dict[str, np.ndarray]  # name -> [n, layer, head(, query)] float32
    tokens: np.ndarray  # [n, max_len] int32, -1 padded
    n_tokens: np.ndarray  # [n] int32
    text: list[str]
    metadata: dict[str, np.ndarray]  # name -> [n] str or float64


class StoreWriter:
    """Writes chunks into an existing store; one per writing thread."""

    def __init__(self, path: Path):
        import zarr

        self.path = path
        self.root = zarr.open_group(str(path), mode="r+")
        self._arrays: dict[str, Any] = {}

    def _array(self, name: str):
        if name not in self._arrays:
            self._arrays[name] = self.root[name]
        return self._arrays[name]

    def write(self, data: ChunkData, *, before_marker: Callable[[], None] | None = None) -> None:
        """Write a chunk's data and coordinates, then (and only then) its done marker."""
        rows = slice(data.start, data.start + len(data.text))
        for name, values in data.diagnostics.items():
            self._array(name)[data.condition, rows] = values
        self._array("tokens")[data.condition, rows] = data.tokens
        self._array("n_tokens")[data.condition, rows] = data.n_tokens
        self._array("text")[data.condition, rows] = np.asarray(data.text, dtype=str)
        for name, values in data.metadata.items():
            self._array(name)[data.condition, rows] = values
        if before_marker is not None:
            before_marker()
        mark_done(self.path, data.condition, data.chunk)


def _marker(path: Path, condition: int, chunk: int) -> Path:
    return path / PROGRESS_DIR / f"{condition}-{chunk}"


def mark_done(path: Path, condition: int, chunk: int) -> None:
    marker = _marker(path, condition, chunk)
    temp = marker.with_name(marker.name + ".tmp")
    temp.write_bytes(b"")
    os.replace(temp, marker)  # atomic: a marker exists fully or not at all


def done_chunks(path: Path) -> set[tuple[int, int]]:
    folder = path / PROGRESS_DIR
    if not folder.is_dir():
        return set()
    out = set()
    for entry in folder.iterdir():
        if entry.name.endswith(".tmp"):
            continue
        condition, _, chunk = entry.name.partition("-")
        out.add((int(condition), int(chunk)))
    return out


def read_attrs(path: Path) -> dict[str, Any]:
    import zarr

    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as exc:  # zarr raises several types for "not a store"
        raise JaxdiagError(f"cannot open {path} as a jaxdiag store: {type(exc).__name__}") from None


def check_resumable(path: Path, expected: dict[str, Any]) -> None:
    """Refuse to resume a store made by a different run: the keys in ``expected`` must all match."""
    attrs = read_attrs(path)
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise JaxdiagError(f"cannot resume {path}: schema_version {attrs.get('schema_version')!r}, this jaxdiag writes {SCHEMA_VERSION}")
    for key, value in expected.items():
        if attrs.get(key) != value:
            if key == "config":
                old, new = json.loads(attrs.get("config") or "{}"), json.loads(value)
                keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise JaxdiagError(f"cannot resume {path}: it was made with a different run config ({', '.join(keys)} differ)")
            what = {"weights_sha256": "model weights", "prompts_sha256": "prompt set"}.get(key, key)
            raise JaxdiagError(f"cannot resume {path}: it was made with a different {what} ({key} differs)")


def finalise(path: Path) -> None:
    """Mark the store complete, consolidate its metadata and drop the progress markers (idempotent)."""
    import zarr

    root = zarr.open_group(str(path), mode="r+")
    root.attrs["complete"] = True
    # markers go before consolidation, which would warn about a folder that is not Zarr; a kill in
    # between leaves a complete store whose --resume just consolidates again
    shutil.rmtree(path / PROGRESS_DIR, ignore_errors=True)
    zarr.consolidate_metadata(str(path))


def open_dataset(path: str | Path):
    """The store as a lazy xarray Dataset (exactly what ``xr.open_zarr`` gives)."""
    import xarray as xr

    path = Path(path)
    if not is_store(path):
        raise JaxdiagError(f"{path} is not a Zarr store (no zarr.json)")
    try:
        return xr.open_zarr(str(path), chunks=None)
    except Exception as exc:  # zarr/xarray raise several types for a broken store
        raise JaxdiagError(f"cannot open {path} as a Zarr store: {type(exc).__name__}: {exc}".splitlines()[0]) from None


PROVENANCE_KEYS = ("jaxdiag_version", "model", "model_revision", "weights_sha256", "n_layers", "n_heads",
                   "prepend_bos", "query_positions", "precision", "seed", "backend", "jax_version", "created",
                   "prompts_sha256")


def describe(path: str | Path) -> str:
    """The text ``jaxdiag info`` prints: dims, sizes, conditions with counts, completeness, provenance."""
    path = Path(path)
    ds = open_dataset(path)
    attrs = ds.attrs
    lines = [f"store: {path}", f"schema_version: {attrs.get('schema_version')}"]
    complete = bool(attrs.get("complete"))
    status = "complete" if complete else "INCOMPLETE"
    if not complete:
        n_done = len(done_chunks(path))
        status += f" ({n_done} chunks written; continue with `jaxdiag run ... --out {path} --resume`)"
    lines.append(f"status: {status}")
    lines.append("dims: " + ", ".join(f"{d}={n}" for d, n in ds.sizes.items()))
    lines.append("variables: " + ", ".join(f"{n} ({ds[n].dtype})" for n in ds.data_vars))
    extra = [n for n in ds.coords if n not in ds.dims and n not in ("text", "n_tokens", "tokens")]
    if extra:
        lines.append("metadata coordinates: " + ", ".join(extra))
    if "n_tokens" in ds.coords:
        n_tokens = np.asarray(ds["n_tokens"].values)
        lines.append("conditions:")
        for i, name in enumerate(ds["condition"].values):
            real = n_tokens[i][n_tokens[i] > 0]
            span = f", {real.min()}-{real.max()} tokens" if real.size else ""
            lines.append(f"  {name}: {real.size} prompts{span}")
    lines.append("provenance:")
    for key in PROVENANCE_KEYS:
        if attrs.get(key) is not None:
            lines.append(f"  {key}: {attrs[key]}")
    if attrs.get("config"):
        lines.append(f"  config: {attrs['config']}")
    return "\n".join(lines)

