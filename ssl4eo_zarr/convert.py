"""The WebDataset distribution as xarray: per-location Datasets of shard members, and conversion both ways.

Shards live at ``{split}/{modality}/ssl4eos12_shard_NNNNNN.tar`` (512 locations each, numbered from 000001);
each member is ``<sample id>.zarr.zip`` in the layout described in :mod:`ssl4eo_zarr.shardfile`. Members this
library writes follow the published layout: ``bands`` ``[time, band, y, x]`` with the S2 offset removed,
``cloud_mask`` ``[time, y, x]``, ``time`` int64 ns, scalar ``center_lat``/``center_lon``/``crs``, ``file_id``
``[time]``, ``x``/``y`` in UTM metres and the CRS as WKT in ``spatial_ref`` (``crs_wkt``, as rioxarray writes).

``chunks_to_shards`` and ``shards_to_chunks`` convert between the distributions; a chunk file converted to
shards and back is byte-identical (the writer is deterministic).

S1 order, one rule for :func:`iter_shard`, :func:`chunks_to_shards` and :func:`shards_to_chunks` (as for
``open_dataset`` and ``ChunkDataset``): with ``fix_s1_order=True`` (default) S1GRD data from before the
2026-02-19 fix are written in ``time`` order, location by location; a location whose ``file_id`` and times
cannot be reconciled is kept as stored and named in an :class:`~ssl4eo_zarr.errors.S1OrderWarning`.
``fix_s1_order=False`` copies every location as stored. DEM, NDVI and LULC exist only as shards:
chunk files have no place for them, so ``shards_to_chunks`` leaves them out and says so.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import xarray as xr

from . import schema
from .chunkfile import member_s1_order
from .errors import ModalityMismatchError, SchemaError
from .layout import SHARDS, resolve, write_split_list
from .shardfile import MEMBER_SUFFIX, ShardStream, member_archive, write_shard
from .views.chunkfiles import modality_dataset, open_chunk, open_dataset
from .writer import encode_members, write_chunk, zip_bytes

LOCATIONS_PER_SHARD = schema.LOCATIONS_PER_SHARD
shard_name = schema.shard_name


@functools.lru_cache(maxsize=64)
def crs_wkt(epsg: int) -> str:
    """WKT (2019) of an EPSG code, as rioxarray stores it in ``spatial_ref``."""
    from pyproj import CRS

    return CRS.from_epsg(int(epsg)).to_wkt()


def member_dataset(bands: np.ndarray, *, band_names: Sequence[str], times_ns: np.ndarray, file_id: Sequence[str],
                   center_lat: float, center_lon: float, epsg: int, x: np.ndarray, y: np.ndarray,
                   cloud_mask: np.ndarray | None = None) -> xr.Dataset:
    """One shard member in the published layout.

    ``bands`` ``[T, C, H, W]`` as stored in shards (S2 offset removed), ``times_ns`` int64 ``[T]`` (ns since 1970),
    ``x``/``y`` float64 UTM metres of pixel centres ``[W]``/``[H]``, ``cloud_mask`` uint8 ``[T, H, W]``.
    """
    ds = xr.Dataset(
        {schema.BANDS_VAR: (("time", "band", "y", "x"), bands)},
        coords={"band": np.asarray(band_names), "time": ("time", np.asarray(times_ns, dtype=np.int64)),
                "x": ("x", np.asarray(x, dtype=np.float64)), "y": ("y", np.asarray(y, dtype=np.float64))},
    )
    if cloud_mask is not None:
        ds[schema.CLOUD_VAR] = (("time", "y", "x"), np.asarray(cloud_mask, dtype=np.uint8))
    ds["center_lat"] = ((), np.float64(center_lat))
    ds["center_lon"] = ((), np.float64(center_lon))
    ds["crs"] = ((), np.int64(epsg))
    ds["file_id"] = (("time",), np.asarray(file_id).astype(str))
    wkt = crs_wkt(int(epsg))
    ds["spatial_ref"] = xr.Variable((), np.int64(0), {"crs_wkt": wkt, "spatial_ref": wkt})
    return ds


def location_dataset(chunk: xr.Dataset, i: int, modality: str) -> xr.Dataset:
    """Location ``i`` of a chunk-file Dataset as a shard member (offset removed, time as int64 ns)."""
    mod = schema.get_modality(modality)
    loc = chunk.isel(sample=i).load()
    bands = loc[schema.BANDS_VAR].values
    if mod.offset:
        bands = (bands.astype(np.int32) - mod.offset).astype(mod.dtype)
    ds = member_dataset(
        bands, band_names=[str(b) for b in loc["band"].values],
        times_ns=loc["time_"].values.astype("datetime64[ns]").astype(np.int64), file_id=loc["file_id"].values,
        center_lat=float(loc["center_lat"]), center_lon=float(loc["center_lon"]), epsg=int(loc["crs"]),
        x=loc["x_"].values, y=loc["y_"].values,
        cloud_mask=loc[schema.CLOUD_VAR].values if schema.CLOUD_VAR in loc else None)
    ds.attrs["sample"] = str(loc["sample"].values)
    return ds


def terramesh_member(member: xr.Dataset, sample: str) -> xr.Dataset:
    """A one-timestamp member (:func:`member_dataset` layout, ``bands`` ``[1, C, H, W]``) in TerraMesh's form:
    its own ``sample`` coordinate (``<7-digit id>_<season>`` for SSL4EO-S12 locations) along a ``sample``
    dimension of length 1 that ``center_lat``/``center_lon`` (float64 degrees) and ``crs`` (int64 EPSG) share,
    and ``time`` datetime64[ns] (stored as int64 ns since 1970 with CF units: xarray decodes it, zarr gives the
    integers). The published loader reads ``center_lat`` with ``[...]`` and squeezes axis 0 of what it gets, so
    they must not be scalars there as they are in SSL4EO-S12's own shards."""
    ds = member.copy()
    for name in ("center_lat", "center_lon", "crs"):
        if name in ds:
            ds[name] = (("sample",), np.asarray(ds[name].values).reshape(1))
    times = np.asarray(ds["time"].values)
    times = times.astype("datetime64[ns]") if times.dtype.kind == "M" else times.astype(np.int64).view("datetime64[ns]")
    ds = ds.assign_coords(sample=("sample", np.array([str(sample)])), time=("time", times))
    ds.attrs.pop("sample", None)
    return ds


def _grid(loc: xr.Dataset, axis: str) -> np.ndarray:
    """UTM metres of a member's pixel centres: ``x``/``y`` as published, ``x_``/``y_`` from older writers."""
    if f"{axis}_" in loc:
        return loc[f"{axis}_"].values.astype(np.float64)
    return loc[axis].values.astype(np.float64)


def chunk_from_locations(locations: Sequence[xr.Dataset], modality: str) -> xr.Dataset:
    """Inverse of :func:`location_dataset` over up to 64 members: a chunk-file Dataset (offset re-added)."""
    mod = schema.get_modality(modality)
    bands = np.stack([loc[schema.BANDS_VAR].values for loc in locations])
    if mod.offset:
        bands = (bands.astype(np.int32) + mod.offset).astype(mod.dtype)
    first = locations[0]
    n_t = first.sizes["time"]
    samples = np.array([loc.attrs["sample"] for loc in locations], dtype=f"<U{schema.SAMPLE_ID_WIDTH}")
    ds = xr.Dataset(
        {schema.BANDS_VAR: (schema.BANDS_DIMS, bands)},
        coords={"band": first["band"].values, "sample": samples, "time": np.arange(n_t, dtype=np.int64),
                "x": np.arange(first.sizes["x"], dtype=np.int64), "y": np.arange(first.sizes["y"], dtype=np.int64)},
    )
    if schema.CLOUD_VAR in first:
        ds[schema.CLOUD_VAR] = (schema.CLOUD_DIMS, np.stack([loc[schema.CLOUD_VAR].values for loc in locations]))
    for name in ("center_lat", "center_lon", "crs"):
        ds[name] = (("sample",), np.array([loc[name].values for loc in locations]))
    ds["x_"] = (("sample", "x"), np.stack([_grid(loc, "x") for loc in locations]))
    ds["y_"] = (("sample", "y"), np.stack([_grid(loc, "y") for loc in locations]))
    ds["file_id"] = (("sample", "time"), np.stack([loc["file_id"].values.astype(str) for loc in locations]))
    ds["sample_id"] = (("sample", "time"), np.array([[f"{s}_{t}" for t in range(n_t)] for s in samples]))
    ds["time_"] = (("sample", "time"),
                   np.stack([loc["time"].values.astype(np.int64) for loc in locations]).view("datetime64[ns]"))
    return ds


def member_bytes(ds: xr.Dataset) -> bytes:
    """A member Dataset as the bytes of its ``.zarr.zip`` (deterministic)."""
    return zip_bytes(encode_members(ds))


def member_in_time_order(ds: xr.Dataset, where: str) -> xr.Dataset:
    """An S1GRD member (``bands`` ``[time, band, y, x]``, ``file_id`` ``[time]``, ``time`` int64 ns) with its data
    and ``file_id`` in ``time`` order; unchanged if already so, or if they cannot be reconciled (then named in an
    :class:`~ssl4eo_zarr.errors.S1OrderWarning`, ``where`` being the member's path)."""
    if "file_id" not in ds or "time" not in ds or tuple(map(str, ds["band"].values)) != schema.S1GRD.bands:
        return ds
    perm = member_s1_order(ds["file_id"].values, np.asarray(ds["time"].values).astype("datetime64[ns]"), where)
    if perm is None:
        return ds
    out = ds.copy()
    for name, var in ds.data_vars.items():
        if var.dims[:1] == ("time",):
            out[name] = var.isel(time=perm[0]).assign_coords(time=ds["time"])
    return out


def read_member(data: bytes, where: str, key: str, *, fix_s1_order: bool = True) -> xr.Dataset:
    """One shard member's bytes as a loaded per-location Dataset (member layout), ``attrs["sample"] = key``;
    ``where`` names it in errors. S1 order as in the module docstring."""
    ds = modality_dataset([open_chunk(member_archive(data, where), require_sample=False)]).load()
    ds.attrs["sample"] = key
    return member_in_time_order(ds, where) if fix_s1_order else ds


def iter_shard(path: str, *, fix_s1_order: bool = True, **archive_kwargs: Any) -> Iterator[xr.Dataset]:
    """Per-location Datasets (member layout, loaded) of one tar shard, local or URL, streamed in shard order;
    ``ds.attrs["sample"]`` is the member's key. S1GRD members in ``time`` order unless ``fix_s1_order=False``
    (see the module docstring)."""
    stream = ShardStream(path, **archive_kwargs)
    try:
        while (member := stream.advance()) is not None:
            yield read_member(stream.read(), f"{path}/{member.name}", member.key, fix_s1_order=fix_s1_order)
    finally:
        stream.close()


def chunks_to_shards(src: str, dst: str, *, split: str, modalities: Sequence[str] | None = None,
                     per_shard: int = LOCATIONS_PER_SHARD, progress: Callable | None = None,
                     fix_s1_order: bool = True) -> dict[str, list[str]]:
    """Convert a chunk-file dataset root to WebDataset shards under ``dst`` (the same split and modalities),
    numbered from 000001 like the published ones. Returns ``{modality: [shard paths]}``; locations keep their
    order and shards hold ``per_shard`` locations (the last fewer). S1 order: see the module docstring."""
    sets = resolve(src, split=split, modalities=modalities)
    mods = list(sets[0].paths)
    written: dict[str, list[str]] = {m: [] for m in mods}
    for m in mods:
        pending: list[tuple[str, bytes]] = []
        items = progress(sets, desc=f"{m} -> shards", unit="file") if progress else sets
        for cs in items:
            # once: per-location reads would decode each chunk 64 times
            chunk = open_dataset(cs.paths[m], fix_s1_order=fix_s1_order).load()
            for i in range(chunk.sizes["sample"]):
                loc = location_dataset(chunk, i, m)
                pending.append((loc.attrs["sample"] + MEMBER_SUFFIX, member_bytes(loc)))
                if len(pending) == per_shard:
                    written[m].append(write_shard(os.path.join(dst, split, m, shard_name(len(written[m]) + 1)),
                                                  pending))
                    pending = []
        if pending:
            written[m].append(write_shard(os.path.join(dst, split, m, shard_name(len(written[m]) + 1)), pending))
    return written


def shards_to_chunks(src: str, dst: str, *, split: str, modalities: Sequence[str] | None = None,
                     progress: Callable | None = None, fix_s1_order: bool = True) -> list[str]:
    """Convert WebDataset shards under ``src/{split}/{modality}/`` to 64-location chunk files under ``dst`` (S2
    offset re-added), with ``splits/ssl4eos12_{split}.txt``. Returns the chunk file names. S1 order: see the
    module docstring.

    Modalities chunk files cannot hold (DEM, NDVI, LULC, any new one) are left out with a warning.
    """
    sets = resolve(src, split=split, modalities=modalities, distribution=SHARDS)
    if sets[0].corpus != schema.SSL4EO_S12.name:
        raise SchemaError(f"{src} is {sets[0].corpus}: its members hold {schema.get_corpus(sets[0].corpus).timestamps} "
                          f"timestamp(s), chunk files hold {schema.N_TIMESTAMPS} seasons per location; read it as shards")
    present = list(sets[0].paths)
    mods = [m for m in present if m in schema.CHUNK_MODALITIES]
    left_out = [m for m in present if m not in schema.CHUNK_MODALITIES]
    if left_out:
        warnings.warn(f"{', '.join(left_out)} left out: chunk files have no place for them (they stay shards-only)",
                      UserWarning, stacklevel=2)
    if not mods:
        raise ModalityMismatchError(f"none of {present} exists as chunk files ({', '.join(schema.CHUNK_MODALITIES)})")
    def locations(m: str) -> Iterator[xr.Dataset]:
        for cs in sets:
            yield from iter_shard(cs.paths[m], fix_s1_order=fix_s1_order)

    streams = {m: locations(m) for m in mods}
    names: list[str] = []
    bar = progress(total=None, desc="shards -> chunks", unit="file") if progress else None
    while True:
        batch: dict[str, list[xr.Dataset]] = {m: [] for m in mods}
        for m in mods:
            for loc in streams[m]:
                batch[m].append(loc)
                if len(batch[m]) == schema.SAMPLES_PER_FILE:
                    break
        counts = {len(v) for v in batch.values()}
        if counts == {0}:
            break
        ids = {m: [loc.attrs["sample"] for loc in v] for m, v in batch.items()}
        ref = ids[mods[0]]
        for m in mods[1:]:
            if ids[m] != ref:
                k = next((j for j, (a, b) in enumerate(zip(ids[m], ref)) if a != b), min(len(ids[m]), len(ref)))
                raise ModalityMismatchError(
                    f"shards of {m} and {mods[0]} under {src}/{split} diverge at location "
                    f"{len(names) * schema.SAMPLES_PER_FILE + k}: {ids[m][k] if k < len(ids[m]) else None!r} vs "
                    f"{ref[k] if k < len(ref) else None!r}")
        name = schema.chunk_file_name(split, len(names) + 1)
        for m in mods:
            size = batch[m][0].sizes["y"]
            write_chunk(chunk_from_locations(batch[m], m), os.path.join(dst, split, m, name), modality=m, size=size)
        names.append(name)
        if bar is not None:
            bar.update(1)
        if len(ref) < schema.SAMPLES_PER_FILE:
            break
    write_split_list(dst, split, names)
    return names
