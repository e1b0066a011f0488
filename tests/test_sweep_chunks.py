"""A chunk goes from prompts to its written region in one type; the store and diagnose share one schema."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from jaxdiag.prompts import Prompt
from jaxdiag.schema import HEAD_VARIABLES
from jaxdiag.store import PROGRESS_DIR, Layout, create_store, done_chunks, finalise, prompts_dataset
from jaxdiag.sweep import Chunk, write_chunks

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
        expected = chunk.dataset(LAYOUT).squeeze("condition", drop=True)
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
