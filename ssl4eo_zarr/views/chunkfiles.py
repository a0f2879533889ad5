"""The xarray view: open chunk files as lazy, dask-backed Datasets.

A single ``*.zarr.zip`` opens as exactly what ``xr.open_zarr(path)`` gives under zarr-python 2.18 (same
names, dims, dtypes and values), under either zarr major version. A dataset root, split folder or list of
files opens as one multi-modal Dataset concatenated along ``sample``: one image variable per modality
(``S2L2A`` with dims ``sample, time, band_S2L2A, y, x``), the cloud mask and coordinates once.

Opening reads each file's central directory, consolidated metadata and ``sample`` ids, nothing else: the
image data stays lazy (one dask chunk per file and timestamp) until computed.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from xarray.backends import BackendArray
from xarray.core import indexing as xr_indexing

from .. import s1order, schema
from ..chunkfile import ChunkFile, open_chunk, s1_permutation, s1_plan, times_ns, warn_s1_order
from ..errors import ModalityMismatchError, SchemaError
from ..layout import SHARDS, ChunkSet, is_chunk_file, resolve
from ..splitindex import SplitIndex
from ..storage import is_url
from ..timeorder import reorder_block
from ..zarrv2 import ArrayMeta, read_region
from . import register

#: Index coordinates xarray reads eagerly; the rest stays lazy.
_INDEX_COORDS = schema.COORDS
#: Variables taken once from the reference modality in the multi-modal view.
_SHARED_VARS = (schema.CLOUD_VAR, "center_lat", "center_lon", "crs", "x_", "y_", "sample_id")
#: Variables that differ per modality (S1 and S2 were acquired at different times).
_PER_MODALITY_VARS = ("file_id", "time_")


class FilesArray(BackendArray):
    """Variable ``name`` of several chunk files as one lazily indexed array, stacked along ``sample`` (or the
    first file's, for variables without that dimension).

    Indexing reads only the stored chunks the index touches, file by file, and releases each archive
    afterwards (a split of thousands of files never holds thousands of descriptors). xarray indexes it
    through its explicit indexers; dask through plain slices (:func:`_lazy`), one task per stored chunk.
    """

    def __init__(self, files: Sequence[ChunkFile], metas: Sequence[ArrayMeta], axis: int | None):
        first = metas[0]
        # Archives and array metadata only: that is what a task needs, and what travels to dask workers.
        self.archives, self.metas, self.axis = [f.archive for f in files], list(metas), axis
        sizes = [m.shape[axis] for m in metas] if axis is not None else [0]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        shape = list(first.shape)
        if axis is not None:
            shape[axis] = int(self.starts[-1])
        self.shape = tuple(shape)
        self.dtype = first.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, xr_indexing.ExplicitIndexer):
            return xr_indexing.explicit_indexing_adapter(key, self.shape, xr_indexing.IndexingSupport.BASIC,
                                                         self._read)
        return self._read(key if isinstance(key, tuple) else (key,))

    def _read(self, key: tuple) -> np.ndarray:
        key = tuple(key) + (slice(None),) * (len(self.shape) - len(key))
        spans, steps, drop = [], [], []
        for dim, (k, size) in enumerate(zip(key, self.shape)):
            if isinstance(k, slice):
                start, stop, step = k.indices(size)
                if step < 0:  # read the covered span forwards, then step through it backwards
                    start, stop = stop + 1, start + 1
                spans.append((start, max(stop, start)))
                steps.append(step)
            else:
                i = int(k) % size
                spans.append((i, i + 1))
                steps.append(1)
                drop.append(dim)
        if not self.shape:
            out = self._region(0, ())
        elif self.axis is None:
            out = self._region(0, tuple(slice(a, b) for a, b in spans))
        else:
            out = self._stack(spans)
        if any(s != 1 for s in steps):
            out = out[tuple(slice(None, None, s) for s in steps)]
        if drop:
            out = out[tuple(0 if d in drop else slice(None) for d in range(out.ndim))]
        return out

    def _stack(self, spans: list[tuple[int, int]]) -> np.ndarray:
        axis = self.axis if self.axis is not None else 0
        a, b = spans[axis]
        parts = []
        for f in range(max(int(np.searchsorted(self.starts, a, side="right")) - 1, 0), len(self.archives)):
            lo, hi = int(self.starts[f]), int(self.starts[f + 1])
            if lo >= b:
                break
            if hi <= a:
                continue
            region = [slice(x, y) for x, y in spans]
            region[axis] = slice(max(a, lo) - lo, min(b, hi) - lo)
            parts.append(self._region(f, tuple(region)))
        if not parts:
            return np.empty([y - x for x, y in spans], dtype=self.dtype)
        return np.concatenate(parts, axis=axis) if len(parts) > 1 else parts[0]

    def _region(self, f: int, region: tuple[slice, ...]) -> np.ndarray:
        archive = self.archives[f]
        try:
            return read_region(archive, self.metas[f], region)
        finally:
            archive.release()  # a computation over thousands of files must not keep thousands of descriptors


def _edge_sizes(meta: ArrayMeta, axis: int) -> list[int]:
    return [min(meta.chunks[axis], meta.shape[axis] - k * meta.chunks[axis]) for k in range(meta.grid[axis])]


def _lazy(files: Sequence[ChunkFile], name: str) -> da.Array:
    """Variable ``name`` of ``files`` as one dask array, concatenated along ``sample`` when it has that dim.

    One dask chunk per stored chunk; a task reads and decodes exactly one zip member (see :class:`FilesArray`).
    """
    first = files[0].array(name)
    concat = "sample" in first.dims
    axis = first.dims.index("sample") if concat else None
    use = files if concat else files[:1]
    metas = [f.array(name) for f in use]
    want = tuple(s for i, s in enumerate(first.shape) if i != axis)
    for f, meta in zip(use, metas):
        if meta is first:  # files with identical metadata share one parsed ArrayMeta
            continue
        other = tuple(s for i, s in enumerate(meta.shape) if i != axis)
        if meta.dims != first.dims or other != want or meta.dtype != first.dtype:
            raise ModalityMismatchError(
                f"{f.path}: {name!r} is {meta.dtype} {dict(zip(meta.dims, meta.shape))}, "
                f"but {files[0].path} has {first.dtype} {dict(zip(first.dims, first.shape))}"
            )
    token = "ssl4eo-" + name + "-" + tokenize([f.path for f in use], name)
    if not first.shape:
        return da.from_array(FilesArray(use, metas, None), chunks=(), name=token, asarray=False, fancy=False,
                             meta=np.empty((), dtype=first.dtype))
    chunks: list[list[int]] = []
    for i, (s, c) in enumerate(zip(first.shape, first.chunks)):
        if i == axis:
            sizes = []
            for meta in metas:
                sizes += _edge_sizes(meta, i)
            chunks.append(sizes)
        else:
            chunks.append([min(c, s - k * c) for k in range(first.grid[i])])
    # One task per stored chunk, in a graph dask builds lazily (a split of thousands of files opens in
    # constant time here).
    source = FilesArray(use, metas, axis)
    return register(da.from_array(source, chunks=tuple(tuple(c) for c in chunks), name=token, asarray=False,
                                  fancy=False, meta=np.empty((0,) * len(first.shape), dtype=first.dtype)), source)


def _variable(files: Sequence[ChunkFile], name: str, *, eager: bool = False) -> xr.Variable:
    meta = files[0].array(name)
    attrs = {k: v for k, v in meta.attrs.items() if k != "_ARRAY_DIMENSIONS"}
    if meta.fill_value is not None:
        attrs["_FillValue"] = meta.fill_value  # as xarray's zarr backend does, for CF masking
    if eager:
        if name == "sample" and "sample" in meta.dims:
            data = np.concatenate([f.samples for f in files])
        else:
            data = files[0].read(name)
    else:
        data = _lazy(files, name)  # type: ignore[assignment]  # a dask array stands where numpy may
    return xr.Variable(meta.dims, data, attrs)


def modality_dataset(files: Sequence[ChunkFile], *, fix_s1_order: bool = False) -> xr.Dataset:
    """Variables of one modality over ``files``, concatenated along sample and CF-decoded like ``xr.open_zarr``.

    With ``fix_s1_order``, S1 files from before the 2026-02-19 fix come back in ``time_`` order (see
    :mod:`ssl4eo_zarr.s1order`)."""
    first = files[0]
    for f in files[1:]:
        if f.group.arrays.keys() != first.group.arrays.keys():
            raise ModalityMismatchError(
                f"{f.path} has variables {sorted(f.group.arrays)}, {first.path} has {sorted(first.group.arrays)}"
            )
    coords = {n: _variable(files, n, eager=True) for n in first.group.arrays if n in _INDEX_COORDS}
    data_vars = {n: _variable(files, n) for n in first.group.arrays if n not in _INDEX_COORDS}
    plain = {n: v for n, v in data_vars.items() if not _is_epoch_ns(v)}
    ds = xr.decode_cf(xr.Dataset(plain, coords=coords, attrs=dict(first.group.attrs)))
    for name, var in data_vars.items():
        if _is_epoch_ns(var):
            ds[name] = _decode_epoch_ns(var)
    if fix_s1_order and "band" in ds.coords and tuple(map(str, ds["band"].values)) == schema.S1GRD.bands:
        ds = _chronological_s1(ds, files)
    return ds


def _chronological_s1(ds: xr.Dataset, files: Sequence[ChunkFile]) -> xr.Dataset:
    """S1 data and ``file_id`` of misordered files reordered lazily to follow ``time_``.

    Only the files that need it change: their timestamps are read together (one dask block per file),
    the other files keep one block per timestamp.
    """
    perms = []
    for cf in files:
        if isinstance(cf.s1_order, str):  # not known from an index
            try:
                cf.s1_order, cf.s1_left = s1_plan(cf)
            finally:
                cf.archive.release()
        perms.append(cf.s1_order)
        warn_s1_order(cf.path, len(s1order.misordered_rows(cf.s1_order)), cf.s1_left)
    if all(p is None for p in perms):
        return ds
    bounds = np.cumsum([0] + [f.n_samples for f in files])
    for name, var in ds.variables.items():
        if var.dims[:2] != ("sample", "time") or name in ("time_", "sample_id"):
            continue
        pieces = []
        for k, perm in enumerate(perms):
            part = var.data[bounds[k]: bounds[k + 1]]
            if perm is None:
                pieces.append(part)
            elif isinstance(part, da.Array):
                # Each block gets the rows of ``perm`` for its own samples (a file may span several blocks).
                whole = part.rechunk({1: -1})
                pieces.append(whole.map_blocks(reorder_block, perm, dtype=part.dtype))
            else:
                pieces.append(s1order.reorder(np.asarray(part), perm))
        data = da.concatenate(pieces, axis=0) if isinstance(var.data, da.Array) else np.concatenate(pieces)
        ds[name] = var.copy(data=data)
    return ds


def _as_datetime64_ns(block: np.ndarray) -> np.ndarray:
    return block.view("datetime64[ns]")


def _is_epoch_ns(var: xr.Variable) -> bool:
    return (var.dtype == np.int64 and var.attrs.get("units") == schema.TIME_UNITS
            and var.attrs.get("calendar", "proleptic_gregorian") in ("proleptic_gregorian", "standard", "gregorian"))


def _decode_epoch_ns(var: xr.Variable) -> xr.Variable:
    # xarray decodes times by reading the first and last value of every file to infer the dtype; for the
    # format's own units the dtype is known, so decode lazily and keep opening free of array reads.
    attrs = {k: v for k, v in var.attrs.items() if k not in ("units", "calendar")}
    encoding = {"units": var.attrs["units"], "calendar": var.attrs.get("calendar", "proleptic_gregorian"),
                "dtype": np.dtype("int64")}
    data = var.data.map_blocks(_as_datetime64_ns, dtype="datetime64[ns]")
    return xr.Variable(var.dims, data, attrs, encoding=encoding)


#: Files opened at once when ``threads`` is not given: remote opens wait on the network, local ones on disk.
LOCAL_THREADS, REMOTE_THREADS = 8, 32


def default_threads(paths: Sequence[str]) -> int:
    """Files opened at once by default for ``paths``: 32 when any is a URL, else 8."""
    return REMOTE_THREADS if any(is_url(p) for p in paths) else LOCAL_THREADS


def _open_all(paths: Sequence[str], threads: int | None, index: SplitIndex | None = None,
              **archive_kwargs: Any) -> list[ChunkFile]:
    """Open files (from the split index where it knows them, concurrently from disk otherwise)."""
    threads = default_threads(paths) if threads is None else threads
    found = [index.get(p, **archive_kwargs) if index is not None else None for p in paths]
    todo = [p for p, cf in zip(paths, found) if cf is None]

    def one(path: str) -> ChunkFile:
        if index is None:
            return open_chunk(path, **archive_kwargs)
        cf = open_chunk(path, keep_open=True, **archive_kwargs)
        try:
            index.put(cf)  # while its directory is in memory; never more than `threads` files open at once
        finally:
            cf.archive.release()
        return cf

    if len(todo) <= 1 or threads <= 1:
        opened = [one(p) for p in todo]
    else:
        with ThreadPoolExecutor(threads) as pool:
            opened = list(pool.map(one, todo))
    fresh = iter(opened)
    return [cf if cf is not None else next(fresh) for cf in found]


def _check_agreement(opened: Mapping[str, list[ChunkFile]], verify_grid: bool) -> None:
    mods = list(opened)
    ref = mods[0]
    for i in range(len(opened[ref])):
        a = opened[ref][i]
        for m in mods[1:]:
            b = opened[m][i]
            if not np.array_equal(a.samples, b.samples):
                diff: Any = np.flatnonzero(a.samples != b.samples) if len(a.samples) == len(b.samples) else []
                detail = (f"first difference at index {diff[0]}: {a.samples[diff[0]]!r} vs {b.samples[diff[0]]!r}"
                          if len(diff) else f"{len(a.samples)} vs {len(b.samples)} samples")
                raise ModalityMismatchError(f"{b.path} and {a.path} hold different sample ids ({detail})")
            if verify_grid:
                for name in ("crs", "x_", "y_"):
                    if name in a.group.arrays and name in b.group.arrays and not np.array_equal(a.read(name), b.read(name)):
                        raise ModalityMismatchError(f"{b.path} and {a.path} disagree on the pixel grid ({name!r})")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's cycle collector off while a split opens: the directories kept for the split index are
    hundreds of thousands of small objects, and collections that walk them again and again cost the first
    open of a 3,812-file split ~1.5 s (nothing opened here forms reference cycles worth collecting)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@_gc_paused()
def open_multimodal(
    sets: Sequence[ChunkSet],
    *,
    threads: int | None = None,
    verify_grid: bool = False,
    fix_s1_order: bool = True,
    use_index: bool = True,
    **archive_kwargs: Any,
) -> xr.Dataset:
    """One multi-modal Dataset over ``sets`` (see :func:`open_dataset`)."""
    if not sets:
        raise SchemaError("no chunk files to open")
    mods = [m for m in schema.CHUNK_MODALITIES if all(m in cs.paths for cs in sets)]
    if not mods:
        raise SchemaError("the chunk files share no modality")
    index = SplitIndex([cs.paths[m] for m in mods for cs in sets]) if use_index else None
    opened = {m: _open_all([cs.paths[m] for cs in sets], threads, index, **archive_kwargs) for m in mods}
    _check_agreement(opened, verify_grid)
    ref = schema.reference_modality(mods)
    out = modality_dataset(opened[ref], fix_s1_order=fix_s1_order)
    keep = [v for v in out.data_vars if v in _SHARED_VARS and (v != schema.CLOUD_VAR or ref != "S1GRD")]
    ds = out[keep]
    for m in mods:
        dsm = out if m == ref else modality_dataset(opened[m], fix_s1_order=fix_s1_order)
        band_dim = f"band_{m}"
        ds[m] = dsm[schema.BANDS_VAR].rename(band=band_dim).assign_attrs(units=schema.MODALITIES[m].units)
        for v in _PER_MODALITY_VARS:
            if v in dsm:
                ds[f"{v.rstrip('_')}_{m}"] = dsm[v]
    sizes = [f.n_samples for f in opened[ref]]
    ds = ds.assign_coords(
        file=("sample", np.repeat([cs.name for cs in sets], sizes)),
        split=("sample", np.repeat([cs.split or "" for cs in sets], sizes)),
    )
    ds.attrs.update(modalities=list(mods), title="SSL4EO-S12 v1.1")
    if index is not None:
        for cf in opened.get("S1GRD", []):
            if not isinstance(cf.s1_order, str):
                index.put_s1_order(cf, cf.s1_order, cf.s1_left)
        index.save(background=True)
    return ds


def open_dataset(
    source: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    modalities: Sequence[str] | None = None,
    split: str | None = None,
    engine: str = "ssl4eo",
    verify_grid: bool = False,
    fix_s1_order: bool = True,
    s2_offset: bool | None = None,
    reindex_seasonal: bool = False,
    distribution: str | None = None,
    use_index: bool = True,
    threads: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    cache_dir: str | None = None,
    cache_limit: int | str | None = None,
    subsets: Sequence[str] | None = None,
    index: str | os.PathLike | None = None,
    **archive_kwargs: Any,
) -> xr.Dataset:
    """Open SSL4EO-S12 v1.1 chunk files lazily (dask-backed).

    Parameters
    ----------
    source:
        * one ``*.zarr.zip`` (local path or URL): returns exactly what ``xr.open_zarr(path)`` gives under
          zarr-python 2.18: ``bands`` ``[sample, time, band, y, x]`` (S2 int16 DN+1000, S1 float16 dB, RGB
          uint8), ``cloud_mask`` uint8 ``[sample, time, y, x]``, ``center_lat``/``center_lon`` float64
          degrees ``[sample]``, ``crs`` int64 EPSG ``[sample]``, ``x_``/``y_`` float64 UTM metres,
          ``file_id``/``sample_id`` str and ``time_`` datetime64[ns] ``[sample, time]``;
        * a dataset root, a split folder (``ROOT/val``) or a list of files: one multi-modal Dataset
          concatenated along ``sample`` with one variable per modality (``S2L2A`` int16
          ``[sample, time, band_S2L2A, y, x]``, ``S1GRD`` float16 ``[sample, time, band_S1GRD, y, x]``, ...),
          ``cloud_mask``, the coordinates once, ``file_id_<MOD>``/``time_<MOD>`` per modality, and
          ``file``/``split`` coordinates along ``sample``.
    modalities:
        Modalities to open (default: every modality folder present). Giving it for a single file opens
        that file's siblings as a multi-modal Dataset.
    split:
        ``"train"`` or ``"val"`` when ``source`` is a dataset root (default: every split present).
    engine:
        ``"ssl4eo"`` (this library's reader, identical under zarr 2.18 and 3.x) or ``"zarr"`` (delegate a
        single file to ``xr.open_zarr`` through a ZipStore that works with the installed zarr-python).
    verify_grid:
        Also check that every modality holds the same ``crs``, ``x_`` and ``y_`` (reads those small arrays).
    fix_s1_order:
        Deliver S1GRD files published before the 2026-02-19 fix in ``time_`` order: their image data and
        ``file_id`` are reordered per location (one :class:`~ssl4eo_zarr.errors.S1OrderWarning` per file), so S1
        season ``t`` matches ``time_[t]`` and S2 season ``t``. Reads ``file_id``/``time_`` of each S1 file at
        open. ``False`` delivers files as stored. Files without the problem are unaffected.
    s2_offset:
        Multi-modal views: S2L1C/S2L2A as DN + 1000 (``True``, the default: the chunk-file convention) or with
        the offset removed (``False``, the shard convention), whichever distribution they come from. TerraMesh
        values are as its members store them (its published loader's; leave ``s2_offset`` unset).
    reindex_seasonal:
        Order each location's timestamps by month of year instead of date, as the published loader's option
        does (see :meth:`ssl4eo_zarr.accessor.SSL4EOAccessor.reindex_seasonal`; reads the acquisition times).
    distribution:
        ``"chunks"`` or ``"shards"`` where a root holds both (default: detected). Over shards the Dataset has
        the same layout (see :func:`ssl4eo_zarr.views.shards.open_shard_dataset`), DEM as ``[sample, band_DEM, y, x]``.
    use_index:
        Keep what opening local chunk files learns (zip directories, metadata, sample ids, S1 order) in a split
        index in ``$SSL4EO_ZARR_CACHE`` (see :mod:`ssl4eo_zarr.splitindex`), so reopening reads none of it;
        entries are checked against each file's size and modification time.
    threads:
        Files opened concurrently; default 8 local, 32 remote (a remote open waits on round trips).
    storage_options:
        Credentials and options for URLs (``{"headers": {...}}`` for plain HTTP(S); fsspec options otherwise).
    subsets:
        A TerraMesh root (found by its shard names): the subsets to open (``["ssl4eos12"]``, ``["majortom"]``;
        default both). One Dataset holds the modalities every selected subset has, with a ``subset``
        coordinate; see :func:`ssl4eo_zarr.views.shards.open_shard_dataset`.
    index:
        Shards: an index file of the source (``ssl4eo-zarr index``): opening reads no tar header (one version
        check per shard; a shard changed since is refused with :class:`~ssl4eo_zarr.shardindex.StaleIndexError`).
    cache_dir, cache_limit:
        Keep every chunk (or shard member part) read from a URL in this folder, CRC-checked when reused, so
        reading it again is local (:class:`~ssl4eo_zarr.storage.ByteCache`; ``cache_limit="200GB"`` evicts the
        least recently used beyond that). Refused for local sources.

    Raises
    ------
    DatasetNotFoundError, CorruptFileError, ModalityMismatchError
        Each message names the file at fault.
    """
    from ..storage.cache import check_cache_options

    check_cache_options(source, cache_dir, cache_limit)
    kwargs = dict(archive_kwargs, storage_options=storage_options)
    if cache_dir is not None:
        kwargs.update(cache_dir=os.fspath(cache_dir), cache_limit=cache_limit)
    single = isinstance(source, str | os.PathLike) and is_chunk_file(source) and not modalities
    if single:
        if engine == "zarr":
            from ..storage import zarr_open_kwargs, zarr_store

            return xr.open_zarr(zarr_store(str(os.fspath(source))), **zarr_open_kwargs())  # type: ignore[arg-type]
        if engine != "ssl4eo":
            raise ValueError(f"engine must be 'ssl4eo' or 'zarr', got {engine!r}")
        ds = modality_dataset([open_chunk(str(os.fspath(source)), **kwargs)],  # type: ignore[arg-type]
                              fix_s1_order=fix_s1_order)
        return ds.ssl4eo.reindex_seasonal() if reindex_seasonal else ds
    sets = resolve(source, split=split, modalities=modalities, storage_options=storage_options,
                   distribution=distribution, subsets=subsets)
    if sets and sets[0].kind == SHARDS:
        from ..shardindex import load_index
        from .shards import open_shard_dataset

        loaded = load_index(os.fspath(index), storage_options) if index is not None else None
        convention = schema.s2_convention(schema.get_corpus(sets[0].corpus), s2_offset)
        ds = open_shard_dataset(sets, s2_offset=convention, fix_s1_order=fix_s1_order, threads=threads,
                                explicit=modalities is not None, index=loaded, **kwargs)
        return ds.ssl4eo.reindex_seasonal() if reindex_seasonal else ds
    ds = open_multimodal(sets, threads=threads, verify_grid=verify_grid, fix_s1_order=fix_s1_order,
                         use_index=use_index, **kwargs)
    s2_offset = True if s2_offset is None else bool(s2_offset)
    if not s2_offset:
        for m in ds.attrs["modalities"]:
            if schema.MODALITIES[m].offset:
                ds[m] = (ds[m] - schema.MODALITIES[m].offset).assign_attrs(
                    units="DN (offset removed; reflectance = DN / 10000)")
    ds.attrs.update(distribution="chunks", s2_offset="DN + 1000" if s2_offset else "removed")
    return ds.ssl4eo.reindex_seasonal() if reindex_seasonal else ds


__all__ = ["ChunkFile", "modality_dataset", "open_chunk", "open_dataset", "open_multimodal", "s1_permutation",
           "times_ns", "warn_s1_order"]
