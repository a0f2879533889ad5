"""Only what you need: a subset of SSL4EO-S12 fetched from its host into a dataset of its own.

:func:`fetch` plans from indexes alone (tar headers of shards, zip directories and sample ids of chunk files,
both kept in the user's cache), selects locations (ids, a bounding box, months, dates, cloud cover, a seeded
random sample) and moves only what the selection needs: for shards, the selected locations' ``.zarr.zip``
members, one range request each; for chunk files, the chunks of the files that hold a selected location
(chunk files pack 64 locations per chunk, so a sparse selection moves whole chunks).

DEST is a dataset root in the published layout that this library, xarray and the published loaders open:
shards renumbered from 000001 with the same keys in the same order in every modality (512 per shard, the last
fewer), or chunk files of the selected locations (64 per file) with their split list; the subset's rows of the
metadata table when one was read; and ``fetch_manifest.json``: the source, each source file's size and version,
the selection, and each written file's size and CRC-32 with each member's CRC-32.

Nothing half-written is ever visible: output files are written to temporaries and renamed. Members fetched for
an output shard are staged on disk as they arrive (``DEST/.fetch``, checked by CRC when reused), so an
interrupted fetch (Ctrl-C, SIGKILL, a lost connection) resumes without fetching them again, and a rerun on a
complete DEST moves only index requests. Requests are bounded (``workers``), retried with backoff, and 429/503
answers wait as ``Retry-After`` says.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from . import schema
from .errors import DatasetNotFoundError, ModalityMismatchError, SSL4EOError
from .layout import CHUNKS, FETCH_MANIFEST, SHARDS, ChunkSet, resolve, write_split_list
from .shardindex import WALK_WORKERS, load_index, root_of, shards_for_ids, table_path, walk
from .storage import ByteCache, atomic_write, basename
from .storage.lock import LOCK, BuildLock, load_resumable, write_json
from .storage.zip import crc32

#: The manifest DEST holds.
MANIFEST = FETCH_MANIFEST
#: Members staged for output shards not yet written (deleted when the fetch completes).
STAGING = ".fetch"
#: Download rate the dry run's time estimate assumes (bytes/s): what users report from the host.
ASSUMED_RATE = 20e6


class SelectionError(SSL4EOError, ValueError):
    """A selection that cannot be made: unknown ids, an empty result (naming the filter that emptied it)."""


@dataclass
class Selected:
    """One selected location: ``set`` index into :attr:`FetchPlan.sets`, ``row`` inside that file, its ``key``
    (sample id), and for shards the member of each modality (``name``, ``offset``, ``size``)."""

    set: int
    row: int
    key: str
    members: dict[str, Any] = field(default_factory=dict)


@dataclass
class FetchPlan:
    """What :func:`fetch` will move: the source's file sets, the selected locations in source order, the
    filters with the count each left, the bytes to move and the metadata rows of the subset."""

    source: str
    split: str
    modalities: list[str]
    kind: str
    sets: list[ChunkSet]
    selected: list[Selected]
    steps: list[tuple[str, int]]
    nbytes: int
    table: Any = None
    versions: dict[str, str | None] = field(default_factory=dict)
    table_path: str | None = None
    raw_table: Any = field(default=None, repr=False)
    estimate: PlanEstimate | None = None

    def summary(self, rate: float = ASSUMED_RATE) -> str:
        """What a dry run prints: locations, members, bytes and the time at ``rate`` bytes/s."""
        members = len(self.selected) * len(self.modalities) if self.kind == SHARDS else 0
        files = len({s.set for s in self.selected})
        lines = [f"source: {self.source} ({self.kind}, split {self.split}, {', '.join(self.modalities)})"]
        lines += [f"  {name}: {count} locations" for name, count in self.steps]
        what = f"{members} members" if self.kind == SHARDS else f"the chunks of {files} of {len(self.sets)} files"
        est = self.estimate
        if est is not None and est.transfer_seconds > 0 and est.member_bytes > 0:
            rate = est.member_bytes / est.transfer_seconds  # as measured on the link, at the fetch's connections
        lines.append(f"selected: {len(self.selected)} locations, {what}, {self.nbytes / 1e9:.3f} GB "
                     f"(about {self.nbytes / rate / 60:.1f} min at {rate / 1e6:.0f} MB/s)")
        return "\n".join(lines)


@dataclass
class PlanEstimate:
    """What planning and moving a selection will cost, from a few probes before any tar header is read:
    ``requests``/``index_bytes``/``index_seconds`` to learn where the selected members lie (header walks or
    read-throughs, as the link's cost model chooses per modality), ``members``/``member_bytes``/
    ``transfer_seconds`` to move them, over ``link`` (:class:`~ssl4eo_zarr.costmodel.Link`). ``exact``: the
    shard counts are the published ones (else 512 per shard was assumed). ``workers``: member requests in
    flight; ``budget``: bytes per tar header the index may move (see :data:`OVERHEAD`)."""

    link: Any
    shards: int
    requests: float
    index_bytes: float
    index_seconds: float
    members: int
    member_bytes: float
    transfer_seconds: float
    exact: bool = True
    indexed: bool = False
    workers: int = 8
    budget: float | None = None

    def summary(self) -> str:
        from .costmodel import fmt_seconds

        if self.indexed:
            plan = "planning: from the index file, no tar header read"
        else:
            plan = (f"planning: ~{self.requests:,.0f} requests ({self.index_bytes / 1e6:,.0f} MB) to index "
                    f"{self.shards} shard files, about {fmt_seconds(self.index_seconds)}"
                    + ("" if self.exact else " (assuming 512 locations per shard)"))
        return (f"{plan}\nmoving: ~{self.members:,} members, {self.member_bytes / 1e9:,.2f} GB, about "
                f"{fmt_seconds(self.transfer_seconds)} over {self.workers} connections\nlink: {self.link.describe()}")


# -- selection ---------------------------------------------------------------------------------------------------

def read_ids(locations: str | os.PathLike | Sequence[str]) -> list[str]:
    """Location keys (7-digit ids, or TerraMesh keys such as ``ssl4eos12_val_0080385``) from a text file (one a
    line; blank lines and ``#`` comments ignored) or a sequence."""
    if isinstance(locations, str | os.PathLike):
        with open(os.fspath(locations), encoding="utf-8") as f:
            items = [line.split("#", 1)[0].strip() for line in f]
    else:
        items = [str(x) for x in locations]
    out = []
    for item in items:
        if not item:
            continue
        try:
            out.append(schema.location_key(item))
        except ValueError as exc:
            raise SelectionError(str(exc)) from None
    return out


def _shard_members(sets: Sequence[ChunkSet], mods: Sequence[str], workers: int, archive_kwargs: dict[str, Any],
                   index: Any = None, progress: Any = None, until: Sequence[set[str] | None] | None = None,
                   budget: float | None = None) -> list[dict[str, list[Any]]]:
    jobs = [(k, m) for k in range(len(sets)) for m in mods if m in sets[k].paths]  # a subset's own modalities
    if index is not None:
        found = [index.members(m, sets[k].name) for k, m in jobs]
    else:
        found = walk([sets[k].paths[m] for k, m in jobs], workers=workers, progress=progress,
                     until=[until[k] for k, _m in jobs] if until is not None else None, budget=budget,
                     **archive_kwargs)
    out: list[dict[str, list[Any]]] = [{} for _ in sets]
    for (k, m), members in zip(jobs, found):
        out[k][m] = members
    for k, by_mod in enumerate(out):
        keys = {m: [x.key for x in v] for m, v in by_mod.items()}
        first = next(iter(keys))
        for m in keys:
            if keys[m] != keys[first]:
                raise ModalityMismatchError(f"{sets[k].paths[m]} and {sets[k].paths[first]} hold different locations "
                                            "(the shards of all modalities must hold the same keys in the same order)")
    return out


def _chunk_rows(sets: Sequence[ChunkSet], mod: str, workers: int, archive_kwargs: dict[str, Any]) -> list[list[str]]:
    from .chunkfile import open_chunk

    with ThreadPoolExecutor(max(1, workers)) as pool:
        opened = list(pool.map(lambda cs: open_chunk(cs.paths[mod], **archive_kwargs), sets))
    return [[str(s) for s in cf.samples] for cf in opened]


def _months_of(table: Any) -> np.ndarray:
    times = table[[f"s2_time_{t}" for t in range(schema.N_TIMESTAMPS)]].to_numpy("datetime64[ns]")
    months = (times.astype("datetime64[M]").astype(np.int64) % 12) + 1
    return np.where(np.isnat(times), 0, months)


#: Bytes a fetch may move beyond the members it selects, as a fraction of them (tar headers, probes): the cost
#: model reads members through while indexing only where that stays inside this budget.
OVERHEAD = 0.15


def plan_fetch(source: str, *, split: str, modalities: Sequence[str], locations: Any = None,
               bbox: Sequence[float] | None = None, months: Sequence[int] | None = None,
               dates: Sequence[Any] | None = None, max_cloud: float | None = None, metadata: str | None = None,
               limit: int | None = None, seed: int = 0, workers: int | None = None,
               storage_options: Mapping[str, Any] | None = None, index: str | None = None,
               progress: Callable[..., Any] | None = None, notify: Callable[[str], Any] | None = None,
               index_workers: int = WALK_WORKERS) -> FetchPlan:
    """The :class:`FetchPlan` of :func:`fetch` (same arguments), from indexes and the metadata table alone.

    With ``index`` (an index file, :func:`~ssl4eo_zarr.shardindex.write_index`) no tar header is read.
    Otherwise shards are indexed from their tar headers (:func:`~ssl4eo_zarr.shardindex.walk`,
    ``index_workers`` shards at once): where the table says which shard holds each candidate location (its
    ``tar`` column), only those shards, each up to its last candidate; a ``limit`` is drawn from the table
    before any shard is read. Before the first header is read, ``notify`` (e.g. ``print``) gets the
    :class:`PlanEstimate` of what planning and moving will cost (also ``plan.estimate``)."""
    from .shards import shard_version

    mods = [schema.modality_name(m) for m in modalities]
    if not mods:
        raise SelectionError("no modalities given: name at least one (e.g. S2L2A)")
    _check_arguments(bbox, months, dates, max_cloud, limit)
    sets = resolve(source, split=split, modalities=mods, storage_options=storage_options)
    kind = sets[0].kind
    kw: dict[str, Any] = {"storage_options": storage_options}
    filters = any(v is not None for v in (bbox, months, dates, max_cloud))
    ids = list(dict.fromkeys(read_ids(locations))) if locations is not None else None
    table, path, raw = None, None, None
    if filters or metadata is not None or (kind == SHARDS and (ids is not None or limit is not None)):
        path = metadata or table_path(root_of(sets), split, storage_options)
        if path is None and (filters or metadata is not None):
            raise SelectionError(f"--bbox/--months/--dates/--max-cloud need the metadata table: none at "
                                 f"{root_of(sets)}/{split}_metadata.parquet or .../splits/{split}_metadata.parquet; "
                                 "pass metadata=PATH")
        if path is not None:
            from .metadata import read_metadata, read_table

            raw = read_table(path, storage_options=storage_options)
            table = read_metadata(raw)
    # Candidates from the ids and the table's filters, before any archive is indexed.
    candidates: list[str] | None = ids
    table_steps: list[tuple[str, int]] = []
    if filters:
        assert table is not None and path is not None
        candidates, table_steps = _filter_table(table, path, candidates, bbox, months, dates, max_cloud)
    from_table = filters
    drawn = False
    if kind == SHARDS and limit is not None and table is not None and "tar" in table.columns:
        # Draw the sample from the table: only the shards that hold it are read, each up to its last pick.
        every = list(table.index) if candidates is None else candidates
        from_table = from_table or candidates is None
        if candidates is None:
            table_steps.append((f"in the table {basename(str(path))}", len(every)))
        candidates = _draw(every, limit, seed)
        drawn = True
    scan = list(range(len(sets)))
    holding = shards_for_ids(sets, table, candidates) if kind == SHARDS and candidates is not None else None
    if holding:  # the table names each candidate's shard: walk those, each up to its last candidate
        scan = list(holding)
    scanned = [sets[k] for k in scan]
    loaded = load_index(index, storage_options) if index is not None else None
    estimate = None
    if kind == SHARDS:
        estimate = estimate_plan(sets, mods, scan, holding, len(candidates) if candidates is not None else limit,
                                 workers, index_workers, storage_options, indexed=loaded is not None)
        if notify is not None:
            notify(estimate.summary())
    budget = estimate.budget if estimate is not None else None
    members = (_shard_members(scanned, mods, index_workers, kw, loaded, progress,
                              [holding[k] for k in scan] if holding else None, budget) if kind == SHARDS else None)
    rows = ([[x.key for x in next(iter(by_mod.values()))] for by_mod in members] if members is not None
            else _chunk_rows(scanned, mods[0], workers or 8, kw))
    where = {key: (scan[j], i, j) for j, keys in enumerate(rows) for i, key in enumerate(keys)}
    total = sum(len(r) for r in rows)
    label = (f"{split} at the source" if len(scan) == len(sets) else
             f"{split} in the {len(scan)} of {len(sets)} shards that hold a candidate (the table's tar column)")
    steps = [(label, total)]
    if ids is not None:
        unknown = [i for i in ids if i not in where]
        if unknown:
            raise SelectionError(f"{len(unknown)} location ids are not in {source} ({split}, {mods[0]}): "
                                 f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}; nothing was written")
        steps.append(("--locations", len(ids)))
    steps += table_steps
    if from_table:
        lacking = [k for k in candidates or [] if k not in where]
        if lacking:
            raise SelectionError(f"{len(lacking)} locations of the table {basename(str(path))} are not in the archives "
                                 f"at {source}: {', '.join(lacking[:10])}{' ...' if len(lacking) > 10 else ''}; "
                                 "nothing was written (is it the table of another split or release?)")
    chosen = [k for keys in rows for k in keys] if candidates is None else sorted(candidates, key=lambda k: where[k][:2])
    if limit is not None and (drawn or limit < len(chosen)):
        if not drawn:
            chosen = _draw(chosen, limit, seed)
        steps.append((f"--limit {limit} (seed {seed})", len(chosen)))
    if not chosen:
        emptied = next((name for (name, n), (_p, before) in zip(steps[1:], steps) if n == 0 and before), steps[-1][0])
        raise SelectionError(f"the selection is empty: {emptied} left no location ("
                             + "; ".join(f"{name}: {n}" for name, n in steps) + ")")
    selected = []
    for key in chosen:
        k, i, j = where[key]
        sel = Selected(k, i, key)
        if members is not None:
            sel.members = {m: members[j][m][i] for m in mods if m in members[j]}
        selected.append(sel)
    selected.sort(key=lambda s: (s.set, s.row))
    if members is not None:
        nbytes = sum(x.size for s in selected for x in s.members.values())
    else:
        nbytes = _chunk_bytes(sets, sorted({s.set for s in selected}), mods, kw)
    used = sorted({s.set for s in selected})
    jobs = [(sets[k], m) for k in used for m in mods if m in sets[k].paths]
    shards = [(cs.paths[m], m, cs.name) for cs, m in jobs]
    if loaded is not None:
        found = loaded.check_all(shards, storage_options)
    else:
        with ThreadPoolExecutor(index_workers) as pool:  # a round trip each: overlap them
            found = list(pool.map(lambda job: shard_version(job[0], storage_options), shards))
    versions = {path: v for (path, _m, _n), v in zip(shards, found)}
    kept_table = None
    if table is not None:  # read for the filters or to find the shards: its rows of the subset go beside it
        table = table.loc[[s.key for s in selected if s.key in set(table.index)]]
        kept_table = path
    plan = FetchPlan(source, split, mods, kind, sets, selected, steps, nbytes, table, versions, kept_table, raw)
    plan.estimate = estimate
    return plan


def _check_arguments(bbox: Sequence[float] | None, months: Sequence[int] | None, dates: Sequence[Any] | None,
                     max_cloud: float | None, limit: int | None) -> None:
    """Every filter argument checked before anything is read: a wrong one is named, never a selection that an
    impossible filter left empty."""
    from .metadata import _timestamp, check_bbox

    try:
        if bbox is not None:
            check_bbox(bbox)
        if dates is not None:
            if isinstance(dates, str) or len(dates) != 2:
                raise ValueError(f"dates={dates!r}: a (start, end) pair of dates")
            first, last = (_timestamp(d, n) for d, n in zip(dates, ("start", "end")))
            if first > last:
                raise ValueError(f"dates: start {dates[0]} is after end {dates[1]}")
    except ValueError as exc:
        raise SelectionError(str(exc)) from None
    if months is not None:
        bad = [m for m in months if isinstance(m, bool) or not isinstance(m, int | np.integer) or not 1 <= m <= 12]
        if bad or not len(months):
            raise SelectionError(f"months={list(months)!r}: months are 1 (January) to 12 (December)")
    if max_cloud is not None and not 0.0 <= float(max_cloud) <= 1.0:
        raise SelectionError(f"max_cloud={max_cloud!r}: a cloud fraction from 0 to 1 (0.1 is 10 %)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1):
        raise SelectionError(f"limit={limit!r}: a number of locations, at least 1")


def _draw(pool: Sequence[str], limit: int, seed: int) -> list[str]:
    """``limit`` of ``pool`` drawn with ``seed``, in ``pool``'s order (all of it when it holds no more)."""
    if limit >= len(pool):
        return list(pool)
    rng = np.random.default_rng(seed)
    pick = set(rng.choice(len(pool), size=int(limit), replace=False).tolist())
    return [k for j, k in enumerate(pool) if j in pick]


def estimate_plan(sets: Sequence[ChunkSet], mods: Sequence[str], scan: Sequence[int],
                  holding: Mapping[int, Collection[str]] | None, selected: int | None, workers: int | None,
                  index_workers: int, storage_options: Mapping[str, Any] | None = None, *,
                  indexed: bool = False) -> PlanEstimate:
    """The :class:`PlanEstimate` of indexing the shard sets ``scan`` (each up to its last id of ``holding``
    when given) and moving ``selected`` locations (all of the scanned shards' when ``None``), from the published
    counts (or 512 a shard) and probes: the link (:func:`~ssl4eo_zarr.costmodel.probe`, three requests) and
    the first member's size in each modality (one request each)."""
    from .costmodel import expected_last, probe
    from .shardindex import known_counts

    counts = known_counts(sets)
    exact = counts is not None
    sizes = counts if counts is not None else [schema.LOCATIONS_PER_SHARD] * len(sets)
    first = next(iter(sets[scan[0]].paths.values()))
    link = probe(first, storage_options, connections=index_workers)
    member = {m: _first_member_size(next(sets[k].paths[m] for k in scan if m in sets[k].paths), storage_options)
              for m in mods if any(m in sets[k].paths for k in scan)}
    requests = nbytes = serial = 0.0
    total = 0.0
    jobs = [(k, m) for k in scan for m in mods if m in sets[k].paths]
    walked = {k: expected_last(sizes[k], len(holding[k])) if holding else float(sizes[k]) for k in scan}
    n = selected if selected is not None else sum(sizes[k] for k in scan)
    member_bytes = float(n) * sum(member.values())
    # A fetch promises to move little more than it selects: reading through is allowed while the index's bytes
    # per header stay within OVERHEAD of the selected bytes per header walked.
    budget = OVERHEAD * member_bytes / max(1.0, sum(walked[k] for k, _m in jobs))
    for k, m in jobs:
        r, b, _t = link.index_cost(walked[k], member[m] + 1024, budget=budget)
        requests += r + 2  # and a version request and an open (HEAD) per shard file
        nbytes += b
        total += _t * link.connections
        serial = max(serial, _t * link.connections)
    seconds = max(total / link.connections, serial)  # never less than the longest single shard
    if workers is None:
        workers = link.transfer_connections(sum(member.values()) / max(1, len(member)))
    mover = link.with_connections(workers)
    return PlanEstimate(link, len(jobs), 0.0 if indexed else requests, 0.0 if indexed else nbytes,
                        0.0 if indexed else seconds, int(n) * len(member), member_bytes,
                        mover.read_seconds(member_bytes, n * len(member)), exact, indexed, workers, budget)


def _first_member_size(path: str, storage_options: Mapping[str, Any] | None) -> int:
    """Bytes of the first member of a shard, from its first tar header (one small request)."""
    import tarfile

    from .shards import open_binary

    with open_binary(path, storage_options=storage_options) as fh:
        block = fh.read(tarfile.BLOCKSIZE)
    try:
        return tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape").size
    except tarfile.TarError:
        return 0


def _filter_table(table: Any, path: str, candidates: list[str] | None, bbox: Sequence[float] | None,
                  months: Sequence[int] | None, dates: Sequence[Any] | None,
                  max_cloud: float | None) -> tuple[list[str], list[tuple[str, int]]]:
    """The candidates (all of the table's when ``None``) that pass the table's filters, with the count each
    filter left."""
    from .metadata import select

    known = set(table.index)
    pool = list(table.index) if candidates is None else [k for k in candidates if k in known]
    steps = [(f"in the table {basename(path)}" + (f" ({len(candidates) - len(pool)} ids not in it)"
                                                   if candidates is not None and len(pool) < len(candidates) else ""),
              len(pool))]
    sub = table.loc[pool]
    for name, kwargs in (("--bbox", {"bbox": tuple(bbox)} if bbox is not None else None),
                         ("--max-cloud", {"max_cloud": max_cloud} if max_cloud is not None else None),
                         ("--dates", {"start": dates[0], "end": dates[1]} if dates is not None else None)):
        if kwargs is not None:
            try:
                sub = select(sub, **kwargs)
            except ValueError as exc:
                raise SelectionError(f"{name}: {exc}") from None
            steps.append((f"{name} {list(kwargs.values())}", len(sub)))
    if months is not None:
        sub = sub[np.isin(_months_of(sub), list(months)).any(axis=1)]
        steps.append((f"--months {list(months)}", len(sub)))
    keep = set(sub.index)
    return [k for k in pool if k in keep], steps


def _chunk_bytes(sets: Sequence[ChunkSet], used: Sequence[int], mods: Sequence[str], kw: dict[str, Any]) -> int:
    from .storage import ZipArchive

    total = 0
    for k in used:
        for m in mods:
            with ZipArchive(sets[k].paths[m], **kw) as archive:
                total += sum(entry[1] for entry in archive.directory_view().values())
    return total


# -- doing it ----------------------------------------------------------------------------------------------------

@dataclass
class FetchResult:
    """What :func:`fetch` did: ``files`` written (``{modality: [paths]}``), ``locations`` in DEST, ``nbytes``
    moved for members or chunks (index requests not counted), ``reused`` members taken from staging, ``seconds``
    spent moving and writing them (planning not counted)."""

    dest: str
    plan: FetchPlan
    files: dict[str, list[str]]
    locations: int
    nbytes: int = 0
    reused: int = 0
    seconds: float = 0.0


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
        from .shards import open_binary

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


def _disk_full(exc: OSError, where: str) -> None:
    if exc.errno == errno.ENOSPC:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(where)) or ".").free
        raise OSError(errno.ENOSPC, f"the disk is full writing {where} ({free / 1e6:.0f} MB free); nothing "
                                    "partial was left: free space and rerun to resume") from None


def _load_manifest(dest: str, settings: dict[str, Any]) -> dict[str, Any]:
    return load_resumable(os.path.join(dest, MANIFEST), settings, {"files": {}},
                          lambda other: SelectionError(f"{dest} holds another fetch ({other}); fetch into a new folder, "
                                                       "or rerun with the same arguments to resume"))


def _save_manifest(dest: str, doc: dict[str, Any]) -> None:
    write_json(os.path.join(dest, MANIFEST), doc)


def _complete(dest: str, doc: dict[str, Any], rel: str) -> bool:
    entry = doc["files"].get(rel)
    path = os.path.join(dest, rel)
    return bool(entry) and os.path.exists(path) and os.path.getsize(path) == entry["size"]


def _file_crc(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            crc = crc32(block, crc)
    return crc


def fetch(source: str, dest: str, *, split: str, modalities: Sequence[str], locations: Any = None,
          bbox: Sequence[float] | None = None, months: Sequence[int] | None = None, dates: Sequence[Any] | None = None,
          max_cloud: float | None = None, metadata: str | None = None, limit: int | None = None, seed: int = 0,
          to: str | None = None, workers: int | None = None, dry_run: bool = False,
          storage_options: Mapping[str, Any] | None = None, progress: Callable[..., Any] | None = None,
          per_shard: int = schema.LOCATIONS_PER_SHARD, index: str | None = None,
          notify: Callable[[str], Any] | None = None, index_workers: int = WALK_WORKERS,
          client: Any = None) -> FetchResult | FetchPlan:
    """Fetch a subset of SSL4EO-S12 v1.1 into a dataset root of its own (see the module docstring).

    Parameters
    ----------
    source:
        A root of either distribution: a path, an ``http(s)://`` static host or hub ``resolve/main`` URL,
        ``hf://datasets/...``, ``s3://``.
    dest:
        The local folder to write (created); rerunning with the same arguments resumes.
    split, modalities:
        ``"train"``/``"val"``; e.g. ``["S2L2A", "S1GRD"]``.
    locations:
        Only these 7-digit ids: a text file (one a line) or a sequence. An id the source lacks is an error
        naming it (nothing is written).
    bbox, months, dates, max_cloud:
        Filters on the metadata table (``metadata``, by default the one published at the root): patch centre
        in ``(W, S, E, N)`` degrees; an S2 acquisition in one of ``months`` (1..12); every S2 acquisition within
        ``dates = (start, end)``; cloud fraction at most ``max_cloud`` (0..1) in every timestamp. Timestamps are
        not cut: DEST holds every location's four, as published.
    limit, seed:
        At most ``limit`` of the selected locations, drawn with ``seed``.
    to:
        ``"shards"`` or ``"chunks"`` (default: as the source). Converting re-encodes locations; DEM, NDVI and
        LULC exist as shards only.
    workers:
        Member requests in flight at once (default: chosen from the measured link, enough that round trips hide
        behind transfers: 8 for local files, up to 64 against a host that caps its total rate).
    dry_run:
        Plan only: returns the :class:`FetchPlan` (print ``plan.summary()``), writes nothing.
    storage_options:
        Credentials (``{"headers": {"Authorization": ...}}``) or fsspec options for the source.
    progress:
        A tqdm-like factory for progress bars (shards indexed, bytes fetched; the CLI passes tqdm).
    index:
        An index file of the source (``ssl4eo-zarr index``): planning then reads no tar header; a shard that
        changed since it was made is refused (:class:`~ssl4eo_zarr.shardindex.StaleIndexError`).
    notify:
        Called with the :class:`PlanEstimate`'s summary (requests, bytes and time planning and moving will
        take, from a few probes) before any tar header is read; the CLI prints it.
    index_workers:
        Shards indexed at once (tar header walks are round trips, a few bytes each: they overlap).
    client:
        A ``dask.distributed.Client`` or a scheduler address: output shards are dealt to the cluster's workers
        (one task each, ``workers`` member requests at once in each), which write them into DEST (a folder every
        worker reaches: a shared file system); this process plans, keeps the one manifest and resumes as without
        a cluster. Shard sources only (chunk files convert in this process).

    Returns
    -------
    FetchResult (or FetchPlan with ``dry_run``)

    Raises
    ------
    SelectionError
        Unknown ids, an empty selection (naming the filter that emptied it), a DEST holding another fetch.
    DatasetNotFoundError
        A source file vanished (404) mid-fetch; what was completed is kept and a rerun resumes.
    OSError
        A full disk (nothing partial is left).
    """
    plan = plan_fetch(source, split=split, modalities=modalities, locations=locations, bbox=bbox, months=months,
                      dates=dates, max_cloud=max_cloud, metadata=metadata, limit=limit, seed=seed, workers=workers,
                      storage_options=storage_options, index=index, progress=progress, notify=notify,
                      index_workers=index_workers)
    if dry_run:
        return plan
    if workers is None:
        workers = plan.estimate.workers if plan.estimate is not None else 8
    target = to or plan.kind
    if target not in (SHARDS, CHUNKS):
        raise ValueError(f"to must be 'shards' or 'chunks', got {to!r}")
    if target == CHUNKS and plan.sets[0].corpus != schema.SSL4EO_S12.name:
        raise SelectionError(f"{source} is {plan.sets[0].corpus}, whose members hold one timestamp; chunk files hold "
                             f"{schema.N_TIMESTAMPS} seasons per location: fetch to shards")
    if target == CHUNKS:
        missing = [m for m in plan.modalities if m not in schema.CHUNK_MODALITIES]
        if missing:
            raise SelectionError(f"{', '.join(missing)} exist as shards only: chunk files have no place for them "
                                 "(drop them or fetch to shards)")
    os.makedirs(dest, exist_ok=True)
    # What defines the subset; the source may change between runs (another mirror of the same files).
    settings = {"split": split, "modalities": plan.modalities, "to": target,
                "locations": [s.key for s in plan.selected], "per_shard": per_shard}
    try:
        return _write(plan, dest, settings, source, split, target, workers, storage_options, progress, per_shard,
                      client)
    except OSError as exc:
        if exc.errno == errno.ENOSPC and "disk is full" not in str(exc):  # from anywhere: the manifest, a folder
            free = shutil.disk_usage(dest).free if os.path.isdir(dest) else 0
            raise OSError(errno.ENOSPC, f"the disk is full writing {dest} ({free / 1e6:.0f} MB free); nothing "
                                        "partial was left: free space and rerun to resume") from None
        raise


def _write(plan: FetchPlan, dest: str, settings: dict[str, Any], source: str, split: str, target: str, workers: int,
           storage_options: Mapping[str, Any] | None, progress: Callable[..., Any] | None,
           per_shard: int, client: Any = None) -> FetchResult:
    _refuse_foreign(dest)
    with BuildLock(dest):
        doc = _load_manifest(dest, settings)
        doc["source"] = source
        expected = _expected_outputs(plan, target, per_shard)
        _remove_temporaries(dest, expected)
        now = {p: {"version": json.loads(json.dumps(v))} for p, v in plan.versions.items()}
        changed = sorted(p for p, v in (doc.get("source_files") or {}).items() if p in now and v != now[p])
        doc["source_files"] = now
        doc["selection"] = [{"filter": name, "locations": n} for name, n in plan.steps]
        doc["expected"] = expected
        doc["complete"] = False  # until the last file is written: verify and the readers say so meanwhile
        if changed:
            _forget_changed(dest, doc, changed)
        _save_manifest(dest, doc)  # from here DEST is this fetch's: a rerun after a kill is recognised
        bar = progress(total=plan.nbytes, unit="B", unit_scale=True, desc="fetch") if progress else None
        kw: dict[str, Any] = {"storage_options": storage_options}
        began = time.perf_counter()
        try:
            if target == SHARDS:
                files, moved, reused = _to_shards(plan, dest, doc, kw, workers, bar, per_shard, client)
            else:
                files, moved, reused = _to_chunks(plan, dest, doc, kw, workers, bar)
        finally:
            if bar is not None:
                bar.close()
            try:
                _save_manifest(dest, doc)
            except OSError:  # a full disk: the manifest of the last completed file stays, and the error goes on
                pass
        if target == CHUNKS:
            listed = write_split_list(dest, split, [basename(p) for p in files[plan.modalities[0]]])
            doc["files"][os.path.relpath(listed, dest)] = {"size": os.path.getsize(listed), "crc32": _file_crc(listed)}
        if plan.table_path is not None:
            _write_table(plan, dest, doc, storage_options)
        shutil.rmtree(os.path.join(dest, STAGING), ignore_errors=True)
        doc["complete"] = True  # last: every selected member of every modality is in DEST
        _save_manifest(dest, doc)
        seconds = time.perf_counter() - began
    return FetchResult(dest, plan, files, len(plan.selected), moved, reused, seconds)


def _remove_temporaries(dest: str, expected: Mapping[str, Any]) -> None:
    """Temporaries a killed run left (``atomic_write``'s ``.<name>.*.tmp``) in the folders this fetch writes:
    never data, always incomplete. Nothing else under DEST is touched."""
    folders = {dest, os.path.join(dest, "splits")} | {os.path.dirname(os.path.join(dest, rel)) for rel in expected}
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


def _refuse_foreign(dest: str) -> None:
    """A non-empty DEST without this library's fetch manifest holds someone else's files: never write there."""
    try:
        names = [n for n in os.listdir(dest) if n != LOCK]
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise SelectionError(f"{dest} is a file, not a folder to fetch into") from None
    if names and not os.path.exists(os.path.join(dest, MANIFEST)):
        shown = ", ".join(sorted(names)[:5]) + (" ..." if len(names) > 5 else "")
        raise SelectionError(f"{dest} is not empty ({shown}) and holds no {MANIFEST}: it is not a fetch to resume; "
                             "fetch into a new or empty folder (nothing was written)")


def _expected_outputs(plan: FetchPlan, target: str, per_shard: int) -> dict[str, list[str]]:
    """``{file relative to DEST: location keys it will hold}`` of every data file the fetch writes."""
    if target == SHARDS:
        return {os.path.join(plan.split, m, name): [s.key for s in group]
                for name, group, mods in output_shards(plan, per_shard) for m in mods}
    step = schema.SAMPLES_PER_FILE
    return {os.path.join(plan.split, m, schema.chunk_file_name(plan.split, g // step + 1)):
            [s.key for s in plan.selected[g: g + step]]
            for g in range(0, len(plan.selected), step) for m in plan.modalities}


def _forget_changed(dest: str, doc: dict[str, Any], changed: Sequence[str]) -> None:
    """Written files made from source files that changed since: fetched again, with a warning naming both."""
    gone = set(changed)
    stale = [rel for rel, entry in doc["files"].items()
             if rel in doc["expected"] and gone & set(entry.get("sources", gone))]
    for rel in stale:
        del doc["files"][rel]
    if stale:
        warnings.warn(f"{len(changed)} source files changed since this fetch began ({', '.join(changed[:3])}"
                      f"{' ...' if len(changed) > 3 else ''}): {len(stale)} files of {dest} made from them are fetched "
                      f"again ({', '.join(sorted(stale)[:3])}{' ...' if len(stale) > 3 else ''})", stacklevel=4)


def _write_table(plan: FetchPlan, dest: str, doc: dict[str, Any], storage_options: Mapping[str, Any] | None) -> None:
    """The subset's rows of the source's metadata table, its columns and generation as published, under the
    name the 2026 release uses (or ``splits/`` for a first-release table)."""
    from .metadata import table_rows

    assert plan.table_path is not None
    source = plan.raw_table if plan.raw_table is not None else plan.table_path
    rows = table_rows(source, [s.key for s in plan.selected], storage_options=storage_options)
    first = "time_id" in rows.columns
    path = os.path.join(dest, *(["splits"] if first else []), f"{plan.split}_metadata.parquet")
    if _complete(dest, doc, os.path.relpath(path, dest)):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path) as f:
        rows.to_parquet(f)
    doc["files"][os.path.relpath(path, dest)] = {"size": os.path.getsize(path), "crc32": _file_crc(path)}


def _staged(dest: str) -> ByteCache:
    return ByteCache(os.path.join(dest, STAGING))


def output_shards(plan: FetchPlan, per_shard: int) -> list[tuple[str, list[Selected], list[str]]]:
    """``(shard name, locations, modalities)`` of DEST's shards. SSL4EO-S12: ``per_shard`` locations each in
    source order, numbered from 1 as published. TerraMesh: each member stays in a shard of its source shard's
    name (``majortom_shard_000003.tar`` holds what was fetched from that shard, in source order; ``per_shard``
    does not apply), so DEST reads, with this library and with the published loader, as the source does; a
    shard holds its own subset's modalities."""
    corpus = schema.get_corpus(plan.sets[0].corpus)
    out = []
    if corpus is not schema.SSL4EO_S12:
        by_set: dict[int, list[Selected]] = {}
        for s in plan.selected:
            by_set.setdefault(s.set, []).append(s)
        for k in sorted(by_set):
            cs = plan.sets[k]
            out.append((cs.name, by_set[k], [m for m in plan.modalities if m in cs.paths]))
        return out
    number = 0
    for i in range(0, len(plan.selected), per_shard):
        number += 1
        group = plan.selected[i: i + per_shard]
        out.append((schema.shard_name(number), group, [m for m in plan.modalities if m in plan.sets[group[0].set].paths]))
    return out


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
               done: Callable[[str], bool]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Write the job's shards (those ``done`` does not say are complete) from staging, each member as soon as its
    transfer is done; yields ``(rel, manifest entry)`` per file written, then unstages the members."""
    from .shards import MEMBER_SUFFIX, write_shard_summed

    for m, rel in job.rels.items():
        if done(rel):
            continue
        crcs: dict[str, int] = {}

        def members(m: str = m, crcs: dict[str, int] = crcs) -> Iterator[tuple[str, bytes]]:
            for key, by in job.members:
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
            with contextlib.suppress(OSError):
                os.unlink(staging._path(_member_key(item)))


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
        todo.append((_job(plan, group, rels) if not convert else ShardJob(rels, [], {}), list(group)))

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
            if convert:
                blobs = _converted_members(plan, group, staging, kw)
                _stage_blobs(job, blobs, staging)
                futures: dict[tuple[str, str], Future[None]] = {}
                job = ShardJob(job.rels, [(s.key, {m: _blob_item(s.key, m) for m in job.rels}) for s in group],
                               {m: sorted({plan.sets[s.set].paths[m] for s in group}) for m in job.rels})
            else:
                ahead(i)
                futures, was_staged = pending.pop(i)
                reused += was_staged
                ahead(i + AHEAD)
            for rel, entry in _write_job(job, dest, staging, futures, done):
                record(rel, entry)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return files, mover.moved, reused


def _blob_item(key: str, m: str) -> tuple[str, Any, str, int, int]:
    """The staging identity of a member converted from chunk files (no source range: keyed by location)."""
    return ("converted", None, f"{key}/{m}", 0, 0)


def _stage_blobs(job: ShardJob, blobs: Mapping[tuple[str, str], bytes], staging: ByteCache) -> None:
    for (key, m), data in blobs.items():
        if not staging.put(_member_key(_blob_item(key, m)), data):
            raise OSError(errno.ENOSPC, f"the disk is full staging members under {staging.root}; nothing partial was "
                                        "left: free space and rerun to resume")


def _deal(client: Any, jobs: Sequence[ShardJob], dest: str, kw: dict[str, Any], workers: int, bar: Any,
          record: Callable[[str, dict[str, Any]], None]) -> tuple[int, int]:
    """Output shards dealt to a dask.distributed cluster's workers, one task each (``workers`` member requests at
    once in each); this process keeps the one manifest, recording each file as its task ends."""
    try:
        from distributed import Client, as_completed
    except ImportError as exc:
        raise SSL4EOError("fetch(client=...) needs dask.distributed: pip install 'ssl4eo-zarr[build]'") from exc
    own = isinstance(client, str)
    if own:
        client = Client(client)
    moved = reused = 0
    try:
        futures = client.map(make_output_shard, list(jobs), dest=dest, storage_options=kw.get("storage_options"),
                             threads=workers, pure=False,
                             key=[f"fetch-{os.path.basename(next(iter(j.rels.values())))}-{k}"
                                  for k, j in enumerate(jobs)])
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
            client.cancel([f for f in futures if not f.done()])
    finally:
        if own:
            client.close()
    return moved, reused


def _converted_members(plan: FetchPlan, group: Sequence[Selected], staging: ByteCache,
                       kw: dict[str, Any]) -> dict[tuple[str, str], bytes]:
    """Chunk-file locations as shard members (offset removed, the published member layout)."""
    from .reader import open_dataset
    from .webdataset import location_dataset, member_bytes

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

    from .reader import modality_dataset, open_chunk
    from .webdataset import chunk_from_locations, read_member
    from .writer import write_chunk

    files: dict[str, list[str]] = {m: [] for m in plan.modalities}
    moved = 0
    groups = [plan.selected[i: i + schema.SAMPLES_PER_FILE] for i in range(0, len(plan.selected), schema.SAMPLES_PER_FILE)]
    for g, group in enumerate(groups):
        name = schema.chunk_file_name(plan.split, g + 1)
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


def verify(dest: str) -> list[str]:
    """Problems of a fetched DEST, each naming the file and what is wrong; empty when the fetch finished and every
    selected location is in DEST, in every modality, intact. Checks the manifest's ``complete`` mark (written
    last), every planned file against the selection it should hold (location keys, in order), and every written
    file (data, metadata table, split list) against its size and CRC-32. Reads every written file once."""
    path = os.path.join(dest, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return [f"{dest}: no {MANIFEST}: not a fetched dataset (or its manifest was removed)"]
    except ValueError as exc:
        return [f"{path}: not readable JSON ({exc}): the manifest is damaged"]
    problems = []
    files: dict[str, Any] = doc.get("files") or {}
    expected: dict[str, list[str]] | None = doc.get("expected")
    if doc.get("complete") is False:
        problems.append(f"{dest}: the fetch did not finish ({sum(r in files for r in expected or {})} of "
                        f"{len(expected or {})} data files written): rerun the same fetch to complete it")
    if expected is not None:
        for rel, keys in sorted(expected.items()):
            entry = files.get(rel)
            if entry is None:
                problems.append(f"{os.path.join(dest, rel)}: not written (it is to hold {len(keys)} selected "
                                "locations)")
                continue
            held = [m["key"] for m in entry["members"]] if "members" in entry else entry.get("locations")
            if held is not None and held != keys:
                problems.append(f"{os.path.join(dest, rel)}: holds {len(held)} locations, the selection puts "
                                f"{len(keys)} there ({sorted(set(keys) - set(held))[:3]} missing)")
        placed = {k for keys in expected.values() for k in keys}
        lost = [k for k in (doc.get("settings") or {}).get("locations", []) if k not in placed]
        if lost:
            problems.append(f"{dest}: {len(lost)} selected locations have no file ({', '.join(lost[:5])})")
    for rel, entry in sorted(files.items()):
        path = os.path.join(dest, rel)
        if not os.path.exists(path):
            problems.append(f"{path}: missing")
        elif os.path.getsize(path) != entry["size"]:
            problems.append(f"{path}: {os.path.getsize(path)} bytes, the manifest says {entry['size']}")
        elif _file_crc(path) != entry["crc32"]:
            problems.append(f"{path}: CRC-32 differs from the manifest's (the file changed or is damaged)")
    return problems


__all__ = ["FetchPlan", "FetchResult", "SelectionError", "fetch", "plan_fetch", "read_ids", "verify"]

