"""The builder: raw Sentinel-1/2 GeoTIFFs -> aligned analysis-ready chunk files, on dask.distributed.

A pipeline of small modules: ``raw`` (discovery) -> ``location`` (per-location alignment, QA, encoding, with
``align``, ``qa``, ``cloud``) -> ``pack`` (splits, files, tables); ``driver`` runs the two phases on an
``executor`` under a ``lock`` and keeps the ``manifest``. See :mod:`ssl4eo_zarr.builder.driver`.
"""

from __future__ import annotations

from ..storage.lock import BuildLock
from .driver import build_dataset, stage_location, write_file
from .executor import Executor
from .manifest import MANIFEST, load_manifest

__all__ = ["MANIFEST", "BuildLock", "Executor", "build_dataset", "load_manifest", "stage_location", "write_file"]
