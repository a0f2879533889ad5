"""What a fetch will move, from indexes alone: the plan (shards to index, selected members, DEST's shards) and
the estimate a dry run prints before any tar header is read."""


from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import schema
from ..errors import ModalityMismatchError
from ..layout import SHARDS, ChunkSet, resolve
from ..shardindex import WALK_WORKERS, load_index, resolve_locations, root_of, shards_for_ids, table_path, walk
from ..storage import basename
from .selection import SelectionError, _check_arguments, _draw, _filter_table, read_ids

#: Download rate the dry run's time estimate assumes (bytes/s): what users report from the host.
ASSUMED_RATE = 20e6


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
        from ..costmodel import fmt_seconds

        if self.indexed:
            plan = "planning: from the index file, no tar header read"
        else:
            plan = (f"planning: ~{self.requests:,.0f} requests ({self.index_bytes / 1e6:,.0f} MB) to index "
                    f"{self.shards} shard files, about {fmt_seconds(self.index_seconds)}"
                    + ("" if self.exact else " (assuming 512 locations per shard)"))
        return (f"{plan}\nmoving: ~{self.members:,} members, {self.member_bytes / 1e9:,.2f} GB, about "
                f"{fmt_seconds(self.transfer_seconds)} over {self.workers} connections\nlink: {self.link.describe()}")


#: Bytes a fetch may move beyond the members it selects, as a fraction of them (tar headers, probes): the cost
#: model reads members through while indexing only where that stays inside this budget.
OVERHEAD = 0.15


def _shard_members(sets: Sequence[ChunkSet], mods: Sequence[str], workers: int, archive_kwargs: dict[str, Any],
                   index: Any = None, progress: Any = None, until: Sequence[set[str] | None] | None = None,
                   budget: float | None = None, heads: Sequence[int] | None = None) -> list[dict[str, list[Any]]]:
    jobs = [(k, m) for k in range(len(sets)) for m in mods if m in sets[k].paths]  # a subset's own modalities
    if index is not None:
        found = [index.members(m, sets[k].name) for k, m in jobs]
    else:
        found = walk([sets[k].paths[m] for k, m in jobs], workers=workers, progress=progress,
                     until=[until[k] for k, _m in jobs] if until is not None else None,
                     first=[heads[k] for k, _m in jobs] if heads is not None else None, budget=budget,
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


#: How far from a shard's front a drawn run of members may start (headers walked to reach it, at most).
FRONT = 64


def _front_draw(sets: Sequence[ChunkSet], limit: int | None, seed: int,
                storage_options: Mapping[str, Any] | None) -> dict[int, tuple[int, int]] | None:
    """``{shard set: (first member, count)}`` of a ``limit`` drawn with ``seed`` over the published SSL4EO-S12
    shards, or ``None`` where this draw does not apply (another corpus, shards that are not the published list).

    The published shards are globally shuffled, so any run of a shard's members is a uniform sample of its
    locations: each shard's share of the draw is what a uniform draw of ``limit`` gives it (a seeded
    multivariate hypergeometric draw), taken as a run starting at a seeded place among its first
    :data:`FRONT` members. Finding a member costs a header walk to it; the run near the front costs ~40
    headers a shard where picks anywhere cost ~430 (a 1 % sample of train: ~35 k requests, not ~400 k)."""
    from ..shardindex import known_counts

    if limit is None or not sets or sets[0].kind != SHARDS or schema.get_corpus(sets[0].corpus) is not schema.SSL4EO_S12:
        return None
    counts = known_counts(sets, storage_options)
    if counts is None:
        return None
    rng = np.random.default_rng(seed)
    share = rng.multivariate_hypergeometric(np.asarray(counts, dtype=np.int64), min(int(limit), sum(counts)))
    out = {}
    for k, (n, c) in enumerate(zip(counts, share.tolist())):
        if c:
            out[k] = (int(rng.integers(0, min(FRONT, n - c) + 1)), int(c))
    return out


def _chunk_rows(sets: Sequence[ChunkSet], mod: str, workers: int, archive_kwargs: dict[str, Any]) -> list[list[str]]:
    from ..chunkfile import open_chunk

    with ThreadPoolExecutor(max(1, workers)) as pool:
        opened = list(pool.map(lambda cs: open_chunk(cs.paths[mod], **archive_kwargs), sets))
    return [[str(s) for s in cf.samples] for cf in opened]


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
    from ..shardfile import shard_version

    mods = [schema.modality_name(m) for m in modalities]
    if not mods:
        raise SelectionError("no modalities given: name at least one (e.g. S2L2A)")
    _check_arguments(bbox, months, dates, max_cloud, limit)
    sets = resolve(source, split=split, modalities=mods, storage_options=storage_options)
    kind = sets[0].kind
    kw: dict[str, Any] = {"storage_options": storage_options}
    filters = any(v is not None for v in (bbox, months, dates, max_cloud))
    given = read_ids(locations, raw=True) if locations is not None else None
    ids = list(dict.fromkeys(schema.location_key(x) for x in given)) if given is not None else None
    if given is not None and kind == SHARDS and schema.get_corpus(sets[0].corpus).timestamps == 1:
        # TerraMesh: SSL4EO-S12 ids name four one-season members, found by the members' own sample ids.
        keys, missing = resolve_locations(sets, given, workers=index_workers, progress=progress, **kw)
        if missing:
            raise SelectionError(f"{len(missing)} location ids are in no SSL4EO-S12 member of {source} ({split}): "
                                 f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; nothing was written")
        ids = sorted(keys)
    table, path, raw = None, None, None
    if filters or metadata is not None or (kind == SHARDS and (ids is not None or limit is not None)):
        path = metadata or table_path(root_of(sets), split, storage_options)
        if path is None and (filters or metadata is not None):
            raise SelectionError(f"--bbox/--months/--dates/--max-cloud need the metadata table: none at "
                                 f"{root_of(sets)}/{split}_metadata.parquet or .../splits/{split}_metadata.parquet; "
                                 "pass metadata=PATH")
        if path is not None:
            from ..metadata import read_metadata, read_table

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
    loaded = load_index(index, storage_options) if index is not None else None
    fronts = _front_draw(sets, limit, seed, storage_options) if candidates is None and loaded is None else None
    if fronts is not None:
        drawn = True
    elif kind == SHARDS and limit is not None and table is not None and "tar" in table.columns:
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
    if fronts is not None:
        scan = sorted(fronts)
    scanned = [sets[k] for k in scan]
    depths = {k: sum(fronts[k]) for k in scan} if fronts is not None else None
    estimate = None
    if kind == SHARDS:
        estimate = estimate_plan(sets, mods, scan, holding, len(candidates) if candidates is not None else limit,
                                 workers, index_workers, storage_options, indexed=loaded is not None, depths=depths)
        if notify is not None:
            notify(estimate.summary())
    budget = estimate.budget if estimate is not None else None
    members = (_shard_members(scanned, mods, index_workers, kw, loaded, progress,
                              [holding[k] for k in scan] if holding else None, budget,
                              [depths[k] for k in scan] if depths else None) if kind == SHARDS else None)
    rows = ([[x.key for x in next(iter(by_mod.values()))] for by_mod in members] if members is not None
            else _chunk_rows(scanned, mods[0], workers or 8, kw))
    where = {key: (scan[j], i, j) for j, keys in enumerate(rows) for i, key in enumerate(keys)}
    total = sum(len(r) for r in rows)
    label = (f"{split} at the source" if len(scan) == len(sets) and fronts is None else
             f"{split} in the first {sum(depths.values())} members of {len(scan)} of {len(sets)} shards (a seeded "
             f"place near each front: the published shards are globally shuffled)" if depths else
             f"{split} in the {len(scan)} of {len(sets)} shards that hold a candidate (the table's tar column)")
    if fronts is not None:
        candidates = [rows[j][i] for j, k in enumerate(scan) for i in range(fronts[k][0], sum(fronts[k]))
                      if i < len(rows[j])]
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
        picked = [s.key for s in selected]
        known = set(table.index[table.index.isin(picked)])  # one pass over the index (a set of it per key took minutes)
        table = table.loc[[k for k in picked if k in known]]
        kept_table = path
    plan = FetchPlan(source, split, mods, kind, sets, selected, steps, nbytes, table, versions, kept_table, raw)
    plan.estimate = estimate
    return plan


def estimate_plan(sets: Sequence[ChunkSet], mods: Sequence[str], scan: Sequence[int],
                  holding: Mapping[int, Collection[str]] | None, selected: int | None, workers: int | None,
                  index_workers: int, storage_options: Mapping[str, Any] | None = None, *,
                  indexed: bool = False, depths: Mapping[int, int] | None = None) -> PlanEstimate:
    """The :class:`PlanEstimate` of indexing the shard sets ``scan`` (each up to its last id of ``holding``
    when given) and moving ``selected`` locations (all of the scanned shards' when ``None``), from the published
    counts (or 512 a shard) and probes: the link (:func:`~ssl4eo_zarr.costmodel.probe`, a few requests) and
    the first member's size in each modality (one request each). ``depths``: headers each scanned shard is
    walked to, where known (a draw near the shards' fronts)."""
    from ..costmodel import expected_last, probe
    from ..shardindex import known_counts

    counts = known_counts(sets, storage_options)
    exact = counts is not None
    sizes = counts if counts is not None else [schema.LOCATIONS_PER_SHARD] * len(sets)
    first = next(iter(sets[scan[0]].paths.values()))
    link = probe(first, storage_options, connections=index_workers)
    member = {m: _first_member_size(next(sets[k].paths[m] for k in scan if m in sets[k].paths), storage_options)
              for m in mods if any(m in sets[k].paths for k in scan)}
    requests = nbytes = serial = 0.0
    total = 0.0
    jobs = [(k, m) for k in scan for m in mods if m in sets[k].paths]
    walked = {k: float(depths[k]) if depths else expected_last(sizes[k], len(holding[k])) if holding
              else float(sizes[k]) for k in scan}
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
    from ..shardfile import first_header

    info = first_header(path, storage_options)
    return info.size if info is not None else 0


def _chunk_bytes(sets: Sequence[ChunkSet], used: Sequence[int], mods: Sequence[str], kw: dict[str, Any]) -> int:
    from ..storage import ZipArchive

    total = 0
    for k in used:
        for m in mods:
            with ZipArchive(sets[k].paths[m], **kw) as archive:
                total += sum(entry[1] for entry in archive.directory_view().values())
    return total


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


def output_chunk_files(plan: FetchPlan) -> list[tuple[str, list[Selected]]]:
    """``(file name, locations)`` of DEST's chunk files: 64 selected locations each in source order, numbered
    from 1 as published."""
    step = schema.SAMPLES_PER_FILE
    return [(schema.chunk_file_name(plan.split, g // step + 1), plan.selected[g: g + step])
            for g in range(0, len(plan.selected), step)]
