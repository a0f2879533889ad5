"""Reordering timestamps per location: the seasonal order of the published loader, applied to numpy or to a
lazy xarray Dataset."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from .s1order import reorder


def seasonal_order(times_ns: np.ndarray) -> np.ndarray:
    """Timestamps ordered by month of year instead of date (the published loader's ``reindex_seasonal``).

    ``times_ns`` int64 ``[..., T]`` (ns since 1970) -> int64 ``[..., T]`` indices: position k holds the
    timestamp whose acquisition month comes k-th in the calendar year (ties keep date order). Useful when the
    four seasons of a location span two calendar years (winter 2020 acquired before spring 2021).
    """
    months = np.asarray(times_ns).astype("datetime64[ns]").astype("datetime64[M]").astype(np.int64) % 12
    return np.argsort(months, axis=-1, kind="stable").astype(np.int64)


def reorder_block(block: np.ndarray, perm: np.ndarray, block_info: dict | None = None) -> np.ndarray:
    """A dask block ``[samples, time, ...]`` reordered by the rows of ``perm`` ``[sample, time]`` that belong to
    its own samples (``map_blocks(reorder_block, perm)``: a file may span several blocks along ``sample``)."""
    assert block_info is not None  # dask passes it to functions that take it
    lo, hi = block_info[0]["array-location"][0]
    return reorder(block, perm[lo:hi])


def take_time(ds: xr.Dataset, perm: np.ndarray) -> xr.Dataset:
    """Every variable with dims ``(sample, time, ...)`` reordered per location by ``perm`` int64
    ``[sample, time]`` (``out[s, k] = in[s, perm[s, k]]``). Dask-backed variables stay lazy (their time chunks
    are merged, so one season of a location reads all of them)."""
    out = ds.copy()
    for name, var in ds.variables.items():
        if var.dims[:2] != ("sample", "time") or var.shape[1] != perm.shape[1]:
            continue
        if isinstance(var.data, da.Array):
            whole = var.data.rechunk({1: -1})
            data = whole.map_blocks(reorder_block, perm, dtype=var.dtype)
        else:
            data = reorder(np.asarray(var.values), perm)
        out[name] = var.copy(data=data)
    return out
