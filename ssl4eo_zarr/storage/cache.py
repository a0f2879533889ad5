"""Remote bytes kept on local disk: the second epoch of a remote dataset reads from here.

Entries are the units the readers fetch: one zip member of a chunk file (a stored chunk, keyed by the archive
URL, the member's name, place, size and CRC-32 from the zip directory) or one location's ``.zarr.zip`` of a tar
shard (keyed by the shard URL, its version, and the member's name, place and size). Each entry is one file
written atomically (a temporary file renamed into place), ending in a 12-byte trailer with its length and
CRC-32, so a damaged or truncated entry is detected when reused, deleted and fetched again.

Several processes (DataLoader workers, the ranks of a node) share one cache folder: a process that misses an
entry takes the entry's file lock, looks again, and only then fetches, so one member is never downloaded twice
at once. The bytes kept are counted in a ledger all processes update under its lock, so the byte budget holds
for them together: a put that takes the total over it evicts the least recently used entries (a hit touches
its entry's modification time) down to 90 % of the budget, under a folder-wide lock. A cache that cannot be
written (a full disk, no free inodes, no permission) is no error: reads go to the host, with one warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

try:
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same values
    from zlib import crc32

_TRAILER = struct.Struct("<4sII")  # magic, length (low 32 bits), CRC-32
_MAGIC = b"S4C1"
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
#: A temporary file older than this (seconds) was left by a process that died while writing it.
STALE_TMP_S = 3600


def parse_size(value: int | float | str | None) -> int | None:
    """Bytes from ``200GB``, ``1.5 TB``, ``500MiB`` or a number; ``None`` stays ``None`` (no budget)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value!r}")
        return int(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"cannot read {value!r} as a size; use bytes or a number with kB, MB, GB, TB, MiB, GiB, ...")
    return int(float(match.group(1)) * _UNITS[unit])


@contextlib.contextmanager
def _locked(path: str, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock on ``path`` (created if missing); yields whether it was taken (always when blocking)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows): entries are still atomic, fetches may double
        yield True
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


_WARNED: set[str] = set()


def _trouble(root: str, exc: OSError) -> None:
    """Cache trouble is no error: say it once per folder and process, and read from the host."""
    if root not in _WARNED:
        _WARNED.add(root)
        warnings.warn(f"the cache {root} cannot be used ({exc.strerror or exc}): reading from the host without it",
                      RuntimeWarning, stacklevel=3)


class ByteCache:
    """A folder of remote bytes, shared by processes (see the module docstring).

    Parameters
    ----------
    root:
        The cache folder (created).
    limit:
        Byte budget (``200GB``, ``500MiB`` or an int); ``None`` keeps everything.
    warn:
        Say once when the folder cannot be written (a reader's cache: it reads from the host instead); ``False``
        where the caller reports it itself (a fetch's staging, whose full disk is the fetch's error).
    """

    def __init__(self, root: str | os.PathLike, limit: int | str | None = None, *, warn: bool = True):
        self.root = os.path.abspath(os.fspath(root))
        self.limit = parse_size(limit)
        self.warn = warn
        os.makedirs(os.path.join(self.root, "bytes"), exist_ok=True)

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "limit": self.limit, "warn": self.warn}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], state["limit"], warn=state.get("warn", True))  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"ByteCache({self.root!r}, limit={self.limit})"

    def _trouble(self, exc: OSError) -> None:
        if self.warn:
            _trouble(self.root, exc)

    @staticmethod
    def key(*parts: Any) -> str:
        """A key from the parts that identify a piece of remote bytes."""
        return "\0".join(str(p) for p in parts)

    def _path(self, key: str) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return os.path.join(self.root, "bytes", digest[:2], digest[2:])

    def __contains__(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def _accept(self, path: str, data: memoryview, trailer: bytes) -> bool:
        """Whether ``data`` matches the entry's ``trailer`` (then the entry is marked most recently used); a
        damaged entry is deleted (fetched again by the caller)."""
        if len(trailer) == _TRAILER.size:
            magic, length, crc = _TRAILER.unpack(trailer)
            if magic == _MAGIC and length == len(data) & 0xFFFFFFFF and crc == crc32(data):
                with contextlib.suppress(OSError):
                    os.utime(path)
                return True
        with contextlib.suppress(OSError):
            os.unlink(path)
        return False

    def get(self, key: str) -> bytes | None:
        """The bytes kept under ``key``, checked against their trailer, or ``None`` (a damaged entry is deleted)."""
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except OSError:
            return None
        end = max(len(blob) - _TRAILER.size, 0)
        return blob[:end] if self._accept(path, memoryview(blob)[:end], blob[end:]) else None

    def get_into(self, key: str, out: memoryview) -> bool:
        """Read the entry under ``key`` straight into ``out`` (no copy), checked against its trailer; ``False``
        when there is none of exactly ``len(out)`` bytes (a damaged entry is deleted)."""
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size != len(out) + _TRAILER.size:
                    return False
                got = f.readinto(out)
                trailer = f.read(_TRAILER.size)
        except OSError:
            return False
        return self._accept(path, out[:got], trailer)

    def put(self, key: str, data: bytes | memoryview, crc: int | None = None) -> bool:
        """Keep ``data`` under ``key`` (atomically; an existing entry is replaced); ``crc``, its CRC-32 when the
        caller has it already. A full disk leaves nothing behind and is not an error: the data was read, it is
        just not kept (``False``)."""
        path = self._path(key)
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"  # threads of a process may put one key at once
        view = memoryview(data).cast("B")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(view)
                f.write(_TRAILER.pack(_MAGIC, len(view) & 0xFFFFFFFF, crc32(view) if crc is None else crc))
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._trouble(exc)
            return False
        if self.limit is not None:
            try:
                total = self._count(len(view) + _TRAILER.size)
            except OSError:
                total = self.limit + 1  # no ledger: let a scan decide
            if total > self.limit:
                self.evict(wait=True)
        return True

    def discard(self, key: str) -> None:
        """Drop the entry under ``key`` if there is one (staged bytes that served their purpose)."""
        with contextlib.suppress(OSError):
            os.unlink(self._path(key))

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """The entry's file lock, for a read-through: while one process fetches what is missing, the others
        wait for it (then find it kept). Without a lock (the folder cannot be written) it yields all the same."""
        path = self._path(key)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            lock = _locked(path + ".lock")
            lock.__enter__()
        except OSError as exc:
            self._trouble(exc)
            yield
            return
        try:
            yield
        finally:
            lock.__exit__(None, None, None)

    def fetch(self, key: str, load: Callable[[], bytes | memoryview]) -> bytes | memoryview:
        """``get(key)``, or else ``load()`` kept under ``key``; concurrent callers of one key (other workers,
        other ranks) wait for the first instead of loading it again."""
        data = self.get(key)
        if data is not None:
            return data
        with self.locked(key):
            data = self.get(key)
            if data is not None:
                return data
            loaded = load()
            self.put(key, loaded)
            return loaded

    def _count(self, delta: int) -> int:
        """Add ``delta`` bytes to the ledger under its lock; returns the new total."""
        with _locked(self._ledger + ".lock"):
            try:
                with open(self._ledger, encoding="ascii") as f:
                    total = int(f.read() or 0) + delta
            except (OSError, ValueError):  # none yet, or damaged: count what is there
                total = sum(size for _t, size, _p in self._entries())
            self._write_ledger(total)
        return max(0, total)

    @property
    def _ledger(self) -> str:
        return os.path.join(self.root, "ledger")

    def _write_ledger(self, total: int) -> None:
        with open(self._ledger, "w", encoding="ascii") as f:
            f.write(str(max(0, total)))

    def _entries(self) -> list[tuple[float, int, str]]:
        out = []
        now = time.time()
        base = os.path.join(self.root, "bytes")
        for sub in os.scandir(base):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub.path):
                try:
                    st = entry.stat()
                except OSError:
                    continue
                if entry.name.endswith(".lock"):
                    continue
                if ".tmp-" in entry.name:
                    if now - st.st_mtime > STALE_TMP_S:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
                    continue
                out.append((st.st_mtime, st.st_size, entry.path))
        return out

    def size(self) -> int:
        """Bytes kept (entries with their trailers)."""
        return sum(size for _t, size, _p in self._entries())

    def evict(self, *, wait: bool = False) -> int:
        """Delete the least recently used entries until the cache holds at most 90 % of its budget; returns
        the bytes freed. Skipped while another process evicts, unless ``wait`` (a put that took the total over
        the budget waits for that eviction and then checks again)."""
        if self.limit is None:
            return 0
        try:
            evicting = _locked(os.path.join(self.root, "evict.lock"), blocking=wait)
            mine = evicting.__enter__()
        except OSError as exc:
            self._trouble(exc)
            return 0
        try:
            if not mine:
                return 0
            # The ledger stays locked from the count to the new total: a put that lands meanwhile adds its
            # bytes after the new total is written, never into a total that is then overwritten.
            with _locked(self._ledger + ".lock"):
                entries = sorted(self._entries())
                total = sum(size for _t, size, _p in entries)
                freed = 0
                if total > self.limit:
                    goal = int(self.limit * 0.9)
                    for _mtime, size, path in entries:
                        if total - freed <= goal:
                            break
                        with contextlib.suppress(OSError):
                            os.unlink(path)
                            freed += size
                        # Its lock goes too, unless a process holds it (a fetch of that entry under way).
                        with contextlib.suppress(OSError), _locked(path + ".lock", blocking=False) as free:
                            if free:
                                os.unlink(path + ".lock")
                with contextlib.suppress(OSError):
                    self._write_ledger(total - freed)
            return freed
        finally:
            evicting.__exit__(None, None, None)


def check_cache_options(paths: Any, cache_dir: str | os.PathLike | None, cache_limit: int | str | None) -> None:
    """Refuse cache options that cannot apply, rather than ignore them: a budget without a folder, a folder
    for sources that are all local (nothing is read remotely), an unreadable budget."""
    from .paths import is_url

    parse_size(cache_limit)
    if cache_limit is not None and cache_dir is None:
        raise ValueError(f"cache_limit={cache_limit!r} needs cache_dir: the budget is for a cache folder")
    if cache_dir is None:
        return
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not any(is_url(os.fspath(p)) for p in items):
        first = os.fspath(items[0]) if items else "?"
        raise ValueError(f"cache_dir={os.fspath(cache_dir)!r} keeps what is read from a URL on local disk, but "
                         f"{first} is local: nothing would be cached. Drop cache_dir, or pass the URL")


_CACHES: dict[tuple[str, int | None, int], ByteCache] = {}


def byte_cache(root: str | os.PathLike | None, limit: int | str | None = None) -> ByteCache | None:
    """The :class:`ByteCache` of ``root`` in this process (one object per folder and budget), or ``None``."""
    if root is None:
        return None
    key = (os.path.abspath(os.fspath(root)), parse_size(limit), os.getpid())
    cache = _CACHES.get(key)
    if cache is None:
        try:
            cache = _CACHES[key] = ByteCache(root, limit)
        except OSError as exc:  # the folder cannot be made: read from the host
            _trouble(key[0], exc)
            return None
    return cache


__all__ = ["ByteCache", "byte_cache", "check_cache_options", "parse_size"]
