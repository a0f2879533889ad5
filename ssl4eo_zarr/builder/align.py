"""Resample raw GeoTIFF bands onto a location's 10 m UTM grid with rasterio."""

from __future__ import annotations

import time

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject

from ..errors import BuildError
from ..geo import grid_transform


def read_onto_grid(path: str, epsg: int, x: np.ndarray, y: np.ndarray, *, resampling: str = "nearest",
                   timings: dict[str, float] | None = None) -> np.ndarray:
    """Band 1 of GeoTIFF ``path`` resampled onto the grid of pixel centres ``x`` (eastings, increasing) and ``y``
    (northings, decreasing) in ``EPSG:epsg``: float32 ``[len(y), len(x)]``; pixels with no source (outside
    the raster, nodata, NaN) are NaN."""
    t0 = time.perf_counter()
    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise BuildError(f"{path}: cannot read GeoTIFF ({exc})") from None
    with src:
        if src.crs is None:
            raise BuildError(f"{path}: GeoTIFF has no CRS")
        data = src.read(1).astype(np.float32)
        if src.nodata is not None and not np.isnan(src.nodata):
            data[data == src.nodata] = np.nan
        out = np.full((len(y), len(x)), np.nan, dtype=np.float32)
        t1 = time.perf_counter()
        reproject(
            source=data, destination=out, src_transform=src.transform, src_crs=src.crs, src_nodata=np.nan,
            dst_transform=grid_transform(x, y), dst_crs=f"EPSG:{epsg}", dst_nodata=np.nan,
            resampling=getattr(Resampling, resampling),
        )
    if timings is not None:
        timings["read"] = timings.get("read", 0.0) + t1 - t0
        timings["reproject"] = timings.get("reproject", 0.0) + time.perf_counter() - t1
    return out


def raster_epsg(path: str) -> int | None:
    """EPSG code of a GeoTIFF's CRS (None if it has none)."""
    with rasterio.open(path) as src:
        return src.crs.to_epsg() if src.crs else None
