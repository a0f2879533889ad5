"""Synthetic SSL4EO-S12 v1.1 data with realistic structure, for the demo, tests and benchmarks.

Scenes are mixtures of land-cover end-members (vegetation, soil, urban, water) whose abundances are
spatially correlated random fields, so the images compress like imagery rather than white noise. Seasons
change vegetation vigour and bring snow in winter at high latitudes; clouds are thresholded smooth fields
that brighten S2 and cast shifted shadows. S1 backscatter follows the same land cover with multiplicative
speckle. Locations are drawn around real cities and carry their true UTM zone, grid and MGRS tile.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from . import geo, schema
from .layout import write_split_list
from .rgb import rgb_from_l2a
from .schema import CloudClass
from .writer import write_chunk

#: (name, lat, lon) of cities spread over every continent, both hemispheres and several UTM zone edges.
CITIES = (
    ("Berlin", 52.52, 13.405), ("Tokyo", 35.68, 139.69), ("Sao Paulo", -23.55, -46.63), ("Lagos", 6.52, 3.38),
    ("Mumbai", 19.08, 72.88), ("New York", 40.71, -74.01), ("Sydney", -33.87, 151.21), ("Cairo", 30.04, 31.24),
    ("Mexico City", 19.43, -99.13), ("Moscow", 55.76, 37.62), ("Jakarta", -6.21, 106.85), ("Lima", -12.05, -77.04),
    ("Nairobi", -1.29, 36.82), ("Oslo", 59.91, 10.75), ("Reykjavik", 64.15, -21.94), ("Buenos Aires", -34.60, -58.38),
    ("Beijing", 39.90, 116.41), ("Johannesburg", -26.20, 28.05), ("Vancouver", 49.28, -123.12), ("Madrid", 40.42, -3.70),
    ("Anchorage", 61.22, -149.90), ("Auckland", -36.85, 174.76), ("Tehran", 35.69, 51.39), ("Lisbon", 38.72, -9.14),
)

#: Reflectance (0..1) of each end-member in the 13 S2 bands B01..B12 (B8A after B08, B10 cirrus).
_ENDMEMBERS = {
    "vegetation": [0.03, 0.04, 0.07, 0.04, 0.10, 0.28, 0.35, 0.38, 0.40, 0.40, 0.01, 0.20, 0.10],
    "soil": [0.08, 0.10, 0.14, 0.19, 0.22, 0.25, 0.27, 0.29, 0.30, 0.31, 0.01, 0.36, 0.30],
    "urban": [0.12, 0.13, 0.14, 0.15, 0.16, 0.17, 0.18, 0.19, 0.19, 0.20, 0.01, 0.22, 0.20],
    "water": [0.07, 0.06, 0.05, 0.03, 0.02, 0.015, 0.012, 0.01, 0.009, 0.008, 0.005, 0.005, 0.004],
    "snow": [0.85, 0.88, 0.87, 0.85, 0.82, 0.78, 0.75, 0.72, 0.70, 0.20, 0.02, 0.10, 0.08],
    "cloud": [0.55, 0.55, 0.55, 0.55, 0.56, 0.57, 0.57, 0.58, 0.58, 0.50, 0.30, 0.45, 0.35],
}
#: Extra path radiance of L1C over L2A per band (top of atmosphere is brighter in the blue).
_ATMOSPHERE = np.array([0.09, 0.07, 0.05, 0.03, 0.03, 0.025, 0.02, 0.02, 0.02, 0.015, 0.0, 0.01, 0.005])
_SEASON_DATES = ("03-20", "06-21", "09-22", "12-21")
_L2A_IDX = [schema.S2L1C.bands.index(b) for b in schema.S2L2A.bands]


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], size: int, scale: float = 24.0) -> np.ndarray:
    """Gaussian random fields ``[*shape, size, size]`` with correlation length ``scale`` px, standardised."""
    noise = rng.standard_normal((*shape, size, size)).astype(np.float32)
    f = np.fft.fftfreq(size).astype(np.float32)
    k2 = f[:, None] ** 2 + f[None, :] ** 2
    kernel = np.exp(-k2 * (scale * np.pi) ** 2 / 2.0).astype(np.float32)
    out = np.fft.irfft2(np.fft.rfft2(noise) * kernel[:, : size // 2 + 1], s=(size, size)).astype(np.float32)
    out -= out.mean(axis=(-2, -1), keepdims=True)
    out /= out.std(axis=(-2, -1), keepdims=True) + 1e-6
    return out


@dataclass
class Locations:
    """Sampled locations: ids str ``[N]``, lat/lon float64 ``[N]`` degrees, epsg int64 ``[N]``, city str ``[N]``."""

    ids: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    epsg: np.ndarray
    city: np.ndarray


def sample_locations(n: int, *, seed: int = 0, sigma_km: float = 50.0) -> Locations:
    """``n`` locations drawn around :data:`CITIES` (Gaussian, ``sigma_km``), with unique random 7-digit ids."""
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(CITIES), n)
    lat = np.array([CITIES[i][1] for i in which]) + rng.normal(0, sigma_km / 111.0, n)
    lon = np.array([CITIES[i][2] for i in which])
    lon = lon + rng.normal(0, sigma_km / 111.0, n) / np.cos(np.radians(lat))
    lat = np.clip(lat, -79.0, 83.0)
    ids = rng.choice(251079, size=n, replace=False)
    epsg = np.array([geo.utm_epsg(a, o) for a, o in zip(lat, lon)], dtype=np.int64)
    return Locations(np.array([schema.sample_id(i) for i in ids]), lat, lon, epsg,
                     np.array([CITIES[i][0] for i in which]))


def _scene(rng: np.random.Generator, lat: float, size: int, *, force_snow: bool = False, force_nodata: bool = False,
           force_cloud: bool = False):
    """Land cover and clouds of one location: L2A/L1C reflectance float32 ``[4, 13, H, W]``, cloud classes
    uint8 ``[4, H, W]``, S1 dB float32 ``[4, 2, H, W]``."""
    fields = smooth_field(rng, (4,), size, scale=rng.uniform(8, 30))
    logits = fields * 2.0 + np.array([0.6, 0.0, rng.uniform(-1.5, 0.5), rng.uniform(-2.5, -0.5)],
                                     dtype=np.float32)[:, None, None]
    ab = np.exp(logits - logits.max(axis=0))
    ab /= ab.sum(axis=0)  # abundances of vegetation, soil, urban, water
    em = {k: np.asarray(v, dtype=np.float32) for k, v in _ENDMEMBERS.items()}
    texture = smooth_field(rng, (1,), size, scale=2.0)[0] * 0.01
    refl = np.empty((4, 13, size, size), np.float32)
    cloud = np.zeros((4, size, size), np.uint8)
    s1 = np.empty((4, 2, size, size), np.float32)
    water = ab[3] > 0.5
    cloud_fields = smooth_field(rng, (4,), size, scale=rng.uniform(10, 25))
    for t in range(4):
        vigour = 0.55 + 0.45 * np.cos(2 * np.pi * (t - (1 if lat >= 0 else 3)) / 4)
        veg = em["vegetation"] * vigour + em["soil"] * (1 - vigour)
        r = (ab[0, None] * veg[:, None, None] + ab[1, None] * em["soil"][:, None, None]
             + ab[2, None] * em["urban"][:, None, None] + ab[3, None] * em["water"][:, None, None])
        r = r * (1.0 + texture[None])
        cls = np.where(water, CloudClass.WATER, CloudClass.LAND).astype(np.uint8)
        if t == 3 and (abs(lat) > 45 or force_snow):
            snow = smooth_field(rng, (1,), size, scale=20)[0] > -0.2
            r = np.where(snow[None], em["snow"][:, None, None] * (1 + texture[None]), r)
            cls[snow] = CloudClass.SNOW
        cover = rng.uniform(-0.3, 2.5)  # most scenes are nearly clear (the dataset kept < 10 % cloud)
        if force_cloud and t == 1:
            cover = 0.2
        cf = cloud_fields[t]
        thick, thin = cf > cover + 0.6, (cf > cover) & ~(cf > cover + 0.6)
        shift = max(size // 20, 4)
        shadow = np.roll(thick, (shift, shift), axis=(0, 1)) & ~thick & ~thin
        alpha = np.where(thick, 0.9, np.where(thin, 0.35, 0.0)).astype(np.float32)
        r = r * (1 - alpha[None]) + em["cloud"][:, None, None] * alpha[None]
        r = np.where(shadow[None], r * 0.45, r)
        cls[thin], cls[thick], cls[shadow] = CloudClass.THIN_CLOUD, CloudClass.THICK_CLOUD, CloudClass.CLOUD_SHADOW
        if (force_nodata and t == 0) or rng.uniform() < 0.05:  # a swath edge cuts a corner of the patch
            yy, xx = np.mgrid[0:size, 0:size]
            edge = xx + yy < size * rng.uniform(0.1, 0.4)
            cls[edge] = CloudClass.NO_DATA
        refl[t] = r
        cloud[t] = cls
        base_vv = -9.0 * ab[0] - 13.0 * ab[1] - 3.0 * ab[2] - 24.0 * ab[3] - 2.0 * (1 - vigour)
        speckle = 10 * np.log10(rng.gamma(4.4, 1 / 4.4, (2, size, size)).astype(np.float32))
        s1[t, 0] = base_vv + speckle[0]
        s1[t, 1] = base_vv - 6.5 - 2.0 * ab[0] + speckle[1]
    return refl, cloud, s1


def _to_dn(refl: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(refl * schema.S2_SCALE) + schema.S2_OFFSET, -32768, 32767).astype(np.int16)


def make_chunk(locs: Locations, *, size: int = schema.PATCH_SIZE, seed: int = 0, year: int = 2021) -> dict[str, xr.Dataset]:
    """One chunk's Datasets, keyed by modality name, for the locations ``locs`` (at most 64).

    Returns ``{"S1GRD", "S2L1C", "S2L2A", "S2RGB"}`` -> Dataset in the published single-file schema
    (see :func:`ssl4eo_zarr.write_chunk` for the variables, shapes and dtypes).
    """
    n = len(locs.ids)
    if not 1 <= n <= schema.SAMPLES_PER_FILE:
        raise ValueError(f"a chunk holds 1 to {schema.SAMPLES_PER_FILE} locations, got {n}")
    rng = np.random.default_rng(seed)
    l1c = np.empty((n, 4, 13, size, size), np.int16)
    cloud = np.empty((n, 4, size, size), np.uint8)
    s1 = np.empty((n, 4, 2, size, size), np.float16)
    xs = np.empty((n, size))
    ys = np.empty((n, size))
    s2_time = np.empty((n, 4), "datetime64[ns]")
    s1_time = np.empty((n, 4), "datetime64[ns]")
    s2_ids = np.empty((n, 4), object)
    s1_ids = np.empty((n, 4), object)
    l2a_refl = np.empty((n, 4, 12, size, size), np.float32)
    for i in range(n):
        # The first locations of a chunk show snow, a no-data edge and a cloud with its shadow,
        # so every class occurs in every file.
        refl, cloud[i], s1f = _scene(rng, float(locs.lat[i]), size, force_snow=i == 0, force_nodata=i == 1,
                                     force_cloud=i == 2)
        l2a_refl[i] = refl[:, _L2A_IDX]
        l1c[i] = _to_dn(refl * 0.93 + _ATMOSPHERE[None, :, None, None])
        s1[i] = s1f.astype(np.float16)
        _, xs[i], ys[i] = geo.patch_grid(float(locs.lat[i]), float(locs.lon[i]), epsg=int(locs.epsg[i]), size=size)
        tile = geo.mgrs_tile(float(locs.lat[i]), float(locs.lon[i]))
        for t, day in enumerate(_SEASON_DATES):
            when = (np.datetime64(f"{year}-{day}T00:00:00") + np.timedelta64(int(rng.integers(-15, 15)), "D")
                    + np.timedelta64(int(rng.integers(36000, 40000)), "s"))
            s2_time[i, t] = when
            stamp = str(when.astype("datetime64[s]")).replace("-", "").replace(":", "")
            s2_ids[i, t] = f"{stamp}_{stamp}_{tile}"
            s1_when = when + np.timedelta64(int(rng.integers(-2 * 86400, 2 * 86400)), "s")
            s1_time[i, t] = s1_when
            s1_stamp = str(s1_when.astype("datetime64[s]")).replace("-", "").replace(":", "")
            orbit = int(rng.integers(10000, 40000))
            s1_ids[i, t] = (f"S1{'AB'[int(rng.integers(0, 2))]}_IW_GRDH_1SDV_{s1_stamp}_{s1_stamp}_"
                            f"{orbit:06d}_{orbit * 7 % 0xFFFFFF:06X}_{int(rng.integers(0, 0xFFFF)):04X}")
    l2a = _to_dn(l2a_refl)
    del l2a_refl
    rgb = rgb_from_l2a(l2a)
    common = {
        "center_lat": (("sample",), locs.lat.astype(np.float64)),
        "center_lon": (("sample",), locs.lon.astype(np.float64)),
        "crs": (("sample",), locs.epsg.astype(np.int64)),
        "x_": (("sample", "x"), xs),
        "y_": (("sample", "y"), ys),
        "sample_id": (("sample", "time"), np.array([[f"{s}_{t}" for t in range(4)] for s in locs.ids])),
    }
    coords = {"sample": locs.ids.astype(f"<U{schema.SAMPLE_ID_WIDTH}"), "time": np.arange(4, dtype=np.int64),
              "x": np.arange(size, dtype=np.int64), "y": np.arange(size, dtype=np.int64)}

    def build(mod, data, with_cloud, times, ids):
        ds = xr.Dataset({schema.BANDS_VAR: (schema.BANDS_DIMS, data)},
                        coords={"band": np.array(mod.bands), **coords})
        if with_cloud:
            ds[schema.CLOUD_VAR] = (schema.CLOUD_DIMS, cloud)
        for k, v in common.items():
            ds[k] = v
        ds["file_id"] = (("sample", "time"), np.array(ids.tolist(), dtype=str))
        ds["time_"] = (("sample", "time"), times)
        return ds

    return {
        "S1GRD": build(schema.S1GRD, s1, False, s1_time, s1_ids),
        "S2L1C": build(schema.S2L1C, l1c, True, s2_time, s2_ids),
        "S2L2A": build(schema.S2L2A, l2a, True, s2_time, s2_ids),
        "S2RGB": build(schema.S2RGB, rgb, True, s2_time, s2_ids),
    }


def _extra_members(chunk: dict[str, xr.Dataset], i: int, rng: np.random.Generator) -> dict[str, xr.Dataset]:
    """DEM, NDVI and LULC members of location ``i`` (shard layout), consistent with its S2 data."""
    from .convert import member_dataset

    l2a = chunk["S2L2A"].isel(sample=i)
    common = {"center_lat": float(l2a["center_lat"]), "center_lon": float(l2a["center_lon"]), "epsg": int(l2a["crs"]),
              "x": l2a["x_"].values, "y": l2a["y_"].values}
    times = l2a["time_"].values.astype("datetime64[ns]").astype(np.int64)
    dn = l2a[schema.BANDS_VAR].values.astype(np.float32) - schema.S2_OFFSET
    nir, red = dn[:, schema.S2L2A.bands.index("B08")], dn[:, schema.S2L2A.bands.index("B04")]
    ndvi = np.where(nir + red != 0, (nir - red) / np.maximum(np.abs(nir + red), 1.0), 0.0).astype(np.float32)
    cloud = l2a[schema.CLOUD_VAR].values
    lulc = np.select([ndvi < 0.0, ndvi > 0.5, ndvi > 0.3, ndvi > 0.15], [1, 2, 5, 11], 7).astype(np.uint8)
    lulc[np.isin(cloud, (CloudClass.THIN_CLOUD, CloudClass.THICK_CLOUD))] = 10
    lulc[cloud == CloudClass.SNOW] = 9
    size = dn.shape[-1]
    dem = (400.0 + 300.0 * smooth_field(rng, (1,), size, scale=40.0) + 50.0 * rng.random()).astype(np.float32)
    ids = l2a["file_id"].values
    return {
        "DEM": member_dataset(dem[:, None], band_names=schema.DEM.bands, times_ns=np.zeros(1, np.int64),
                              file_id=["COP-DEM_GLO-30"], **common),
        "NDVI": member_dataset(ndvi[:, None], band_names=schema.NDVI.bands, times_ns=times, file_id=ids, **common),
        "LULC": member_dataset(lulc[:, None], band_names=schema.LULC.bands, times_ns=times, file_id=ids, **common),
    }


def make_shards(
    root: str | os.PathLike,
    n_locations: int = 40,
    *,
    per_shard: int = schema.LOCATIONS_PER_SHARD,
    size: int = schema.PATCH_SIZE,
    seed: int = 0,
    split: str = "val",
    modalities: tuple[str, ...] | None = None,
) -> dict[str, list[str]]:
    """Write a synthetic dataset in the WebDataset layout: ``root/{split}/{modality}/ssl4eos12_shard_NNNNNN.tar``
    with ``per_shard`` locations per shard (the last fewer), all seven modalities unless ``modalities`` says
    otherwise, members in the published layout (S2 offset removed). Returns ``{modality: [shard paths]}``.

    The locations and pixels are those :func:`make_dataset` writes for the same ``n_locations``/``seed`` when
    ``n_locations`` fills whole chunks, so both distributions can be compared location by location.
    """
    from .convert import location_dataset, member_bytes
    from .shardfile import MEMBER_SUFFIX, write_shard

    root = os.fspath(root)
    mods = list(modalities or schema.SHARD_MODALITIES)
    locs = sample_locations(n_locations, seed=seed)
    rng = np.random.default_rng(seed + 17)
    pending: dict[str, list[tuple[str, bytes]]] = {m: [] for m in mods}
    written: dict[str, list[str]] = {m: [] for m in mods}

    def flush(m: str) -> None:
        path = os.path.join(root, split, m, schema.shard_name(len(written[m]) + 1))
        written[m].append(write_shard(path, pending[m]))
        pending[m] = []

    for k, start in enumerate(range(0, n_locations, schema.SAMPLES_PER_FILE)):
        stop = min(start + schema.SAMPLES_PER_FILE, n_locations)
        part = Locations(*(getattr(locs, f)[start:stop] for f in ("ids", "lat", "lon", "epsg", "city")))
        chunk = make_chunk(part, size=size, seed=seed * 100003 + k)
        for i in range(stop - start):
            members = {m: location_dataset(chunk[m], i, m) for m in schema.CHUNK_MODALITIES if m in mods}
            if any(m not in schema.CHUNK_MODALITIES for m in mods):
                members.update({m: ds for m, ds in _extra_members(chunk, i, rng).items() if m in mods})
            key = str(part.ids[i])
            for m in mods:
                pending[m].append((key + MEMBER_SUFFIX, member_bytes(members[m])))
                if len(pending[m]) == per_shard:
                    flush(m)
    for m in mods:
        if pending[m]:
            flush(m)
    return written


def terramesh_members(n_majortom: int, n_ssl: int, *, size: int = schema.PATCH_SIZE, seed: int = 0,
                      split: str = "val") -> dict[str, list[tuple[str, dict[str, xr.Dataset]]]]:
    """TerraMesh members as its card shows them: ``{subset: [(key, {modality: member Dataset})]}``.

    ``n_majortom`` Major TOM samples (one timestamp each) and ``n_ssl`` SSL4EO-S12 locations, each as FOUR
    one-season members (as TerraMesh holds them: 975,872 train members = 243,968 locations x 4), in the form of
    :func:`ssl4eo_zarr.convert.terramesh_member`: ``bands`` ``[1, C, size, size]``, a ``sample`` coordinate
    (``<7-digit id>_<season>`` for SSL4EO-S12; a Major TOM grid cell such as ``123U_456R``, assumed), ``time``
    datetime64[ns]. Keys run over the split, Major TOM's first (:func:`ssl4eo_zarr.schema.terramesh_key`).
    SSL4EO-S12 locations have S1GRD, Major TOM ones S1RTC (float32 dB, assumed: not published)."""
    from .convert import location_dataset, terramesh_member

    out: dict[str, list[tuple[str, dict[str, xr.Dataset]]]] = {}
    number = 0
    for prefix, n, salt in (("majortom", n_majortom, 0), ("ssl4eos12", n_ssl, 1)):
        locs = sample_locations(max(n, 1), seed=seed * 2 + salt)
        chunk = make_chunk(locs, size=size, seed=seed * 7 + salt)
        rng = np.random.default_rng(seed + 31 + salt)
        items = []
        for i in range(n):
            extra = _extra_members(chunk, i, rng)
            # Major TOM: one sample per grid cell, its season drawn; SSL4EO-S12: every season, one member each.
            seasons = range(schema.N_TIMESTAMPS) if prefix == "ssl4eos12" else [i % schema.N_TIMESTAMPS]
            for t in seasons:
                members = {m: location_dataset(chunk[m], i, m).isel(time=[t]) for m in schema.CHUNK_MODALITIES}
                members.update(NDVI=extra["NDVI"].isel(time=[t]), LULC=extra["LULC"].isel(time=[t]),
                               DEM=extra["DEM"])
                if prefix == "majortom":  # Major TOM carries terrain-corrected S1 instead of GRD
                    s1 = members.pop("S1GRD")
                    rtc = s1.copy()
                    rtc[schema.BANDS_VAR] = (s1[schema.BANDS_VAR].astype(np.float32) + np.float32(2.0))
                    members["S1RTC"] = rtc
                    sample = f"{100 + 7 * i}U_{200 + 3 * i}R"
                else:
                    sample = f"{locs.ids[i]}_{t}"
                number += 1
                items.append((schema.terramesh_key(prefix, split, number),
                              {m: terramesh_member(ds, sample) for m, ds in members.items()}))
        out[prefix] = items
    return out


def make_terramesh(root: str | os.PathLike, n_majortom: int = 12, n_ssl: int = 8, *, per_shard: int = 8,
                   size: int = 32, seed: int = 0, split: str = "val",
                   modalities: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Write a synthetic TerraMesh split: ``root/{split}/{modality}/majortom_shard_NNNNNN.tar`` (from 000001),
    then ``ssl4eos12_shard_NNNNNN.tar`` numbered on after them as published (S1GRD folders hold only the
    latter, S1RTC folders only the former), ``per_shard`` members each; ``n_ssl`` SSL4EO-S12 locations give four
    members each (:func:`terramesh_members`). Returns ``{modality: [paths]}``."""
    from .convert import member_bytes
    from .shardfile import MEMBER_SUFFIX, write_shard

    root = os.fspath(root)
    written: dict[str, list[str]] = {}
    number = 0
    for prefix, items in terramesh_members(n_majortom, n_ssl, size=size, seed=seed, split=split).items():
        held = schema.TERRAMESH.subset(prefix).modalities  # type: ignore[union-attr]
        mods = [m for m in (modalities or schema.MODALITIES) if m in held]
        for start in range(0, len(items), per_shard):
            number += 1
            part = items[start: start + per_shard]
            for m in mods:
                path = os.path.join(root, split, m, schema.shard_name(number, prefix))
                written.setdefault(m, []).append(write_shard(path, [(k + MEMBER_SUFFIX, member_bytes(ms[m]))
                                                                    for k, ms in part]))
    return written


def pre_fix_s1_order(ds: xr.Dataset) -> xr.Dataset:
    """An S1GRD chunk Dataset as published before the 2026-02-19 fix: per location, ``bands`` and ``file_id``
    in product-name order (``S1A_...`` before ``S1B_...``) while ``time_`` stays chronological."""
    ids = np.asarray(ds["file_id"].values).astype(str)
    perm = np.argsort(ids, axis=1, kind="stable")
    out = ds.copy()
    bands = np.asarray(ds[schema.BANDS_VAR].values)
    out[schema.BANDS_VAR] = (schema.BANDS_DIMS, np.take_along_axis(bands, perm[:, :, None, None, None], axis=1))
    out["file_id"] = (("sample", "time"), np.take_along_axis(ids, perm, axis=1))
    return out


def make_dataset(
    root: str | os.PathLike,
    n_files: int = 2,
    samples: int = schema.SAMPLES_PER_FILE,
    size: int = schema.PATCH_SIZE,
    seed: int = 0,
    split: str = "val",
    *,
    modalities: tuple[str, ...] | None = None,
    last_samples: int | None = None,
) -> list[str]:
    """Write a complete synthetic dataset root in the published layout; returns the file names.

    Creates ``root/{split}/{S1GRD,S2L1C,S2L2A,S2RGB}/ssl4eos12_{split}_seasonal_data_NNNNNN.zarr.zip`` (``n_files``
    chunk files of ``samples`` locations, the last of ``last_samples`` when given) and
    ``root/splits/ssl4eos12_{split}.txt``. Patches are ``size`` x ``size`` px at 10 m.
    """
    root = os.fspath(root)
    counts = [samples] * n_files
    if last_samples is not None and n_files:
        counts[-1] = last_samples
    locs = sample_locations(sum(counts), seed=seed)
    names = []
    start = 0
    for k, count in enumerate(counts):
        part = Locations(*(getattr(locs, f)[start:start + count] for f in ("ids", "lat", "lon", "epsg", "city")))
        start += count
        name = schema.chunk_file_name(split, k + 1)
        for mod, ds in make_chunk(part, size=size, seed=seed * 100003 + k).items():
            if modalities and mod not in modalities:
                continue
            write_chunk(ds, os.path.join(root, split, mod, name), modality=mod, size=size)
        names.append(name)
    write_split_list(root, split, names, merge=True)
    return names


# -- raw input for the builder --------------------------------------------------------------------------------

#: Native resolution of each S2 band in metres.
S2_RESOLUTION = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10, "B8A": 20,
                 "B09": 60, "B10": 60, "B11": 20, "B12": 20}


def raw_field(modality: str, band_index: int, t: int, dx_m, dy_m):
    """The analytic value written by :func:`make_raw` at ``dx_m``/``dy_m`` metres east/north of a location's
    centre: S2 DN without offset (linear, 0.2 DN/m east, -0.15 DN/m north) or S1 dB."""
    dx_m, dy_m = np.asarray(dx_m, dtype=np.float64), np.asarray(dy_m, dtype=np.float64)
    if modality == "S1GRD":
        return (-14.0 - 7.0 * band_index + 1.5 * t) + 0.002 * dx_m - 0.001 * dy_m
    return (600.0 + 150.0 * band_index + 80.0 * t + (40.0 if modality == "S2L1C" else 0.0)) + 0.2 * dx_m - 0.15 * dy_m


def raw_gradient(modality: str) -> float:
    """Largest change of :func:`raw_field` per metre (for alignment tolerances)."""
    return float(np.hypot(0.002, 0.001)) if modality == "S1GRD" else float(np.hypot(0.2, 0.15))


def local_offsets(lon, lat, lon0: float, lat0: float):
    """(dx, dy) in metres of points from a centre, on the local tangent plane (good to < 0.1 % over a patch)."""
    dx = (np.asarray(lon) - lon0) * 111_320.0 * np.cos(np.radians(lat0))
    dy = (np.asarray(lat) - lat0) * 110_540.0
    return dx, dy


def _write_raster(path: str, values_fn, *, epsg: int, centre_xy: tuple[float, float], extent_m: float, res_m: float,
                  lon0: float, lat0: float, dtype="float32", nodata=np.nan):
    """A GeoTIFF around a location whose pixel values are ``values_fn(dx, dy)`` at the pixel centres (metres from
    the location centre)."""
    import rasterio
    from rasterio.transform import from_origin

    if epsg == 4326:
        res_x = res_m / (111_320.0 * np.cos(np.radians(lat0)))
        res_y = res_m / 110_540.0
    else:
        res_x = res_y = res_m
    n = int(np.ceil(extent_m / res_m))
    left = centre_xy[0] - n / 2 * res_x
    top = centre_xy[1] + n / 2 * res_y
    if epsg != 4326:  # native UTM rasters sit on the res_m grid, like S2 tiles
        left, top = np.floor(left / res_m) * res_m, np.ceil(top / res_m) * res_m
    xs = left + res_x * (np.arange(n) + 0.5)
    ys = top - res_y * (np.arange(n) + 0.5)
    gx, gy = np.meshgrid(xs, ys)
    lon, lat = (gx, gy) if epsg == 4326 else geo.utm_to_lonlat(gx, gy, epsg)
    data = np.asarray(values_fn(*local_offsets(lon, lat, lon0, lat0))).astype(dtype)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    profile = dict(driver="GTiff", width=n, height=n, count=1, dtype=dtype, crs=f"EPSG:{epsg}",
                   transform=from_origin(left, top, res_x, res_y), nodata=nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def make_raw(root: str | os.PathLike, n_locations: int = 6, *, size: int = schema.PATCH_SIZE, seed: int = 0,
             masks: str = "mixed") -> dict[str, dict]:
    """Raw GeoTIFFs in the SSL4EO-S12 raw layout with analytic content (:func:`raw_field`), for the builder.

    ``root/{s1,s2a,s2c}/{location}/{season}/{band}.tif + metadata.json``; bands at their native 10/20/60 m;
    S2 in native UTM for most locations and EPSG:4326 for every third, S1 always in EPSG:4326. Location 0
    straddles the 12 degree E zone boundary (its S2 timestamps come from tiles of zones 32, 33, 32, 32);
    location 1 has a > 1 % NaN hole (the builder drops it); location 2 a small hole (filled). ``masks``:
    ``"mixed"`` (cloud_mask.tif for even, SCL.tif for odd timestamps), ``"none"``.

    Returns ``{location folder: {"lat", "lon", "sample", "drop"}}``.
    """
    from .schema import raw_band_file

    root = os.fspath(root)
    locs = sample_locations(n_locations, seed=seed)
    rng = np.random.default_rng(seed)
    truth: dict[str, dict] = {}
    extent = size * schema.RESOLUTION + 6 * 60.0
    for i in range(n_locations):
        lat, lon = float(locs.lat[i]), float(locs.lon[i])
        if i == 0:
            lat, lon = 45.30, 12.0 + 0.3 / 111.0  # 300 m east of the zone 32/33 boundary
        name = str(int(locs.ids[i]))  # raw folders carry the id without padding, as in v1
        truth[name] = {"lat": lat, "lon": lon, "sample": schema.sample_id(name), "drop": i == 1}
        home = geo.utm_epsg(lat, lon)
        zones = [home] * 4
        if i == 0:
            zones = [32632, 32633, 32632, 32632]
        for mod, folder in (("S2L1C", "s2c"), ("S2L2A", "s2a"), ("S1GRD", "s1")):
            spec = schema.get_modality(mod)
            for t, day in enumerate(_SEASON_DATES):
                when = np.datetime64(f"2021-{day}T10:30:00") + np.timedelta64(int(rng.integers(-10, 10)), "D")
                stamp = str(when.astype("datetime64[s]")).replace("-", "").replace(":", "")
                tile = f"{zones[t] % 100:02d}{geo.mgrs_tile(lat, lon)[3:]}"
                # S1B before S1A in time: a builder that ordered by product name would get S1 wrong.
                season = (f"S1{'BA'[t % 2]}_IW_GRDH_1SDV_{stamp}_{stamp}_0{t}1234_0ABCDE_0F{t}A" if mod == "S1GRD"
                          else f"{stamp}_{stamp}_T{tile}")
                base = os.path.join(root, folder, name, season)
                os.makedirs(base, exist_ok=True)
                meta: dict[str, Any] = {"system:time_start": int(when.astype("datetime64[ms]").astype(np.int64))}
                if mod == "S1GRD":
                    meta.update({"system:index": season, "instrumentMode": "IW", "orbitProperties_pass": "ASCENDING"})
                else:
                    meta.update({"PRODUCT_ID": season, "MGRS_TILE": tile, "CLOUDY_PIXEL_PERCENTAGE": 2.5})
                with open(os.path.join(base, "metadata.json"), "w", encoding="utf-8") as f:
                    json.dump(meta, f)
                epsg = 4326 if (mod == "S1GRD" or i % 3 == 2) else zones[t]
                centre = (lon, lat) if epsg == 4326 else geo.lonlat_to_utm(lon, lat, epsg)
                for c, band in enumerate(spec.bands):
                    res = 10.0 if mod == "S1GRD" else float(S2_RESOLUTION[band])

                    def values(dx, dy, mod=mod, c=c, t=t, band=band, i=i):
                        v = raw_field(mod, c, t, dx, dy)
                        if i == 1 and mod == "S2L1C" and t == 2 and band == "B05":
                            v = np.where((np.abs(dx) < 60) & (np.abs(dy) < 400), np.nan, v)  # > 1 % of the patch
                        if i == 2 and mod == "S2L2A" and t == 1 and band == "B04":
                            v = np.where(np.hypot(dx - 30, dy + 20) < 12, np.nan, v)  # a few pixels
                        return v

                    _write_raster(os.path.join(base, raw_band_file(mod, band)), values, epsg=epsg, centre_xy=centre,
                                  extent_m=extent, res_m=res, lon0=lon, lat0=lat)
                if mod == "S2L2A" and masks == "mixed":
                    if t % 2 == 0:  # SEnSeI classes: thick cloud east, water north, land elsewhere
                        name_fn = ("cloud_mask.tif", lambda dx, dy: np.where(
                            dx > 60, CloudClass.THICK_CLOUD, np.where(dy > 60, CloudClass.WATER, CloudClass.LAND)))
                    else:  # SCL: thin cirrus west, snow south, vegetation elsewhere
                        name_fn = ("SCL.tif", lambda dx, dy: np.where(dx < -60, 10, np.where(dy < -60, 11, 4)))
                    _write_raster(os.path.join(base, name_fn[0]), name_fn[1], epsg=epsg, centre_xy=centre,
                                  extent_m=extent, res_m=20.0, lon0=lon, lat0=lat, dtype="uint8", nodata=None)
    return truth
