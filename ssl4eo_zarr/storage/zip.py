"""Read-only ``*.zarr.zip`` archives, local, remote or in memory, safe to move into worker processes.

One :class:`ZipArchive` owns one archive. It opens lazily in the process that reads it, reopens after
``fork``/pickling, serialises access to the shared file handle with a lock, checks every member's
CRC-32 on read and refuses archives that could harm the reader (names with ``..`` or absolute paths,
members larger than the caller allows). Remote archives (any fsspec protocol) are read with exact range
requests: only the central directory and the members asked for are transferred.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..errors import CorruptFileError, DatasetNotFoundError, UnsafeFileError
from . import http
from .cache import ByteCache, byte_cache
from .paths import PathLike, is_url, remote_fs, strip_file_scheme
from .retry import PositionedFile, RetryingFile

try:  # ISA-L computes the zip CRC-32 several times faster than zlib (a quarter of a chunk read otherwise)
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same values
    from zlib import crc32

#: Bytes read from the end of an archive when it is opened.
TAIL_BYTES = 32768
#: Largest member this library reads by default (a full S2L1C timestamp chunk is ~116 MB decoded,
#: members are stored compressed, so 1 GiB is far beyond any legitimate file).
MAX_MEMBER_BYTES = 1 << 30
#: Remote members up to this size are read with their local header in one request (coordinates, ids).
SMALL_MEMBER = 1 << 16


class _Entry(NamedTuple):
    header_offset: int
    compress_size: int
    file_size: int
    crc: int
    compress_type: int
    flag_bits: int


_EOCD = struct.Struct("<4s4H2LH")
_CDH = struct.Struct("<4s6H3L5H2L")


def _scan_central_directory(fh) -> tuple[list[tuple[str, _Entry]] | None, int, bytes]:
    """(name, entry) of every member from the zip's central directory, or ``None`` for archives this fast
    path does not handle (zip64, multi-disk, data prepended to the archive, encryption): zipfile reads those.

    ``zipfile`` builds a ZipInfo object per member, which made opening thousands of archives slow; this reads
    the archive's last 32 KiB once (one range request remotely): the end record, usually the whole directory
    and, since writers put it last, ``.zmetadata``. Also returns (tail offset, tail bytes) for reuse.
    """
    size = fh.seek(0, 2)
    if size < _EOCD.size:
        raise zipfile.BadZipFile("file is too short to be a zip archive")
    tail_len = min(size, TAIL_BYTES)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 and tail_len < size:  # a long archive comment: look further back
        tail_len = min(size, _EOCD.size + 65535)
        fh.seek(size - tail_len)
        tail = fh.read(tail_len)
        pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) - pos < _EOCD.size:
        return None, 0, b""
    tail_start = size - tail_len
    _sig, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, _comment = _EOCD.unpack_from(tail, pos)
    if disk or cd_disk or n_disk != n_total or 0xFFFF in (n_disk, n_total) or 0xFFFFFFFF in (cd_size, cd_offset):
        return None, 0, b""
    eocd_at = size - tail_len + pos
    if eocd_at - cd_size != cd_offset:
        return None, 0, b""
    start = cd_offset - (size - tail_len)
    if start >= 0:
        cd = tail[start: start + cd_size]
    else:
        fh.seek(cd_offset)
        cd = fh.read(cd_size)
    if len(cd) != cd_size:
        raise zipfile.BadZipFile("truncated central directory")
    out = []
    p = 0
    unpack = _CDH.unpack_from
    for _ in range(n_total):
        if p + _CDH.size > cd_size:
            raise zipfile.BadZipFile("truncated central directory")
        (sig, _made, _needed, flags, method, _time, _date, crc, csize, usize, n_len, x_len, c_len, _disk, _iattr,
         _eattr, offset) = unpack(cd, p)
        if sig != b"PK\x01\x02":
            raise zipfile.BadZipFile("bad magic number for central directory")
        if 0xFFFFFFFF in (csize, usize, offset) or flags & 0x1:
            return None, 0, b""
        raw_name = cd[p + _CDH.size: p + _CDH.size + n_len]
        try:
            name = raw_name.decode("ascii")  # C-fast, and what every zarr key is
        except UnicodeDecodeError:
            name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
        out.append((name, _Entry(offset, csize, usize, crc, method, flags)))
        p += _CDH.size + n_len + x_len + c_len
    return out, tail_start, tail


class ScratchBuffer:
    """A reusable read buffer. Growing replaces the buffer instead of resizing it, so a view still held
    elsewhere (say by a traceback) never blocks the next read; it grows with some room to spare, because chunk
    sizes differ by a few kB and every new buffer of tens of MB is paged in afresh."""

    def __init__(self) -> None:
        self._buf: np.ndarray = np.empty(0, dtype=np.uint8)

    def view(self, size: int) -> memoryview:
        if len(self._buf) < size:
            self._buf = np.empty(0, dtype=np.uint8)  # let go of the old one first: it may be the peak otherwise
            self._buf = np.empty(size + size // 8, dtype=np.uint8)  # not zero-filled: every read overwrites it
        return self._buf.data[:size]


_THREAD_SCRATCH = threading.local()


def thread_scratch() -> ScratchBuffer:
    """This thread's scratch buffer, kept for the life of the process: a loader's readers come and go with
    each epoch, their chunk sizes do not (a fork starts with the parent's buffer, copy-on-write, unused)."""
    scratch = getattr(_THREAD_SCRATCH, "buffer", None)
    if scratch is None or _THREAD_SCRATCH.pid != os.getpid():
        scratch = _THREAD_SCRATCH.buffer = ScratchBuffer()
        _THREAD_SCRATCH.pid = os.getpid()
    return scratch


class ZipArchive:
    """A read-only zip archive, opened lazily and reopened in each process that uses it.

    Parameters
    ----------
    path:
        Local path, ``file://`` path or fsspec URL of a ``*.zarr.zip`` file.
    storage_options:
        Passed to fsspec for URLs (credentials, ``block_size``, ``client_kwargs``...).
    retries, backoff:
        Remote reads are retried ``retries`` times, sleeping ``backoff * 2**k`` seconds in between.
    cache_dir, cache_limit:
        For URLs, keep every member read remotely in this local folder (a :class:`~.cache.ByteCache`, shared by
        processes, CRC-checked when reused, least recently used entries evicted beyond ``cache_limit`` bytes),
        so later reads of the same members are local.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        storage_options: Mapping[str, Any] | None = None,
        retries: int = 5,
        backoff: float = 0.2,
        cache_dir: str | None = None,
        cache_limit: int | str | None = None,
    ):
        self.path = strip_file_scheme(os.fspath(path))
        self.storage_options = dict(storage_options or {})
        self.retries = retries
        self.backoff = backoff
        self.cache_dir = cache_dir
        self.cache_limit = cache_limit
        self._lock = threading.Lock()
        self._zip: zipfile.ZipFile | None = None  # only for members that are not stored (deflated)
        self._fh: Any = None
        self._pid: int | None = None
        self._infos: dict[str, _Entry] | None = None
        self._tail = b""
        self._tail_start = 0
        self._duplicates: list[str] = []
        self._adopted = False
        self._pending: Callable[[], list[tuple[str, tuple[int, ...]]]] | None = None
        self._fs: tuple[Any, str, int] | None = None  # (fsspec filesystem, path on it, pid)
        self._held: dict[str, bytes | memoryview] = {}  # prefetched members (local header + data), each read once

    # -- pickling: never ship an open handle to another process ------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_lock=None, _zip=None, _fh=None, _pid=None, _infos=None, _duplicates=[], _tail=b"", _pending=None,
                     _adopted=False, _fs=None, _held={})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ZipArchive({self.path!r})"

    def __enter__(self) -> ZipArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_remote(self) -> bool:
        return is_url(self.path)

    @property
    def direct_http(self) -> bool:
        """Read with :mod:`.http` (Range requests into the caller's memory) rather than fsspec."""
        return http.handles(self.path, self.storage_options)

    @property
    def cache(self) -> ByteCache | None:
        """Where members read remotely are kept (``cache_dir``), or ``None``."""
        return byte_cache(self.cache_dir, self.cache_limit) if self.cache_dir and self.is_remote else None

    def _cache_key(self, name: str, entry: _Entry) -> str:
        return ByteCache.key("zip", self.path, name, entry.header_offset, entry.compress_size, entry.crc)

    def _to_cache(self, name: str, entry: _Entry, view: memoryview) -> None:
        """Keep a member read remotely; call it once ``view`` matched ``entry.crc`` (only good bytes are kept)."""
        cache = self.cache
        if cache is not None:
            cache.put(self._cache_key(name, entry), view, crc=entry.crc)

    def _filesystem(self) -> tuple[Any, str]:
        """(fsspec filesystem, path on it) of a remote archive, made once per process."""
        if self._fs is None or self._fs[2] != os.getpid():
            fs, remote_path = remote_fs(self.path, self.storage_options)
            self._fs = (fs, remote_path, os.getpid())
        return self._fs[0], self._fs[1]

    def _open_fileobj(self):
        if not self.is_remote:
            try:
                return open(self.path, "rb")
            except FileNotFoundError:
                raise DatasetNotFoundError(f"chunk file not found: {self.path}") from None
            except IsADirectoryError:
                raise CorruptFileError(self.path, "is a directory, expected a .zarr.zip file") from None
        if self.direct_http:
            headers = self.storage_options.get("headers")

            def opener():
                return http.HTTPRangeFile(self.path, headers)
        else:
            fs, remote_path = self._filesystem()

            def opener():
                # No read-ahead cache: zipfile asks for exact ranges (the directory, then each member), so
                # reading one chunk moves that chunk and not the blocks around it.
                return fs.open(remote_path, "rb", cache_type="none")

        try:
            return RetryingFile(opener, self.retries, self.backoff)
        except FileNotFoundError:
            raise DatasetNotFoundError(f"chunk file not found: {self.path}") from None

    def _ensure_open(self) -> dict[str, _Entry]:
        # A handle inherited through fork shares its file offset with the parent: reopen per process.
        if self._infos is None and self._pending is not None and self._pid == os.getpid():
            self._infos = {name: _Entry(*entry) for name, entry in self._pending()}
        if self._infos is not None and self._pid == os.getpid():
            if self._fh is None:  # directory known (adopted from an index): reopen the file only
                self._fh = self._open_fileobj()
            return self._infos
        self._zip = None
        fh = self._open_fileobj()
        try:
            scanned, self._tail_start, self._tail = _scan_central_directory(fh)
            if scanned is None:  # zip64, encryption, prepended data...: let zipfile handle it
                self._zip = zipfile.ZipFile(fh, "r")
                scanned = [(i.filename, _Entry(i.header_offset, i.compress_size, i.file_size, i.CRC, i.compress_type,
                                               i.flag_bits)) for i in self._zip.infolist()]
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error) as exc:
            fh.close()
            if isinstance(exc, DatasetNotFoundError):
                raise
            size = os.path.getsize(self.path) if not self.is_remote and os.path.exists(self.path) else None
            what = "empty file" if size == 0 else f"not a valid zip archive ({exc})"
            raise CorruptFileError(self.path, what + "; the file is truncated or damaged, download it again") from None
        infos: dict[str, _Entry] = {}
        duplicates = []
        for name, entry in scanned:
            if (name[:1] in ("/", "\\") or ".." in name or ":" in name) and (
                name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/") or ":" in name
            ):
                fh.close()
                raise UnsafeFileError(self.path, f"unsafe member name {name!r} (absolute or with '..')")
            if name in infos:
                duplicates.append(name)
            infos[name] = entry  # like zipfile, the last entry of a duplicated name wins
        self._fh, self._pid = fh, os.getpid()
        self._infos, self._duplicates = infos, duplicates
        return infos

    def close(self) -> None:
        """Close the handle; the archive reopens on the next read."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._fh is not None and self._pid == os.getpid():
            if self._zip is not None:
                self._zip.close()
            self._fh.close()
        self._zip = self._fh = self._infos = None
        self._tail = b""
        self._held = {}

    def release(self) -> None:
        """Free what is not needed between reads. A local archive closes its descriptor (it reopens on the next
        read, so a split of thousands of files holds none); a remote one keeps its directory, since reading it
        again would cost a request, and drops only the cached tail."""
        with self._lock:
            if self.is_remote:
                self._tail = b""
                self._held = {}
            elif self._adopted and self._zip is None:  # the directory came from an index: keep it
                if self._fh is not None and self._pid == os.getpid():
                    self._fh.close()
                self._fh = None
                self._tail = b""
            else:
                self._close()

    # -- the directory, for an index kept across sessions ----------------------------------------------
    def directory(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, (offset, compressed size, size, crc, method, flags))`` of every member, in order."""
        return [(name, tuple(entry)) for name, entry in self.directory_view().items()]

    def directory_view(self) -> Mapping[str, tuple[int, ...]]:
        """The member table itself, name -> (offset, compressed size, size, crc, method, flags), in order; not
        copied (closing the archive drops its reference, not the table), so keep it read-only."""
        with self._lock:
            return self._ensure_open()

    def adopt(self, directory: Callable[[], list[tuple[str, tuple[int, ...]]]]) -> None:
        """Take the directory from an index instead of reading it (the caller checked the file is unchanged).
        ``directory`` is called on the first read, so opening thousands of indexed files builds no entries."""
        with self._lock:
            self._pending = directory
            self._infos, self._duplicates, self._pid, self._fh, self._adopted = None, [], os.getpid(), None, True

    # -- queries ---------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Member names, each once."""
        with self._lock:
            return list(self._ensure_open())

    def duplicate_names(self) -> list[str]:
        """Member names stored more than once (zarr-python 3's ZipStore leaves these when a key is rewritten)."""
        with self._lock:
            self._ensure_open()
            return list(self._duplicates)

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._ensure_open()

    def _entry(self, name: str, max_bytes: int) -> _Entry:
        entry = self._ensure_open().get(name)
        if entry is None:
            raise CorruptFileError(self.path, "member is missing", member=name)
        if entry.file_size > max_bytes:
            raise UnsafeFileError(self.path, f"member declares {entry.file_size} bytes, more than the {max_bytes} "
                                             "allowed", member=name)
        return entry

    def _view_in(self, name: str, entry: _Entry, data: bytes | bytearray | memoryview, at: int) -> memoryview | None:
        """The data of member ``name`` whose local header starts at ``data[at]`` (shorter than the member when
        ``data`` ends early), or ``None`` when ``data`` does not reach past the header."""
        header = bytes(data[at: at + 30])
        if len(header) < 30:
            return None
        if header[:4] != b"PK\x03\x04":
            raise CorruptFileError(self.path, "bad local file header", member=name)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        begin = at + 30 + name_len + extra_len
        if begin > len(data):
            return None
        self._check_local_name(name, bytes(data[at + 30: at + 30 + name_len]))
        return memoryview(data)[begin: begin + entry.file_size]

    def _read_stored(self, name: str, entry: _Entry, view: memoryview) -> str:
        """Member ``name`` into ``view``; where it came from: ``"tail"`` (read with the directory), ``"cache"``
        (``cache_dir``, CRC-checked already) or ``"read"`` (the archive itself: the caller checks its CRC, then
        keeps it with :meth:`_to_cache`)."""
        local = entry.header_offset - self._tail_start
        if self._tail and local >= 0:  # already read with the directory
            cached = self._view_in(name, entry, self._tail, local)
            if cached is not None and len(cached) == len(view):
                view[:] = cached
                return "tail"
        cache = self.cache
        if cache is None:
            self._read_remote(name, entry, view)
            return "read"
        key = self._cache_key(name, entry)
        if cache.get_into(key, view):
            return "cache"
        with cache.locked(key):  # other processes missing it wait for this read, then find it kept
            if cache.get_into(key, view):
                return "cache"
            self._read_remote(name, entry, view)
            if crc32(view) != entry.crc:
                return "read"  # the caller names the damage
            cache.put(key, view, crc=entry.crc)
            return "cache"  # checked and kept

    def _read_remote(self, name: str, entry: _Entry, view: memoryview) -> None:
        fh = self._fh
        encoded = name.encode("utf-8")
        if self.is_remote and entry.compress_size <= SMALL_MEMBER:  # one request for header, name and data
            fh.seek(entry.header_offset)
            whole = fh.read(30 + len(encoded) + entry.compress_size)
            found = self._view_in(name, entry, whole, 0)
            if found is not None and len(found) == len(view):
                view[:] = found
                return
        fh.seek(entry.header_offset)
        header = fh.read(30 + len(encoded))  # header and name in one read (one request remotely)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise CorruptFileError(self.path, "bad local file header", member=name)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        local_name = header[30: 30 + name_len]
        if len(local_name) < name_len:  # the header's name is longer than the directory's: damaged
            local_name += fh.read(name_len - len(local_name))
        self._check_local_name(name, local_name)
        fh.seek(entry.header_offset + 30 + name_len + extra_len)
        got = 0
        size = len(view)
        while got < size:
            n = fh.readinto(view[got:])
            if not n:
                raise CorruptFileError(self.path, f"member ends after {got} of {size} bytes (truncated file)",
                                       member=name)
            got += n

    def _check_local_name(self, name: str, local: bytes) -> None:
        # As zipfile does: the directory and the member's own header must agree, or one of them is damaged.
        if local != name.encode("utf-8") and local != name.encode("cp437", "replace"):
            raise CorruptFileError(self.path, f"directory and local header disagree on the name ({local!r})",
                                   member=name)

    def _stored(self, entry: _Entry) -> bool:
        return entry.compress_type == zipfile.ZIP_STORED and not entry.flag_bits & 0x1

    def read(self, name: str, *, max_bytes: int = MAX_MEMBER_BYTES) -> bytes:
        """Bytes of member ``name``, CRC-checked.

        Raises :class:`CorruptFileError` naming the archive and member when it is missing, damaged or
        larger than ``max_bytes``.
        """
        with self._lock:
            entry = self._entry(name, max_bytes)
            stored, source = self._stored(entry), ""
            if stored:
                buf = bytearray(entry.file_size)
                source = self._read_stored(name, entry, memoryview(buf))
                data = bytes(buf)
            else:
                try:
                    if self._zip is None:
                        self._zip = zipfile.ZipFile(self._fh, "r")
                    with self._zip.open(self._zip.getinfo(name)) as f:
                        data = f.read(max_bytes + 1)
                except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError, KeyError) as exc:
                    if isinstance(exc, OSError) and not isinstance(exc, zipfile.BadZipFile) and self.is_remote:
                        raise
                    raise CorruptFileError(self.path, f"cannot read member: {exc}", member=name) from None
        if len(data) != entry.file_size:
            raise CorruptFileError(
                self.path, f"member holds {len(data)} bytes, its header says {entry.file_size}", member=name
            )
        if crc32(data) != entry.crc:
            raise CorruptFileError(self.path, "CRC-32 mismatch: the member is damaged", member=name)
        if stored and source == "read":
            self._to_cache(name, entry, memoryview(data))
        return data

    def read_into(self, name: str, scratch: ScratchBuffer, *, max_bytes: int = MAX_MEMBER_BYTES) -> memoryview:
        """Member ``name`` read into the reusable buffer ``scratch``; CRC-checked.

        The loader's hot path: reusing one buffer per worker avoids allocating (and page-faulting) a new
        ``bytes`` of tens of MB for every chunk. A member fetched by :func:`prefetch` is served from memory
        (a view, no copy) and forgotten. Deflated members fall back to :meth:`read`.
        """
        with self._lock:
            entry = self._entry(name, max_bytes)
            stored = self._stored(entry)
            if stored:
                held = self._held.pop(name, None)
                found = self._view_in(name, entry, held, 0) if held is not None else None
                if found is not None and len(found) == entry.file_size:
                    view, source = found, "read"
                else:  # not fetched ahead, or an extra field made the guessed range short
                    view = scratch.view(entry.file_size)
                    source = self._read_stored(name, entry, view)
        if not stored:
            return memoryview(self.read(name, max_bytes=max_bytes))
        if source != "cache" and crc32(view) != entry.crc:  # a cache entry was checked as it was read
            raise CorruptFileError(self.path, "CRC-32 mismatch: the member is damaged", member=name)
        if source == "read":
            self._to_cache(name, entry, view)
        return view

    # -- prefetching (remote archives) -----------------------------------------------------------------
    def _spans(self, names: Sequence[str]) -> list[tuple[str, int, int]]:
        """``(name, start, end)``: the byte range of each stored member's local header and data, assuming no
        extra field (what zipfile and zarr write); members read from memory already are left out."""
        with self._lock:
            infos = self._ensure_open()
            spans = []
            for name in names:
                entry = infos.get(name)
                if entry is None or not self._stored(entry) or entry.file_size > MAX_MEMBER_BYTES or name in self._held:
                    continue
                if self.cache is not None and self._cache_key(name, entry) in self.cache:
                    continue  # read from local disk
                end = entry.header_offset + 30 + len(name.encode()) + entry.compress_size
                if self._tail and entry.header_offset >= self._tail_start and end - self._tail_start <= len(self._tail):
                    continue
                spans.append((name, entry.header_offset, end))
            return spans

    def _hold(self, name: str, data: bytes | memoryview) -> None:
        with self._lock:
            if self._infos is not None:  # still open: closing forgets what was held
                self._held[name] = data

    def forget_prefetched(self) -> None:
        """Drop members fetched ahead and not read (their memory is about to be reused)."""
        with self._lock:
            self._held = {}


def prefetch(requests: Sequence[tuple[ZipArchive, Sequence[str]]], *, concurrency: int = 8,
             into: Callable[[int], memoryview] | None = None) -> int:
    """Fetch members of remote archives ahead of their reads, ``concurrency`` range requests in flight at once
    (one request per member: its local header and data); each archive's next :meth:`~ZipArchive.read_into`
    of a fetched member is then served from memory. Local archives, and members an archive's ``cache_dir``
    holds already, are left alone. A failed fetch is dropped: the read itself then retries and reports as usual. Returns the bytes
    fetched. Safe to call from a background thread while other archives are being read.

    ``into(nbytes)`` gives the memory that plain HTTP(S) members are read into (all of one call's members
    side by side; a reused buffer avoids faulting in new pages); it must stay untouched until they are read
    or :meth:`~ZipArchive.forget_prefetched` is called. Default: new memory.
    """
    from concurrent.futures import ThreadPoolExecutor

    direct: list[tuple[ZipArchive, str, int, int]] = []
    groups: dict[int, tuple[Any, list[tuple[ZipArchive, str, str, int, int]]]] = {}
    for archive, names in requests:
        if not archive.is_remote:
            continue
        spans = archive._spans(names)
        if archive.direct_http:
            direct += [(archive, name, start, end) for name, start, end in spans]
            continue
        fs, rpath = archive._filesystem()
        for name, start, end in spans:
            groups.setdefault(id(fs), (fs, []))[1].append((archive, name, rpath, start, end))
    fetched = 0
    if direct:
        total = sum(end - start for _a, _n, start, end in direct)
        buf = into(total) if into is not None else memoryview(bytearray(total))
        views, at = [], 0
        for _a, _n, start, end in direct:
            views.append(buf[at: at + end - start])
            at += end - start

        def fetch(k: int) -> int:
            archive, name, start, _end = direct[k]
            try:
                http.read_range(archive.path, start, views[k], archive.storage_options.get("headers"))
            except OSError:
                return 0
            archive._hold(name, views[k])
            return len(views[k])

        with ThreadPoolExecutor(min(concurrency, len(direct)), thread_name_prefix="ssl4eo-fetch") as pool:
            fetched += sum(pool.map(fetch, range(len(direct))))
    for fs, items in groups.values():
        extra = {"batch_size": concurrency} if getattr(fs, "async_impl", False) else {}
        results = fs.cat_ranges([i[2] for i in items], [i[3] for i in items], [i[4] for i in items],
                                on_error="return", **extra)
        for (archive, name, _rpath, start, end), data in zip(items, results):
            if isinstance(data, (bytes, bytearray)) and len(data) == end - start:  # a server that ignored Range: not held
                archive._hold(name, bytes(data))
                fetched += len(data)
    return fetched


class MemoryFile(PositionedFile):
    """A read-only file over a buffer (``bytes``, ``bytearray``, ``memoryview``): each read copies what it
    returns, never the whole buffer (``io.BytesIO`` copies a ``bytearray`` whole)."""

    def __init__(self, data: bytes | bytearray | memoryview):
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def _end(self) -> int:
        return len(self._view)

    def read(self, n: int | None = -1) -> bytes:
        end = len(self._view) if n is None or n < 0 else min(self._pos + n, len(self._view))
        out = bytes(self._view[self._pos:end])
        self._pos = max(self._pos, end)
        return out


class MemoryZipArchive(ZipArchive):
    """A zip archive held in memory (a member of a tar shard); ``name`` is used in error messages. A
    ``bytearray`` (a member read by parts) is kept as it is, not copied."""

    def __init__(self, data: bytes | bytearray, name: str = "<memory>"):
        super().__init__(name)
        self._data = data if isinstance(data, bytes | bytearray) else bytes(data)

    def _open_fileobj(self):
        return io.BytesIO(self._data) if isinstance(self._data, bytes) else MemoryFile(self._data)

    def read_into(self, name: str, scratch: ScratchBuffer, *, max_bytes: int = MAX_MEMBER_BYTES) -> memoryview:
        """A CRC-checked view of a stored member's bytes where they already lie in memory: no copy."""
        with self._lock:
            entry = self._entry(name, max_bytes)
            stored = self._stored(entry)
            view = self._view_in(name, entry, self._data, entry.header_offset) if stored else None
        if not stored:
            return super().read_into(name, scratch, max_bytes=max_bytes)
        if view is None:
            raise CorruptFileError(self.path, "bad local file header", member=name)
        if len(view) != entry.file_size:
            raise CorruptFileError(self.path, f"member ends after {len(view)} of {entry.file_size} bytes (truncated)",
                                   member=name)
        if crc32(view) != entry.crc:
            raise CorruptFileError(self.path, "CRC-32 mismatch: the member is damaged", member=name)
        return view
