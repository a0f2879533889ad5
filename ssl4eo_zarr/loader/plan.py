"""Which samples each rank and worker reads, in which order, for which epoch: pure, seeded, no I/O.

The unit of work is a file: a chunk file (all its modalities) or a WebDataset shard (all its modalities).
Files are permuted with (seed, epoch), dealt to ranks so that every rank gets the same number (padding at
most one file per rank by wrapping around the permutation, or dropping the remainder with ``drop_last``),
then dealt to the rank's workers. Inside a worker:

* chunk files are pooled in groups of ``mix`` chunks whose samples are permuted together and cut into
  batches (:func:`worker_batches`);
* shards are read front to back through a shuffle buffer of ``buffer`` locations, as WebDataset does, but
  simulated here on location ids, so the order is known before anything is read (:func:`stream_batches`).

Batch counts are then equalised across ranks so that DistributedDataParallel never waits for a rank that
ran out. ``rows`` restricts each file to some of its locations (a selection from the metadata table).

Files of several subsets (TerraMesh's Major TOM and SSL4EO-S12 shards, which hold different modalities) are
streamed through one buffer per subset, so a batch never mixes subsets; the subsets' batches are interleaved
in the order their locations are read (every location once per epoch), or drawn with ``probs`` as the published
TerraMesh loader mixes them (a subset that runs out starts over, so the mixture holds for the whole epoch).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np


class RowSlice(Sequence[tuple[int, int]]):
    """Rows ``start:stop`` of a plan's file and location arrays, read as ``(file, location)`` tuples: a
    streamed TerraMesh worker plans 4.5 M locations, which as tuples cost ~0.5 GB and a second before its first
    batch; a batch makes its 64 tuples when it is read. Equal to any sequence of the same tuples."""

    __slots__ = ("_f", "_i", "_a", "_b")

    def __init__(self, files: np.ndarray, locations: np.ndarray, start: int = 0, stop: int | None = None):
        self._f, self._i, self._a = files, locations, start
        self._b = len(files) if stop is None else stop

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """File and location indices (int64 views, not copies)."""
        return self._f[self._a: self._b], self._i[self._a: self._b]

    def __len__(self) -> int:
        return self._b - self._a

    @overload
    def __getitem__(self, k: int) -> tuple[int, int]: ...
    @overload
    def __getitem__(self, k: slice) -> tuple[tuple[int, int], ...]: ...

    def __getitem__(self, k: int | slice) -> tuple[int, int] | tuple[tuple[int, int], ...]:
        if isinstance(k, slice):
            return tuple(self)[k]
        n = self._b - self._a
        if not -n <= k < n:
            raise IndexError(k)
        k = self._a + (k % n)
        return int(self._f[k]), int(self._i[k])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        f, i = self.arrays()
        return zip(f.tolist(), i.tolist())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))

    def __reduce__(self) -> tuple[Any, ...]:  # only this batch's rows travel, not the whole plan's arrays
        f, i = self.arrays()
        return RowSlice, (f.copy(), i.copy())


@dataclass(frozen=True)
class Batch:
    """One batch: ``rows`` is a sequence of ``(file index, sample index within file)`` (a tuple, or a
    :class:`RowSlice` of a streamed plan's arrays).

    ``whole_file`` is set when the batch is exactly one file in stored order, so it can be yielded
    without copying.
    """

    rows: Sequence[tuple[int, int]]
    whole_file: int | None = None

    @property
    def files(self) -> list[int]:
        seen: dict[int, None] = {}
        for f, _ in self.rows:
            seen.setdefault(f, None)
        return list(seen)


#: Keys that keep the random streams drawn from one (seed, epoch) apart from each other.
SALT_POOL, SALT_TIMESTAMP, SALT_STREAM, SALT_AUGMENT, SALT_MIX = 1, 2, 3, 4, 5

#: A streamed shuffle buffer starts with this many slots and grows by one every WARM_RAMP locations delivered.
WARM_START, WARM_RAMP = 8, 8


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A generator that depends on ``seed`` and ``keys`` only (same keys, same draws, in any process)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, *[int(k) & 0xFFFFFFFF for k in keys]])


Rows = Sequence[Sequence[int]] | None


def _rows_of(f: int, counts: Sequence[int], rows: Rows) -> Sequence[int]:
    return range(counts[f]) if rows is None else rows[f]


def files_for_rank(n_files: int, *, seed: int, epoch: int, rank: int, world_size: int, shuffle: bool,
                   drop_last: bool) -> list[int]:
    """File indices of ``rank`` for ``epoch``; every rank gets the same count."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    order = rng_for(seed, epoch).permutation(n_files) if shuffle else np.arange(n_files)
    if drop_last:
        per_rank = n_files // world_size
        order = order[: per_rank * world_size]
    else:
        per_rank = math.ceil(n_files / world_size)
        order = np.resize(order, per_rank * world_size) if n_files else order  # wraps around the permutation
    return [int(i) for i in order[rank::world_size]]


def files_for_worker(rank_files: Sequence[int], worker: int, num_workers: int) -> list[int]:
    """The worker's share of the rank's files (dealt round-robin)."""
    return list(rank_files[worker::num_workers])


def worker_batches(
    files: Sequence[int],
    counts: Sequence[int],
    *,
    batch_size: int | None,
    mix: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_last: bool,
    rows: Rows = None,
) -> list[Batch]:
    """Batches of one worker over its chunk ``files`` (``counts[f]`` samples in file ``f``)."""
    if batch_size is None and mix <= 1:
        out = []
        for f in files:
            keep = _rows_of(f, counts, rows)
            if len(keep):
                out.append(Batch(tuple((f, i) for i in keep), whole_file=f if len(keep) == counts[f] else None))
        return out
    mix = max(mix, 1)
    out = []
    stream: list[tuple[int, int]] = []
    for g in range(0, len(files), mix):
        group = list(files[g: g + mix])
        pooled = [(f, i) for f in group for i in _rows_of(f, counts, rows)]
        if shuffle:
            perm = rng_for(seed, epoch, SALT_POOL, g, *group).permutation(len(pooled))
            pooled = [pooled[p] for p in perm]
        if batch_size is None:  # mixing without a batch size: batches of one file's size, samples pooled
            start = 0
            for f in group:
                size = len(_rows_of(f, counts, rows))
                if size:
                    out.append(Batch(tuple(pooled[start: start + size])))
                start += size
        else:
            stream.extend(pooled)
    if batch_size is not None:
        out = _cut(stream, batch_size, drop_last)
    return out


def _cut(stream: Sequence[tuple[int, int]], batch_size: int, drop_last: bool) -> list[Batch]:
    out = [Batch(tuple(stream[i: i + batch_size])) for i in range(0, len(stream), batch_size)]
    if drop_last and out and len(out[-1].rows) < batch_size:
        out.pop()
    return out


def _cut_arrays(files: np.ndarray, locations: np.ndarray, batch_size: int, drop_last: bool) -> list[Batch]:
    """:func:`_cut` of a stream given as file and location arrays: batches of :class:`RowSlice` views."""
    n = len(files)
    stop = n - n % batch_size if drop_last else n
    # A TerraMesh worker makes ~140 k objects here, none in a cycle: the garbage collector's passes over a
    # growing heap cost 5 x the making (0.23 s of 0.28 s), so it waits until they are made.
    paused = gc.isenabled()
    gc.disable()
    try:
        return [Batch(RowSlice(files, locations, a, min(a + batch_size, n))) for a in range(0, stop, batch_size)]
    finally:
        if paused:
            gc.enable()


def stream_batches(
    files: Sequence[int],
    counts: Sequence[int],
    *,
    batch_size: int,
    buffer: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    drop_last: bool,
    rows: Rows = None,
    groups: Sequence[int] | None = None,
    probs: Sequence[float] | None = None,
    spread: int = 1,
) -> list[Batch]:
    """Batches of one worker that streams its shard ``files`` front to back through a shuffle buffer.

    ``spread``: files are read that many at once, their locations taken in turn (remote shards: the buffer
    fills from several responses at once; see :class:`~ssl4eo_zarr.loader.shard_reader.ShardReader`), whatever
    their subsets (``groups``).

    Locations enter a buffer of ``buffer`` slots in file order; once it is full, each new location pushes
    out a random one (WebDataset's ``shuffle(buffer)``); the rest leave in random order at the end. At most
    ``buffer`` locations have been read and not yet delivered at any time, which bounds the reader's memory.

    ``groups[f]`` is file ``f``'s subset: each subset gets its own buffer and batches (see the module
    docstring), interleaved by reading order, or drawn with ``probs[g]`` (indexed by subset).
    """
    if groups is not None and (len({groups[f] for f in files}) > 1 or probs is not None):
        return _grouped(files, counts, groups, probs, batch_size=batch_size, buffer=buffer, shuffle=shuffle,
                        seed=seed, epoch=epoch, drop_last=drop_last, rows=rows, spread=spread)
    fi, loc = _read_order(files, counts, rows, spread)
    order = _delivered(len(fi), files[0] if files else 0, buffer=buffer, shuffle=shuffle, seed=seed, epoch=epoch)
    return _cut_arrays(fi[order], loc[order], batch_size, drop_last)


def _read_order(files: Sequence[int], counts: Sequence[int], rows: Rows, spread: int) -> tuple[np.ndarray, np.ndarray]:
    """Locations of ``files`` in the order they are read, ``spread`` files at a time, one location of each in
    turn: file and location indices (int64 arrays; a TerraMesh worker reads millions, so no tuple per location)."""
    lens = np.array([counts[f] if rows is None else len(rows[f]) for f in files], dtype=np.int64)
    n = int(lens.sum())
    fi = np.repeat(np.asarray(files, dtype=np.int64), lens)
    place = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)  # index in its file's rows
    loc = place if rows is None or not n else \
        np.concatenate([np.asarray(rows[f], dtype=np.int64).reshape(-1) for f in files])
    if spread > 1 and n:
        # Each group of ``spread`` files as a [place, file] grid of flat positions, read row by row, places a
        # shorter file lacks left out: the order of a sort by (group, place, file), built instead of sorted
        # (a lexsort of a TerraMesh worker's 4.5 M locations took 0.35 s).
        starts = np.cumsum(lens) - lens
        grids = []
        for a in range(0, len(files), spread):
            held = lens[a: a + spread]
            place_of = np.arange(held.max(), dtype=np.int64)[:, None]
            grids.append((starts[None, a: a + spread] + place_of)[place_of < held[None, :]])
        turn = np.concatenate(grids)
        fi, loc = fi[turn], loc[turn]
    return fi, loc


def _spread(files: Sequence[int], counts: Sequence[int], rows: Rows, spread: int) -> list[tuple[int, int]]:
    """``(file, location)`` of ``files`` read ``spread`` files at a time, one location of each in turn."""
    fi, loc = _read_order(files, counts, rows, spread)
    return list(zip(fi.tolist(), loc.tolist()))


def _delivered(n: int, first_file: int, *, buffer: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The order in which ``n`` locations read one after the other leave the shuffle buffer of ``buffer`` slots
    of the stream that starts with ``first_file`` (positions in the read order, int64; in order without
    ``shuffle``)."""
    if not (shuffle and buffer > 1 and n):
        return np.arange(n, dtype=np.int64)
    rng = rng_for(seed, epoch, SALT_STREAM, first_file)
    # Warm-up: the buffer starts at WARM_START slots and grows by one every WARM_RAMP locations delivered, so the
    # first batch waits for ~batch_size + batch_size / WARM_RAMP locations, not batch_size + buffer (with 64 and
    # 64: 78 members read instead of 127). A full buffer's worth of mixing arrives a few batches later.
    pool: list[int] = []
    out: list[int] = []
    warm = 0
    while warm < n and len(pool) < buffer - 1:
        pool.append(warm)
        warm += 1
        if len(pool) >= WARM_START + len(out) // WARM_RAMP:
            j = int(rng.integers(len(pool)))
            pool[j], pool[-1] = pool[-1], pool[j]
            out.append(pool.pop())
    picks = rng.integers(0, buffer, size=n)
    # From here each location read goes into slot j (of buffer - 1, plus its own) and pushes out what the slot
    # held: j == buffer - 1 delivers the location just read. Step by step that is a loop over millions of
    # locations; it is the same as: each step delivers what the previous step with the same slot put there (or
    # the slot's content after the warm-up), and each slot ends holding what its last step put there.
    steps = np.arange(warm, n, dtype=np.int64)
    slot = picks[warm:]
    delivered = steps.copy()
    held = np.asarray(pool, dtype=np.int64)
    writes = np.flatnonzero(slot < buffer - 1)
    if len(writes):
        # Per slot, in time order; slots as the smallest integer type that holds them: numpy's stable sort of
        # 8- and 16-bit keys is a radix sort (8 x faster on a TerraMesh worker's millions).
        by_slot = writes[np.argsort(slot[writes].astype(np.min_scalar_type(buffer)), kind="stable")]
        slots = slot[by_slot]
        first = np.ones(len(by_slot), dtype=bool)
        first[1:] = slots[1:] != slots[:-1]
        before = np.empty_like(by_slot)
        before[1:] = steps[by_slot[:-1]]
        delivered[by_slot] = np.where(first, held[slots], before)
        last = np.ones(len(by_slot), dtype=bool)
        last[:-1] = first[1:]
        held[slots[last]] = steps[by_slot[last]]
    return np.concatenate([np.asarray(out, dtype=np.int64), delivered, held[rng.permutation(len(held))]])


def _grouped(files: Sequence[int], counts: Sequence[int], groups: Sequence[int], probs: Sequence[float] | None, *,
             batch_size: int, buffer: int, shuffle: bool, seed: int, epoch: int, drop_last: bool,
             rows: Rows, spread: int) -> list[Batch]:
    # The worker reads its files ``spread`` at a time whatever their subsets; each subset's buffer takes that
    # subset's locations in this order, and batches go out as soon as their locations have been read.
    fi, loc = _read_order(files, counts, rows, spread)
    subset = np.asarray(groups, dtype=np.int64)[fi] if len(fi) else np.zeros(0, dtype=np.int64)
    per: dict[int, list[Batch]] = {}
    last_read: dict[int, np.ndarray] = {}
    for g in sorted({groups[f] for f in files}):
        read_at = np.flatnonzero(subset == g)  # positions in the worker's read order
        first = next(f for f in files if groups[f] == g)
        read_at = read_at[_delivered(len(read_at), first, buffer=buffer, shuffle=shuffle, seed=seed, epoch=epoch)]
        per[g] = _cut_arrays(fi[read_at], loc[read_at], batch_size, drop_last)
        if probs is None and len(read_at):
            last_read[g] = np.maximum.reduceat(read_at, np.arange(0, len(read_at), batch_size))[: len(per[g])]
    total = sum(len(b) for b in per.values())
    if probs is None:  # every location once: deliver each batch as soon as its locations have been read
        everything = [b for g in per for b in per[g]]
        keys = np.concatenate([last_read[g] for g in per if per[g]]) if everything else np.zeros(0, np.int64)
        return [everything[k] for k in np.argsort(keys, kind="stable").tolist()]
    rng = rng_for(seed, epoch, SALT_MIX, *files[:1])
    live = [g for g in per if per[g]]
    weights = np.array([float(probs[g]) if g < len(probs) else 0.0 for g in live])
    if not live or weights.sum() <= 0:
        return [b for g in per for b in per[g]]
    picks = rng.choice(len(live), size=total, p=weights / weights.sum())
    taken = dict.fromkeys(live, 0)
    out = []
    for p in picks:
        g = live[int(p)]
        out.append(per[g][taken[g] % len(per[g])])  # a subset that ran out starts over: its share holds
        taken[g] += 1
    return out


def epoch_plan(
    counts: Sequence[int],
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    num_workers: int,
    batch_size: int | None,
    mix: int = 1,
    shuffle: bool = True,
    drop_last: bool = False,
    buffer: int | None = None,
    rows: Rows = None,
    groups: Sequence[int] | None = None,
    probs: Sequence[float] | None = None,
    only: int | None = None,
    spread: int = 1,
) -> list[list[Batch]]:
    """Batches of every worker of ``rank``: ``plan[w]`` is worker ``w``'s list.

    ``buffer`` set: the files are shards streamed through a shuffle buffer of that many locations
    (:func:`stream_batches`, ``batch_size`` required); otherwise chunk files (:func:`worker_batches`).
    Every rank of the same call gets the same total number of batches: ranks short of the longest one
    repeat their first batches (without ``drop_last``) or the longer ones drop their last batches (with it).

    ``only=w``: only worker ``w``'s list is planned (the others' come back empty), the same list as a whole
    plan gives it. Other ranks' and workers' batch counts are counted, never planned: a TerraMesh epoch is
    9 M samples, and every worker of every rank would otherwise simulate all of them before its first batch.
    """
    if buffer is not None and batch_size is None:
        raise ValueError("streaming shards needs a batch_size")
    stream_size = batch_size or 0
    n_files = len(counts)
    workers = max(num_workers, 1)

    def worker_files(r: int) -> list[list[int]]:
        return _worker_files(n_files, groups, seed=seed, epoch=epoch, rank=r, world_size=world_size,
                             workers=workers, shuffle=shuffle, drop_last=drop_last)

    def one(files: Sequence[int]) -> list[Batch]:
        if buffer is not None:
            return stream_batches(files, counts, batch_size=stream_size, buffer=buffer, shuffle=shuffle, seed=seed,
                                  epoch=epoch, drop_last=drop_last, rows=rows, groups=groups, probs=probs,
                                  spread=spread)
        return worker_batches(files, counts, batch_size=batch_size, mix=mix, shuffle=shuffle, seed=seed,
                              epoch=epoch, drop_last=drop_last, rows=rows)

    def count(files: Sequence[int]) -> int:
        return batch_count(files, counts, batch_size=batch_size, drop_last=drop_last, rows=rows,
                           groups=groups if buffer is not None else None)

    files_of = worker_files(rank)
    mine = [one(files) if only is None or w == only else [] for w, files in enumerate(files_of)]
    if world_size == 1:
        return mine
    sizes = [len(mine[w]) if only is None or w == only else count(f) for w, f in enumerate(files_of)]
    totals = [sum(sizes) if r == rank else sum(count(f) for f in worker_files(r)) for r in range(world_size)]
    target = min(totals) if drop_last else max(totals)
    have = totals[rank]
    if have < target and (only is None or only == 0):
        # Worker 0 repeats the rank's first batches (its own first): planned as far as the padding reaches.
        need = target - have
        for w in range(workers):
            if sum(len(m) for m in mine[:w]) >= need:
                break
            if not mine[w] and sizes[w]:
                mine[w] = one(files_of[w])
        pool = [b for w in mine for b in w]
        extra = [pool[i % len(pool)] for i in range(need)] if pool else []
        mine[0] = mine[0] + extra
    elif have > target:
        surplus = have - target
        for w in reversed(range(workers)):
            cut = min(surplus, sizes[w])
            mine[w] = mine[w][: len(mine[w]) - cut] if mine[w] else mine[w]
            surplus -= cut
    return mine


def _worker_files(n_files: int, groups: Sequence[int] | None, *, seed: int, epoch: int, rank: int, world_size: int,
                  workers: int, shuffle: bool, drop_last: bool) -> list[list[int]]:
    """Each worker's files of ``rank`` in reading order."""
    if groups is None:
        rank_files = files_for_rank(n_files, seed=seed, epoch=epoch, rank=rank, world_size=world_size,
                                    shuffle=shuffle, drop_last=drop_last)
        return [files_for_worker(rank_files, w, workers) for w in range(workers)]
    # Subsets are dealt each on its own, so every rank and worker gets its share of each, interleaved.
    per_group: list[list[list[int]]] = []
    for g in sorted(set(groups)):
        members = [f for f in range(n_files) if groups[f] == g]
        picked = files_for_rank(len(members), seed=seed + 7919 * g, epoch=epoch, rank=rank, world_size=world_size,
                                shuffle=shuffle, drop_last=drop_last)
        per_group.append([[members[i] for i in files_for_worker(picked, w, workers)] for w in range(workers)])
    return [_interleave([by_worker[w] for by_worker in per_group]) for w in range(workers)]


def epoch_length(counts: Sequence[int], *, seed: int, epoch: int, rank: int, world_size: int, num_workers: int,
                 batch_size: int | None, drop_last: bool = False, buffer: int | None = None, rows: Rows = None,
                 groups: Sequence[int] | None = None, shuffle: bool = True) -> int:
    """Batches :func:`epoch_plan` gives ``rank`` (all its workers), counted without planning them."""
    workers = max(num_workers, 1)

    def total(r: int) -> int:
        return sum(batch_count(f, counts, batch_size=batch_size, drop_last=drop_last, rows=rows,
                               groups=groups if buffer is not None else None)
                   for f in _worker_files(len(counts), groups, seed=seed, epoch=epoch, rank=r, world_size=world_size,
                                          workers=workers, shuffle=shuffle, drop_last=drop_last))

    if world_size == 1:
        return total(rank)
    totals = [total(r) for r in range(world_size)]
    if totals[rank] == 0:  # nothing to repeat: a rank without batches stays without
        return 0
    return min(totals) if drop_last else max(totals)


def batch_count(files: Sequence[int], counts: Sequence[int], *, batch_size: int | None, drop_last: bool,
                rows: Rows = None, groups: Sequence[int] | None = None) -> int:
    """How many batches :func:`stream_batches` (``groups``: its subsets) or :func:`worker_batches` make of
    ``files``, without making them."""
    def cut(n: int) -> int:
        if not batch_size:
            return 0
        return n // batch_size if drop_last else -(-n // batch_size)

    sizes = [len(_rows_of(f, counts, rows)) for f in files]
    if batch_size is None:  # chunk files: one batch per file that keeps a location
        return sum(1 for n in sizes if n)
    if groups is not None:  # a subset's buffer cuts its own batches; the mixture (probs) draws as many in all
        per: dict[int, int] = {}
        for f, n in zip(files, sizes):
            per[groups[f]] = per.get(groups[f], 0) + n
        return sum(cut(n) for n in per.values())
    return cut(sum(sizes))


def _interleave(lists: Sequence[Sequence[int]]) -> list[int]:
    """The lists merged so that each is spread evenly over the result (by its items' fractional position)."""
    keyed = [((k + 0.5) / len(items), j, x) for j, items in enumerate(lists) for k, x in enumerate(items)]
    return [x for _pos, _j, x in sorted(keyed)]


def delivery_order(per_worker: Sequence[int]) -> list[int]:
    """Worker ids in the order a ``torch.utils.data.DataLoader`` delivers their batches.

    The DataLoader asks workers round-robin and skips exhausted ones, so with ``per_worker[w]`` batches
    in worker ``w`` the k-th delivered batch comes from ``delivery_order(...)[k]``.
    """
    left = list(per_worker)
    order = []
    w = 0
    while any(left):
        if left[w]:
            order.append(w)
            left[w] -= 1
        w = (w + 1) % len(left)
    return order
