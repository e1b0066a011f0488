"""A chunk goes from prompts to its written region in one type; the store and diagnose share one schema."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from jaxdiag.sweep.prompts import Prompt
from jaxdiag.schema import HEAD_VARIABLES
from jaxdiag.sweep.store import PROGRESS_DIR, Layout, create_store, done_chunks, finalise, prompts_dataset
from jaxdiag.sweep.run import Chunk, write_chunks

LAYOUT = Layout(("a", "b"), (5, 2), n_layers=2, n_heads=3, max_len=4, query="last", chunk_size=2,
                metadata={"tag": "str", "score": "float"})


class _Progress:
    def __init__(self):
        self.n = 0

    def update(self, n: int) -> None:
        self.n += n


def _chunk(condition: int, index: int) -> Chunk:
    start, stop = LAYOUT.chunk_range(condition, index)
    prompts = [Prompt(LAYOUT.conditions[condition], tuple(range(1, 2 + row % 3)), f"p{row}",
                      {"tag": f"t{row}", "score": row / 2}) for row in range(start, stop)]
    shape = (stop - start, *LAYOUT.diagnostic_shape())
    values = {name: np.full(shape, 10 * condition + index + i, dtype=np.float32) for i, name in enumerate(HEAD_VARIABLES)}
    return Chunk(condition, index, start, prompts, values)


def test_written_chunks_read_back_as_their_datasets(tmp_path):
    path = tmp_path / "s.zarr"
    create_store(path, LAYOUT, {"schema_version": 1}, overwrite=False)
    chunks = [_chunk(c, k) for c, k in LAYOUT.chunk_ids() if (c, k) != (0, 1)]  # one chunk left for later
    progress = _Progress()
    write_chunks(chunks, path, LAYOUT, progress)
    assert progress.n == 5 and done_chunks(path) == {(0, 0), (0, 2), (1, 0)}
    ds = xr.open_zarr(path, chunks=None).load()
    for chunk in chunks:
        rows = slice(chunk.start, chunk.start + len(chunk.prompts))
        expected = prompts_dataset(chunk.prompts, chunk.values, query="last", width=LAYOUT.max_len,
                                   metadata=LAYOUT.metadata, start=chunk.start)
        xr.testing.assert_equal(ds.isel(condition=chunk.condition, prompt=rows, drop=True), expected)
    unwritten = ds.isel(condition=0, prompt=slice(2, 4))
    assert np.isnan(unwritten["kl"]).all() and (unwritten["n_tokens"] == 0).all() and (unwritten["tokens"] == -1).all()
    assert list(unwritten["text"].values) == ["", ""] and np.isnan(unwritten["score"]).all()
    finalise(path)
    assert xr.open_zarr(path).attrs["complete"] is True and not (path / PROGRESS_DIR).exists()


def test_a_failed_write_is_raised(tmp_path):
    with pytest.raises(FileNotFoundError):  # no store there: the region write fails on the worker thread
        write_chunks([_chunk(0, 0), _chunk(0, 1)], tmp_path / "missing.zarr", LAYOUT, _Progress())


def test_diagnose_and_the_store_share_the_schema(tmp_path):
    """A condition of the store is the Dataset diagnose builds: same variables, dims, dtypes and attrs."""
    path = tmp_path / "s.zarr"
    create_store(path, LAYOUT, {"schema_version": 1}, overwrite=False)
    chunk = _chunk(1, 0)
    write_chunks([chunk], path, LAYOUT, _Progress())
    stored = xr.open_zarr(path, chunks=None).isel(condition=1, drop=True).load()
    memory = prompts_dataset(chunk.prompts, chunk.values, query="last", width=LAYOUT.max_len, metadata=LAYOUT.metadata)
    assert set(stored.variables) == set(memory.variables)
    for name, variable in memory.variables.items():
        assert stored[name].dims == variable.dims and stored[name].attrs == variable.attrs, name
        if variable.dtype.kind != "U":  # the store reads strings back as objects
            assert stored[name].dtype == variable.dtype, name
    xr.testing.assert_equal(stored.isel(prompt=slice(0, 2)), memory)


def _xarray_template(layout: Layout, attrs: dict, head_mean: np.ndarray | None) -> xr.Dataset:
    """The oracle: the schema of empty prompts as an xarray Dataset with the store's Zarr encoding (what
    the store was before it was written through Zarr directly)."""
    n = layout.n_prompts
    values = {name: np.full((n, *shape), np.nan, np.float32) for name, shape in layout.value_shapes().items()}
    empty = prompts_dataset([Prompt("", ())] * n, values, query=layout.query, width=layout.max_len,
                            metadata=layout.metadata, paired=layout.paired)
    per_prompt = [name for name in empty.coords if name not in empty.dims]
    ds = empty.reset_coords().expand_dims(condition=np.asarray(layout.conditions, dtype=str)).set_coords(per_prompt)
    coordinates = layout.coordinates()
    ds.attrs = {**attrs, "coordinates": coordinates}
    for name, variable in ds.variables.items():
        string = {"dtype": object} if variable.dtype.kind == "U" else {}
        if variable.dims == (name,):
            variable.encoding = {"chunks": variable.shape, **string}
            continue
        variable.encoding = {"chunks": tuple(1 if d == "condition" else layout.chunk_size if d == "prompt" else k
                                             for d, k in variable.sizes.items()),
                             "fill_value": variable.values[(0,) * variable.ndim].item(), "_FillValue": None, **string}
        if name in ds.data_vars:
            variable.encoding["coordinates"] = coordinates
    if head_mean is not None:
        ds["head_mean"] = xr.Variable(("layer", "head", "d_head"), head_mean, attrs={"long_name": "x", "units": "y"})
        ds["head_mean"].encoding = {"chunks": head_mean.shape, "fill_value": np.nan, "_FillValue": None}
    return ds


def _metadata(path) -> dict:
    import json

    root = json.loads((path / "zarr.json").read_text())
    return {"attributes": root["attributes"], **root["consolidated_metadata"]["metadata"]}


@pytest.mark.parametrize("layout", [
    LAYOUT,
    Layout(("x",), (6,), 2, 2, 5, "all", 4, {"tag": "str", "w": "float"}),
    Layout(("a", "b"), (5, 3), 2, 3, 7, "last", 2, {"k": "str"}, ("zero", "mean", "atp_patch"), True),
    Layout(("a", "b"), (5, 5), 2, 3, 7, "last", 8, {}, (), True),
], ids=["last", "all", "effects", "paired"])
def test_the_store_is_what_xarray_writes_for_the_schema(tmp_path, layout):
    """Written through Zarr directly (no xarray on the run path), the template has the metadata and the
    objects xarray's to_zarr writes for the schema's Dataset, and a chunk reads back as its Dataset."""
    head_mean = np.arange(2 * layout.n_heads * 4, dtype=np.float32).reshape(2, layout.n_heads, 4) \
        if layout.effects else None
    attrs = {"schema_version": 2, "list": [1, "a"]}
    ours, oracle = tmp_path / "ours.zarr", tmp_path / "xarray.zarr"
    create_store(ours, layout, attrs, overwrite=False, head_mean=head_mean)
    _xarray_template(layout, attrs, head_mean).to_zarr(oracle, zarr_format=3, consolidated=True,
                                                        write_empty_chunks=False)
    mine, theirs = _metadata(ours), _metadata(oracle)
    if head_mean is not None:  # the oracle's head_mean attributes are placeholders
        mine["head_mean"]["attributes"] = theirs["head_mean"]["attributes"]
    assert mine == theirs
    objects = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and
                                  p.name != "zarr.json" and PROGRESS_DIR not in p.parts)
    assert objects(ours) == objects(oracle)
    for name in objects(ours):
        assert (ours / name).read_bytes() == (oracle / name).read_bytes(), name
