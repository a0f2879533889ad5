"""Human-readable summaries of chunk files and datasets (``ssl4eo-zarr info``)."""

from __future__ import annotations

import os

import numpy as np

from . import schema
from .layout import is_chunk_file


def _size_on_disk(paths) -> int:
    return sum(os.path.getsize(p) for p in paths if os.path.exists(p))


def describe(path: str, *, split: str | None = None) -> str:
    """Summary of a file, split folder or dataset root: files, locations, modalities, extent, time span."""
    from .views.chunkfiles import open_dataset

    single = is_chunk_file(path)
    ds = open_dataset(path, split=split)
    lines = [f"source: {path}"]
    if single:
        lines.append(f"samples: {ds.sizes['sample']}  timestamps: {ds.sizes['time']}  "
                     f"patch: {ds.sizes['y']} x {ds.sizes['x']} px")
        lines.append(f"bands: {ds['bands'].dtype} {[str(b) for b in np.asarray(ds['band'].values)]}")
        lines.append(f"on disk: {_size_on_disk([path]) / 1e6:.1f} MB, decoded: {ds.nbytes / 1e6:.1f} MB")
        times = ds["time_"]
    else:
        files = np.unique(np.asarray(ds["file"].values))
        splits = sorted(set(np.asarray(ds["split"].values).tolist()))
        lines.append(f"splits: {', '.join(splits)}  files: {len(files)}  locations: {ds.sizes['sample']}  "
                     f"samples (location x time): {ds.sizes['sample'] * ds.sizes['time']}")
        lines.append(f"patch: {ds.sizes['y']} x {ds.sizes['x']} px at {schema.RESOLUTION:g} m")
        for m in ds.attrs.get("modalities", []):
            lines.append(f"  {m:6s} {str(ds[m].dtype):8s} {ds.sizes[f'band_{m}']:2d} bands  "
                         f"{schema.MODALITIES[m].units}  ({ds[m].nbytes / 1e9:.2f} GB decoded)")
        ref = next((m for m in schema.REFERENCE_ORDER if f"time_{m}" in ds), None)
        times = ds[f"time_{ref}"]
    lat = np.asarray(ds["center_lat"].values)
    lon = np.asarray(ds["center_lon"].values)
    zones = np.unique(np.asarray(ds["crs"].values))
    t = np.asarray(times.values)
    lines.append(f"extent: lat {lat.min():.2f}..{lat.max():.2f}, lon {lon.min():.2f}..{lon.max():.2f}; "
                 f"{len(zones)} UTM zones")
    lines.append(f"acquired: {str(t.min())[:10]} .. {str(t.max())[:10]}")
    return "\n".join(lines)
