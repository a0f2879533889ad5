"""The lazy xarray view of WebDataset shards: the same multi-modal Dataset as over chunk files.

Opening reads each shard's tar headers once (kept in the shard index cache) and the metadata of one member
per modality; nothing else. Every variable is a dask array over a :class:`MemberStack`, an array-like that
reads exactly the members and timesteps an index touches, with range requests inside the tar (one
timestep of one location moves that chunk and the member's zip directory).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from .. import schema
from ..chunkfile import member_s1_order
from ..errors import ModalityMismatchError, SchemaError
from ..layout import ChunkSet
from ..shardfile import Member, MemberArchive, bands_meta, member_metadata, member_modality, read_time, shard_index
from ..shardindex import WALK_WORKERS
from ..zarrv2 import GroupMeta, read_array, read_group
from . import register


class _Members:
    """Opened member archives of one modality, least recently used closed (one per process and view)."""

    def __init__(self, paths: Sequence[str], archive_kwargs: dict[str, Any], capacity: int = 64):
        self.paths = list(paths)
        self.kwargs = archive_kwargs
        self.capacity = capacity
        self._open: OrderedDict[tuple[int, str], tuple[MemberArchive, GroupMeta]] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths, "kwargs": self.kwargs, "capacity": self.capacity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        _Members.__init__(self, state["paths"], state["kwargs"], state["capacity"])

    def get(self, shard: int, member: Member) -> tuple[MemberArchive, GroupMeta]:
        key = (shard, member.name)
        with self._lock:
            hit = self._open.pop(key, None)
            if hit is not None:
                self._open[key] = hit
                return hit
        archive = MemberArchive(self.paths[shard], member, **self.kwargs)
        hit = (archive, read_group(archive))
        with self._lock:
            self._open[key] = hit
            while len(self._open) > self.capacity:
                _, (old, _g) = self._open.popitem(last=False)
                old.release()
        return hit


class MemberStack:
    """Variable ``name`` of every member of a modality, stacked along a new leading ``sample`` axis.

    ``shape`` is ``(n_locations, *member shape)``; indexing reads only the members (and, for arrays with a
    ``time`` axis, the timesteps) it selects. ``delta`` is added to the values (the S2 offset convention);
    ``s1_fix`` reorders the time axis of S1 members whose data follow product names (see
    :mod:`ssl4eo_zarr.s1order`).
    """

    def __init__(self, members: _Members, rows: Sequence[tuple[int, Member]], name: str, item_shape: tuple[int, ...],
                 dtype: np.dtype, *, delta: int = 0, s1_fix: bool = False):
        self.members = members
        self.rows = list(rows)
        self.name = name
        self.shape = (len(self.rows), *item_shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.delta = delta
        self.s1_fix = s1_fix

    def _times(self, archive, group, wanted: range) -> list[int]:
        if not self.s1_fix:
            return list(wanted)
        facts = member_metadata(archive, group)
        perm = member_s1_order(facts["file_id"], facts["time"], archive.path)
        if perm is None:
            return list(wanted)
        return [int(perm[0, t]) for t in wanted]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        rows = range(*key[0].indices(self.shape[0])) if isinstance(key[0], slice) else [int(key[0])]
        # Images and masks are read one timestep at a time (only those asked for); small arrays whole.
        timed = self._has_time and self.ndim >= 2
        one_time = timed and not isinstance(key[1], slice)
        times = (range(int(key[1]), int(key[1]) + 1) if one_time else range(*key[1].indices(self.shape[1]))
                 if timed else None)
        out = []
        for r in rows:
            shard, member = self.rows[r]
            archive, group = self.members.get(shard, member)
            meta = group.arrays.get(self.name)
            if meta is None:
                raise SchemaError(f"{archive.path}: variable {self.name!r} is missing")
            if times is not None:
                item = np.empty((len(times), *meta.shape[1:]), dtype=meta.dtype)
                for k, t in enumerate(self._times(archive, group, times)):
                    read_time(archive, meta, t, item[k])
                if one_time:
                    item = item[0]
                rest = key[2:]
            else:
                item = read_array(archive, meta)
                if item.shape != self.shape[1:] and item.size == int(np.prod(self.shape[1:])):
                    item = item.reshape(self.shape[1:])  # TerraMesh's length-1 centre arrays, scalars elsewhere
                if self.s1_fix and item.ndim >= 1:
                    item = item[self._times(archive, group, range(item.shape[0]))]
                rest = key[1:]
            archive.release()
            if item.shape != self.shape[1:] and not timed:
                raise SchemaError(f"{archive.path}: {self.name!r} has shape {item.shape}, other members "
                                  f"{self.shape[1:]}")
            out.append(item[tuple(rest)] if rest else item)
        data = np.stack(out).astype(self.dtype, copy=False) if out else np.empty((0,), self.dtype)
        if not isinstance(key[0], slice):
            data = data[0]
        if self.delta:
            data = data + np.asarray(self.delta, dtype=self.dtype)
        return data

    @property
    def _has_time(self) -> bool:
        return self.name in (schema.BANDS_VAR, schema.CLOUD_VAR)


def _as_datetime(block: np.ndarray) -> np.ndarray:
    return block.view("datetime64[ns]")


def _locations(block: np.ndarray) -> np.ndarray:
    return np.array([schema.season_of(v)[0] for v in block.ravel()], dtype=block.dtype).reshape(block.shape)


def _seasons(block: np.ndarray) -> np.ndarray:
    return np.array([schema.season_of(v)[1] for v in block.ravel()], dtype=np.int64).reshape(block.shape)


def _lazy(stack: MemberStack, chunks: tuple[int, ...]) -> da.Array:
    token = tokenize(stack.members.paths, stack.name, len(stack.rows), stack.delta, stack.s1_fix)
    array = da.from_array(stack, chunks=chunks, asarray=False, fancy=False, name=f"ssl4eo-{stack.name}-{token}")
    return register(array, stack)


def _check_keys(sets: Sequence[ChunkSet], indexes: dict[str, list[list[Member]]]) -> None:
    mods = list(indexes)
    for s, cs in enumerate(sets):
        ref = indexes[mods[0]][s]
        for m in mods[1:]:
            other = indexes[m][s]
            for k in range(max(len(ref), len(other))):
                a = ref[k].key if k < len(ref) else None
                b = other[k].key if k < len(other) else None
                if a != b:
                    raise ModalityMismatchError(
                        f"shards diverge at location {k}: {cs.paths[mods[0]]} holds {a!r}, {cs.paths[m]} holds {b!r}; "
                        "the shards of all modalities must hold the same keys in the same order")


def open_shard_dataset(sets: Sequence[ChunkSet], *, s2_offset: bool | None = True, fix_s1_order: bool = True,
                       threads: int | None = None, explicit: bool = True, index: Any = None,
                       **archive_kwargs: Any) -> xr.Dataset:
    """One multi-modal Dataset over the shards ``sets`` (see :func:`ssl4eo_zarr.open_dataset`).

    Variables: ``<MOD>`` ``[sample, time, band_<MOD>, y, x]`` (static modalities such as DEM
    ``[sample, band_DEM, y, x]``), S2 with the +1000 offset unless ``s2_offset=False`` (``None``: as the
    members store it, TerraMesh's convention); ``cloud_mask`` uint8
    ``[sample, time, y, x]``; ``center_lat``/``center_lon`` float64 ``[sample]``; ``crs`` int64 ``[sample]``;
    ``x_``/``y_`` float64 UTM metres ``[sample, x|y]``; ``time_<MOD>`` datetime64[ns] and ``file_id_<MOD>`` str
    ``[sample, time]``; coordinates ``sample``, ``file`` (shard name) and ``split`` along ``sample``.

    TerraMesh (members of one timestamp): ``<MOD>`` ``[sample, band_<MOD>, y, x]``, ``time_<MOD>`` ``[sample]``,
    ``cloud_mask`` ``[sample, y, x]``, and a ``subset`` coordinate; where members carry their own ``sample``
    coordinate, ``sample_id`` str (e.g. ``0194630_1``), ``location`` str (``0194630``) and ``season`` int64
    (``1``; -1 for Major TOM) ``[sample]``, read lazily (``sample`` itself is the member key). A modality that
    only some subsets hold (S1GRD, S1RTC) is left out when modalities were not named (``attrs["left_out"]``)
    and an error when they were: the view never fills in what a location does not have.
    """
    order = {m: i for i, m in enumerate(schema.MODALITIES)}
    everything = list(sets[0].paths) + sorted({m for cs in sets for m in cs.paths} - set(sets[0].paths),
                                              key=lambda m: (order.get(m, len(order)), m))
    mods = [m for m in everything if all(m in cs.paths for cs in sets)]
    partial = [m for m in everything if m not in mods]
    if partial and explicit:
        held = {cs.subset: sorted(cs.paths) for cs in sets}
        raise ModalityMismatchError(f"{partial} exist in only some subsets ({held}): open one subset at a time "
                                    "(subsets=[...]) or leave them out; ChunkDataset reads both")
    if not mods:
        raise ModalityMismatchError(f"the shards share no modality: {[sorted(cs.paths) for cs in sets][:3]}")
    jobs = [(m, cs.paths[m]) for m in mods for cs in sets]
    if index is not None:  # an index file (ssl4eo_zarr.shardindex): no header read, each shard's version checked
        names = [cs.name for _m in mods for cs in sets]
        found = [index.members(m, name) for (m, _p), name in zip(jobs, names)]
        index.check_all([(path, m, name) for (m, path), name in zip(jobs, names)],
                        archive_kwargs.get("storage_options"))
    else:
        with ThreadPoolExecutor(max(1, WALK_WORKERS if threads is None else threads)) as pool:
            found = list(pool.map(lambda job: shard_index(job[1], **archive_kwargs), jobs))
    indexes = {m: found[k * len(sets): (k + 1) * len(sets)] for k, m in enumerate(mods)}
    _check_keys(sets, indexes)
    ref = schema.reference_modality(mods)
    rows = [(s, member) for s, index in enumerate(indexes[ref]) for member in index]
    if not rows:
        raise SchemaError(f"no locations in the shards {[cs.paths[ref] for cs in sets][:3]}")
    samples = np.array([member.key for _s, member in rows])
    ds = xr.Dataset(coords={"sample": samples,
                            "file": ("sample", np.repeat([cs.name for cs in sets], [len(i) for i in indexes[ref]])),
                            "split": ("sample", np.repeat([cs.split or "" for cs in sets],
                                                          [len(i) for i in indexes[ref]]))})
    n_t = None
    for m in mods:
        stacks = _Members([cs.paths[m] for cs in sets], archive_kwargs)
        mrows = [(s, member) for s, index in enumerate(indexes[m]) for member in index]
        archive, group = stacks.get(*mrows[0])
        meta = bands_meta(group, archive.path)
        mod = member_modality(m, archive, group)
        t, c, h, w = meta.shape
        delta = mod.offset if (mod.offset and s2_offset) else 0
        s1_fix = m == "S1GRD" and fix_s1_order
        band_dim = f"band_{m}"
        bands = _lazy(MemberStack(stacks, mrows, schema.BANDS_VAR, (t, c, h, w), meta.dtype, delta=delta,
                                  s1_fix=s1_fix), (1, 1, c, h, w))
        attrs = {"units": mod.units if (mod.known and (s2_offset is None or s2_offset or not mod.offset))
                 else "DN (offset removed; reflectance = DN / 10000)" if mod.offset else mod.units}
        if mod.static or t == 1:
            ds[m] = xr.Variable(("sample", band_dim, "y", "x"), bands[:, 0], attrs)
        else:
            n_t = n_t or t
            ds[m] = xr.Variable(("sample", "time", band_dim, "y", "x"), bands, attrs)
        if "band" in group.arrays:
            ds = ds.assign_coords({band_dim: [str(b) for b in read_array(archive, group.arrays["band"])]})
        if not mod.static and t == 1:  # one timestamp per member (TerraMesh): its acquisition time per location
            once = _lazy(MemberStack(stacks, mrows, "time", (1,), np.dtype("int64"), s1_fix=False), (1, 1))[:, 0]
            ds[f"time_{m}"] = xr.Variable(("sample",), da.map_blocks(_as_datetime, once, dtype="datetime64[ns]"))
        if not mod.static and t > 1:
            times = _lazy(MemberStack(stacks, mrows, "time", (t,), np.dtype("int64"), s1_fix=False), (1, t))
            ds[f"time_{m}"] = xr.Variable(("sample", "time"), da.map_blocks(_as_datetime, times, dtype="datetime64[ns]"))
            if "file_id" in group.arrays:
                ids = _lazy(MemberStack(stacks, mrows, "file_id", (t,), group.arrays["file_id"].dtype, s1_fix=s1_fix),
                            (1, t))
                ds[f"file_id_{m}"] = xr.Variable(("sample", "time"), ids)
        if m == ref:
            for name in ("center_lat", "center_lon", "crs"):
                if name in group.arrays:
                    meta_s = group.arrays[name]
                    ds[name] = xr.Variable(("sample",), _lazy(MemberStack(stacks, mrows, name, (), meta_s.dtype), (1,)))
            if "sample" in group.arrays and group.arrays["sample"].dtype.kind == "U":
                # The member's own sample (TerraMesh: "<id>_<season>"): location and season, read when asked for.
                # Subsets name their samples differently: a width no member's name exceeds (64) for all.
                own = _lazy(MemberStack(stacks, mrows, "sample", (), np.dtype("<U64")), (1,))
                ds["sample_id"] = xr.Variable(("sample",), own)
                ds["location"] = xr.Variable(("sample",), da.map_blocks(_locations, own, dtype=f"<U{own.dtype.itemsize // 4}"))
                ds["season"] = xr.Variable(("sample",), da.map_blocks(_seasons, own, dtype=np.int64),
                                           {"long_name": "season 0..3 of an SSL4EO-S12 location, -1 where none"})
            for axis, size in (("x", w), ("y", h)):
                src = f"{axis}_" if f"{axis}_" in group.arrays else axis
                if src in group.arrays:
                    stack = MemberStack(stacks, mrows, src, (size,), group.arrays[src].dtype)
                    ds[f"{axis}_"] = xr.Variable(("sample", axis), _lazy(stack, (1, size)).astype(np.float64))
    cloud_mod = next((m for m in schema.CLOUD_MODALITIES if m in mods), None)
    if cloud_mod is not None:
        stacks = _Members([cs.paths[cloud_mod] for cs in sets], archive_kwargs)
        mrows = [(s, member) for s, index in enumerate(indexes[cloud_mod]) for member in index]
        archive, group = stacks.get(*mrows[0])
        if schema.CLOUD_VAR in group.arrays:
            cm = group.arrays[schema.CLOUD_VAR]
            t, h, w = cm.shape
            mask = _lazy(MemberStack(stacks, mrows, schema.CLOUD_VAR, (t, h, w), cm.dtype), (1, 1, h, w))
            ds[schema.CLOUD_VAR] = (xr.Variable(("sample", "y", "x"), mask[:, 0]) if t == 1
                                    else xr.Variable(("sample", "time", "y", "x"), mask))
    if n_t is not None:
        ds = ds.assign_coords(time=np.arange(n_t, dtype=np.int64))
        ds["sample_id"] = (("sample", "time"), np.char.add(np.char.add(samples[:, None], "_"),
                                                         np.arange(n_t).astype(str)[None, :]))
    if "x_" in ds:
        ds = ds.assign_coords(x=np.arange(ds.sizes["x"], dtype=np.int64), y=np.arange(ds.sizes["y"], dtype=np.int64))
    corpus = schema.get_corpus(sets[0].corpus)
    ds.attrs.update(modalities=mods, title="SSL4EO-S12 v1.1" if corpus is schema.SSL4EO_S12 else corpus.description,
                    distribution="shards", dataset=corpus.name,
                    s2_offset="as stored" if s2_offset is None else "DN + 1000" if s2_offset else "removed")
    if corpus is not schema.SSL4EO_S12:
        ds = ds.assign_coords(subset=("sample", np.repeat([cs.subset or "" for cs in sets],
                                                          [len(i) for i in indexes[ref]])))
    if partial:
        ds.attrs["left_out"] = partial
    return ds
