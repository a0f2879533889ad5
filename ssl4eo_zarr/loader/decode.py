"""The loader's hot path: read timestamp chunks of one chunk set straight from the zip and decode them with
numcodecs into preallocated tensors (shared memory inside DataLoader workers). No xarray, no dask."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import schema
from ..chunkfile import ChunkFile, open_chunk, s1_plan, times_ns, warn_s1_order
from ..errors import CorruptFileError, ModalityMismatchError
from ..s1order import misordered_rows
from ..storage import ScratchBuffer, thread_scratch
from ..zarrv2 import read_array, read_chunk

_TORCH_DTYPES = {np.dtype("int16"): torch.int16, np.dtype("float16"): torch.float16, np.dtype("uint8"): torch.uint8,
                 np.dtype("float32"): torch.float32, np.dtype("int64"): torch.int64, np.dtype("float64"): torch.float64}


def torch_dtype(dtype: Any) -> torch.dtype:
    """The torch dtype that holds numpy ``dtype`` bit for bit: the published six, and any other torch has
    (uint16, int32, int8, bool, ...: a grown dataset's members may carry them). ``TypeError`` naming the dtype
    where torch has none (strings, datetimes, big-endian values are read native first)."""
    dt = np.dtype(dtype)
    found = _TORCH_DTYPES.get(dt)
    if found is not None:
        return found
    try:
        return torch.from_numpy(np.empty(0, dtype=dt.newbyteorder("="))).dtype
    except TypeError:
        raise TypeError(f"members of dtype {dt} have no torch dtype to be delivered in") from None


def alloc(shape: Sequence[int], dtype: np.dtype, *, shared: bool) -> torch.Tensor:
    """An uninitialised tensor; in shared memory when ``shared`` so that handing it from a DataLoader worker
    to the main process moves a file descriptor instead of copying the data. Shared memory comes mapped in
    (see :func:`populate`): every byte of it is about to be decoded into."""
    tdtype = torch_dtype(dtype)
    if not shared:
        return torch.empty(tuple(shape), dtype=tdtype)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    try:
        storage = torch.UntypedStorage._new_shared(max(nbytes, 1))
    except (AttributeError, RuntimeError):  # older/newer torch without the private constructor
        tensor = torch.empty(tuple(shape), dtype=tdtype).share_memory_()
        populate(tensor.untyped_storage())
        return tensor
    populate(storage)
    return torch.empty(0, dtype=tdtype).set_(storage, 0, tuple(shape))  # type: ignore[call-overload]


#: ``MADV_POPULATE_WRITE`` (Linux 5.14+): map a range in, writable, in one call.
_MADV_POPULATE_WRITE = 23
_PAGE = 4096
_madvise: Any = None


def populate(storage: torch.UntypedStorage) -> bool:
    """Map fresh shared memory in with one ``madvise(MADV_POPULATE_WRITE)`` instead of a page fault per 4 KiB
    while blosc decodes into it (0.44 against 0.55 s/GB measured on a 2-core VM). ``False`` where the call is
    not available (another OS, an older kernel): the pages then fault in as they are written."""
    global _madvise
    if _madvise is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.madvise
            fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            fn.restype = ctypes.c_int
            _madvise = fn
        except (OSError, AttributeError, TypeError):  # no C library to load by name (Windows)
            _madvise = False
    if not _madvise or storage.nbytes() < _PAGE:
        return False
    start = storage.data_ptr() & ~(_PAGE - 1)
    end = storage.data_ptr() + storage.nbytes()
    if _madvise(start, end - start, _MADV_POPULATE_WRITE) != 0:
        import ctypes
        import errno

        if ctypes.get_errno() == errno.EINVAL:  # before Linux 5.14, or another OS: do not ask again
            _madvise = False
        return False  # otherwise (out of memory): the pages fault in as written, as without the call
    return True


class ArchiveCache:
    """Open chunk files of one worker, least recently used evicted; archives stay open between reads.
    Thread-safe: a prefetching thread opens the next files while the worker decodes."""

    def __init__(self, capacity: int = 32, archive_kwargs: Mapping[str, Any] | None = None):
        self.capacity = capacity
        self.archive_kwargs = dict(archive_kwargs or {})
        self._lock = threading.RLock()
        self._files: OrderedDict[str, ChunkFile] = OrderedDict()
        self._perms: dict[str, np.ndarray | None] = {}

    @property
    def scratch(self) -> ScratchBuffer:
        """The reusable buffer for compressed chunk bytes of the calling thread (kept across epochs)."""
        return thread_scratch()

    def get(self, path: str) -> ChunkFile:
        with self._lock:
            cf = self._files.pop(path, None)
            if cf is None:
                cf = open_chunk(path, keep_open=True, **self.archive_kwargs)
            self._files[path] = cf
            while len(self._files) > self.capacity:
                _, old = self._files.popitem(last=False)
                old.archive.close()
            return cf

    def peek(self, path: str) -> ChunkFile | None:
        """The open file of ``path``, if any, without opening it."""
        with self._lock:
            return self._files.get(path)

    def s1_permutation(self, cf: ChunkFile) -> np.ndarray | None:
        """:func:`~ssl4eo_zarr.views.chunkfiles.s1_permutation` of an open S1 file, computed once per worker."""
        with self._lock:
            if cf.path not in self._perms:
                perm, left = s1_plan(cf)
                self._perms[cf.path] = perm
                warn_s1_order(cf.path, len(misordered_rows(perm)), left)
            return self._perms[cf.path]

    def drop(self, path: str) -> None:
        with self._lock:
            cf = self._files.pop(path, None)
        if cf is not None:
            cf.archive.close()


@dataclass
class Decoded:
    """One chunk set decoded for the timestamps asked for.

    ``images[mod]``: ``[T, n, C, H, W]`` in the stored dtype (time-major: each timestamp chunk decodes into
    one contiguous slab). ``cloud``: uint8 ``[T, n, H, W]`` or ``None``. ``meta``: per-sample metadata
    arrays (``sample`` str ``[n]``, ``center_lat``/``center_lon`` float64 ``[n]``, ``crs`` int64 ``[n]``,
    ``time_`` int64 ns ``[n, 4]`` per modality under ``time_<MOD>``).
    """

    path: str
    images: dict[str, torch.Tensor]
    cloud: torch.Tensor | None
    meta: dict[str, np.ndarray]
    n: int


def open_set(paths: Mapping[str, str], cache: ArchiveCache) -> dict[str, ChunkFile]:
    """Open every modality file of a chunk set and check they hold the same sample ids."""
    files = {m: cache.get(p) for m, p in paths.items()}
    ref_mod = next(iter(files))
    ref = files[ref_mod]
    for m, cf in files.items():
        if m != ref_mod and not np.array_equal(cf.samples, ref.samples):
            raise ModalityMismatchError(f"{cf.path} and {ref.path} hold different sample ids")
    return files


def _timestamp_chunks(meta, t: int) -> list[tuple[int, ...]]:
    """Chunk indices holding timestamp ``t`` of a ``[sample, time, ...]`` array (one in the published layout)."""
    rest = (0,) * (len(meta.shape) - 2)
    return [(s, t, *rest) for s in range(meta.grid[0])]


def _read_timestamp(cf: ChunkFile, meta, t: int, dst: np.ndarray, scratch: ScratchBuffer | None) -> None:
    """Timestamp ``t`` of a ``[sample, time, ...]`` array into ``dst`` ``[sample, ...]``: decoded in place when
    the file has one chunk per timestamp (the published layout), else chunk by chunk and copied."""
    n = meta.shape[0]
    chunks = _timestamp_chunks(meta, t)
    if meta.chunks == (n, 1, *meta.shape[2:]):
        read_chunk(cf.archive, meta, chunks[0], out=dst.reshape(meta.chunks), scratch=scratch)
        return
    for index in chunks:
        block = read_chunk(cf.archive, meta, index, scratch=scratch)
        lo = index[0] * meta.chunks[0]
        hi = min(lo + meta.chunks[0], n)
        dst[lo:hi] = block[: hi - lo, 0]


def _read_reordered(cf: ChunkFile, meta, timestamps: Sequence[int], perm: np.ndarray, arr: np.ndarray,
                    scratch: ScratchBuffer | None) -> None:
    """``arr[k, s] = stored[s, perm[s, timestamps[k]]]`` reading each needed stored timestamp once."""
    wanted = perm[:, list(timestamps)]  # [n, K] stored timestamp of each output slot
    stored = stored_timestamps("S1GRD", timestamps, perm)
    tmp = np.empty((len(stored), *arr.shape[1:]), dtype=arr.dtype)
    for j, t in enumerate(stored):
        _read_timestamp(cf, meta, t, tmp[j], scratch)
    slot = np.searchsorted(stored, wanted)
    rows = np.arange(arr.shape[1])
    for k in range(len(timestamps)):
        arr[k] = tmp[slot[:, k], rows]


def stored_timestamps(mod: str, timestamps: Sequence[int], s1_perm: np.ndarray | None) -> list[int]:
    """Stored timestamps of modality ``mod`` that :func:`decode_set` reads to deliver ``timestamps``."""
    if mod == "S1GRD" and s1_perm is not None:
        return sorted(set(s1_perm[:, list(timestamps)].ravel().tolist()))
    return list(timestamps)


def needed_members(files: Mapping[str, ChunkFile], timestamps: Sequence[int], *, with_cloud: bool,
                   s1_perm: np.ndarray | None = None) -> list[tuple[ChunkFile, list[str]]]:
    """The zip members :func:`decode_set` reads with the same arguments, per file (to fetch them ahead)."""
    out = []
    for mod, cf in files.items():
        meta = cf.array(schema.BANDS_VAR)
        keys = [meta.chunk_key(i) for t in stored_timestamps(mod, timestamps, s1_perm) for i in _timestamp_chunks(meta, t)]
        if with_cloud and mod == _cloud_source(files):
            cm = cf.array(schema.CLOUD_VAR)
            keys += [cm.chunk_key(i) for t in timestamps for i in _timestamp_chunks(cm, t)]
        out.append((cf, keys))
    return out


def _cloud_source(files: Mapping[str, ChunkFile]) -> str | None:
    """The modality whose file holds the cloud mask the loader delivers."""
    return next((m for m in schema.CLOUD_MODALITIES if m in files and schema.CLOUD_VAR in files[m].group.arrays), None)


def decode_set(
    files: Mapping[str, ChunkFile],
    timestamps: Sequence[int],
    *,
    shared: bool,
    with_cloud: bool,
    with_meta: bool,
    scratch: ScratchBuffer | None = None,
    s1_perm: np.ndarray | None = None,
    allocate: Callable[[Sequence[int], np.dtype], torch.Tensor] | None = None,
) -> Decoded:
    """Decode the ``bands`` chunks of ``timestamps`` of each modality (and the cloud mask) into new tensors.

    ``s1_perm`` (int64 ``[sample, time]``, see :mod:`ssl4eo_zarr.s1order`) reorders S1GRD so that timestamp
    ``t`` of sample ``s`` comes from stored timestamp ``s1_perm[s, t]``; only the stored chunks it needs are read.
    ``allocate(shape, dtype)`` provides the output tensors (reused buffers); default: new ones.
    """
    if allocate is None:
        def allocate(shape, dtype):
            return alloc(shape, dtype, shared=shared)
    ref_path = next(iter(files.values())).path
    images: dict[str, torch.Tensor] = {}
    n = 0
    for mod, cf in files.items():
        meta = cf.array(schema.BANDS_VAR)
        n, _t, c, h, w = meta.shape
        expected = schema.get_modality(mod)
        if meta.dtype != expected.dtype or c != expected.n_bands:
            raise CorruptFileError(cf.path, f"'bands' is {meta.dtype} with {c} bands, expected {expected.dtype} with "
                                            f"{expected.n_bands} for {mod}")
        out = allocate((len(timestamps), n, c, h, w), meta.dtype)
        arr = out.numpy()
        if mod == "S1GRD" and s1_perm is not None:
            _read_reordered(cf, meta, timestamps, s1_perm, arr, scratch)
        else:
            for k, t in enumerate(timestamps):
                _read_timestamp(cf, meta, t, arr[k], scratch)
        images[mod] = out
    cloud = None
    if with_cloud:
        source = _cloud_source(files)
        if source is not None:
            src = files[source]
            cm = src.array(schema.CLOUD_VAR)
            cloud = allocate((len(timestamps), n, *cm.shape[2:]), cm.dtype)
            carr = cloud.numpy()
            for k, t in enumerate(timestamps):
                _read_timestamp(src, cm, t, carr[k], scratch)
    meta_out: dict[str, np.ndarray] = {}
    if with_meta:
        ref = files[schema.reference_modality(files)]
        meta_out["sample"] = ref.samples.astype(str)
        for name in ("center_lat", "center_lon", "crs"):
            meta_out[name] = read_array(ref.archive, ref.array(name))
        for mod, cf in files.items():
            meta_out[f"time_{mod}"] = times_ns(cf)
    return Decoded(ref_path, images, cloud, meta_out, n)
