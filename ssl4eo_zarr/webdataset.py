"""The WebDataset distribution: tar shards of per-location ``.zarr.zip`` archives, and conversion both ways.

Shards live at ``{split}/{modality}/ssl4eos12_shard_NNNNNN.tar`` (about 512 locations each). Each tar member is
``<sample id>.zarr.zip`` (WebDataset key = sample id), a format-2 group with ``bands`` ``[time, band, y, x]``
(S2 **without** the +1000 offset), ``cloud_mask`` ``[time, y, x]`` for S2, scalar ``center_lat``,
``center_lon``, ``crs``, ``x_`` ``[x]``, ``y_`` ``[y]``, ``file_id``/``sample_id`` ``[time]`` and the ``time``
coordinate holding the acquisition times as int64 nanoseconds since 1970.

``chunks_to_shards`` and ``shards_to_chunks`` convert between the two distributions; a chunk file converted to
shards and back is byte-identical (the writer is deterministic).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import xarray as xr

from . import schema
from .errors import CorruptFileError, ModalityMismatchError
from .layout import resolve, write_split_list
from .reader import _modality_dataset, open_chunk, open_dataset
from .storage import MemoryZipArchive, atomic_write, is_url
from .writer import encode_members, write_chunk, zip_bytes

LOCATIONS_PER_SHARD = 512
MEMBER_SUFFIX = ".zarr.zip"


def shard_name(index: int) -> str:
    """``ssl4eos12_shard_000001.tar`` for ``index`` 1."""
    return f"ssl4eos12_shard_{index:06d}.tar"


def location_dataset(chunk: xr.Dataset, i: int, modality: str) -> xr.Dataset:
    """Location ``i`` of a chunk-file Dataset in the WebDataset schema (offset removed, time as int64 ns)."""
    mod = schema.get_modality(modality)
    loc = chunk.isel(sample=i).load()
    times = loc["time_"].values.astype("datetime64[ns]").astype(np.int64)
    bands = loc[schema.BANDS_VAR].values
    if mod.offset:
        bands = (bands.astype(np.int32) - mod.offset).astype(mod.dtype)
    out = xr.Dataset(
        {schema.BANDS_VAR: (("time", "band", "y", "x"), bands)},
        coords={"band": loc["band"].values, "time": ("time", times), "x": loc["x"].values, "y": loc["y"].values},
    )
    if schema.CLOUD_VAR in loc:
        out[schema.CLOUD_VAR] = (("time", "y", "x"), loc[schema.CLOUD_VAR].values)
    for name in ("center_lat", "center_lon", "crs"):
        out[name] = ((), loc[name].values)
    out["x_"] = (("x",), loc["x_"].values)
    out["y_"] = (("y",), loc["y_"].values)
    out["file_id"] = (("time",), loc["file_id"].values.astype(str))
    out["sample_id"] = (("time",), loc["sample_id"].values.astype(str))
    out.attrs["sample"] = str(loc["sample"].values)
    return out


def chunk_from_locations(locations: Sequence[xr.Dataset], modality: str) -> xr.Dataset:
    """Inverse of :func:`location_dataset` over up to 64 locations: a chunk-file Dataset (offset re-added)."""
    mod = schema.get_modality(modality)
    bands = np.stack([loc[schema.BANDS_VAR].values for loc in locations])
    if mod.offset:
        bands = (bands.astype(np.int32) + mod.offset).astype(mod.dtype)
    first = locations[0]
    samples = np.array([loc.attrs["sample"] for loc in locations], dtype=f"<U{schema.SAMPLE_ID_WIDTH}")
    ds = xr.Dataset(
        {schema.BANDS_VAR: (schema.BANDS_DIMS, bands)},
        coords={"band": first["band"].values, "sample": samples,
                "time": np.arange(first.sizes["time"], dtype=np.int64), "x": first["x"].values, "y": first["y"].values},
    )
    if schema.CLOUD_VAR in first:
        ds[schema.CLOUD_VAR] = (schema.CLOUD_DIMS, np.stack([loc[schema.CLOUD_VAR].values for loc in locations]))
    for name in ("center_lat", "center_lon", "crs"):
        ds[name] = (("sample",), np.array([loc[name].values for loc in locations]))
    ds["x_"] = (("sample", "x"), np.stack([loc["x_"].values for loc in locations]))
    ds["y_"] = (("sample", "y"), np.stack([loc["y_"].values for loc in locations]))
    ds["file_id"] = (("sample", "time"), np.stack([loc["file_id"].values.astype(str) for loc in locations]))
    ds["sample_id"] = (("sample", "time"), np.stack([loc["sample_id"].values.astype(str) for loc in locations]))
    ds["time_"] = (("sample", "time"),
                   np.stack([loc["time"].values.astype(np.int64) for loc in locations]).view("datetime64[ns]"))
    return ds


def iter_shard(path: str, *, storage_options=None) -> Iterator[xr.Dataset]:
    """Per-location Datasets (WebDataset schema, loaded) of one tar shard, local or URL, in shard order."""
    if is_url(path):
        import fsspec

        fh = fsspec.open(path, "rb", **dict(storage_options or {})).open()
    else:
        fh = open(path, "rb")
    with fh:
        try:
            with tarfile.open(fileobj=fh, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile() or not member.name.endswith(MEMBER_SUFFIX):
                        continue
                    if member.name.startswith("/") or ".." in member.name.split("/"):
                        raise CorruptFileError(path, f"unsafe member name {member.name!r}")
                    data = tar.extractfile(member).read()
                    archive = MemoryZipArchive(data, f"{path}/{member.name}")
                    ds = _modality_dataset([open_chunk(archive, require_sample=False)]).load()
                    ds.attrs["sample"] = member.name.rsplit("/", 1)[-1][: -len(MEMBER_SUFFIX)]
                    yield ds
        except tarfile.TarError as exc:
            raise CorruptFileError(path, f"not a readable tar shard: {exc}") from None


def open_shards(paths: Sequence[str], modality: str, *, storage_options=None) -> xr.Dataset:
    """Locations of tar shards as one Dataset in the chunk-file schema (``bands`` ``[sample, time, band, y, x]``,
    S2 with the +1000 offset re-added), so the same code reads both distributions."""
    locs = [loc for p in paths for loc in iter_shard(p, storage_options=storage_options)]
    if not locs:
        raise CorruptFileError(",".join(paths), "no locations in these shards")
    parts = [chunk_from_locations(locs[i: i + schema.SAMPLES_PER_FILE], modality)
             for i in range(0, len(locs), schema.SAMPLES_PER_FILE)]
    return xr.concat(parts, dim="sample") if len(parts) > 1 else parts[0]


def _write_tar_atomically(path: str, members: Sequence[tuple[str, bytes]]) -> None:
    with atomic_write(path) as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, fileobj=io.BytesIO(data))


def chunks_to_shards(src: str, dst: str, *, split: str, modalities: Sequence[str] | None = None,
                     per_shard: int = LOCATIONS_PER_SHARD, progress: Callable | None = None) -> dict[str, list[str]]:
    """Convert a chunk-file dataset root to WebDataset shards under ``dst`` (the same split and modalities).

    Returns ``{modality: [shard paths]}``. Locations keep their order; shards hold ``per_shard`` locations.
    """
    sets = resolve(src, split=split, modalities=modalities)
    mods = list(sets[0].paths)
    written: dict[str, list[str]] = {m: [] for m in mods}
    for m in mods:
        pending: list[tuple[str, bytes]] = []
        shard = 1
        items = progress(sets, desc=f"{m} -> shards", unit="file") if progress else sets
        for cs in items:
            chunk = open_dataset(cs.paths[m])
            for i in range(chunk.sizes["sample"]):
                loc = location_dataset(chunk, i, m)
                pending.append((loc.attrs["sample"] + MEMBER_SUFFIX, zip_bytes(encode_members(loc))))
                if len(pending) == per_shard:
                    path = os.path.join(dst, split, m, shard_name(shard))
                    _write_tar_atomically(path, pending)
                    written[m].append(path)
                    pending, shard = [], shard + 1
        if pending:
            path = os.path.join(dst, split, m, shard_name(shard))
            _write_tar_atomically(path, pending)
            written[m].append(path)
    return written


def shards_to_chunks(src: str, dst: str, *, split: str, modalities: Sequence[str] | None = None,
                     progress: Callable | None = None) -> list[str]:
    """Convert WebDataset shards under ``src/{split}/{modality}/`` to 64-location chunk files under ``dst``
    (S2 offset re-added), with ``splits/ssl4eos12_{split}.txt``. Returns the chunk file names."""
    mods = [schema.get_modality(m).name for m in modalities] if modalities else [
        m for m in schema.MODALITIES if os.path.isdir(os.path.join(src, split, m))]
    shards = {m: sorted(os.path.join(src, split, m, n) for n in os.listdir(os.path.join(src, split, m))
                        if n.endswith(".tar")) for m in mods}
    streams = {m: (loc for p in shards[m] for loc in iter_shard(p)) for m in mods}
    names: list[str] = []
    index = 1
    done = False
    bar = progress(total=None, desc="shards -> chunks", unit="file") if progress else None
    while not done:
        batch = {m: [] for m in mods}
        for m in mods:
            for loc in streams[m]:
                batch[m].append(loc)
                if len(batch[m]) == schema.SAMPLES_PER_FILE:
                    break
        counts = {len(v) for v in batch.values()}
        if counts == {0}:
            break
        if len(counts) != 1:
            raise ModalityMismatchError(f"shards under {src}/{split} hold different numbers of locations per modality")
        ids = {m: [loc.attrs["sample"] for loc in v] for m, v in batch.items()}
        ref = ids[mods[0]]
        for m in mods[1:]:
            if ids[m] != ref:
                raise ModalityMismatchError(f"shards of {m} and {mods[0]} hold locations in a different order "
                                            f"(chunk {index}: {ids[m][:2]} vs {ref[:2]})")
        name = schema.chunk_file_name(split, index)
        for m in mods:
            size = batch[m][0].sizes["y"]
            write_chunk(chunk_from_locations(batch[m], m), os.path.join(dst, split, m, name), modality=m, size=size)
        names.append(name)
        index += 1
        done = len(ref) < schema.SAMPLES_PER_FILE
        if bar is not None:
            bar.update(1)
    write_split_list(dst, split, names)
    return names
