"""Planned rows of WebDataset shards -> batches. Each worker streams its shards front to back (all modalities
in lockstep), keeps the compressed members the plan needs later (at most the shuffle buffer) and decodes each
member straight into its slot of the batch's shared-memory tensors."""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any, cast

import numpy as np
import torch

from .. import schema
from ..chunkfile import member_s1_order
from ..errors import CorruptFileError, DamagedShardError, ModalityMismatchError, SSL4EOError
from ..memberparts import TimeSelect
from ..shardfile import ShardStream, bands_meta, member_metadata, member_modality, member_times, open_member_group, read_time
from ..storage import is_url, thread_scratch
from .common import ReadSpec, RowMeta, by_parts, delivered_shape, metadata_batch, offset_delta, seasonal_order
from .decode import alloc
from .plan import Batch, RowSlice
from .pool import Lease

Member = tuple[str, dict[str, bytes]]  # (key, modality -> member bytes)


class ShardReader:
    """Batches of one worker over shards (see :class:`~ssl4eo_zarr.loader.ChunkDataset`)."""

    def __init__(self, spec: ReadSpec, batches: Sequence[Batch], *, shared: bool):
        self.spec = spec
        self.shared = shared
        self.uses = RowUses(batches, spec.counts)
        self.last = self.uses.last
        self.streams: dict[int, dict[str, ShardStream]] = {}
        self.held: dict[tuple[int, int], Member] = {}
        self.picks: dict[int, np.ndarray] = {}
        self.skipped: list[str] = []
        #: Shards whose headers were found damaged this epoch: the rest of each is skipped (on_error="skip").
        self.dead: dict[int, DamagedShardError] = {}
        self.scratch = thread_scratch()  # members lie in memory: chunks are read as views of them
        self.selects: dict[frozenset[int], TimeSelect] = {}
        #: Modalities read by parts (none unless the dataset chose a ``jump``).
        self.partial = {m for m in spec.modalities if by_parts(m, spec.fix_s1_order)} if spec.jump is not None \
            else set()
        # Remote sets are read on threads of their own, a few members ahead: round trips hide behind decoding,
        # and the sets a plan reads at once (``spread``) move at once.
        self.remote = [any(is_url(p) for p in cs.paths.values()) for cs in spec.sets]
        self.aheads: dict[int, _Ahead] = {}
        # Remote sets not yet begun, in the order the epoch first uses them: their read-ahead starts while fewer
        # than ``spread`` run, not when a row of theirs is first asked for (a set's first member costs a few
        # round trips, so sets begun on demand started one after the other, each after the previous one's first
        # member: 0.45 s apart by parts at 50 ms).
        self.coming = [s for s in self.uses.order if self.remote[s]][::-1]
        self.begun: set[int] = set()
        # The first batch first: no remote set reads past the members it uses (``warm``: the last location of
        # each set it uses) until a row past those is asked for (a DataLoader worker asks for the next batch's
        # as soon as it has handed the first over), and streams ask for those members in their first request
        # (see ShardStream): nothing else competes for the link. Where the link makes it cheap
        # (``spec.warm_span``), a stream read by parts reads them whole, in one request, not each by parts.
        self.warm: dict[int, int] = {}
        if batches:
            for s, i in batches[0].rows:
                if self.remote[s]:
                    self.warm[s] = max(self.warm.get(s, -1), i)
        self.first = threading.Event()
        if not self.warm:
            self.first.set()

    # -- reading members in shard order ----------------------------------------------------------------------
    def _new_streams(self, s: int) -> dict[str, ShardStream]:
        paths = self.spec.sets[s].paths
        known = self.spec.members
        # Before the first batch: streams read by parts take its members in one span where the link makes that
        # cheap, streams read whole ask for them in their first response (see ShardStream).
        warm = self.warm.get(s, -1) if not self.first.is_set() else -1
        return {m: ShardStream(paths[m], known.get(paths[m]), jump=self.spec.jump if m in self.partial else None,
                               front=self.spec.first_front,
                               warm=warm if m not in self.partial or self.spec.warm_span else -1,
                               member_bytes=self.spec.member_bytes.get(m, 0), **self.spec.archive_kwargs)
                for m in self.spec.modalities if m in paths}

    def _wait_first(self, stop: threading.Event) -> bool:
        """Wait until a row past the first batch's is asked for (``False``: ``stop`` was set meanwhile)."""
        while not self.first.wait(0.05):
            if stop.is_set():
                return False
        return True

    def _open(self, s: int) -> dict[str, ShardStream]:
        self._close(s)
        self.streams[s] = self._new_streams(s)
        return self.streams[s]

    def _fetch_ahead(self, s: int, i: int) -> None:
        """Location ``i`` of remote set ``s`` (and the used ones before it) from the set's read-ahead thread."""
        if i > self.warm.get(s, -1):  # a row past the first batch's is wanted now: nothing is held back
            self.first.set()
        ahead = self.aheads.get(s)
        if ahead is None or ahead.at >= i:  # not started, or past it (a location used again): from the start
            self._close(s)
            ahead = self._begin(s, max(i, self.last.get(s, i)))
        self._fill_spread()
        try:
            while ahead.at < i:
                j, member = ahead.get()
                self.held[(s, j)] = member
            if i >= self.last.get(s, -1):
                ahead.finish()  # the end check of a set read to its end: a longer shard is reported here
                del self.aheads[s]
                self._fill_spread()
        except BaseException:
            self.aheads.pop(s, None)
            ahead.close()
            raise

    def _begin(self, s: int, upto: int) -> _Ahead:
        self.begun.add(s)
        ahead = self.aheads[s] = _Ahead(self, s, upto, _Ahead.DEPTH_PARTS if self.partial else _Ahead.DEPTH)
        return ahead

    def _fill_spread(self) -> None:
        """Begin the next sets the epoch uses while fewer than ``spread`` are read."""
        while len(self.aheads) < self.spec.spread and self.coming:
            s = self.coming.pop()
            if s not in self.begun:
                self._begin(s, self.last[s])

    def _close(self, s: int) -> None:
        ahead = self.aheads.pop(s, None)
        if ahead is not None:
            ahead.close()
        streams = self.streams.pop(s, {})
        try:
            if streams and all(st.index >= self.spec.counts[s] - 1 for st in streams.values()):
                self._check_ends(s, streams)
        finally:
            for stream in streams.values():
                stream.close()

    def _check_ends(self, s: int, streams: dict[str, ShardStream]) -> None:
        """After a set's last location every modality's shard must end too (one header each): a shard holding
        more locations than the others loses them silently otherwise. A cached shard's index is then complete."""
        longer = []
        for st in streams.values():
            try:
                if st.advance() is not None:
                    longer.append(st.path)
            except CorruptFileError as exc:  # damaged after the last location: it held more, unreadable
                if self.spec.on_error == "raise":
                    raise
                if str(exc) not in self.skipped:
                    self.skipped.append(str(exc))
                    warnings.warn(f"after the last location of {self.spec.sets[s].name}: {exc}", RuntimeWarning,
                                  stacklevel=3)
        if longer:
            message = (f"{', '.join(longer)} hold(s) more than the {self.spec.counts[s]} members of "
                       f"{self.spec.sets[s].name} that {self.spec.counted} said: the shards of all modalities must "
                       "hold the same locations, the published ones as many as published")
            if self.spec.on_error == "raise":
                raise ModalityMismatchError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            self.skipped.append(message)

    def _advance(self, s: int, streams: dict[str, ShardStream]) -> int:
        mods = list(streams)
        members = {m: streams[m].advance() for m in mods}
        first = streams[mods[0]]
        lead = members[mods[0]]
        if lead is None:
            raise CorruptFileError(first.path, f"the shard ends after {first.index + 1} members; {self.spec.counted} "
                                               f"said {self.spec.counts[s]} (the file changed or is truncated)")
        for m in mods[1:]:
            other = members[m]
            if other is None or other.key != lead.key:
                raise ModalityMismatchError(
                    f"shards diverge at location {first.index}: {first.path} holds {lead.key!r}, "
                    f"{streams[m].path} holds {None if other is None else other.key!r}; the shards of all modalities "
                    "must hold the same keys in the same order")
        return first.index

    def _read_rows(self, s: int, streams: dict[str, ShardStream], upto: int) -> Iterator[tuple[int, Member]]:
        """From the streams' place on, every member of set ``s`` still to be used, up to location ``upto``."""
        while True:
            j = self._advance(s, streams)
            if j == upto or self.uses.get(s, j):
                current = next(iter(streams.values())).member
                if current is None:
                    raise CorruptFileError(self.spec.sets[s].name, "shard stream lost its place")
                nxt = self.uses.get(s, j + 1)
                yield j, (current.key, {m: st.read(self._select(s, j, m), self._select(s, j + 1, m) if nxt else None)
                                        for m, st in streams.items()})
            if j >= upto:
                return

    def _fetch(self, s: int, i: int) -> Member:
        row = (s, i)
        if row not in self.held and self.remote[s]:
            self._fetch_ahead(s, i)
        elif row not in self.held:
            streams = self.streams.get(s)
            if streams is None or next(iter(streams.values())).index >= i:
                streams = self._open(s)
            for j, member in self._read_rows(s, streams, i):
                self.held[(s, j)] = member
            if i >= self.last.get(s, -1):
                self._close(s)
        member = self.held[row]
        if self.uses.use(s, i) <= 0:
            del self.held[row]
        return member

    def _select(self, s: int, i: int, m: str) -> TimeSelect | None:
        """The time chunks location ``i`` of set ``s`` needs of modality ``m`` (``None``: all, read whole)."""
        spec = self.spec
        if m not in self.partial:
            return None
        wanted = frozenset([int(self._pick(s)[i])] if spec.timestamps == "random" else spec.listed())
        found = self.selects.get(wanted)
        if found is None:
            masks = wanted if spec.return_metadata else frozenset()
            found = self.selects[wanted] = TimeSelect({schema.BANDS_VAR: wanted, schema.CLOUD_VAR: masks},
                                                      spec.n_timestamps)
        return found

    # -- batches -----------------------------------------------------------------------------------------------
    def _pick(self, s: int) -> np.ndarray:
        if s not in self.picks:
            self.picks[s] = self.spec.random_t(s)
        return self.picks[s]

    def batch(self, batch: Batch, lease: Lease | None = None) -> dict[str, Any] | None:
        """The batch of ``batch.rows`` (tensors from ``lease``, a reused arena, when given); rows whose members
        are damaged are skipped with ``on_error="skip"``."""
        spec = self.spec
        self._new = lease.alloc if lease is not None else (lambda shape, dtype: alloc(shape, dtype, shared=self.shared))
        out: dict[str, np.ndarray] = {}
        tensors: dict[str, torch.Tensor] = {}
        metas: list[RowMeta] = []
        good: list[int] = []
        n = len(batch.rows)
        for j, (s, i) in enumerate(batch.rows):
            if s in self.dead:
                self.skipped.append(f"{spec.sets[s].name} location {i}: {self.dead[s]}")
                continue
            try:
                key, datas = self._fetch(s, i)
                metas.append(self._fill(j, n, s, i, key, datas, out, tensors))
                good.append(j)
            except DamagedShardError as exc:
                if spec.on_error == "raise":
                    raise
                # Nothing after a damaged header can be located: the rest of this shard goes, said once.
                self.dead[s] = exc
                lost = self.uses.left_from(s, i)
                warnings.warn(f"skipping the rest of {exc.path}: {exc.problem}; {lost} locations of this worker's "
                              "epoch lost", RuntimeWarning, stacklevel=2)
                self.skipped.append(str(exc))
                self._close(s)
            except SSL4EOError as exc:
                if spec.on_error == "raise":
                    raise
                warnings.warn(f"skipping a location of {spec.sets[s].name}: {exc}", RuntimeWarning, stacklevel=2)
                self.skipped.append(str(exc))
        if not good:
            return None
        result: dict[str, Any] = dict(tensors)
        if len(good) < n:  # damaged rows left out
            result = {k: v[good].share_memory_() if self.shared else v[good] for k, v in tensors.items()}
        if spec.return_metadata:
            result.update(metadata_batch(spec, metas))
        shard = spec.sets[batch.rows[0][0]]
        if shard.corpus != schema.SSL4EO_S12.name:  # which statistics normalise it, and where it came from
            result.update(dataset=shard.corpus, subset=shard.subset or "")
        return result

    def _times_order(self, times: np.ndarray) -> np.ndarray:
        return seasonal_order(times) if self.spec.reindex_seasonal and len(times) > 1 else np.arange(len(times))

    def _fill(self, j: int, n: int, s: int, i: int, key: str, datas: dict[str, bytes], out: dict[str, np.ndarray],
              tensors: dict[str, torch.Tensor]) -> RowMeta:
        spec = self.spec
        shard = spec.sets[s]
        opened = {m: open_member_group(data, f"{shard.paths[m]}/{key}.zarr.zip") for m, data in datas.items()}
        ref = schema.reference_modality(list(opened))
        # The small per-location arrays are read only when something needs them.
        facts = {m: member_metadata(*opened[m]) for m in opened} if spec.return_metadata else {}
        order = self._times_order(member_times(*opened[ref])[0]) if spec.reindex_seasonal else None
        pick = int(self._pick(s)[i]) if spec.timestamps == "random" else None
        wanted = [pick] if pick is not None else spec.listed()
        stored = [int(order[t]) for t in wanted] if order is not None else wanted
        for m, (archive, group) in opened.items():
            meta = bands_meta(group, archive.path)
            mod = member_modality(m, archive, group)
            static = meta.shape[0] == 1
            ts = [0] if static else stored
            if m == "S1GRD" and spec.fix_s1_order:
                ts = self._s1_chronological(archive.path, *member_times(archive, group), ts)
            self._slot(m, out, tensors, meta, n, static, len(wanted), archive.path)
            dst = out[m][j]
            for k, t in enumerate(ts):
                read_time(archive, meta, t, dst if spec.single else dst[k], self.scratch)
            delta = offset_delta(mod, False, spec.s2_offset)
            if delta:
                dst += np.asarray(delta, dtype=dst.dtype)
        if spec.return_metadata:
            src = next((m for m in schema.CLOUD_MODALITIES if m in opened and schema.CLOUD_VAR in opened[m][1].arrays),
                       None)
            if src is not None:
                archive, group = opened[src]
                cm = group.arrays[schema.CLOUD_VAR]
                one = cm.shape[0] == 1  # a one-timestep member (TerraMesh): its mask has one timestep too
                self._slot(schema.CLOUD_VAR, out, tensors, cm, n, one, len(wanted), archive.path)
                dst = out[schema.CLOUD_VAR][j]
                for k, t in enumerate([0] if one else stored):
                    read_time(archive, cm, t, dst if spec.single else dst[k], self.scratch)
        if not spec.return_metadata:
            return RowMeta(sample=key, file=shard.name, center_lat=np.nan, center_lon=np.nan, crs=0, times={},
                           timestamp=pick)
        times = {m: (f["time"][self._times_order(facts[ref]["time"])] if len(f["time"]) > 1 else f["time"])
                 for m, f in facts.items()}
        first = facts[ref]
        return RowMeta(sample=key, file=shard.name, center_lat=first["center_lat"], center_lon=first["center_lon"],
                       crs=first["crs"], times=times, timestamp=pick, sample_id=first.get("sample"))

    def _s1_chronological(self, path: str, times: np.ndarray, file_id: np.ndarray, ts: list[int]) -> list[int]:
        """Stored timesteps of an S1 member for ``ts``, in ``time`` order when its data follow product names."""
        perm = member_s1_order(file_id, times, path)
        if perm is None:
            return ts
        return [int(perm[0, t]) for t in ts]

    def _slot(self, key: str, out: dict[str, np.ndarray], tensors: dict[str, torch.Tensor], meta, n: int,
              static: bool, n_t: int, path: str) -> None:
        """Allocate the batch tensor of ``key`` from its first member, or check a later member fits it."""
        item = tuple(meta.shape[1:])
        shape = delivered_shape(self.spec, static, n, n_t, item)
        if key not in out:
            try:
                tensors[key] = self._new(shape, meta.dtype)
            except TypeError as exc:
                raise CorruptFileError(path, f"{key!r}: {exc}") from None
            out[key] = tensors[key].numpy()
        elif out[key].shape != shape or out[key].dtype != meta.dtype:
            raise CorruptFileError(path, f"{key!r} is {meta.dtype} {list(shape)[1:]}, other locations of the batch "
                                         f"are {out[key].dtype} {list(out[key].shape)[1:]}")

    def release(self, bi: int, batch: Batch) -> None:
        """Nothing to drop per batch: members leave memory when their last use is delivered."""

    def close(self) -> None:
        for s in list(self.streams) + list(self.aheads):
            self._close(s)


def _row_array(batches: Sequence[Batch]) -> np.ndarray:
    """int64 ``[rows, 2]``: ``(set, location)`` of every row of ``batches`` (views of a streamed plan's arrays
    joined at C speed; tuples read one by one otherwise)."""
    if batches and all(isinstance(b.rows, RowSlice) for b in batches):
        parts = [cast(RowSlice, b.rows).arrays() for b in batches]
        return np.stack([np.concatenate([f for f, _ in parts]), np.concatenate([i for _, i in parts])], axis=1)
    return np.fromiter(chain.from_iterable(chain.from_iterable(b.rows for b in batches)),
                       dtype=np.int64).reshape(-1, 2)


class RowUses:
    """How many times each location of each set is still to be used this epoch (a location of a padded epoch
    can be used twice), counted down as batches use them; ``last[s]``: the last location of set ``s`` the epoch
    uses; ``order``: the sets in the order the epoch first uses them. One int32 per location of the sets used,
    filled at C speed: a TerraMesh worker's epoch is millions of rows, which a ``Counter`` of tuples took 1.7 s to
    count before the first batch."""

    def __init__(self, batches: Sequence[Batch], counts: Sequence[int]):
        flat = _row_array(batches)
        first = np.full(len(counts), len(flat), dtype=np.int64)
        np.minimum.at(first, flat[:, 0], np.arange(len(flat), dtype=np.int64))  # O(n): np.unique sorted (0.5 s)
        sets = np.flatnonzero(first < len(flat))
        self.order: list[int] = sets[np.argsort(first[sets], kind="stable")].tolist()
        sizes = np.asarray(counts, dtype=np.int64)[sets]
        bases = np.cumsum(sizes) - sizes
        self._at = {s: (b, n) for s, b, n in zip(sets.tolist(), bases.tolist(), sizes.tolist())}
        where = np.zeros(len(counts), dtype=np.int64)
        where[sets] = bases
        self._left = np.bincount(where[flat[:, 0]] + flat[:, 1], minlength=int(sizes.sum())).astype(np.int32)
        used = np.flatnonzero(self._left)
        ends = np.searchsorted(used, bases + sizes) - 1  # each set's last used location, as a flat position
        self.last: dict[int, int] = {s: int(used[e]) - b for s, b, e in zip(sets.tolist(), bases.tolist(),
                                                                              ends.tolist())}

    def get(self, s: int, i: int) -> int:
        """Uses left of location ``i`` of set ``s``."""
        at = self._at.get(s)
        return int(self._left[at[0] + i]) if at is not None and 0 <= i < at[1] else 0

    def use(self, s: int, i: int) -> int:
        """Count one use of location ``i`` of set ``s``; the uses left."""
        k = self._at[s][0] + i
        self._left[k] -= 1
        return int(self._left[k])

    def left_from(self, s: int, i: int) -> int:
        """Uses left of set ``s``'s locations from ``i`` on."""
        at = self._at.get(s)
        return int(self._left[at[0] + max(i, 0): at[0] + at[1]].sum()) if at is not None else 0


class _Ahead:
    """One remote set's members read on a thread of its own, ``depth`` at most ahead of use: each
    ``(location, member)`` the reader will use, up to the set's last used location, then the end check
    (or the error that stopped it, raised where the reader asks for the next member)."""

    #: Members read ahead of use when they are streamed whole. The shuffle buffer takes the spread sets'
    #: locations unevenly for a while, so a set's thread often waits with its queue full; a whole member's
    #: response keeps arriving into the socket meanwhile, so 2 move as fast as 4 (8 sets of full-size S2L2A at
    #: 50 ms and 50 MB/s: 85 locations/s either way) with half the members held.
    DEPTH = 2
    #: ... and when they are read by parts, where a waiting thread has no request in flight and the link idles:
    #: deeper (measured, 4 sets of full-size S2L2A at 50 ms and 50 MB/s: 38 -> 49 locations/s from 4 to 8; 16
    #: adds 1 %), a quarter of each member's bytes held.
    DEPTH_PARTS = 8

    def __init__(self, reader: ShardReader, s: int, upto: int, depth: int = DEPTH):
        self.q: queue.Queue[tuple[str, Any]] = queue.Queue(depth)
        self.stop = threading.Event()
        self.at = -1  # the last location handed over
        self.thread = threading.Thread(target=self._run, args=(reader, s, upto), daemon=True,
                                       name=f"ssl4eo-zarr-set-{s}")
        self.thread.start()

    def _run(self, reader: ShardReader, s: int, upto: int) -> None:
        streams: dict[str, ShardStream] = {}
        warm = reader.warm.get(s, -1)
        try:
            if warm < 0 and not reader._wait_first(self.stop):  # a set the first batch does not use
                return
            streams = reader._new_streams(s)
            for item in reader._read_rows(s, streams, upto):
                if not self._put(("row", item)):
                    return
                if warm <= item[0] < upto and not reader._wait_first(self.stop):
                    return
            if all(st.index >= reader.spec.counts[s] - 1 for st in streams.values()):
                reader._check_ends(s, streams)
            self._put(("end", None))
        except BaseException as exc:  # handed to the reader, raised where it asks for the next member
            self._put(("error", exc))
        finally:
            for st in streams.values():
                st.close()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _next(self) -> tuple[str, Any]:
        while True:  # the thread always ends with "end" or "error"; a dead thread without either is an error
            try:
                return self.q.get(timeout=1.0)
            except queue.Empty:
                if not self.thread.is_alive() and self.q.empty():
                    raise RuntimeError("a shard read-ahead thread ended without a word") from None

    def get(self) -> tuple[int, Member]:
        kind, value = self._next()
        if kind == "error":
            raise value
        if kind == "end":
            raise RuntimeError("a shard read-ahead thread ended before the location asked for")
        self.at = value[0]
        return value

    def finish(self) -> None:
        kind, value = self._next()
        self.close()
        if kind == "error":
            raise value

    def close(self) -> None:
        self.stop.set()
