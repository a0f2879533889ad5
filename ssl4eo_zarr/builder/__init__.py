"""The builder: raw Sentinel-1/2 GeoTIFFs -> aligned analysis-ready chunk files, on dask.distributed.

Two planned phases, each a set of independent tasks:

1. **per location** (:func:`~ssl4eo_zarr.builder.location.process_location`): choose the majority UTM zone of
   the S2 timestamps, resample every band of every timestamp onto the 264 x 264 px 10 m grid (nearest for S2,
   bilinear for S1), drop the location if any timestamp/channel misses > 1 % of its pixels, fill the rest by
   nearest neighbour, encode (S2 DN + 1000 as int16, S1 dB as float16), derive RGB, attach cloud masks. The
   result is staged on disk, so memory stays bounded and a rerun skips it;
2. **per output file**: kept locations are split (spatially disjoint 1-degree blocks, or a given list),
   shuffled with the seed, cut into 64-location files and written with :func:`ssl4eo_zarr.write_chunk`
   (atomic), four modalities each.

A manifest (``OUT/manifest.json``) records every input location as written (split, file, index) or dropped
(reason); it is rewritten atomically after every file, so a killed build resumes where it stopped and a
finished build reruns as a no-op. A lock file stops a second build from writing into the same folder.
"""

from __future__ import annotations

from .driver import build_dataset, stage_location, write_file
from .executor import Executor
from .lock import BuildLock
from .manifest import MANIFEST, load_manifest

__all__ = ["MANIFEST", "BuildLock", "Executor", "build_dataset", "load_manifest", "stage_location", "write_file"]
