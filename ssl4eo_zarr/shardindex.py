"""Where every member of a set of shards lies, learnt once and as cheaply as the host allows.

The floor below the loader and :func:`~ssl4eo_zarr.fetch`: both ask this module how many members each shard
holds and where each lies, and it answers from the cheapest source that knows:

1. **the published totals** (:func:`known_counts`): the published shard names of a corpus fix every shard's
   count (``schema.Subset.counts``), so a training run over the published data reads no header before it
   streams; each shard is checked against its count as it streams (a shard holding another count is named);
2. **an index file** (:func:`write_index`, ``ssl4eo-zarr index``): every member's shard, key, offset and size
   per modality in one Parquet file, with each shard's size and ETag, made once and shared; a shard whose
   version changed since is refused (:class:`StaleIndexError`);
3. **the root's metadata table** (:func:`shards_for_ids`): its ``tar`` column names the shard of each location,
   so a selection walks only the shards that hold it;
4. **the tar headers** (:func:`walk`): many shards at once over one connection pool.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import schema
from .errors import DatasetNotFoundError, SSL4EOError
from .layout import ChunkSet
from .shardfile import MEMBER_SUFFIX, Member, kept_shard_index, save_shard_index, scan_shard, shard_index, shard_version
from .storage import exists, is_url, join, parent, read_bytes

#: Shards walked at once (header walks are round trips: they overlap, the bytes are few).
WALK_WORKERS = 64
#: Smallest bytes a member can take in a shard: its 512-byte header and at least one data block.
_MIN_MEMBER_BYTES = 1024


class StaleIndexError(SSL4EOError, ValueError):
    """An index file made for another version of a shard (its size or ETag changed since)."""


def known_counts(sets: Sequence[ChunkSet], storage_options: Mapping[str, Any] | None = None) -> list[int] | None:
    """Members of each shard set from the published totals, without reading a shard: when the sets are exactly
    the published shards of their corpus and split (whole subsets, in order), none is a local file too small
    to hold its count, and the first remote shard of each subset is not either (one HEAD per subset); else
    ``None``. Inferred counts are checked as each shard streams."""
    splits = {cs.split for cs in sets}
    split = splits.pop() if len(splits) == 1 else None
    if split is None:
        return None
    corpus = schema.get_corpus(sets[0].corpus)
    counts = schema.published_shard_counts(split, [cs.name for cs in sets], corpus)
    if counts is None:
        return None
    for cs, n in zip(sets, counts):
        for path in cs.paths.values():
            # A copy made under the published names (a fetched subset, synthetic data) holds fewer: its files
            # are too small for the published counts, and a stat says so before any header is read.
            if not is_url(path) and os.path.exists(path) and os.path.getsize(path) < n * _MIN_MEMBER_BYTES:
                return None
    firsts = {cs.subset: k for k, cs in reversed(list(enumerate(sets)))}
    for k in firsts.values():
        path = next(iter(sets[k].paths.values()))
        if is_url(path):
            # A copy served under the published names (a mirrored subset, a fetch put on a server): its first
            # shard's size says so before anything streams; the version is remembered for the stream's cache.
            version = shard_version(path, storage_options)
            size = version.split(":", 1)[0] if version else ""
            if size.isdigit() and int(size) < counts[k] * _MIN_MEMBER_BYTES:
                return None
    return counts


# -- the metadata table's tar column -----------------------------------------------------------------------------

def table_path(root: str, split: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The metadata table published at a dataset root: the 2026 release's ``{split}_metadata.parquet``, else the
    first release's ``splits/{split}_metadata.parquet``; ``None`` when neither answers."""
    for candidate in (join(root, f"{split}_metadata.parquet"), join(root, "splits", f"{split}_metadata.parquet")):
        try:
            if exists(candidate, storage_options):
                return candidate
        except OSError:
            continue
    return None


def root_of(sets: Sequence[ChunkSet]) -> str:
    """The dataset root above ``ROOT/{split}/{modality}/{shard}``."""
    first = next(iter(sets[0].paths.values()))
    return parent(parent(parent(first)))


def shards_for_ids(sets: Sequence[ChunkSet], table: Any, ids: Iterable[str]) -> dict[int, set[str]] | None:
    """``{index into sets: the ids it holds}`` for the shards that hold ``ids``, from a metadata table's ``tar``
    column (read by :func:`~ssl4eo_zarr.metadata.read_metadata`); ``None`` when the table cannot say for every id
    (no ``tar`` column, an id it lacks, or a shard name that is not among ``sets``): then every shard must be
    walked."""
    wanted = list(ids)
    if table is None or "tar" not in table.columns:
        return None
    index = set(table.index)
    if any(k not in index for k in wanted):
        return None
    tars = [str(t).replace("\\", "/").rsplit("/", 1)[-1] for t in table.loc[wanted, "tar"]]
    by_name = {cs.name: k for k, cs in enumerate(sets)}
    if not set(tars) <= set(by_name):
        return None
    out: dict[int, set[str]] = {}
    for key, name in zip(wanted, tars):
        out.setdefault(by_name[name], set()).add(key)
    return dict(sorted(out.items()))


def read_root_table(sets: Sequence[ChunkSet], storage_options: Mapping[str, Any] | None = None) -> Any:
    """The root's metadata table (see :func:`table_path`) as :func:`~ssl4eo_zarr.metadata.read_metadata` gives it,
    or ``None`` when the root has none."""
    split = sets[0].split
    path = table_path(root_of(sets), split, storage_options) if split is not None else None
    if path is None:
        return None
    from .metadata import read_metadata, read_table

    return read_metadata(read_table(path, storage_options=storage_options))


# -- header walks ------------------------------------------------------------------------------------------------

def walk(paths: Sequence[str], *, workers: int = WALK_WORKERS, progress: Callable[..., Any] | None = None,
         until: Sequence[Collection[str] | None] | None = None, first: Sequence[int | None] | None = None,
         link: Any = None, budget: float | None = None, **archive_kwargs: Any) -> list[list[Member]]:
    """The members of each shard in ``paths`` (tar headers; kept indexes where the cache has them), ``workers``
    shards at once. ``until[k]``: the keys wanted from shard ``k``; its walk stops at the last of them (the
    members before it; a complete kept index is used when there is one); ``first[k]``: only its first that many
    members are wanted (a kept index at least that long serves). Headers are walked or read through as
    the link's cost model chooses (``link``: a :class:`~ssl4eo_zarr.costmodel.Link`, probed when ``None``;
    ``budget``: the most bytes per header the index may move, ``None`` for no limit). ``progress``: a tqdm-like
    factory (``total=``, ``desc=``, ``unit=``) for a bar of shards."""
    bar = progress(total=len(paths), desc="indexing shards", unit="shard") if progress is not None else None
    wanted = list(until) if until is not None else [None] * len(paths)
    heads = list(first) if first is not None else [None] * len(paths)
    if link is None and paths:
        from .costmodel import probe

        link = probe(paths[0], archive_kwargs.get("storage_options"), connections=workers)
    how = {"link": link, "budget": budget}

    def one(job: tuple[str, Collection[str] | None, int | None]) -> list[Member]:
        path, keys, head = job
        try:
            if keys is None and head is None:
                members = shard_index(path, **archive_kwargs, **how)
            else:
                members = _walk_until(path, keys, archive_kwargs | how, head)
        except FileNotFoundError:  # answered a moment ago (found by name or version), gone now
            raise DatasetNotFoundError(f"{path} vanished from the source (404) while its headers were read") from None
        if bar is not None:
            bar.update(1)
        return members

    try:
        with ThreadPoolExecutor(max(1, min(workers, len(paths) or 1))) as pool:
            return list(pool.map(one, zip(paths, wanted, heads)))
    finally:
        if bar is not None:
            bar.close()


def _walk_until(path: str, keys: Collection[str] | None, archive_kwargs: dict[str, Any],
                first: int | None = None) -> list[Member]:
    """The members of ``path`` up to the last of ``keys`` (or its ``first`` members): from a kept complete index,
    or a kept walk that went that far, else walked now (and kept, so the next plan of the same selection reads
    no header)."""
    version = shard_version(path, archive_kwargs.get("storage_options"))
    if version is None:
        return scan_shard(path, until=keys, first=first, **archive_kwargs)
    for whole, kept in ((True, kept_shard_index(path, version)), (False, kept_shard_index(path, version + PARTIAL))):
        if kept is None:
            continue
        if first is not None and (whole or len(kept) >= first):
            return kept[:first]
        if first is None and set(keys or ()) <= {m.key for m in kept}:
            return kept
    members = scan_shard(path, until=keys, first=first, **archive_kwargs)
    previous = kept_shard_index(path, version + PARTIAL)
    if previous is None or len(members) > len(previous):
        save_shard_index(path, version + PARTIAL, members)
    return members


#: Marks a kept index that ends before its shard does (a walk stopped at its last wanted member).
PARTIAL = ":partial"


# -- the members' own sample ids (TerraMesh) ------------------------------------------------------------------

#: Marks the kept list of a shard's members' own ``sample`` coordinates.
SAMPLES = ":samples"


def member_samples(path: str, members: Sequence[Member], *, workers: int = 16, **archive_kwargs: Any) -> list[str]:
    """Each member's own ``sample`` coordinate (TerraMesh: ``<7-digit id>_<season>``; ``""`` where a member has
    none), read by range: the member's zip directory, ``.zmetadata`` and one small chunk (a few kB, three reads)
    per member, ``workers`` at once. Kept in the cache beside the shard's index, keyed by its version."""
    from .shardfile import MemberArchive, keep_doc, kept_doc
    from .zarrv2 import read_array, read_group

    version = shard_version(path, archive_kwargs.get("storage_options"))
    keys = [m.key for m in members]
    kept = kept_doc(path, version + SAMPLES) if version else None
    if kept is not None and kept.get("keys") == keys:
        return list(kept["samples"])

    def one(member: Member) -> str:
        archive = MemberArchive(path, member, **archive_kwargs)
        try:
            meta = read_group(archive).arrays.get("sample")
            return "" if meta is None else str(read_array(archive, meta).reshape(-1)[0])
        finally:
            archive.release()

    with ThreadPoolExecutor(max(1, min(workers, len(members) or 1))) as pool:
        samples = list(pool.map(one, members))
    if version:
        keep_doc(path, version + SAMPLES, {"keys": keys, "samples": samples})
    return samples


def wanted_seasons(values: Iterable[Any]) -> tuple[set[str], dict[str, set[int] | None]]:
    """``(member keys, {7-digit location id: seasons or None for all four})`` of a TerraMesh selection: member
    keys (``ssl4eos12_val_0080385``) as they are; an SSL4EO-S12 id (``194630``, ``0194630``) takes its four
    one-season members; ``0194630_1`` the one of season 1."""
    keys: set[str] = set()
    ids: dict[str, set[int] | None] = {}
    for value in values:
        text = str(value).strip()
        loc, season = schema.season_of(text)
        if season >= 0:
            chosen = ids.setdefault(loc, set())
            if chosen is not None:  # None: all four asked for already
                chosen.add(season)
            continue
        key = schema.location_key(text)
        if key.isdigit():
            ids[key] = None
        else:
            keys.add(key)
    return keys, ids


def resolve_locations(sets: Sequence[ChunkSet], values: Iterable[Any], *, workers: int = WALK_WORKERS,
                      progress: Callable[..., Any] | None = None, **archive_kwargs: Any) -> tuple[set[str], list[str]]:
    """``(member keys, values not found)`` for a TerraMesh selection (:func:`wanted_seasons`): location ids are
    looked up in the members' own ``sample`` coordinates of the SSL4EO-S12 shards (:func:`member_samples`,
    kept after the first time; every member of those shards is asked once, so a first lookup over TerraMesh
    train reads 975,872 small ranges: give a local copy or keep the cache). Member keys are taken as given."""
    keys, ids = wanted_seasons(values)
    missing: list[str] = []
    if not ids:
        return keys, missing
    ssl = [cs for cs in sets if cs.subset == "ssl4eos12"]
    if not ssl:
        return keys, sorted(ids)
    # Any modality names the members: the smallest reads are the same few kB whatever the member's size.
    paths = [cs.paths[next(iter(cs.paths))] for cs in ssl]
    indexes = walk(paths, workers=workers, **archive_kwargs)
    bar = progress(total=len(paths), desc="reading sample ids", unit="shard") if progress is not None else None
    found: dict[str, set[int]] = {}
    per_shard = max(1, workers // max(1, len(paths)))

    def one(job: tuple[str, list[Member]]) -> None:
        path, members = job
        for member, own in zip(members, member_samples(path, members, workers=per_shard, **archive_kwargs)):
            loc, season = schema.season_of(own)
            if loc in ids and (ids[loc] is None or season in ids[loc]):  # type: ignore[operator]
                keys.add(member.key)
                found.setdefault(loc, set()).add(season)
        if bar is not None:
            bar.update(1)

    try:
        with ThreadPoolExecutor(max(1, min(workers, len(paths)))) as pool:
            list(pool.map(one, zip(paths, indexes)))
    finally:
        if bar is not None:
            bar.close()
    for loc, want in ids.items():
        got = found.get(loc, set())
        if want is None:
            missing += [] if got else [loc]
        else:
            missing += [f"{loc}_{s}" for s in sorted(want - got)]
    return keys, missing


# -- index files -------------------------------------------------------------------------------------------------

#: Key of the index file's Parquet metadata that holds what it indexes (split, modalities, shard versions).
_META_KEY = b"ssl4eo_zarr.index"


def write_index(source: str, out: str, *, split: str, modalities: Sequence[str], workers: int = WALK_WORKERS,
                storage_options: Mapping[str, Any] | None = None, progress: Callable[..., Any] | None = None) -> str:
    """Write one Parquet file with every member of ``split``'s shards at ``source`` (a root, local or URL):
    a row per member and modality with ``modality``, ``shard`` (file name), ``key``, ``offset`` and ``size``
    (bytes of the ``.zarr.zip`` inside the tar), in shard and tar order; each shard's size and version (ETag
    or mtime) in the file's metadata. ``ChunkDataset(..., index=out)`` and ``fetch(..., index=out)`` then read
    no tar header. Returns ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .layout import SHARDS, resolve
    from .storage import atomic_write

    mods = [schema.modality_name(m) for m in modalities]
    sets = resolve(source, split=split, modalities=mods, storage_options=storage_options)
    if sets[0].kind != SHARDS:
        raise ValueError(f"{source} holds chunk files, not shards: an index is for WebDataset shards")
    jobs = [(cs, m) for cs in sets for m in mods if m in cs.paths]
    found = walk([cs.paths[m] for cs, m in jobs], workers=workers, progress=progress, storage_options=storage_options)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        versions = list(pool.map(lambda job: shard_version(job[0].paths[job[1]], storage_options), jobs))
    columns: dict[str, list[Any]] = {"modality": [], "shard": [], "key": [], "offset": [], "size": []}
    shards = []
    for (cs, m), members, version in zip(jobs, found, versions):
        shards.append({"modality": m, "shard": cs.name, "version": version, "members": len(members),
                       "subset": cs.subset})
        for x in members:
            if x.name != x.key + MEMBER_SUFFIX:
                raise ValueError(f"{cs.paths[m]}: member {x.name!r} is not named <key>{MEMBER_SUFFIX}")
            columns["modality"].append(m)
            columns["shard"].append(cs.name)
            columns["key"].append(x.key)
            columns["offset"].append(x.offset)
            columns["size"].append(x.size)
    table = pa.table({"modality": pa.array(columns["modality"]).dictionary_encode(),
                      "shard": pa.array(columns["shard"]).dictionary_encode(),
                      "key": pa.array(columns["key"], pa.string()),
                      "offset": pa.array(columns["offset"], pa.int64()),
                      "size": pa.array(columns["size"], pa.int64())})
    meta = {"split": split, "corpus": sets[0].corpus, "modalities": mods, "shards": shards}
    table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    with atomic_write(out) as f:
        pq.write_table(table, f, compression="zstd")
    return out


class ShardIndex:
    """An index file read back: ``members(modality, shard)`` and ``version(modality, shard)``; ``split``,
    ``modalities`` and the shard names it covers. Load with :func:`load_index`."""

    def __init__(self, path: str, meta: dict[str, Any], rows: dict[tuple[str, str], list[Member]]):
        self.path = path
        self.split: str = meta["split"]
        self.corpus: str = meta.get("corpus", schema.SSL4EO_S12.name)
        self.modalities: list[str] = list(meta["modalities"])
        self._versions = {(s["modality"], s["shard"]): s["version"] for s in meta["shards"]}
        self._rows = rows

    @property
    def rows(self) -> int:
        """Members indexed, all modalities together."""
        return sum(len(v) for v in self._rows.values())

    def shard_names(self, modality: str) -> list[str]:
        """The shards indexed for ``modality``, in index order."""
        return [s for m, s in self._versions if m == modality]

    def covers(self, modality: str, shard: str) -> bool:
        return (modality, shard) in self._versions

    def members(self, modality: str, shard: str) -> list[Member]:
        """Members of ``shard`` (a file name) for ``modality``, in tar order."""
        if not self.covers(modality, shard):
            raise DatasetNotFoundError(f"the index {self.path} does not cover {self.split}/{modality}/{shard}; "
                                       f"it indexes {', '.join(self.modalities)}: make one that does with "
                                       "`ssl4eo-zarr index`")
        return self._rows.get((modality, shard), [])

    def version(self, modality: str, shard: str) -> str | None:
        return self._versions.get((modality, shard))

    def check(self, path: str, modality: str, shard: str, version: str | None) -> None:
        """Refuse the index for ``path`` when the shard's current ``version`` differs from the indexed one."""
        indexed = self.version(modality, shard)
        if version is None or indexed is None or not _differ(indexed, version):
            return
        raise StaleIndexError(f"{path} changed since the index {self.path} was made (indexed version {indexed}, "
                              f"now {version}): its member offsets may be wrong. Make the index again with "
                              "`ssl4eo-zarr index`")


    def check_all(self, shards: Sequence[tuple[str, str, str]],
                  storage_options: Mapping[str, Any] | None = None) -> list[str | None]:
        """:meth:`check` for each ``(path, modality, shard name)``, their versions asked for 32 at a time (a round
        trip each remotely); returns the versions."""
        with ThreadPoolExecutor(WALK_WORKERS) as pool:
            versions = list(pool.map(lambda job: shard_version(job[0], storage_options), shards))
        for (path, modality, shard), version in zip(shards, versions):
            self.check(path, modality, shard, version)
        return versions


def _differ(a: str, b: str) -> bool:
    """Whether two shard versions (``size:tag``, see :func:`~ssl4eo_zarr.shardfile.shard_version`) name other files:
    sizes always compare, and ETags (a host's) when both have one. A local mtime (digits alone) is not compared:
    a copy gets a new one with the same bytes, and an index made of a local copy serves its source too."""
    size_a, _, tag_a = a.partition(":")
    size_b, _, tag_b = b.partition(":")
    if size_a != size_b:
        return True
    return not tag_a.isdigit() and not tag_b.isdigit() and tag_a != tag_b


_LOADED: dict[str, ShardIndex] = {}


def load_index(path: str, storage_options: Mapping[str, Any] | None = None) -> ShardIndex:
    """Read an index file written by :func:`write_index` (local path or URL; once per process)."""
    found = _LOADED.get(path)
    if found is not None:
        return found
    import io

    import pyarrow.parquet as pq

    try:
        data = read_bytes(path, storage_options)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"index file not found: {path}") from None
    table = pq.read_table(io.BytesIO(data))
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise ValueError(f"{path} is not an index written by `ssl4eo-zarr index` (no {_META_KEY.decode()} metadata)")
    meta = json.loads(raw)
    cols = {name: table.column(name).to_pylist() for name in ("modality", "shard", "key", "offset", "size")}
    rows: dict[tuple[str, str], list[Member]] = {}
    for m, s, k, o, n in zip(cols["modality"], cols["shard"], cols["key"], cols["offset"], cols["size"]):
        rows.setdefault((m, s), []).append(Member(k, k + MEMBER_SUFFIX, o, n))
    found = _LOADED[path] = ShardIndex(path, meta, rows)
    return found


def counts_from_index(index: ShardIndex, sets: Sequence[ChunkSet], modalities: Sequence[str]) -> list[int]:
    """Members of each shard set from ``index``: the first modality each set holds (the others must agree, which
    the index says without a request)."""
    out = []
    for cs in sets:
        held = [m for m in modalities if m in cs.paths]
        lengths = {m: len(index.members(m, cs.name)) for m in held}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"the index {index.path} gives {cs.name} different lengths per modality: {lengths}")
        out.append(next(iter(lengths.values())) if lengths else 0)
    return out


__all__ = ["ShardIndex", "StaleIndexError", "counts_from_index", "known_counts", "load_index", "read_root_table",
           "root_of", "shards_for_ids", "table_path", "walk", "write_index"]
