"""Riding out transient network errors: retries with backoff, and seekable remote files that retry reads."""

from __future__ import annotations

import functools
import io
import time


@functools.lru_cache(maxsize=1)
def _transient_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    try:
        import aiohttp

        errors.append(aiohttp.ClientError)
    except ImportError:
        pass
    try:
        from botocore.exceptions import BotoCoreError

        errors.append(BotoCoreError)
    except ImportError:
        pass
    return tuple(errors)


def retry(fn, *args, retries: int = 5, backoff: float = 0.2, on_retry=None, not_found_retries: int = 0):
    """``fn(*args)``, retried with exponential backoff on transient network errors.

    A missing file is retried only ``not_found_retries`` times: fsspec's HTTP filesystem reports a server
    error while it looks up a file's size as ``FileNotFoundError``, so opens give it a second chance.
    """
    transient = _transient_errors()
    delay = backoff
    for attempt in range(retries + 1):
        try:
            return fn(*args)
        except FileNotFoundError:
            if attempt >= min(not_found_retries, retries):
                raise
            time.sleep(delay)
            delay *= 2
            continue
        except (IsADirectoryError, PermissionError):
            raise
        except transient:
            if attempt == retries:
                raise
            time.sleep(delay)
            delay *= 2
            if on_retry is not None:
                try:
                    on_retry()
                except Exception:  # noqa: BLE001 - the next attempt reports the real error
                    pass
    raise AssertionError("unreachable")


class PositionedFile(io.RawIOBase):
    """A read-only, seekable file that keeps its own position; subclasses give ``read`` and ``_end``."""

    _pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _end(self) -> int:
        raise NotImplementedError

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else self._pos + offset if whence == 1 else self._end() + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class RetryingFile(PositionedFile):
    """A seekable remote file that retries failed reads with exponential backoff.

    fsspec's HTTP and S3 files raise on the first transient failure (connection reset, 5xx); a training job
    that runs for days must ride those out.
    """

    def __init__(self, opener, retries: int, backoff: float):
        self._opener = opener
        self._retries = retries
        self._backoff = backoff
        self._pos = 0
        self._f = retry(opener, retries=retries, backoff=backoff, not_found_retries=2)
        self._size = getattr(self._f, "size", None)

    def _reopen(self) -> None:
        self._f = self._opener()

    def _end(self) -> int:
        if self._size is None:
            self._size = self._f.seek(0, 2)
        return self._size

    def _read_at(self, n: int) -> bytes:
        self._f.seek(self._pos)
        return self._f.read(n)

    def read(self, n: int = -1) -> bytes:
        data = retry(self._read_at, n, retries=self._retries, backoff=self._backoff, on_retry=self._reopen)
        self._pos += len(data)
        return data

    def _readinto_at(self, b) -> int:
        self._f.seek(self._pos)
        return self._f.readinto(b)

    def readinto(self, b) -> int:
        """Straight into ``b`` where the file can (no intermediate ``bytes``), retried like :meth:`read`."""
        n = retry(self._readinto_at, b, retries=self._retries, backoff=self._backoff, on_retry=self._reopen)
        self._pos += n
        return n

    def close(self) -> None:
        try:
            self._f.close()
        finally:
            super().close()


