"""Helpers shared by tests: open a file with the installed zarr-python as users do."""

from __future__ import annotations

import xarray as xr
import zarr

from ssl4eo_zarr.storage import zarr_open_kwargs, zarr_store

ZARR3 = int(zarr.__version__.split(".")[0]) >= 3


def xr_open_zarr(path: str) -> xr.Dataset:
    """``xr.open_zarr(path)`` under zarr 2.18; through a ZipStore under zarr 3 (which cannot open the path)."""
    if not ZARR3:
        return xr.open_zarr(path)
    return xr.open_zarr(zarr_store(path), **zarr_open_kwargs())


def chunk_path(root: str, mod: str, index: int = 1, split: str = "val") -> str:
    """Path of chunk file ``index`` of modality ``mod`` in a dataset root."""
    import os

    from ssl4eo_zarr import schema

    return os.path.join(root, split, mod, schema.chunk_file_name(split, index))
