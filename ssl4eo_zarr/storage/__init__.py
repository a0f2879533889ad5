"""Archive and file I/O, one module per concern (zarr-python 3's ``storage/`` is the model):

* :mod:`.paths`: paths and URLs, existence, small reads, atomic writes with the caller's umask;
* :mod:`.retry`: retries with backoff, seekable remote files;
* :mod:`.http`: Range reads over plain HTTP(S) straight into the caller's memory;
* :mod:`.zip`: read-only zip archives (local, remote, in memory), CRC-checked, pickle-safe;
* :mod:`.cache`: remote bytes kept on local disk (shared by processes, CRC-checked, LRU byte budget);
* :mod:`.zarrcompat`: zarr-python 2.18 / 3.x compatibility for ``*.zarr.zip``.
"""

from . import http
from .cache import ByteCache, byte_cache, parse_size
from .paths import (
    PathLike,
    atomic_write,
    basename,
    cache_dir,
    current_umask,
    exists,
    is_url,
    join,
    parent,
    read_bytes,
    read_text,
    remote_fs,
)
from .retry import PositionedFile, RetryingFile, retry
from .zarrcompat import zarr_major, zarr_open_kwargs, zarr_store
from .zip import MAX_MEMBER_BYTES, TAIL_BYTES, MemoryZipArchive, ScratchBuffer, ZipArchive, crc32, prefetch, thread_scratch

__all__ = ["ByteCache", "MAX_MEMBER_BYTES", "MemoryZipArchive", "PathLike", "PositionedFile", "RetryingFile", "ScratchBuffer",
           "TAIL_BYTES", "ZipArchive", "atomic_write", "basename", "byte_cache", "cache_dir", "crc32",
           "current_umask", "exists", "http", "is_url", "join", "parent", "parse_size", "prefetch", "read_bytes",
           "read_text", "remote_fs", "retry", "thread_scratch", "zarr_major", "zarr_open_kwargs", "zarr_store"]
