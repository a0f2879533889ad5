"""Reused shared-memory buffers: workers decode into memory that is already mapped once the main process has
let go of the batch that used it.

Blosc decodes about twice as fast into memory that is already mapped than into fresh pages, so each worker
keeps ``slots`` arenas (one per batch in flight). A batch is made in one arena (its tensors in the arena's
segments, the first batch's own memory: see :meth:`Lease.alloc`) and travels to the main process
as a :class:`LeasedBatch`; when every tensor of it has been garbage-collected there (or pinned and dropped),
a finalizer marks the arena free in a small shared table, and the worker may fill it again. A batch the user
still holds is therefore never overwritten.

When every arena is taken, a worker waits a little for one to come back: a training loop holds the batch it
works on until the next one arrives, so a worker that is ahead (its finished batch queued) finds both arenas
taken for a moment, and fresh memory there would cost a whole set of page faults (and a third set's worth of
RSS) for nothing. The wait is bounded by twice the time since its previous batch; when it runs out the
consumer is keeping batches, so the worker allocates fresh memory (logged at debug level) and stops waiting
until it next finds an arena free. It never waits forever, and never in the consuming process itself (with
``num_workers=0`` the arenas can only come back from the thread that would be waiting).

While the buffers warm up, a worker whose free slots are all still empty and whose arenas are all out with
batches first waits for an arena to come back, as long as all its waiting so far stays below what making a new
arena was measured to cost (rent or buy): a consumer that keeps up drops each batch a few milliseconds after it
arrives, so a loader-bound worker warms up a single arena (one batch of fresh shared memory instead of two);
behind a slower consumer a wait runs past a quarter of that cost, and the second arena is made then. Fresh pages
are the warm-up's main cost: 0.4-0.6 s/GB to map in, up to 9 s/GB on VMs whose host takes freed memory back.

The shared table holds, per (worker process, slot), the generation of the lease (0 = free); a release only
frees the lease it was made for, so a late or repeated release can never free an arena that was leased again.
Rows belong to worker *processes*, not worker ids: each process claims a free row (one whose process has
ended) under a file lock, so two DataLoader iterators over one dataset (two sets of workers with the same ids)
never touch each other's leases.

What keeps a batch's arena from being reused: anything that shares its memory. A delivered batch's tensors are
re-based, in the process that consumes them, onto storages of their own whose last reference is what hands the
arena back (:func:`_own`): every tensor of the batch at any depth of the dicts, lists and tuples a transform
returns, every view, slice, ``detach()``, ``tensor.numpy()`` array, ``torch.from_numpy`` round trip or storage
taken from one keeps that storage, and so the arena, alive. Only copies (``clone()``, ``np.array(t)``,
``.to("cuda")``) do not need it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .decode import alloc

log = logging.getLogger(__name__)

#: Workers a table has room for (DataLoader workers of one dataset).
MAX_WORKERS = 256


def _unlink(path: str, pid: int) -> None:
    if os.getpid() == pid:  # forked workers inherit the finalizer: only the maker removes the file
        with contextlib.suppress(OSError):
            os.unlink(path)


class LeaseTable:
    """The shared table of arena leases, int64 ``[MAX_WORKERS, slots + 1]`` (``tensor``; column 0 is the pid
    of the process that owns the row), and the lock file under which processes claim rows. Made in the main
    process before the DataLoader starts its workers; pickles (both parts travel to spawned workers)."""

    def __init__(self, slots: int):
        self.tensor = torch.zeros((MAX_WORKERS, slots + 1), dtype=torch.int64).share_memory_()
        fd, self.lock_path = tempfile.mkstemp(prefix="ssl4eo-leases-", suffix=".lock")
        os.close(fd)
        weakref.finalize(self, _unlink, self.lock_path, os.getpid())
        #: This process's pools, per worker id (see :func:`worker_pool`): they live as long as the table, so a
        #: dataset that is dropped takes its arenas with it.
        self.pools: dict[tuple[int, int], BufferPool] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "lock_path": self.lock_path}  # pools are per process: never sent

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, pools={})

    @property
    def slots(self) -> int:
        return int(self.tensor.shape[1]) - 1

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # Windows: workers are spawned one after another there; claim without a lock
            yield
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def claim_row(self, pid: int) -> int:
        """A row for process ``pid``, its leases all free: a row no live process owns (one whose process
        ended is taken over; the batches still held from it keep their memory, which is not ours)."""
        with self._locked():
            owners = self.tensor[:, 0].tolist()
            for row, owner in enumerate(owners):
                if owner == 0 or not _alive(int(owner)):
                    self.tensor[row, 1:] = 0
                    self.tensor[row, 0] = pid
                    return row
        raise RuntimeError(f"more than {MAX_WORKERS} live worker processes share one ChunkDataset's buffers; "
                           "pass buffer_slots=0 or use fewer workers")


def lease_table(slots: int) -> LeaseTable:
    """A new :class:`LeaseTable` with ``slots`` arenas per worker process."""
    return LeaseTable(slots)


class _Release:
    """Frees one lease (called once, from the finalizer of the batch's :class:`_Claim`, in the consuming process)."""

    def __init__(self, table: torch.Tensor, worker: int, slot: int, pid: int, generation: int):
        self.table, self.worker, self.slot, self.pid, self.generation = table, worker, slot, pid, generation

    def __call__(self) -> None:
        row = self.table[self.worker]
        if int(row[0]) == self.pid and int(row[1 + self.slot]) == self.generation:
            row[1 + self.slot] = 0


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """Every tensor in ``obj``, at any depth of dicts, lists and tuples (what a transform may return)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in tensors_in(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors_in(v)]
    return []


class _Claim:
    """One delivered batch's hold on its arena: when the last storage re-based onto it is freed (see
    :func:`_own`), this object goes and its finalizer hands the arena back."""

    __slots__ = ("__weakref__",)


class _Bytes:
    """numpy's view of an arena storage's bytes (``__array_interface__``) that holds the storage mapped and the
    batch's :class:`_Claim`; ``torch.from_numpy`` of it gives a storage whose deleter drops this object."""

    def __init__(self, storage: torch.UntypedStorage, claim: _Claim):
        self.storage, self.claim = storage, claim
        self.__array_interface__ = {"shape": (storage.nbytes(),), "typestr": "|u1", "version": 3,
                                    "data": (storage.data_ptr(), False)}


def _own(obj: Any, claim: _Claim, storages: dict[int, torch.UntypedStorage]) -> Any:
    """``obj`` with every tensor (at any depth of dicts, lists and tuples) re-based onto a storage that only this
    batch's tensors share (``storages``: arena pointer -> new storage, so tensors that shared memory still do).

    torch keeps one storage object per shared mapping and hands it to every batch that arrives in the same arena,
    and ``detach()``, ``numpy()`` or a view hold that storage, not the tensor a finalizer could watch: tracking
    tensor objects let kept arrays be overwritten. A storage made by ``torch.from_numpy`` over the same bytes is
    this batch's alone; everything made from these tensors keeps it, and it keeps ``claim``.
    """
    if isinstance(obj, torch.Tensor):
        old = obj.untyped_storage()
        if old.nbytes() == 0 or obj.device.type != "cpu":
            return obj
        new = storages.get(old.data_ptr())
        if new is None:
            new = storages[old.data_ptr()] = torch.from_numpy(np.asarray(_Bytes(old, claim))).untyped_storage()
        out = torch.empty(0, dtype=obj.dtype)
        return out.set_(new, obj.storage_offset(), obj.shape, obj.stride())
    if isinstance(obj, Mapping):
        return {k: _own(v, claim, storages) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_own(v, claim, storages) for v in obj]
    if isinstance(obj, tuple):
        values = [_own(v, claim, storages) for v in obj]
        return type(obj)(*values) if hasattr(obj, "_fields") else type(obj)(values)
    return obj


def _claim(data: Mapping[str, Any], token: tuple | None) -> dict[str, Any]:
    """``data`` re-based for the consuming process (see :func:`_own`), the lease freed when none of it is left."""
    if token is None or not tensors_in(data):
        return dict(data)
    claim = _Claim()
    weakref.finalize(claim, _Release(*token))
    return {k: _own(v, claim, {}) for k, v in data.items()}


#: The arenas' memory as last received, per (worker pid, slot), kept mapped in the consuming process: torch
#: maps shared memory it receives again only when no live storage holds that mapping, so without this every
#: batch would arrive in a new mapping whose pages the consumer (pin thread, copy to the GPU) faults in anew.
_MAPPED: dict[tuple[int, int], list[torch.UntypedStorage]] = {}
#: Off only to measure what it saves (benchmarks/loader.py).
KEEP_MAPPED = True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: Kept mappings registered with CUDA (page-locked in place), data_ptr -> bytes; see :func:`pin_in_place`.
_REGISTERED: dict[int, int] = {}


#: ``cudaHostRegisterPortable``: pinned for every device's context, not only the current one's (a feeder may
#: copy to ``cuda:1`` while ``cuda:0`` is current).
_PORTABLE = 1


def _unregister(storages: Sequence[torch.UntypedStorage]) -> None:
    """Undo :func:`pin_in_place` for mappings about to be dropped, after every copy from them has finished on
    every device (copies may go to any GPU)."""
    doomed = [s for s in storages if s.data_ptr() in _REGISTERED]
    if not doomed:
        return
    for device in range(torch.cuda.device_count()):
        torch.cuda.synchronize(device)
    for s in doomed:
        torch.cuda.cudart().cudaHostUnregister(s.data_ptr())
        del _REGISTERED[s.data_ptr()]


def release_ended_workers() -> int:
    """Drop the kept mappings of arenas whose worker process has ended, unpinning those :func:`pin_in_place`
    page-locked; returns how many arenas were let go. Runs by itself when a new worker's first batch arrives;
    :meth:`~ssl4eo_zarr.loader.DeviceFeeder.synchronize` runs it too, so pinned memory does not outlive an
    epoch's workers when no new ones follow."""
    ended = [k for k in _MAPPED if not _alive(k[0])]
    for key in ended:
        _unregister(_MAPPED.pop(key))
    return len(ended)


def kept_mappings() -> dict[tuple[int, int], int]:
    """``{(worker pid, slot): bytes}`` of the arena mappings the consuming process keeps (see :data:`_MAPPED`)."""
    return {key: sum(s.nbytes() for s in storages) for key, storages in _MAPPED.items()}


def _keep_mapped(data: Mapping[str, Any], pid: int, slot: int) -> None:
    if not any(key[0] == pid for key in _MAPPED):  # a new worker: forget the arenas of workers that ended
        release_ended_workers()
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage() for t in tensors_in(data)}
    old = _MAPPED.get((pid, slot), [])
    _MAPPED[pid, slot] = list(storages.values())
    _unregister([s for s in old if s.data_ptr() not in storages])  # the arena grew: its old mapping goes


def pin_in_place(batch: Mapping[str, Any]) -> bool:
    """Register the arena a received :class:`LeasedBatch` lives in with CUDA, once per mapping, so that its
    tensors are page-locked where they are: copies to the GPU then run asynchronously at pinned speed with no
    pinned copy first. ``False`` (nothing done) for batches in fresh memory or when CUDA refuses.

    The caller must keep the batch alive until its copies have finished (the arena returns to its worker when
    the batch is gone); :class:`~ssl4eo_zarr.loader.DeviceFeeder` does.
    """
    token = getattr(batch, "_token", None)
    if token is None or not KEEP_MAPPED or not torch.cuda.is_available():
        return False
    kept = _MAPPED.get((token[3], token[2]), [])
    ptrs = {t.untyped_storage().data_ptr() for t in tensors_in(batch)}
    if not ptrs or not ptrs <= {s.data_ptr() for s in kept}:
        return False
    for s in kept:
        if s.data_ptr() not in _REGISTERED:
            if int(torch.cuda.cudart().cudaHostRegister(s.data_ptr(), s.nbytes(), _PORTABLE)) != 0:
                return False
            _REGISTERED[s.data_ptr()] = s.nbytes()
    return True


def _rebuild(data: dict[str, Any], token: tuple | None) -> LeasedBatch:
    if token is not None and KEEP_MAPPED:
        _table, _worker, slot, pid, _generation = token
        _keep_mapped(data, pid, slot)
    return LeasedBatch(data, token, track=True)  # in the process that received the batch: it owns it now


class LeasedBatch(dict):
    """A batch dict whose tensors live in a reused arena of a worker; behaves as a plain ``dict``.

    The arena is handed back when nothing in the consuming process shares its memory any more: no tensor of the
    batch (at any depth of nested dicts, lists and tuples), no view, ``detach()``, ``numpy()`` array or storage
    made from one (see the module docstring). ``pin_memory()`` gives a plain dict of pinned copies.

    ``track=True`` (the process that consumes the batch) re-bases the tensors onto storages of this batch's own
    that hand the lease back when they are freed; the tensors passed in are not the batch's after that.
    """

    def __init__(self, data: Mapping[str, Any] | None = None, token: tuple | None = None, *, track: bool = False):
        super().__init__(_claim(data or {}, token) if track else (data or {}))
        self._token = token

    def __reduce__(self):
        return _rebuild, (dict(self), self._token)

    def __copy__(self) -> LeasedBatch:
        # The DataLoader copies batches in the worker (default_convert); the copy carries the lease, and holds
        # the same tensors, so it needs no tracking of its own.
        return LeasedBatch(self, self._token)

    def pin_memory(self) -> dict[str, Any]:
        """Pinned copies (the DataLoader's ``pin_memory=True``), nested values too; the shared originals are then
        released."""
        return {k: _pinned(v) for k, v in self.items()}


def _pinned(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.pin_memory()
    if isinstance(obj, Mapping):
        return {k: _pinned(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_pinned(v) for v in obj) if not hasattr(obj, "_fields") else type(obj)(*map(_pinned, obj))
    return obj


class Lease:
    """Memory for one batch: tensors carved from the segments of a free arena, or fresh ones when none was free."""

    def __init__(self, pool: BufferPool, slot: int | None, generation: int):
        self.pool, self.slot, self.generation = pool, slot, generation
        self._taken: set[int] = set()  # segments of the slot this lease has carved a tensor from

    @property
    def token(self) -> tuple | None:
        if self.slot is None:
            return None
        return (self.pool.table, self.pool.row, self.slot, self.pool.pid, self.generation)

    def alloc(self, shape: Sequence[int], dtype: np.dtype) -> torch.Tensor:
        """An uninitialised tensor ``shape`` of ``dtype`` (shared memory in DataLoader workers).

        Each tensor of a lease lives in a segment of its slot's arena: the smallest one this lease has not used
        yet that is large enough. When none is, the tensor gets fresh memory, which becomes a segment (in place
        of an unused one that was too small), so the first batch a slot carries becomes its arena: nothing is
        allocated twice while the buffers warm up, batches of a steady shape find every segment mapped already,
        and batches that differ (subsets with other modalities, a last partial batch) share the segments
        by size instead of growing the arena.
        """
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if self.slot is None:
            return alloc(shape, dtype, shared=self.pool.shared)
        segments = self.pool.arenas[self.slot]
        free = [k for k in range(len(segments)) if k not in self._taken]
        fits = [k for k in free if segments[k].nbytes() >= nbytes]
        if fits:
            k = min(fits, key=lambda j: segments[j].nbytes())
            self._taken.add(k)
            tensor = alloc((0,), dtype, shared=False)
            return tensor.set_(segments[k], 0, tuple(shape))  # type: ignore[call-overload]
        if free:  # the largest unused one is too small: drop it first (it may be the peak otherwise)
            k = max(free, key=lambda j: segments[j].nbytes())
            segments[k] = _EMPTY
        else:
            k = len(segments)
            segments.append(_EMPTY)
        started = time.perf_counter()
        tensor = alloc(shape, dtype, shared=self.pool.shared)
        self.pool.made_bytes += nbytes
        self.pool.made_s += time.perf_counter() - started
        segments[k] = tensor.untyped_storage()
        self._taken.add(k)
        return tensor


_EMPTY = torch.UntypedStorage(0)


class BufferPool:
    """The arenas of one worker process (see the module docstring)."""

    def __init__(self, table: LeaseTable, worker: int, *, shared: bool):
        self.table = table.tensor
        self.worker = worker
        self.shared = shared
        self.pid = os.getpid()
        self.slots = table.slots
        #: Per slot, the memory its batches are carved from (see :meth:`Lease.alloc`).
        self.arenas: list[list[torch.UntypedStorage]] = [[] for _ in range(self.slots)]
        # Generations start at random per process, so a stale release from a process that had this row before
        # cannot match a lease of ours (both counting from 1 would).
        self._generation = int.from_bytes(os.urandom(4), "little") << 24
        #: Whether to wait for an arena when all are held (off after a wait ran out, on again once one is free).
        self.patient = shared
        self.waits = self.timeouts = 0
        #: Waits for an arena to come back instead of making a new one in an empty slot, and the seconds they
        #: took in all (``rented``: since the last arena was made); bytes of new arena segments made and the
        #: seconds that took (see :meth:`acquire`).
        self.arena_waits = 0
        self.arena_wait_s = self.rented = 0.0
        self.made_bytes = 0
        self.made_s = 0.0
        self._last_acquire: float | None = None
        #: This process's row of the table (not the worker id: another iterator's workers have the same ids).
        self.row = table.claim_row(self.pid)

    def _arena_cost(self) -> float:
        """Seconds a new arena is expected to cost: the largest arena's bytes at the rate its segments were made
        (allocated and mapped in)."""
        if not self.made_bytes:
            return 0.0
        size = max(sum(s.nbytes() for s in segments) for segments in self.arenas)
        return size * self.made_s / self.made_bytes

    def _free_slot(self, *, mapped: bool = False) -> int | None:
        """A free slot, one that holds an arena first (``mapped``: only such a one)."""
        row = self.table[self.row].tolist()
        free = [slot for slot in range(self.slots) if int(row[1 + slot]) == 0]
        with_arena = [slot for slot in free if self.arenas[slot]]
        if with_arena or mapped:
            return with_arena[0] if with_arena else None
        return free[0] if free else None

    def _wait_for_slot(self, budget: float, *, mapped: bool = False) -> int | None:
        deadline = time.monotonic() + budget
        delay = 2e-4
        while time.monotonic() < deadline:
            time.sleep(delay)
            # An arena a consumer hands back with its next batch takes milliseconds: poll finely for those.
            delay = min(delay * 2, 1e-3 if mapped else 5e-3)
            slot = self._free_slot(mapped=mapped)
            if slot is not None:
                return slot
        return None

    def acquire(self) -> Lease:
        """A lease on a free arena (its segments grown to the largest tensors seen), or on fresh memory when none
        is free (after a bounded wait in a worker process, see the module docstring)."""
        now = time.monotonic()
        # The time since the previous batch bounds the wait: the consumer hands an arena back when it receives
        # its next batch, and a worker that is ahead is handed its next task at the consumer's pace, so that time
        # is one step of whichever is slower (twice it, for the step that takes longer than the last).
        since = now - self._last_acquire if self._last_acquire is not None else 0.0
        budget = min(max(2 * since, 0.02), 2.0) if self._last_acquire is not None else 0.0
        slot = self._free_slot()
        if slot is not None and not self.arenas[slot] and self.shared and since:
            # Only empty slots are free, and the arenas are out with batches. A consumer that keeps up drops a
            # batch as soon as the next one arrives: waiting for that arena can be cheaper than making a new one
            # (fresh pages cost 0.4-0.6 s/GB to map in, and up to 9 s/GB on VMs whose host takes freed memory
            # back). Rent or buy: wait while all the waiting so far stays below what making the arena is
            # measured to cost, then make it. A loader-bound worker warms up one arena instead of two. A single
            # wait longer than a quarter of that cost means a consumer that holds its batches (a training step
            # slower than the loader): it will need the arena, so make it then.
            cost = self._arena_cost()
            budget = min(cost - self.rented, cost / 4, 2 * since, 2.0)
            if budget > 0:
                self.arena_waits += 1
                started = time.monotonic()
                held = self._wait_for_slot(budget, mapped=True)
                waited = time.monotonic() - started
                self.rented += waited
                self.arena_wait_s += waited
                slot = held if held is not None else self._free_slot()
            if slot is not None and not self.arenas[slot]:
                self.rented = 0.0  # bought: the next empty slot is a decision of its own
        if slot is not None:
            self.patient = self.shared
        elif self.patient and budget:
            self.waits += 1
            slot = self._wait_for_slot(budget)
            if slot is None:
                self.timeouts += 1
                self.patient = False
        self._last_acquire = time.monotonic()
        if slot is None:
            log.debug("worker %d: all %d buffer slots are held by batches still in use; allocating fresh memory",
                      self.worker, self.slots)
            return Lease(self, None, 0)
        self._generation += 1
        self.table[self.row, 1 + slot] = self._generation
        return Lease(self, slot, self._generation)

    def release(self, lease: Lease) -> None:
        """Hand back a lease whose batch was never delivered."""
        if lease.slot is not None and int(self.table[self.row, 1 + lease.slot]) == lease.generation:
            self.table[self.row, 1 + lease.slot] = 0


def worker_pool(table: LeaseTable, worker: int, *, shared: bool) -> BufferPool:
    """The pool of this process for ``worker`` (kept on ``table`` across epochs, so persistent workers reuse their
    arenas; gone with the table, so datasets made and dropped do not pile up arenas)."""
    key = (os.getpid(), worker)
    pool = table.pools.get(key)
    if pool is None:
        for old in [k for k in table.pools if k[0] != os.getpid()]:  # inherited through fork: not ours
            del table.pools[old]
        pool = table.pools[key] = BufferPool(table, worker, shared=shared)
    return pool


__all__ = ["BufferPool", "Lease", "LeaseTable", "LeasedBatch", "kept_mappings", "lease_table", "pin_in_place",
           "release_ended_workers", "tensors_in", "worker_pool"]
