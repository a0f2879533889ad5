"""ssl4eo_zarr: build and read SSL4EO-S12 v1.1 analysis-ready chunk files.

``open_dataset`` gives lazy xarray views for exploration; ``ChunkDataset`` is a chunk-aware PyTorch
IterableDataset for training (torch is imported only when it is used).
"""

from __future__ import annotations

from typing import Any

from . import accessor as _accessor  # noqa: F401 - registers ds.ssl4eo
from . import schema
from .errors import (
    BuildError,
    CorruptFileError,
    DamagedShardError,
    DatasetNotFoundError,
    ModalityMismatchError,
    SchemaError,
    SSL4EOError,
    UnsafeFileError,
)
from .schema import CloudClass
from .views.chunkfiles import open_chunk, open_dataset
from .writer import write_chunk

__version__ = "0.1.0"

__all__ = [
    "BuildError",
    "ChunkDataset",
    "CloudClass",
    "CorruptFileError",
    "DamagedShardError",
    "DatasetNotFoundError",
    "ModalityMismatchError",
    "SSL4EOError",
    "SchemaError",
    "UnsafeFileError",
    "fetch",
    "open_chunk",
    "open_dataset",
    "read_metadata",
    "schema",
    "write_chunk",
]


_SUBMODULES = {"builder", "fetching", "geo", "layout", "loader", "metadata", "plot", "repair", "rgb", "s1order", "shardfile",
               "convert", "stats", "storage", "synthetic", "timeorder", "validate", "views", "zarrv2"}


def __dir__() -> list[str]:
    # The lazily imported names too, so that tab completion and dir() show the whole package.
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)


def __getattr__(name: str) -> Any:
    # torch and matplotlib are heavy and not needed for exploration: import on first use only.
    import importlib

    if name == "ChunkDataset":
        return importlib.import_module(".loader", __name__).ChunkDataset
    if name == "fetch":
        return importlib.import_module(".fetching", __name__).fetch
    if name == "read_metadata":  # geopandas is optional (the build extra)
        return importlib.import_module(".metadata", __name__).read_metadata
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ssl4eo_zarr' has no attribute {name!r}")
