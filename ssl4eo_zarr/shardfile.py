"""WebDataset tar shards of per-location ``.zarr.zip`` members, read without xarray or zarr-python.

The distribution published since 2026-02-17 stores ``{split}/{modality}/ssl4eos12_shard_NNNNNN.tar``, one tar
member ``<sample id>.zarr.zip`` per location (WebDataset key = sample id). Each member is a zarr format-2
group with consolidated metadata:

==============  ===================  ==========================================================
variable        dims                 meaning
==============  ===================  ==========================================================
``bands``       time, band, y, x     the image (S2 with the +1000 offset **removed**)
``cloud_mask``  time, y, x           uint8 SEnSeI v2 classes (S2 modalities)
``time``        time                 int64 ns since 1970, acquisition times (DEM: one timestep, 0)
``center_lat``  scalar               float64 degrees (also ``center_lon``)
``crs``         scalar               int64 EPSG code of the UTM zone
``file_id``     time                 source product ids
``x``, ``y``    x / y                float64 UTM metres of pixel centres (older writers: ``x_``/``y_``)
``spatial_ref`` scalar               the CRS as WKT (``crs_wkt`` attribute, as rioxarray writes it)
==============  ===================  ==========================================================

This module gives three ways in, all on the library's own zip + numcodecs path:

* :func:`scan_shard`: the member index (name, offset, size) from tar headers only, never the data;
* :class:`ShardStream`: a shard read front to back once, members read or skipped on request;
* :class:`MemberArchive`: one member as a zip archive inside the tar (range reads, local or remote).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from . import schema
from .errors import CorruptFileError, DamagedShardError, DatasetNotFoundError, UnsafeFileError
from .memberparts import FIRST_HEAD, PartsReader, TimeSelect, WindowFile
from .storage import MemoryZipArchive, PositionedFile, RetryingFile, ZipArchive, atomic_write, cache_dir, http, is_url, remote_fs
from .storage.cache import ByteCache, byte_cache
from .storage.zip import crc32
from .zarrv2 import ArrayMeta, GroupMeta, read_array, read_chunk, read_group, read_region

#: Suffix of every member of a shard.
MEMBER_SUFFIX = ".zarr.zip"
#: Read-ahead when a remote shard is streamed front to back.
STREAM_BLOCK = 4 << 20
#: The buffer a shard streamed over plain HTTP is read through (bytes). A stream whose first response is bounded
#: reaches this far past the members it is for, so that the buffer's last fill does not open the next response.
STREAM_BUFFER = 1 << 20
#: The most a stream's warm-up asks for in one request (bytes): the response is read into memory. A first batch
#: of 64 takes ~10 members of each of a worker's eight shards (44 MB of full-size S2L2A, with the margin 51 MB).
WARM_MAX = 64 << 20
#: A warm-up's room over its guess of its members' bytes (the mean of those seen): a member larger than the guess
#: costs a request more.
WARM_MARGIN = 1.15


@dataclass(frozen=True)
class Member:
    """One location in a shard: its WebDataset ``key`` (the sample id), tar member ``name``, and where its
    bytes lie in the tar (``offset``, ``size``)."""

    key: str
    name: str
    offset: int
    size: int


def _key(path: str, name: str) -> str:
    if name.startswith("/") or ".." in name.replace("\\", "/").split("/"):
        raise UnsafeFileError(path, f"unsafe member name {name!r} (absolute or with '..')")
    base = name.rsplit("/", 1)[-1]
    return base[: -len(MEMBER_SUFFIX)] if base.endswith(MEMBER_SUFFIX) else base.split(".", 1)[0]


def open_binary(path: str, *, sequential: bool = False, storage_options: Mapping[str, Any] | None = None,
                retries: int = 5, backoff: float = 0.2, front: int = 0, first_end: int | None = None, **_: Any):
    """A seekable binary file for a local path or URL.

    Remote files retry transient errors; ``sequential`` reads ahead in large blocks (streaming a shard),
    otherwise every read is one exact range request (random access inside a shard). ``front``: over plain HTTP,
    opening reads the first ``front`` bytes (and the size) in one request instead of asking the size alone.
    ``first_end`` (streamed over plain HTTP): the first response stops at that byte, the rest comes in another
    when read (see :class:`~ssl4eo_zarr.storage.http.HTTPStreamFile`).
    """
    if not is_url(path):
        try:
            return open(path, "rb", buffering=1 << 20 if sequential else -1)
        except FileNotFoundError:
            raise DatasetNotFoundError(f"shard not found: {path}") from None
    if http.handles(path, storage_options):  # plain HTTP(S): responses read straight into memory
        headers = dict(storage_options or {}).get("headers")

        def opener():
            if sequential:  # streamed front to back: one open-ended GET, read on as the stream goes
                return io.BufferedReader(http.HTTPStreamFile(path, headers, first_end=first_end), STREAM_BUFFER)
            return http.HTTPRangeFile(path, headers, tail=0, front=front)  # a tar is read from its start
    else:
        fs, remote = remote_fs(path, storage_options)
        kwargs = {"cache_type": "readahead", "block_size": STREAM_BLOCK} if sequential else {"cache_type": "none"}

        def opener():
            return fs.open(remote, "rb", **kwargs)
    try:
        return RetryingFile(opener, retries, backoff)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"shard not found: {path}") from None


def _streamer(path: str, archive_kwargs: Mapping[str, Any]) -> Any:
    """Over plain HTTP(S), a function of ``(start, end)`` giving a file that reads that span of ``path`` as it
    arrives (one bounded GET, retried like any read); else ``None``."""
    options = archive_kwargs.get("storage_options")
    if not is_url(path) or not http.handles(path, options):
        return None
    headers = dict(options or {}).get("headers")
    retries, backoff = archive_kwargs.get("retries", 5), archive_kwargs.get("backoff", 0.2)
    return lambda start, end: RetryingFile(lambda: http.HTTPStreamFile(path, headers, end=end), retries, backoff)


def _members(path: str, fh) -> Iterator[tuple[tarfile.TarInfo, Member]]:
    """Every regular member of a tar shard with its place, and a check that the shard really ends where the
    headers stop: Python's tarfile ends iteration silently at a header that fails its checksum, which would
    shrink a damaged shard without a word. Raises :class:`DamagedShardError` naming the byte of that header."""
    found = 0
    last: tarfile.TarInfo | None = None
    try:
        tar = tarfile.open(fileobj=fh, mode="r:")
        for info in tar:
            last = info
            if not info.isfile():
                continue
            found += info.name.endswith(MEMBER_SUFFIX)
            yield info, Member(_key(path, info.name), info.name, info.offset_data, info.size)
    except tarfile.TarError as exc:
        try:
            size = fh.seek(0, 2)
        except (OSError, ValueError):
            size = -1
        if last is not None and 0 <= size < last.offset_data + last.size:
            raise CorruptFileError(path, f"the file is cut at byte {size}, inside member {last.name} (bytes "
                                         f"{last.offset_data}..{last.offset_data + last.size}, after {found - 1} "
                                         "whole locations): it is truncated. Download it again") from None
        raise CorruptFileError(path, f"not a readable tar shard ({exc}); the file is truncated or damaged") from None
    end = tar.offset  # where the headers stopped: an end-of-archive block, or a damaged header
    # One forward read to the end (a streamed shard read again, or its size asked, would cost a request).
    fh.seek(end)
    tail = fh.read(_MAX_PADDING + tarfile.BLOCKSIZE)
    size = end + len(tail) if len(tail) < _MAX_PADDING + tarfile.BLOCKSIZE else fh.seek(0, 2)
    block = tail[: tarfile.BLOCKSIZE]
    if len(block) == tarfile.BLOCKSIZE and any(block):
        raise DamagedShardError(path, f"the tar header at byte {end} is damaged (after {found} locations); the "
                                      "members after it cannot be located. Download the shard again",
                                offset=end, readable=found)
    if len(block) < tarfile.BLOCKSIZE and end > 0:
        raise DamagedShardError(path, f"the shard ends at byte {end} without tar's end-of-archive blocks (after "
                                      f"{found} locations): it is truncated. Download it again",
                                offset=end, readable=found)
    # A zeroed header (a preallocated or sparse partial download, a zeroed disk block) reads as the end of the
    # archive: past the end-of-archive marker only zero padding may follow, or members were lost.
    rest = size - end
    if rest > _MAX_PADDING or any(tail):
        where = end + next((k for k, b in enumerate(tail) if b), 0) if rest <= _MAX_PADDING else end
        raise DamagedShardError(path, f"the archive seems to end at byte {end} (a zeroed tar header, after {found} "
                                      f"locations) but {rest} more bytes follow, not all zero (first data at byte "
                                      f"{where}): members after it cannot be located. Download the shard again",
                                offset=end, readable=found)


#: Zero padding allowed after a tar's end-of-archive marker: tar pads to 10,240-byte records; writers with
#: other blocking factors pad more, never megabytes.
_MAX_PADDING = 1 << 20


class _ReadAhead(PositionedFile):
    """Reads of a remote file served from one buffered window, refilled on a miss with as many bytes as the
    link's cost model says (:meth:`~ssl4eo_zarr.costmodel.Link.window`): one header's worth to walk, or a long
    window that reads through several members when moving them is cheaper than a round trip each. Tar headers
    lie one member apart, so the stride between reads is a member's size."""

    def __init__(self, raw, link: Any, budget: float | None = None):
        from .costmodel import HEADER_READ

        self._raw = raw
        self._link = link
        self._budget = budget
        self._buf = b""
        self._start = 0
        self._last: int | None = None
        self._window = HEADER_READ

    def _end(self) -> int:
        return self._raw.seek(0, 2)

    def read(self, n: int = -1) -> bytes:
        pos = self._pos
        if n < 0:
            n = self._end() - pos
        if self._last is not None:
            # tarfile reads a header, then 1 byte before the next one, then that header: the strides that
            # matter are a member apart (the 1-byte step is always inside the window just read).
            stride = pos - self._last
            if stride > 1:
                self._window = self._link.window(stride, budget=self._budget)
        self._last = pos
        at = pos - self._start
        if not (0 <= at and at + n <= len(self._buf)):
            self._raw.seek(pos)
            self._buf, self._start = self._raw.read(max(n, self._window)), pos
            at = 0
        data = self._buf[at: at + n]
        self._pos = pos + len(data)
        return data

    def close(self) -> None:
        self._raw.close()
        super().close()


def first_header(path: str, storage_options: Mapping[str, Any] | None = None) -> tarfile.TarInfo | None:
    """The first tar header of a shard (its first member's name and size) from one small read, or ``None``
    where there is none to read (missing, empty, not a tar)."""
    try:
        with open_binary(path, storage_options=storage_options) as fh:
            return tarfile.TarInfo.frombuf(fh.read(tarfile.BLOCKSIZE), "utf-8", "surrogateescape")
    except (OSError, tarfile.TarError, DatasetNotFoundError):
        return None


def scan_shard(path: str, *, until: Collection[str] | None = None, first: int | None = None, link: Any = None,
               budget: float | None = None, **archive_kwargs: Any) -> list[Member]:
    """Every ``*.zarr.zip`` member of a shard, in tar order, from its headers alone (tarfile seeks past the
    data: a local scan reads 512 bytes per location; a remote one makes one small range request per header, or
    reads through several members per request where the link makes that cheaper: ``link``, a
    :class:`~ssl4eo_zarr.costmodel.Link`, measured with :func:`~ssl4eo_zarr.costmodel.probe` when not given;
    ``budget``, the most bytes per header the read may move). With ``until`` (keys), the walk stops at the
    member whose key completes that set: the members before it, not the whole shard; with ``first`` (a count)
    it stops after that many members.

    Raises :class:`DamagedShardError` when the headers stop before the shard's end; its ``members`` attribute
    then holds the members before the damage."""
    found: list[Member] = []
    left = set(until) if until is not None else None
    opened = open_binary(path, **archive_kwargs)
    if is_url(path) and link is None:
        from .costmodel import probe

        link = probe(path, archive_kwargs.get("storage_options"))
    with _ReadAhead(opened, link, budget) if is_url(path) else opened as fh:
        try:
            for _info, m in _members(path, fh):
                if m.name.endswith(MEMBER_SUFFIX):
                    found.append(m)
                    if first is not None and len(found) >= first:
                        break
                    if left is not None:
                        left.discard(m.key)
                        if not left:
                            break
        except DamagedShardError as exc:
            exc.members = found  # type: ignore[attr-defined]
            raise
    return found


# -- the shard index cache ---------------------------------------------------------------------------------

def _fingerprint(path: str, storage_options: Mapping[str, Any] | None, max_age: float = 0.0) -> str | None:
    """Identity of a file's current version: size + mtime locally, ETag or Last-Modified (+ size) remotely
    (over HTTP, a HEAD's answer at most ``max_age`` seconds old is taken)."""
    try:
        if not is_url(path):
            st = os.stat(path)
            return f"{st.st_size}:{st.st_mtime_ns}"
        if http.handles(path, storage_options):
            info = http.answered(path, max_age) if max_age else None
            info = info or http.head(path, dict(storage_options or {}).get("headers"))
            info = {"size": info["size"], "ETag": info["etag"], "Last-Modified": info["last_modified"]}
        else:
            fs, remote = remote_fs(path, storage_options)
            info = fs.info(remote)
    except (OSError, ValueError):
        return None
    tag = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("Last-Modified") or ""
    return f"{info.get('size')}:{tag}" if tag or info.get("size") else None


def _index_file(path: str, finger: str) -> str:
    import hashlib

    name = hashlib.sha256(f"{path}\0{finger}".encode()).hexdigest()[:32] + ".json.gz"
    return os.path.join(cache_dir(), "shards", name)


def kept_doc(path: str, finger: str) -> dict[str, Any] | None:
    """What :func:`keep_doc` kept for ``path`` at version ``finger``, or ``None`` (absent, damaged, another
    file's)."""
    import gzip

    try:
        with gzip.open(_index_file(path, finger), "rt", encoding="utf-8") as f:
            doc = json.load(f)
        return doc if doc["path"] == path and doc["version"] == finger else None
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None


def keep_doc(path: str, finger: str, doc: dict[str, Any]) -> None:
    """Keep ``doc`` (JSON) about the shard ``path`` at version ``finger`` in the cache, gzip-compressed and
    written atomically; a read-only cache costs a rescan next time, nothing else."""
    import gzip

    try:
        with atomic_write(_index_file(path, finger)) as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as z:
            z.write(json.dumps({"path": path, "version": finger, **doc}, separators=(",", ":")).encode())
    except OSError:
        pass


def _load_index(path: str, finger: str) -> list[Member] | None:
    doc = kept_doc(path, finger)
    try:
        # [key, offset, size] when the name is the key's member name, else [key, name, offset, size]
        return None if doc is None else [Member(m[0], m[0] + MEMBER_SUFFIX, m[1], m[2]) if len(m) == 3
                                         else Member(*m) for m in doc["members"]]
    except (KeyError, TypeError):
        return None


def save_shard_index(path: str, finger: str, members: Sequence[Member]) -> None:
    """Keep a complete member index of the shard ``path`` at version ``finger`` (see :func:`shard_index`):
    gzip-compressed JSON, three numbers-and-a-key per member, so a TerraMesh shard's 10,240 members keep small."""
    rows = [[m.key, m.offset, m.size] if m.name == m.key + MEMBER_SUFFIX else [m.key, m.name, m.offset, m.size]
            for m in members]
    keep_doc(path, finger, {"members": rows})


#: How long a remote shard's version, once asked for, is taken as current by this process (seconds): a
#: training run's files do not change under it, and asking again each epoch costs a round trip per shard.
VERSION_TTL_S = 3600.0
_VERSIONS: dict[str, tuple[float, str | None]] = {}


def shard_version(path: str, storage_options: Mapping[str, Any] | None = None) -> str | None:
    """The current version of a shard (size + mtime locally, size + ETag or Last-Modified remotely; a remote
    answer is remembered by the process for :data:`VERSION_TTL_S`)."""
    if not is_url(path):
        return _fingerprint(path, storage_options)
    import time

    known = _VERSIONS.get(path)
    if known is not None and time.monotonic() - known[0] < VERSION_TTL_S and known[1] is not None:
        return known[1]
    version = _fingerprint(path, storage_options, VERSION_TTL_S)
    _VERSIONS[path] = (time.monotonic(), version)
    return version


def kept_shard_index(path: str, version: str | None) -> list[Member] | None:
    """The index :func:`shard_index` keeps for ``path`` at ``version`` (:func:`shard_version`), or ``None``."""
    return _load_index(path, version) if version else None


def shard_index(path: str, *, use_cache: bool = True, **archive_kwargs: Any) -> list[Member]:
    """:func:`scan_shard`, kept in :func:`cache_dir` keyed by the path and the file's version, so the next
    open reads no tar header. A changed file gets a new entry; a damaged entry is rebuilt silently."""
    finger = _fingerprint(path, archive_kwargs.get("storage_options")) if use_cache else None
    if finger is None:
        return scan_shard(path, **archive_kwargs)
    kept = _load_index(path, finger)
    if kept is not None:
        return kept
    members = scan_shard(path, **archive_kwargs)
    save_shard_index(path, finger, members)
    return members


# -- streaming ---------------------------------------------------------------------------------------------

class ShardStream:
    """One shard read front to back: :meth:`advance` moves to the next member and :meth:`read` returns its
    bytes. Members never read are skipped by seeking, so a resumed epoch does not read what it skips.

    With ``cache_dir`` (a remote shard), members read are kept in that :class:`~ssl4eo_zarr.storage.ByteCache`
    and the member index is kept once the shard was walked to its end; the next pass over the same version of
    the shard then walks the kept index instead of the tar headers and reads members from local disk (one
    request per shard to learn its version, and a range request for any member the cache lost).

    With ``jump`` (a remote shard, no cache), the shard is read in bounded windows and :meth:`read` given a
    selection reads a member by parts (:class:`~ssl4eo_zarr.memberparts.PartsReader`). Members up to ``warm``
    (the last one the first batch uses) are read whole, all in one request (two when ``member_bytes``, a guess
    of one member's size, falls short): reading by parts costs a round trip per member, and before the first
    batch those add up to hundreds (the published loader's one GET per shard is what a user compares with).
    Without ``jump``, a shard streamed whole asks for those members (as ``member_bytes`` tells) in its first
    response, and for the rest in a second when it reads on."""

    def __init__(self, path: str, members: Sequence[Member] | None = None, *, jump: int | None = None,
                 front: int = 0, warm: int = -1, member_bytes: int = 0, **archive_kwargs: Any):
        self.path = path
        self._kwargs = archive_kwargs
        self.index = -1
        self.member: Member | None = None
        self._info: tarfile.TarInfo | None = None
        self.cache = byte_cache(archive_kwargs.get("cache_dir"), archive_kwargs.get("cache_limit")) \
            if is_url(path) else None
        self.version = shard_version(path, archive_kwargs.get("storage_options")) if self.cache is not None else None
        # Members known beforehand (an index file, a walk at construction) are read by range, headers unread.
        self._kept = list(members) if members is not None else \
            kept_shard_index(path, self.version) if self.cache is not None else None
        self._walked: list[Member] = []
        self.complete = False
        self._fh: Any = None
        self._it: Iterator[tuple[tarfile.TarInfo, Member]] | None = None
        self.parts: PartsReader | None = None
        self.warm = warm
        self._sizes = 0
        self._front = 2 * tarfile.BLOCKSIZE + (front or FIRST_HEAD)
        if self._kept is None and jump is not None and self.cache is None:  # a cache keeps whole members
            # The opening request brings the size, the first header and the first member's front (``front``:
            # as far as the caller knows members to reach before their first left-out chunk): one round trip
            # where a HEAD, the header's window and the front took three. With a warm-up, the members it reads
            # whole as far as ``member_bytes`` tells.
            opening = self._front
            if warm >= 0 and member_bytes > 0:
                opening = max(opening, self._warm_bytes(0, warm + 1, member_bytes))
            streamer = _streamer(path, archive_kwargs) if warm >= 0 else None
            if streamer is not None:  # the warm-up streamed as it arrives: members decode while the rest comes
                self._fh = WindowFile(None, streamer)
                self._fh.reach = opening
            else:
                self._fh = WindowFile(open_binary(path, front=opening, **archive_kwargs))
            self._fh.ahead = opening
            self.parts = PartsReader(path, self._fh, jump)
            self._it = _members(path, self._fh)
        elif self._kept is None:
            # Streamed whole: an open-ended response would fill the socket's buffers with members past the first
            # batch's (~12 MB a stream) while the first batch waits for the link. Its first response stops there.
            first_end = self._warm_bytes(0, warm + 1, member_bytes) + STREAM_BUFFER \
                if warm >= 0 and member_bytes > 0 else None
            self._fh = open_binary(path, sequential=True, first_end=first_end, **archive_kwargs)
            self._it = _members(path, self._fh)
        elif jump is not None and self.cache is None and is_url(path):  # members known: each by parts, by range
            streamer = _streamer(path, archive_kwargs)
            self._fh = WindowFile(None if streamer else open_binary(path, **archive_kwargs), streamer)
            self.parts = PartsReader(path, self._fh, jump)
            if 0 <= warm < len(self._kept):
                first, last = self._kept[0], self._kept[warm]
                span = last.offset + last.size - first.offset
                held = sum(m.size + 2 * tarfile.BLOCKSIZE for m in self._kept[: warm + 1])
                if span <= held * WARM_MARGIN:  # members side by side (an index of the split): one span
                    self._fh.reach = first.offset + min(span, WARM_MAX)
                else:  # a sparse selection: a span would carry the members between; each by parts
                    self.warm = -1

    @staticmethod
    def _warm_bytes(at: int, n: int, member_bytes: float) -> int:
        """Where the warm-up's request should end: ``n`` members of about ``member_bytes`` each from byte ``at``
        (with their headers and the next member's front), a margin for members larger than the guess, at most
        :data:`WARM_MAX` (a request that size reads on)."""
        return at + min(int(n * (member_bytes * WARM_MARGIN + 2 * tarfile.BLOCKSIZE)) + FIRST_HEAD, WARM_MAX)

    def _warming(self, member: Member) -> None:
        """Past a warm-up member's header: a miss before the last warm-up member asks for all that is left."""
        assert isinstance(self._fh, WindowFile)
        self._sizes += member.size
        left = self.warm - self.index
        self._fh.reach = self._warm_bytes(member.offset + member.size, left, self._sizes / (self.index + 1)) \
            if left > 0 else 0
        if left == 0:  # should the next header miss, the member after it (read by parts) comes with it
            self._fh.ahead = self._front

    def advance(self) -> Member | None:
        """The next ``*.zarr.zip`` member, or ``None`` at the end of the shard."""
        if self._kept is not None:
            self.index += 1
            self.member = self._kept[self.index] if self.index < len(self._kept) else None
            self.complete = self.member is None
            return self.member
        assert self._it is not None
        for info, member in self._it:
            if not member.name.endswith(MEMBER_SUFFIX):
                continue
            self._info, self.member = info, member
            self.index += 1
            self._walked.append(member)
            if self.parts is not None and self.index <= self.warm:
                self._warming(member)
            return member
        self.member = None
        self.complete = True
        if self.cache is not None and self.version is not None:
            save_shard_index(self.path, self.version, self._walked)  # the next pass needs no header
        return None

    def _key(self, member: Member) -> str:
        return ByteCache.key("tar", self.path, self.version, member.name, member.offset, member.size)

    def read(self, select: TimeSelect | None = None, then: TimeSelect | None = None) -> bytes:
        """Bytes of the current member. With ``select`` (a remote shard opened with ``jump``, no cache), the
        time chunks it leaves out may be stepped over and come back zeroed (:mod:`ssl4eo_zarr.memberparts`);
        ``then`` is the next member's selection (``None``: the next member is not read)."""
        member = self.member
        assert member is not None
        if select is not None and self.parts is not None and self.index > self.warm:
            # A bytearray: every reader of member bytes takes a buffer (they read through memoryviews).
            return cast(bytes, self.parts.read(member.name, member.offset, member.size, select, then))
        if self.cache is None:
            return self._read_remote(member)
        return bytes(self.cache.fetch(self._key(member), lambda: self._read_remote(member)))

    def _read_remote(self, member: Member) -> bytes:
        if self._fh is None:  # walking a kept index: open only for a member the cache lost
            self._fh = open_binary(self.path, **self._kwargs)
        self._fh.seek(member.offset)
        data = self._fh.read(member.size)
        if len(data) != member.size:
            raise CorruptFileError(self.path, f"member at byte {member.offset} ends after {len(data)} of {member.size} "
                                              f"bytes: the file is cut at byte {member.offset + len(data)} "
                                              "(truncated shard)", member=member.name)
        return data

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


# -- one member ----------------------------------------------------------------------------------------------

class _Window(PositionedFile):
    """The bytes ``[offset, offset + size)`` of a seekable file, as a file of their own."""

    def __init__(self, fh, offset: int, size: int):
        self._fh, self._offset, self._size = fh, offset, size

    def _end(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        n = self._size - self._pos if n is None or n < 0 else min(n, self._size - self._pos)
        if n <= 0:
            return b""
        self._fh.seek(self._offset + self._pos)
        data = self._fh.read(n)
        self._pos += len(data)
        return data

    def close(self) -> None:
        self._fh.close()
        super().close()


class MemberArchive(ZipArchive):
    """Member ``member`` of the shard at ``shard`` as a zip archive, read in place with range requests
    (nothing else of the shard is read); errors name ``shard/member``."""

    def __init__(self, shard: str, member: Member, **archive_kwargs: Any):
        super().__init__(f"{shard}/{member.name}", **archive_kwargs)
        self.shard = shard
        self.member = member
        self._kwargs = archive_kwargs

    @property
    def is_remote(self) -> bool:
        return is_url(self.shard)

    def _open_fileobj(self):
        return _Window(open_binary(self.shard, **self._kwargs), self.member.offset, self.member.size)


def member_archive(data: bytes, where: str) -> MemoryZipArchive:
    """A member held in memory (read from a stream), named ``where`` in errors."""
    return MemoryZipArchive(data, where)


def bands_meta(group: GroupMeta, path: str) -> ArrayMeta:
    meta = group.arrays.get(schema.BANDS_VAR)
    if meta is None or meta.dims[:1] != ("time",) or len(meta.shape) != 4:
        found = None if meta is None else dict(zip(meta.dims, meta.shape))
        raise CorruptFileError(path, f"'bands' must be [time, band, y, x] in a shard member, found {found}")
    return meta


def member_modality(name: str, archive: ZipArchive, group: GroupMeta) -> schema.Modality:
    """The schema's modality ``name``, or one described by the member's own metadata when it is new."""
    meta = bands_meta(group, archive.path)
    mod = schema.find_modality(name)
    if mod is not None:
        return mod
    bands: tuple[str, ...] = tuple(f"b{i}" for i in range(meta.shape[1]))
    if "band" in group.arrays:
        bands = tuple(str(b) for b in read_array(archive, group.arrays["band"]))
    return schema.modality_from_metadata(name, meta.dtype, bands, meta.shape[0], schema.CLOUD_VAR in group.arrays)


def read_time(archive: ZipArchive, meta: ArrayMeta, t: int, dst: np.ndarray, scratch=None) -> None:
    """Timestep ``t`` of a ``[time, ...]`` array into ``dst`` (shape ``meta.shape[1:]``): decoded in place
    when a chunk holds exactly one timestep, else through the chunks it touches."""
    if not 0 <= t < meta.shape[0]:
        raise CorruptFileError(archive.path, f"timestep {t} asked, the member holds {meta.shape[0]}",
                               member=meta.name)
    if meta.chunks[0] == 1 and tuple(meta.chunks[1:]) == tuple(meta.shape[1:]):
        read_chunk(archive, meta, (t,) + (0,) * (len(meta.shape) - 1), out=dst.reshape(meta.chunks), scratch=scratch)
        return
    dst[...] = read_region(archive, meta, (slice(t, t + 1),) + tuple(slice(None) for _ in meta.shape[1:]))[0]


def _scalar(archive: ZipArchive, group: GroupMeta, name: str, default: Any) -> Any:
    meta = group.arrays.get(name)
    return read_array(archive, meta).reshape(-1)[0] if meta is not None else default


def member_metadata(archive: ZipArchive, group: GroupMeta) -> dict[str, Any]:
    """Per-location facts of a member: ``center_lat``/``center_lon`` float (degrees), ``crs`` int (EPSG),
    ``time`` int64 ``[T]`` (ns since 1970), ``file_id`` str ``[T]``, and ``sample``: the member's own ``sample``
    coordinate (TerraMesh: ``<id>_<season>``, see :func:`ssl4eo_zarr.schema.season_of`) or ``None``. Scalars
    and length-1 arrays (TerraMesh's form) read alike."""
    out: dict[str, Any] = {"center_lat": float(_scalar(archive, group, "center_lat", np.nan)),
                           "center_lon": float(_scalar(archive, group, "center_lon", np.nan)),
                           "crs": int(_scalar(archive, group, "crs", 0))}
    sample = _scalar(archive, group, "sample", None)
    out["sample"] = None if sample is None else str(sample)
    out["time"], out["file_id"] = member_times(archive, group)
    return out


_CF_UNITS_NS = {"nanoseconds": 1, "microseconds": 10**3, "milliseconds": 10**6, "seconds": 10**9,
                "minutes": 60 * 10**9, "hours": 3600 * 10**9, "days": 86400 * 10**9}


def cf_times_ns(raw: np.ndarray, attrs: Any, where: str = "") -> np.ndarray:
    """int64 ns since 1970 ``[T]`` from a stored ``time`` array: datetime64, or integers/floats with CF units
    (``"<unit> since <date>"``, as xarray writes datetime64; ``nanoseconds since 1970-01-01`` by this library
    and, by its loader's "ns as int", the published stack); integers without units are taken as ns."""
    if raw.dtype.kind == "M":
        return raw.astype("datetime64[ns]").astype(np.int64)
    units = str(attrs.get("units", "")) if attrs else ""
    if " since " not in units:
        return raw.astype(np.int64)
    unit, _, ref = units.partition(" since ")
    scale = _CF_UNITS_NS.get(unit.strip().lower())
    try:
        origin = np.datetime64(ref.strip().replace(" ", "T").rstrip("Z").split("+")[0], "ns").astype(np.int64)
    except ValueError:
        origin = None
    if scale is None or origin is None:
        raise CorruptFileError(where, f"'time' has units {units!r}, not a CF time unit this reader knows")
    return (np.round(raw.astype(np.float64) * scale).astype(np.int64) if raw.dtype.kind == "f"
            else raw.astype(np.int64) * scale) + origin


def member_times(archive: ZipArchive, group: GroupMeta) -> tuple[np.ndarray, np.ndarray]:
    """``(time int64 [T] ns since 1970, file_id str [T])`` of a member (empty where absent)."""
    times = group.arrays.get("time")
    raw = (cf_times_ns(read_array(archive, times), times.attrs, archive.path) if times is not None
           else np.zeros(0, np.int64))
    ids = group.arrays.get("file_id")
    return raw, (read_array(archive, ids).astype(str) if ids is not None else np.array([], dtype=str))


def member_grid(archive: ZipArchive, group: GroupMeta) -> tuple[np.ndarray, np.ndarray]:
    """float64 UTM metres of pixel centres ``(x [W], y [H])``: ``x``/``y`` as published, ``x_``/``y_`` from
    older writers, or pixel indices when neither carries coordinates."""
    out = []
    for axis in ("x", "y"):
        meta = group.arrays.get(f"{axis}_") or group.arrays.get(axis)
        out.append(read_array(archive, meta).astype(np.float64) if meta is not None else np.zeros(0))
    return out[0], out[1]


def write_shard(path: str, members: Iterable[tuple[str, bytes]]) -> str:
    """Write ``(member name, bytes)`` pairs as a POSIX tar shard, atomically, with fixed metadata so the same
    members always give the same bytes (an iterator keeps one member in memory at a time). Returns the path."""
    write_shard_summed(path, members)
    return path


class _Summing:
    """A write-only file that keeps the CRC-32 and size of what passes through it (tarfile needs ``tell``)."""

    def __init__(self, fh: Any):
        self.fh, self.crc, self.size = fh, 0, 0

    def write(self, b: Any) -> int:
        self.crc = crc32(b, self.crc)
        self.size += len(memoryview(b).cast("B"))
        return self.fh.write(b)

    def tell(self) -> int:
        return self.size


def write_shard_summed(path: str, members: Iterable[tuple[str, bytes]]) -> tuple[int, int]:
    """:func:`write_shard`, returning the file's ``(size in bytes, CRC-32)`` as it was written (a manifest entry
    without reading the file again)."""
    with atomic_write(path) as fh:
        sink = _Summing(fh)
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tar:  # type: ignore[call-overload]
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                info.mtime = 0
                tar.addfile(info, fileobj=io.BytesIO(data))
    return sink.size, sink.crc


def open_member_group(data: bytes, where: str) -> tuple[MemoryZipArchive, GroupMeta]:
    """A member's archive and metadata from its bytes."""
    archive = member_archive(data, where)
    return archive, read_group(archive)


__all__ = ["MEMBER_SUFFIX", "Member", "MemberArchive", "ShardStream", "bands_meta", "member_grid",
           "member_metadata", "member_modality", "member_times", "open_binary", "open_member_group", "read_time", "scan_shard",
           "keep_doc", "kept_doc",
           "kept_shard_index", "save_shard_index", "shard_index", "shard_version", "write_shard", "first_header",
           "write_shard_summed"]
