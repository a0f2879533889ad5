"""The xarray views of both distributions, a pair: ``chunkfiles`` (chunk files -> one lazy Dataset, and
``open_dataset``, the entry point for either) and ``shards`` (WebDataset shards -> the same Dataset).

Each view builds its variables with ``dask.array.from_array`` over a source object that reads exactly what an
index asks for; :func:`register` remembers that source by the dask array's name, so xarray's backend
(:mod:`ssl4eo_zarr.backend`) indexes the source directly instead of slicing a graph of thousands of blocks.
"""

from __future__ import annotations

import weakref
from typing import Any

_SOURCES: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def register(array: Any, source: Any) -> Any:
    """Remember ``source`` (indexable with a tuple of slices, shaped as ``array``) for dask ``array``; returns
    ``array``."""
    _SOURCES[array.name] = source
    return array


def source_of(array: Any) -> Any | None:
    """The source registered for dask ``array`` (exactly that array, not one derived from it), or ``None``."""
    found = _SOURCES.get(getattr(array, "name", ""))
    return found if found is not None and tuple(getattr(found, "shape", ())) == tuple(array.shape) else None
