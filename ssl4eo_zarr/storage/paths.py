"""Paths and URLs alike: joining, naming, existence, small reads, and atomic writes with the caller's umask."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from typing import IO, Any

from .retry import retry

PathLike = str | os.PathLike


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # elsewhere the only way to read it is to set it
        old = os.umask(0o022)
        os.umask(old)
    return old


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on success it is synced and renamed to ``path``,
    on any error removed. A crash therefore never leaves a partial file under the final name (temporaries end
    in ``.tmp``, which a resumed build cleans up).

    The file gets the permissions a plain ``open(path, "w")`` would give (``0o666`` less the umask), or those
    of the file it replaces: datasets live on shared storage and are served by other users' processes, and the
    private ``0o600`` of a temporary file must not leak into them.
    """
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    try:
        perms = os.stat(target).st_mode & 0o7777
    except OSError:
        perms = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), perms)
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cache_dir() -> str:
    """Where indexes are kept: ``$SSL4EO_ZARR_CACHE``, else the platform's user cache folder."""
    env = os.environ.get("SSL4EO_ZARR_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ssl4eo_zarr")


def is_url(path: Any) -> bool:
    """True for ``protocol://...`` strings other than ``file://``."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def strip_file_scheme(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def join(base: str, *parts: str) -> str:
    """Join path parts for local paths and URLs alike."""
    base = str(base)
    if is_url(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(base, *parts)


def basename(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1]


def parent(path: str) -> str:
    path = str(path).rstrip("/")
    if is_url(path):
        return path.rsplit("/", 1)[0]
    return os.path.dirname(path)


def exists(path: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether a local path or URL exists (remote checks are retried on transient errors)."""
    if not is_url(path):
        return os.path.exists(strip_file_scheme(str(path)))
    from . import http

    if http.handles(path, storage_options):
        headers = dict(storage_options or {}).get("headers")

        def found() -> bool:
            try:
                http.head(path, headers)
                return True
            except FileNotFoundError:
                return False

        return retry(found)
    fs, p = remote_fs(path, storage_options)

    def info() -> bool:
        try:
            fs.info(p)
            return True
        except FileNotFoundError:
            return False
        except Exception as exc:  # a library's own 404 (huggingface_hub for a folder that is not there)
            response = getattr(exc, "response", None)
            if getattr(response, "status_code", None) == 404 or getattr(exc, "status", None) == 404:
                return False
            raise

    return retry(info)


#: Protocols whose fsspec packages (aiohttp, s3fs, huggingface_hub) come with this package's ``remote`` extra.
_REMOTE_EXTRA = frozenset({"http", "https", "s3", "hf"})


def remote_fs(path: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for a URL. A protocol whose package is not installed is an
    ``ImportError`` that names what to install (plain ``http(s)://`` with no options beyond ``headers`` needs
    nothing: :mod:`.http` reads it with the standard library)."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    except ImportError as exc:
        proto = str(path).split("://", 1)[0].split("::")[-1]
        hint = "pip install 'ssl4eo-zarr[remote]'" if proto in _REMOTE_EXTRA else "install the package named below"
        raise ImportError(f"reading {path}: the {proto}:// protocol needs a package the base install does not have: "
                          f"{hint} ({exc})") from exc


def read_bytes(path: str, storage_options: Mapping[str, Any] | None = None) -> bytes:
    """Bytes of a small local or remote file (retried on transient errors)."""
    if not is_url(path):
        with open(strip_file_scheme(str(path)), "rb") as f:
            return f.read()
    from . import http

    if http.handles(path, storage_options):
        headers = dict(storage_options or {}).get("headers")
        return retry(http.read_bytes, path, headers)
    fs, p = remote_fs(path, storage_options)
    return retry(lambda: fs.cat_file(p))


def read_text(path: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Text of a small local or remote file."""
    return read_bytes(path, storage_options).decode("utf-8")


