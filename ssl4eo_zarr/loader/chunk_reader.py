"""Planned rows of chunk files -> batches. Each chunk file's needed timestamp chunks are decoded once (all its
modalities, straight from the zip into shared memory) and released after the last batch that uses them.
Remote chunk sets are fetched ahead on a background thread while the current one decodes."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from .. import schema
from ..errors import CorruptFileError, SSL4EOError
from ..storage import is_url, prefetch
from .common import ReadSpec, RowMeta, delivered_shape, metadata_batch, offset_delta, seasonal_order
from .decode import ArchiveCache, Decoded, alloc, decode_set, needed_members, open_set
from .plan import Batch
from .pool import Lease


class _Arenas:
    """Memory that fetched members land in, kept per process across epochs: reading into pages that are already
    mapped is what makes remote reads cheap (a new buffer of hundreds of MB faults in every page)."""

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            fits = [a for a in self._free if len(a) >= nbytes]
            if fits:
                arena = min(fits, key=len)
                self._free = [a for a in self._free if a is not arena]
                return arena
        # Slack: the next set is a little larger or smaller. Not zero-filled: fetches overwrite what they use.
        return np.empty(nbytes + nbytes // 16, dtype=np.uint8)

    def give(self, arena: np.ndarray, *, keep: int) -> None:
        with self._lock:
            self._free.append(arena)
            self._free.sort(key=len, reverse=True)
            del self._free[keep:]


_FETCH_ARENAS = _Arenas()


class ChunkReader:
    """Batches of one worker over chunk files (see :class:`~ssl4eo_zarr.loader.ChunkDataset`)."""

    def __init__(self, spec: ReadSpec, batches: Sequence[Batch], *, shared: bool):
        self.spec = spec
        self.shared = shared
        self.last_use: dict[int, int] = {}
        self.order: list[int] = []  # files in the order they are first decoded
        for bi, batch in enumerate(batches):
            for f in batch.files:
                if f not in self.last_use:
                    self.order.append(f)
                self.last_use[f] = bi
        self.position = {f: k for k, f in enumerate(self.order)}
        # Room for the files of the batches being assembled plus those fetched ahead, per modality.
        sets_open = max(4, 2 * spec.mix) + spec.prefetch
        self.cache = ArchiveCache(capacity=sets_open * len(spec.modalities), archive_kwargs=spec.archive_kwargs)
        self._ahead: dict[int, Future] = {}
        self._fetcher: ThreadPoolExecutor | None = None
        self._arena_of: dict[int, np.ndarray] = {}
        self.decoded: dict[int, Decoded | None] = {}
        self.picks: dict[int, np.ndarray] = {}
        self.orders: dict[int, np.ndarray] = {}
        self.skipped: list[str] = []
        self._free: dict[tuple, list[torch.Tensor]] = {}  # decoded chunks no batch holds: reused, never sent

    def _private(self, shape: Sequence[int], dtype: np.dtype) -> torch.Tensor:
        """A reused worker-private buffer (already mapped: blosc decodes into it about twice as fast)."""
        free = self._free.get((tuple(shape), np.dtype(dtype)))
        return free.pop() if free else alloc(shape, dtype, shared=False)

    # -- decoding ------------------------------------------------------------------------------------------------
    def _pick(self, f: int) -> np.ndarray:
        if f not in self.picks:
            self.picks[f] = self.spec.random_t(f)
        return self.picks[f]

    def _timestamps(self, f: int) -> list[int]:
        """Stored timestamps decoded for file ``f`` (before the S1 order fix)."""
        spec = self.spec
        if spec.reindex_seasonal:
            return list(range(schema.N_TIMESTAMPS))  # the order differs per location: read every season
        if spec.timestamps == "random":
            return sorted(set(self._pick(f).tolist()))
        return spec.listed()

    def _s1_perm(self, files) -> np.ndarray | None:
        return self.cache.s1_permutation(files["S1GRD"]) if self.spec.fix_s1_order and "S1GRD" in files else None

    # -- fetching ahead (remote files) ---------------------------------------------------------------------------
    def _take_arena(self, f: int, nbytes: int) -> memoryview:
        arena = _FETCH_ARENAS.take(nbytes)
        self._arena_of[f] = arena
        return arena.data[:nbytes]

    def _recycle(self, f: int) -> None:
        """After file ``f`` was decoded: forget what was fetched for it and reuse its memory."""
        for p in self.spec.sets[f].paths.values():
            cf = self.cache.peek(p)
            if cf is not None:
                cf.archive.forget_prefetched()
        arena = self._arena_of.pop(f, None)
        if arena is not None:
            _FETCH_ARENAS.give(arena, keep=self.spec.prefetch + 1)

    def _fetch(self, f: int) -> None:
        """Open the files of chunk set ``f`` and fetch the members its decode will read."""
        files = open_set(self.spec.sets[f].paths, self.cache)
        ts = self._timestamps(f)
        wanted = needed_members(files, ts, with_cloud=self.spec.return_metadata, s1_perm=self._s1_perm(files))
        prefetch([(cf.archive, names) for cf, names in wanted], into=lambda nbytes: self._take_arena(f, nbytes))

    def _fetch_ahead(self, f: int) -> None:
        """Start fetching the next ``prefetch`` sets after ``f``, and wait for the fetch of ``f``.

        A set nobody fetched ahead (the first of a worker's epoch) is fetched the same way, all its members at
        once, instead of one request per chunk as the decode asks: with a few sets per worker per epoch (a
        validation split) that first set is a good part of the epoch."""
        remote = self.spec.prefetch > 0 and any(is_url(p) for p in self.spec.sets[f].paths.values())
        if remote:
            if self._fetcher is None:
                self._fetcher = ThreadPoolExecutor(1, thread_name_prefix="ssl4eo-prefetch")
            start = self.position.get(f, -1) + 1
            for nxt in [f, *self.order[start: start + self.spec.prefetch]]:  # in order: one fetching thread
                if nxt not in self._ahead and nxt not in self.decoded:
                    self._ahead[nxt] = self._fetcher.submit(self._fetch, nxt)
        pending = self._ahead.pop(f, None)
        if pending is not None:
            try:
                pending.result()
            except Exception:  # noqa: BLE001 - the decode reads the same members and reports the real error
                pass

    def close(self) -> None:
        """Stop fetching ahead: queued fetches are cancelled, one in flight is waited for."""
        if self._fetcher is not None:
            self._fetcher.shutdown(wait=True, cancel_futures=True)
            self._fetcher = None
        self._ahead.clear()

    def _decode(self, f: int, allocate=None) -> Decoded:
        spec = self.spec
        self._fetch_ahead(f)
        ts = self._timestamps(f)
        try:
            files = open_set(spec.sets[f].paths, self.cache)
            perm = self._s1_perm(files)
            dec = decode_set(files, ts, shared=self.shared, with_cloud=spec.return_metadata,
                             with_meta=spec.return_metadata or spec.reindex_seasonal, scratch=self.cache.scratch,
                             s1_perm=perm, allocate=allocate)
        finally:
            self._recycle(f)
        for mod, tensor in dec.images.items():
            delta = offset_delta(schema.get_modality(mod), True, spec.s2_offset)
            if delta:
                tensor.add_(delta)
        dec.meta["_ts"] = np.asarray(ts)
        if spec.reindex_seasonal:
            ref = schema.reference_modality(spec.modalities)
            self.orders[f] = seasonal_order(dec.meta[f"time_{ref}"])
        return dec

    def _decode_or_skip(self, f: int, allocate=None) -> Decoded | None:
        try:
            return self._decode(f, allocate)
        except SSL4EOError as exc:
            if self.spec.on_error == "raise":
                raise
            warnings.warn(f"skipping chunk {self.spec.sets[f].name}: {exc}", RuntimeWarning, stacklevel=3)
            self.skipped.append(str(exc))
            return None

    # -- batches -------------------------------------------------------------------------------------------------
    def _held(self, f: int) -> Decoded:
        """The decoded file ``f`` of a row being assembled (rows of skipped files were left out before)."""
        dec = self.decoded[f]
        if dec is None:
            raise RuntimeError(f"file {f} was skipped but a row of it is being assembled")
        return dec

    def _zero_copy(self, batch: Batch) -> bool:
        return batch.whole_file is not None and self.spec.timestamps != "random" and not self.spec.reindex_seasonal

    def batch(self, batch: Batch, lease: Lease | None = None) -> dict[str, Any] | None:
        """The batch of ``batch.rows``, or ``None`` when every file it needs was skipped. Its tensors come from
        ``lease`` (a reused arena) when given; decoded chunks that only feed copies use private buffers."""
        new = lease.alloc if lease is not None else (lambda shape, dtype: alloc(shape, dtype, shared=self.shared))
        for f in batch.files:
            if f not in self.decoded:
                # A whole-chunk batch is the decoded chunk itself: decode it where the batch will live.
                self.decoded[f] = self._decode_or_skip(f, new if self._zero_copy(batch) else self._private)
        rows = [(f, i) for f, i in batch.rows if self.decoded[f] is not None]
        return self._assemble(batch, rows, new) if rows else None

    def release(self, bi: int, batch: Batch) -> None:
        """Drop the files whose last batch was ``bi``."""
        for f in batch.files:
            if self.last_use.get(f) == bi:
                dec = self.decoded.pop(f, None)
                if dec is not None and not self._zero_copy(batch):  # the batch holds copies: buffers are free
                    for t in [*dec.images.values(), *([dec.cloud] if dec.cloud is not None else [])]:
                        free = self._free.setdefault((tuple(t.shape), t.numpy().dtype), [])
                        if len(free) < 2:
                            free.append(t)
                for p in self.spec.sets[f].paths.values():
                    self.cache.drop(p)

    def _stored_slot(self, f: int, i: int, k: int) -> int:
        """Index into the decoded timestamps of file ``f`` for delivered season ``k`` of location ``i``."""
        spec = self.spec
        if spec.timestamps == "random":
            t = int(self._pick(f)[i])
        else:
            t = spec.listed()[k]
        if spec.reindex_seasonal:
            t = int(self.orders[f][i, t])
        return int(np.flatnonzero(self._held(f).meta["_ts"] == t)[0])

    def _assemble(self, batch: Batch, rows: list[tuple[int, int]], new) -> dict[str, Any]:
        spec = self.spec
        zero_copy = self._zero_copy(batch) and len(rows) == len(batch.rows)
        out: dict[str, Any] = {}
        keys = list(spec.modalities) + ([schema.CLOUD_VAR] if spec.return_metadata else [])
        n_t = 1 if spec.single else len(spec.listed())
        for key in keys:
            def source(f: int, key: str = key) -> torch.Tensor | None:
                dec = self._held(f)
                return dec.images[key] if key != schema.CLOUD_VAR else dec.cloud

            if zero_copy and batch.whole_file is not None:
                t = source(batch.whole_file)
                if t is not None:
                    out[key] = t[0] if spec.single else t.transpose(0, 1)  # a view of time-major storage
                continue
            proto = source(rows[0][0])
            if proto is None:
                continue
            dst = new(delivered_shape(spec, False, len(rows), n_t, proto.shape[2:]), proto.numpy().dtype)
            for j, (f, i) in enumerate(rows):
                src = source(f)
                if src is None:
                    raise CorruptFileError(spec.sets[f].name, f"{key!r} is missing in this file but not in others")
                if spec.single:
                    dst[j].copy_(src[self._stored_slot(f, i, 0), i])
                else:
                    for k in range(n_t):
                        dst[j, k].copy_(src[self._stored_slot(f, i, k), i])
            out[key] = dst
        if spec.return_metadata:
            out.update(metadata_batch(spec, [self._row_meta(f, i) for f, i in rows]))
        return out

    def _row_meta(self, f: int, i: int) -> RowMeta:
        spec = self.spec
        meta = self._held(f).meta
        times = {}
        for mod in spec.modalities:
            t = meta[f"time_{mod}"][i]
            times[mod] = t[self.orders[f][i]] if spec.reindex_seasonal else t
        return RowMeta(sample=str(meta["sample"][i]), file=spec.sets[f].name, center_lat=float(meta["center_lat"][i]),
                       center_lon=float(meta["center_lon"][i]), crs=int(meta["crs"][i]), times=times,
                       timestamp=int(self._pick(f)[i]) if spec.timestamps == "random" else None)
