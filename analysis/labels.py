"""Head labels: per-head arrays as (layer, head) DataArrays, and one flat head axis ("unit").

Every flat index <-> (layer, head) conversion goes through here.
("layer.head" strings come from :func:`jaxdiag.circuits.head_label`.) The flat order is layer-major, the order of ``values.reshape(..., n_layers * n_heads)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import numpy as np

from jaxdiag.circuits import head_label

if TYPE_CHECKING:  # xarray is imported where it is used: `jaxdiag run` reads circuits without it
    import xarray as xr

HEAD_DIMS = ("layer", "head")
UNIT = "unit"  # one flat dimension over every head, layer-major


def pair_label(first: tuple[int, int], second: tuple[int, int]) -> str:
    return f"{head_label(*first)}-{head_label(*second)}"


def per_head(values: np.ndarray, template: xr.DataArray | xr.Dataset, name: str | None = None) -> xr.DataArray:
    """Wrap [..., layer, head] values with the layer and head coordinates of template."""
    import xarray as xr

    values = np.asarray(values)
    dims = tuple(f"dim_{i}" for i in range(values.ndim - 2)) + HEAD_DIMS
    return xr.DataArray(values, dims=dims, coords={d: template[d].values for d in HEAD_DIMS}, name=name)


def units(layers: Iterable[int], heads: Iterable[int]) -> xr.DataArray:
    """The flat head axis: coordinate 'unit' holds labels, 'layer' and 'head' the integers."""
    import xarray as xr

    layer, head = (np.asarray(v, dtype=int) for v in np.meshgrid(np.asarray(layers), np.asarray(heads), indexing="ij"))
    layer, head = layer.ravel(), head.ravel()
    labels = [head_label(l, h) for l, h in zip(layer, head)]
    return xr.DataArray(np.arange(layer.size), dims=UNIT,
                        coords={UNIT: labels, "layer": (UNIT, layer), "head": (UNIT, head)})


def units_of(da: xr.DataArray | xr.Dataset) -> xr.DataArray:
    return units(da["layer"].values, da["head"].values)


def head_at(unit_axis: xr.DataArray, index: int) -> tuple[int, int]:
    """(layer, head) of flat position index."""
    return int(unit_axis["layer"].values[index]), int(unit_axis["head"].values[index])


def head_matrix(values: np.ndarray, unit_axis: xr.DataArray, name: str | None = None) -> xr.DataArray:
    """A [unit, unit] head x head matrix (e.g. a correlation over prompts) with labels on both axes."""
    import xarray as xr

    labels = unit_axis[UNIT].values
    coords = {UNIT: labels, "layer": (UNIT, unit_axis["layer"].values), "head": (UNIT, unit_axis["head"].values),
              f"{UNIT}_2": labels}
    return xr.DataArray(values, dims=(UNIT, f"{UNIT}_2"), coords=coords, name=name)


def like(template, values: np.ndarray, leading: tuple[str, ...] = ()):
    """values with template's dims and coordinates when template is a DataArray (leading: extra new
    dims in front, e.g. ("resample",)); plain values otherwise. Lets one engine serve labelled and
    bare inputs."""
    import xarray as xr

    if not isinstance(template, xr.DataArray):
        return values
    coords = {name: c for name, c in template.coords.items() if c.dims and set(c.dims) <= set(template.dims)}
    return xr.DataArray(values, dims=leading + template.dims, coords=coords, name=template.name)
