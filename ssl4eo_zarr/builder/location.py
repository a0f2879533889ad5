"""One location, raw GeoTIFFs -> aligned, QA'd, encoded arrays (the builder's per-location task)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import rasterio

from .. import geo, schema
from ..errors import BuildError
from ..rgb import rgb_from_l2a
from ..schema import raw_band_file
from ..storage import atomic_write
from . import cloud as cloud_sources
from .align import raster_epsg, read_onto_grid
from .qa import MAX_NAN_FRACTION, fill_nearest, majority, to_s1_db, to_s2_dn
from .raw import RawLocation, location_id

IMAGE_MODALITIES = ("S2L1C", "S2L2A", "S1GRD")


@dataclass
class Processed:
    """A kept location: arrays in stored dtypes (``images[mod]`` ``[4, C, H, W]``, ``cloud`` uint8 ``[4, H, W]``)
    and metadata; or a dropped one with ``reason``."""

    name: str
    sample: str
    reason: str | None = None
    lat: float = float("nan")
    lon: float = float("nan")
    epsg: int = 0
    x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    images: dict[str, np.ndarray] = field(default_factory=dict)
    cloud: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    times: dict[str, np.ndarray] = field(default_factory=dict)
    file_ids: dict[str, list[str]] = field(default_factory=dict)
    tiles: list[str] = field(default_factory=list)
    cloud_source: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def _centre(path: str) -> tuple[float, float]:
    with rasterio.open(path) as src:
        b = src.bounds
        cx, cy = (b.left + b.right) / 2, (b.bottom + b.top) / 2
        epsg = src.crs.to_epsg()
    if epsg == 4326:
        return cy, cx
    lon, lat = geo.utm_to_lonlat(cx, cy, epsg)
    return float(lat), float(lon)


def _zone_epsg(tile: str | None, raster: int | None, lat: float, lon: float) -> int:
    base = 32600 if lat >= 0 else 32700
    if tile:
        return base + int(tile.lstrip("T")[:2])
    if raster and (32601 <= raster <= 32660 or 32701 <= raster <= 32760):
        return raster
    return geo.utm_epsg(lat, lon)


def process_location(loc: RawLocation, *, size: int = schema.PATCH_SIZE, cloud_policy: str = "auto") -> Processed:
    """Align every band of every timestamp onto the location's grid, check and fill NaNs, encode.

    Raises :class:`BuildError` for problems of the input as a whole (e.g. no cloud-mask source); returns a
    dropped :class:`Processed` (with ``reason``) for problems of this location.
    """
    try:
        sample = location_id(loc.location)
    except (BuildError, ValueError) as exc:
        return Processed(loc.location, "", reason=str(exc))
    for mod in IMAGE_MODALITIES:
        n = len(loc.timestamps.get(mod, []))
        if n != schema.N_TIMESTAMPS:
            return Processed(loc.location, sample, reason=f"{n} {mod} timestamps, expected {schema.N_TIMESTAMPS}")
    l2a = loc.timestamps["S2L2A"]
    ref_band = os.path.join(l2a[0].folder, raw_band_file("S2L2A", "B04"))
    if not os.path.exists(ref_band):
        return Processed(loc.location, sample, reason=f"missing {ref_band}")
    lat, lon = _centre(ref_band)
    zones = [_zone_epsg(ts.mgrs_tile, raster_epsg(os.path.join(ts.folder, raw_band_file("S2L2A", "B04"))), lat, lon)
             for ts in l2a]
    epsg = int(str(majority(zones)))  # the majority CRS of the S2 timestamps wins
    epsg, x, y = geo.patch_grid(lat, lon, epsg=epsg, size=size)
    out = Processed(loc.location, sample, lat=lat, lon=lon, epsg=epsg, x=x, y=y)
    tm = out.timings
    for mod in IMAGE_MODALITIES:
        spec = schema.get_modality(mod)
        stack = np.empty((schema.N_TIMESTAMPS, spec.n_bands, size, size), np.float32)
        for t, ts in enumerate(loc.timestamps[mod]):
            for c, band in enumerate(spec.bands):
                path = os.path.join(ts.folder, raw_band_file(mod, band))
                if not os.path.exists(path):
                    return Processed(loc.location, sample, reason=f"missing {path}")
                # S2 20/60 m bands nest in the 10 m grid: nearest keeps their values; S1 is a continuous field.
                stack[t, c] = read_onto_grid(path, epsg, x, y, resampling="bilinear" if mod == "S1GRD" else "nearest",
                                             timings=tm)
        t0 = time.perf_counter()
        frac = np.isnan(stack).mean(axis=(-2, -1))
        if frac.max() > MAX_NAN_FRACTION:
            t, c = (int(v) for v in np.unravel_index(int(frac.argmax()), frac.shape))
            return Processed(loc.location, sample, reason=f"{mod} timestamp {t} band {spec.bands[c]}: "
                                                      f"{frac.max():.1%} missing (> {MAX_NAN_FRACTION:.0%})")
        stack = fill_nearest(stack)
        t1 = time.perf_counter()
        out.images[mod] = to_s1_db(stack) if mod == "S1GRD" else to_s2_dn(stack)
        tm["qa"] = tm.get("qa", 0.0) + t1 - t0
        tm["encode"] = tm.get("encode", 0.0) + time.perf_counter() - t1
        out.times[mod] = np.array([ts.time for ts in loc.timestamps[mod]], dtype="datetime64[ns]")
        out.file_ids[mod] = [ts.product_id for ts in loc.timestamps[mod]]
    t0 = time.perf_counter()
    out.images["S2RGB"] = rgb_from_l2a(out.images["S2L2A"])
    tm["encode"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    out.tiles = [ts.mgrs_tile or geo.mgrs_tile(lat, lon) for ts in l2a]
    masks, sources = [], set()
    for ts in l2a:
        kind, source = cloud_sources.choose_source(ts.folder, cloud_policy)
        sources.add(kind)
        if kind in ("file", "scl") and source is None:
            raise BuildError(f"{ts.folder}: cloud-mask source {kind!r} names no file")
        if kind == "file" and source is not None:
            raw = read_onto_grid(source, epsg, x, y)
            masks.append(np.where(np.isnan(raw), schema.CloudClass.NO_DATA, raw).astype(np.uint8))
        elif kind == "scl" and source is not None:
            masks.append(cloud_sources.scl_to_sensei(read_onto_grid(source, epsg, x, y)))
        elif kind == "sensei":
            masks.append(cloud_sources.run_sensei(out.images["S2L1C"][len(masks)]))
        else:
            masks.append(cloud_sources.constant_mask(kind, (size, size)))
    out.cloud = np.stack(masks)
    out.cloud_source = "+".join(sorted(sources))
    tm["cloud"] = time.perf_counter() - t0
    return out


def save(p: Processed, path: str) -> None:
    """Stage a kept location on disk (uncompressed .npz, written atomically)."""
    arrays = {f"img_{m}": a for m, a in p.images.items()}
    arrays.update({f"time_{m}": t.astype(np.int64) for m, t in p.times.items()})
    arrays.update({f"fid_{m}": np.array(v) for m, v in p.file_ids.items()})
    arrays.update(cloud=p.cloud, x=p.x, y=p.y, tiles=np.array(p.tiles),
                  scalars=np.array([p.lat, p.lon, p.epsg], dtype=np.float64),
                  names=np.array([p.name, p.sample, p.cloud_source]))
    with atomic_write(path) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool


def load(path: str) -> Processed:
    with np.load(path) as z:
        name, sample, source = (str(v) for v in z["names"])
        lat, lon, epsg = z["scalars"]
        p = Processed(name, sample, lat=float(lat), lon=float(lon), epsg=int(epsg), x=z["x"], y=z["y"],
                      cloud=z["cloud"], tiles=[str(t) for t in z["tiles"]], cloud_source=source)
        for key in z.files:
            if key.startswith("img_"):
                p.images[key[4:]] = z[key]
            elif key.startswith("time_"):
                p.times[key[5:]] = z[key].view("datetime64[ns]")
            elif key.startswith("fid_"):
                p.file_ids[key[4:]] = [str(v) for v in z[key]]
    return p
