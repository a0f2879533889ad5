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

import xarray as xr
from xarray.backends import BackendEntrypoint

from .layout import is_chunk_file, is_shard_file


class SSL4EOBackendEntrypoint(BackendEntrypoint):
    """``engine="ssl4eo"``: SSL4EO-S12 v1.1 chunk files and WebDataset shards.

    Keyword arguments are those of :func:`ssl4eo_zarr.open_dataset` (``split``, ``modalities``,
    ``s2_offset``, ``fix_s1_order``, ``reindex_seasonal``, ``distribution``, ``storage_options``).
    Variables come back dask-backed and lazy; a single chunk file in exactly the layout ``xr.open_zarr`` gives
    under zarr-python 2.18.
    """

    description = "SSL4EO-S12 v1.1 chunk files (.zarr.zip) and WebDataset shards (.tar), via ssl4eo_zarr"
    url = "https://github.com/ssl4eo-zarr/ssl4eo-zarr/tree/main/docs"
    open_dataset_parameters = ("filename_or_obj", "drop_variables", "split", "modalities", "s2_offset",
                               "fix_s1_order", "reindex_seasonal", "distribution", "storage_options")

    def open_dataset(
        self,
        filename_or_obj: Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
        split: str | None = None,
        modalities: Iterable[str] | None = None,
        s2_offset: bool = True,
        fix_s1_order: bool = True,
        reindex_seasonal: bool = False,
        distribution: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> xr.Dataset:
        from .reader import open_dataset

        ds = open_dataset(os.fspath(filename_or_obj), split=split, modalities=list(modalities) if modalities else None,
                          s2_offset=s2_offset, fix_s1_order=fix_s1_order, reindex_seasonal=reindex_seasonal,
                          distribution=distribution, storage_options=storage_options)
        if drop_variables:
            ds = ds.drop_vars([drop_variables] if isinstance(drop_variables, str) else list(drop_variables),
                              errors="ignore")
        return ds

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        try:
            path = os.fspath(filename_or_obj)
        except TypeError:
            return False
        return is_chunk_file(path) or (is_shard_file(path) and "ssl4eos12_shard_" in os.path.basename(path))
