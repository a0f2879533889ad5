"""xarray's own entry point: ``xr.open_dataset(path, engine="ssl4eo")``.

Registered under the ``xarray.backends`` entry-point group (see ``pyproject.toml``), so xarray finds it by
name, and ``guess_can_open`` lets ``xr.open_dataset("file.zarr.zip")`` pick it without ``engine=``. It opens
whatever :func:`ssl4eo_zarr.open_dataset` opens: a chunk file, a shard, a split folder or a dataset root of
either distribution, locally or from a URL.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import xarray as xr
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.core import indexing

from .layout import is_chunk_file, is_shard_file


class LazyArray(BackendArray):
    """One variable of the library's view as xarray's lazily indexed array: an index reads only the stored
    chunks it touches, so xarray decides the chunking (``chunks=None``: lazy indexing; ``chunks={}``: dask with
    :attr:`preferred_chunks`). Where the view's variable is its source's ``from_array`` (the images, masks and
    coordinates of both views), an index goes straight to that source: a block read costs the same in a split
    of 16,000 blocks as in one. Other variables slice the view's dask graph."""

    def __init__(self, data: Any):
        from .views import source_of

        self._data = data
        self._source = source_of(data)
        self.shape = tuple(data.shape)
        self.dtype = np.dtype(data.dtype)

    @property
    def preferred_chunks(self) -> tuple[int | tuple[int, ...], ...]:
        """The stored chunking along each dimension: the chunk edge where chunks are regular (the last may be
        shorter), else every chunk's size (files of other lengths along ``sample``, irregular ``time``)."""
        out: list[int | tuple[int, ...]] = []
        for c in self._data.chunks:
            if not c:
                out.append(0)
            elif all(x == c[0] for x in c[:-1]) and c[-1] <= c[0]:
                out.append(int(c[0]))
            else:
                out.append(tuple(int(x) for x in c))
        return tuple(out)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._raw)

    def _raw(self, key: tuple) -> np.ndarray:
        if self._source is None:
            return np.asarray(self._data[key].compute(scheduler="synchronous"))
        # The sources take slices (as dask hands them); an integer is a slice of one, its axis dropped after.
        slices = tuple(slice(k, k + 1) if isinstance(k, int | np.integer) else k for k in key)
        drop = tuple(0 if isinstance(k, int | np.integer) else slice(None) for k in key)
        return np.asarray(self._source[slices])[drop]


def as_backend_variables(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with every dask-backed variable as a :class:`LazyArray` (wrapped in xarray's lazily indexed
    array), its stored chunking in ``encoding["preferred_chunks"]``, as xarray's zarr backend hands them over."""
    import dask.array as da

    def convert(var: xr.Variable) -> xr.Variable:
        if not isinstance(var.data, da.Array):
            return var
        lazy = LazyArray(var.data)
        encoding = {**var.encoding, "preferred_chunks": dict(zip(var.dims, lazy.preferred_chunks))}
        return xr.Variable(var.dims, indexing.LazilyIndexedArray(lazy), var.attrs, encoding)

    data_vars = {name: convert(var.variable) for name, var in ds.data_vars.items()}
    coords = {name: convert(var.variable) for name, var in ds.coords.items()}
    return xr.Dataset(data_vars, coords=coords, attrs=ds.attrs)


class SSL4EOBackendEntrypoint(BackendEntrypoint):
    """``engine="ssl4eo"``: SSL4EO-S12 v1.1 chunk files and WebDataset shards.

    Keyword arguments are those of :func:`ssl4eo_zarr.open_dataset` (``split``, ``modalities``,
    ``s2_offset``, ``fix_s1_order``, ``reindex_seasonal``, ``distribution``, ``storage_options``).
    Variables come back as lazily indexed backend arrays and xarray owns the chunking, as with the zarr and
    rasterio engines: ``chunks=None`` (the default) indexes lazily, reading only the stored chunks an index
    touches; ``chunks={}`` gives dask arrays with one chunk per stored chunk; ``chunks={"sample": 8}`` any other.
    A single chunk file comes in exactly the layout ``xr.open_zarr`` gives under zarr-python 2.18.
    """

    description = "SSL4EO-S12 v1.1 chunk files (.zarr.zip) and WebDataset shards (.tar), via ssl4eo_zarr"
    url = "https://github.com/ssl4eo-zarr/ssl4eo-zarr/tree/main/docs"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "split", "modalities", "s2_offset",
                               "fix_s1_order", "reindex_seasonal", "distribution", "storage_options", "cache_dir",
                               "cache_limit", "subsets")

    def open_dataset(
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        split: str | None = None,
        modalities: Iterable[str] | None = None,
        s2_offset: bool | None = None,
        fix_s1_order: bool = True,
        reindex_seasonal: bool = False,
        distribution: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
        cache_limit: int | str | None = None,
        subsets: Iterable[str] | None = None,
    ) -> xr.Dataset:
        from .views.chunkfiles import open_dataset

        ds = open_dataset(os.fspath(filename_or_obj), split=split, modalities=list(modalities) if modalities else None,
                          s2_offset=s2_offset, fix_s1_order=fix_s1_order, reindex_seasonal=reindex_seasonal,
                          distribution=distribution, storage_options=storage_options, cache_dir=cache_dir,
                          cache_limit=cache_limit, subsets=list(subsets) if subsets else None)
        if drop_variables:
            ds = ds.drop_vars([drop_variables] if isinstance(drop_variables, str) else list(drop_variables),
                              errors="ignore")
        return as_backend_variables(ds)

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        try:
            path = os.fspath(filename_or_obj)
        except TypeError:
            return False
        return is_chunk_file(path) or (is_shard_file(path) and os.path.basename(path).startswith(
            ("ssl4eos12_shard_", "majortom_shard_")))
