"""Moving the selected members: range requests over many connections, staged on disk, written into output
shards as they arrive (one self-contained :class:`ShardJob` per output shard, also for a dask cluster), or
re-packed into chunk files."""


from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..errors import DatasetNotFoundError, SSL4EOError
from ..layout import CHUNKS
from ..storage import ByteCache
from ..storage.zip import crc32
from .manifest import STAGING, _complete, _disk_full, _file_crc, _save_manifest
from .plan import FetchPlan, Selected, output_chunk_files, output_shards


class _Mover:
    """Fetches members by range request with bounded concurrency, one handle per thread and source file."""

    def __init__(self, kw: dict[str, Any], workers: int, bar: Any):
        self.kw = kw
        self.workers = max(1, workers)
        self.bar = bar
        self.local = threading.local()
        self.moved = 0
        self.lock = threading.Lock()

    def _handle(self, path: str):
        from ..shardfile import open_binary

        handles = self.local.__dict__.setdefault("handles", {})
        if path not in handles:
            handles[path] = open_binary(path, **self.kw)
        return handles[path]

    def read(self, path: str, offset: int, size: int) -> bytes:
        fh = self._handle(path)
        fh.seek(offset)
        data = fh.read(size)
        if len(data) != size:
            raise SSL4EOError(f"{path}: member at byte {offset} ends after {len(data)} of {size} bytes")
        with self.lock:
            self.moved += size
        if self.bar is not None:
            self.bar.update(size)
        return data


def _staged(dest: str) -> ByteCache:
    return ByteCache(os.path.join(dest, STAGING), warn=False)


#: Output shards whose members are fetched ahead of the one being written: the link stays busy while a shard
#: is written and checked.
AHEAD = 2


@dataclass(frozen=True)
class ShardJob:
    """One output shard to make, self-contained (sent to a cluster worker as it is): ``rels`` modality ->
    file relative to DEST; ``members`` in output order, ``(key, {modality: (source path, version, member name,
    offset, size)})``; ``sources`` modality -> the source files its members come from."""

    rels: dict[str, str]
    members: list[tuple[str, dict[str, tuple[str, Any, str, int, int]]]]
    sources: dict[str, list[str]]

    @property
    def nbytes(self) -> int:
        return sum(x[4] for _k, by in self.members for x in by.values())


def _job(plan: FetchPlan, group: Sequence[Selected], rels: dict[str, str]) -> ShardJob:
    members = []
    for s in group:
        by: dict[str, tuple[str, Any, str, int, int]] = {}
        for m in rels:
            if m in s.members:
                path, x = plan.sets[s.set].paths[m], s.members[m]
                by[m] = (path, plan.versions.get(path), x.name, x.offset, x.size)
        members.append((s.key, by))
    sources = {m: sorted({by[m][0] for _k, by in members if m in by}) for m in rels}
    return ShardJob(rels, members, sources)


def _member_key(item: tuple[str, Any, str, int, int]) -> str:
    path, version, name, offset, size = item
    return ByteCache.key("member", path, version, name, offset, size)


def _stage_job(job: ShardJob, staging: ByteCache, mover: _Mover,
               pool: ThreadPoolExecutor) -> tuple[dict[tuple[str, str], Future[None]], int]:
    """Queue the job's members not staged yet on ``pool``, modality by modality (the first modality's shard is
    written while the next one's members arrive); returns their futures by ``(key, modality)`` and how many were
    staged already."""
    todo = []
    reused = 0
    for m in job.rels:
        for key, by in job.members:
            if m not in by:
                continue
            if staging.get(_member_key(by[m])) is not None:
                reused += 1
                if mover.bar is not None:
                    mover.bar.update(by[m][4])
                continue
            todo.append((key, m, by[m]))

    def one(item: tuple[str, Any, str, int, int]) -> None:
        path, _version, _name, offset, size = item
        try:
            data = mover.read(path, offset, size)
        except FileNotFoundError:
            raise DatasetNotFoundError(f"{path} vanished from the source (404) while fetching; what was completed is "
                                       f"kept in {os.path.dirname(staging.root)}: rerun to resume") from None
        if not staging.put(_member_key(item), data):  # put keeps nothing on a full disk
            raise OSError(errno.ENOSPC, f"the disk is full staging members under {staging.root}; nothing partial was "
                                        "left: free space and rerun to resume")

    return {(key, m): pool.submit(one, item) for key, m, item in todo}, reused


def _write_job(job: ShardJob, dest: str, staging: ByteCache, futures: Mapping[tuple[str, str], Future[None]],
               done: Callable[[str], bool],
               blobs: Mapping[tuple[str, str], bytes] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Write the job's shards (those ``done`` does not say are complete) from staging, each member as soon as its
    transfer is done, or from ``blobs`` (``(key, modality)`` -> bytes, members made in memory by a conversion);
    yields ``(rel, manifest entry)`` per file written, then unstages the members."""
    from ..shardfile import MEMBER_SUFFIX, write_shard_summed

    for m, rel in job.rels.items():
        if done(rel):
            continue
        crcs: dict[str, int] = {}

        def members(m: str = m, crcs: dict[str, int] = crcs) -> Iterator[tuple[str, bytes]]:
            for key, by in job.members:
                if blobs is not None:
                    if (key, m) in blobs:
                        crcs[key] = crc32(blobs[(key, m)])
                        yield f"{key}{MEMBER_SUFFIX}", blobs[(key, m)]
                    continue
                if m not in by:
                    continue
                if (key, m) in futures:
                    futures[(key, m)].result()
                data = staging.get(_member_key(by[m]))
                if data is None:
                    raise SSL4EOError(f"the staged member {key} of {m} vanished from {staging.root}; rerun to fetch "
                                      "it again")
                crcs[key] = crc32(data)
                yield f"{key}{MEMBER_SUFFIX}", data

        path = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            size, crc = write_shard_summed(path, members())
        except OSError as exc:
            _disk_full(exc, path)
            raise
        yield rel, {"size": size, "crc32": crc, "members": [{"key": k, "crc32": c} for k, c in crcs.items()],
                    "sources": job.sources[m]}
    for future in futures.values():  # members of a shard completed by an earlier run
        future.result()
    for _key, by in job.members:
        for item in by.values():
            staging.discard(_member_key(item))


def make_output_shard(job: ShardJob, dest: str, storage_options: Mapping[str, Any] | None,
                      threads: int = 8) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Make one output shard of a fetch (every modality's file), ``threads`` member requests at once: on a
    cluster worker (``fetch(client=)``) or anywhere DEST is reachable. Returns the manifest entries by file,
    the bytes moved and the members reused from staging."""
    staging = _staged(dest)
    mover = _Mover({"storage_options": storage_options}, threads, None)
    with ThreadPoolExecutor(mover.workers) as pool:
        futures, reused = _stage_job(job, staging, mover, pool)
        try:
            entries = dict(_write_job(job, dest, staging, futures, lambda rel: False))
        finally:
            for future in futures.values():
                future.cancel()
    return entries, mover.moved, reused


def _to_shards(plan: FetchPlan, dest: str, doc: dict[str, Any], kw: dict[str, Any], workers: int, bar: Any,
               per_shard: int, client: Any = None) -> tuple[dict[str, list[str]], int, int]:
    staging = _staged(dest)
    files: dict[str, list[str]] = {m: [] for m in plan.modalities}
    convert = plan.kind == CHUNKS
    todo: list[tuple[ShardJob, list[Selected]]] = []
    for name, group, mods in output_shards(plan, per_shard):
        rels = {m: os.path.join(plan.split, m, name) for m in mods}
        for m in mods:
            files[m].append(os.path.join(dest, rels[m]))
        if all(_complete(dest, doc, rel) for rel in rels.values()):
            if bar is not None:
                bar.update(sum(x.size for s in group for x in s.members.values()) if not convert else 0)
            continue
        todo.append((_job(plan, group, rels) if not convert else
                     ShardJob(rels, [(s.key, {}) for s in group],
                              {m: sorted({plan.sets[s.set].paths[m] for s in group}) for m in rels}), list(group)))

    def record(rel: str, entry: dict[str, Any]) -> None:
        doc["files"][rel] = entry
        _save_manifest(dest, doc)  # a completed shard is never fetched again

    if client is not None and not convert:
        moved, reused = _deal(client, [job for job, _g in todo], dest, kw, workers, bar, record)
        return files, moved, reused
    mover = _Mover(kw, workers, bar)
    reused = 0
    # One pool moves members in order, those of the next AHEAD shards too, while the current one is written: the
    # writer waits member by member, so writing, CRC checks and the transfer overlap.
    pool = ThreadPoolExecutor(mover.workers)
    pending: dict[int, tuple[dict[tuple[str, str], Future[None]], int]] = {}

    def ahead(i: int) -> None:
        if not convert and i < len(todo) and i not in pending:
            pending[i] = _stage_job(todo[i][0], staging, mover, pool)

    done = partial(_complete, dest, doc)
    try:
        for i in range(AHEAD):
            ahead(i)
        for i, (job, group) in enumerate(todo):
            futures: dict[tuple[str, str], Future[None]] = {}
            blobs = None
            if convert:
                blobs = _converted_members(plan, group, kw)
            else:
                ahead(i)
                futures, was_staged = pending.pop(i)
                reused += was_staged
                ahead(i + AHEAD)
            for rel, entry in _write_job(job, dest, staging, futures, done, blobs):
                record(rel, entry)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return files, mover.moved, reused


def _deal(client: Any, jobs: Sequence[ShardJob], dest: str, kw: dict[str, Any], workers: int, bar: Any,
          record: Callable[[str, dict[str, Any]], None]) -> tuple[int, int]:
    """Output shards dealt to a dask.distributed cluster's workers, one task each (``workers`` member requests at
    once in each); this process keeps the one manifest, recording each file as its task ends."""
    from ..cluster import dask_client

    moved = reused = 0
    with dask_client(client) as c:
        from distributed import as_completed

        futures = c.map(make_output_shard, list(jobs), dest=dest, storage_options=kw.get("storage_options"),
                        threads=workers, pure=False,
                        key=[f"fetch-{os.path.basename(next(iter(j.rels.values())))}-{k}" for k, j in enumerate(jobs)])
        by_future = dict(zip(futures, jobs))
        try:
            for future in as_completed(futures):
                entries, n, r = future.result()
                for rel, entry in entries.items():
                    record(rel, entry)
                moved, reused = moved + n, reused + r
                if bar is not None:
                    bar.update(by_future[future].nbytes)
                future.release()
        finally:
            c.cancel([f for f in futures if not f.done()])
    return moved, reused


def _converted_members(plan: FetchPlan, group: Sequence[Selected],
                       kw: dict[str, Any]) -> dict[tuple[str, str], bytes]:
    """Chunk-file locations as shard members (offset removed, the published member layout)."""
    from ..convert import location_dataset, member_bytes
    from ..views.chunkfiles import open_dataset

    out: dict[tuple[str, str], bytes] = {}
    by_set: dict[int, list[Selected]] = {}
    for s in group:
        by_set.setdefault(s.set, []).append(s)
    for k, items in by_set.items():
        for m in plan.modalities:
            chunk = open_dataset(plan.sets[k].paths[m], **kw).isel(sample=[s.row for s in items]).load()
            for j, s in enumerate(items):
                out[(s.key, m)] = member_bytes(location_dataset(chunk, j, m))
    return out


def _to_chunks(plan: FetchPlan, dest: str, doc: dict[str, Any], kw: dict[str, Any], workers: int,
               bar: Any) -> tuple[dict[str, list[str]], int, int]:
    """Selected locations re-packed into 64-location chunk files (values exact; chunks re-encoded with the
    published codec)."""
    import xarray as xr

    from ..convert import chunk_from_locations, read_member
    from ..views.chunkfiles import modality_dataset, open_chunk
    from ..writer import write_chunk

    files: dict[str, list[str]] = {m: [] for m in plan.modalities}
    moved = 0
    for name, group in output_chunk_files(plan):
        for m in plan.modalities:
            rel = os.path.join(plan.split, m, name)
            path = os.path.join(dest, rel)
            if _complete(dest, doc, rel):
                files[m].append(path)
                continue
            if plan.kind == CHUNKS:
                parts = []
                for k in sorted({s.set for s in group}):
                    rows = [s.row for s in group if s.set == k]
                    cf = open_chunk(plan.sets[k].paths[m], **kw)
                    parts.append(modality_dataset([cf]).isel(sample=rows).load())
                    moved += sum(e[1] for e in cf.archive.directory_view().values())
                ds = xr.concat(parts, dim="sample", data_vars="all", coords="different", compat="equals",
                               join="exact") if len(parts) > 1 else parts[0]
            else:
                mover = _Mover(kw, workers, None)
                locs = []
                for s in group:
                    member = s.members[m]
                    data = mover.read(plan.sets[s.set].paths[m], member.offset, member.size)
                    locs.append(read_member(data, f"{plan.sets[s.set].paths[m]}/{member.name}", s.key))
                moved += mover.moved
                ds = chunk_from_locations(locs, m)
            if bar is not None:
                bar.update(0)
            try:
                write_chunk(ds, path, modality=m, size=int(ds.sizes["y"]))
            except OSError as exc:
                _disk_full(exc, path)
                raise
            doc["files"][rel] = {"size": os.path.getsize(path), "crc32": _file_crc(path),
                                 "locations": [str(x) for x in ds["sample"].values],
                                 "sources": sorted({plan.sets[s.set].paths[m] for s in group})}
            _save_manifest(dest, doc)
            files[m].append(path)
    return files, moved, 0

