"""Riding out transient network errors: retries with backoff, and seekable remote files that retry reads."""

from __future__ import annotations

import email.utils
import io
import logging
import sys
import time
from datetime import timezone
from typing import Any

#: The longest single wait a ``Retry-After`` answer can impose, in seconds: a hub that asks for an hour must not
#: stall a training job for that long; it is asked again after this.
RETRY_AFTER_CAP = 60.0
#: Seconds one read may spend waiting on rate limits (429/503 with ``Retry-After``) in all before it fails: the
#: hub's rate-limit windows are five minutes long, so a shorter budget fails jobs the hub would have served.
WAIT_BUDGET = 330.0

log = logging.getLogger("ssl4eo_zarr")


def _transient_errors() -> tuple[type[BaseException], ...]:
    # A library's errors are raised only once it is imported: asking sys.modules costs nothing, where importing
    # aiohttp to name its error class cost 0.24 s of the first read over plain HTTP, which never uses it.
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        errors.append(aiohttp.ClientError)
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        errors.append(botocore.BotoCoreError)
    return tuple(errors)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` value (delta seconds or an HTTP date); ``None`` if absent
    or unreadable. Never negative."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() also takes '²' and other scripts' digits
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = time.time() if now is None else now
    return max(when.timestamp() - now, 0.0)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an error carries (this library's :class:`~.http.HTTPStatusError`, aiohttp's
    ``ClientResponseError``, huggingface_hub's and requests' ``HTTPError`` with ``.response.status_code``),
    else ``None``."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _headers(exc: BaseException) -> Any:
    headers = getattr(exc, "headers", None)
    if headers is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
    return headers


def is_transient(exc: BaseException) -> bool:
    """Whether a network error may go away by itself. An HTTP 4xx answer is final (the request itself is
    wrong, or not allowed), except 408 (request timeout) and 429 (rate limit)."""
    if getattr(exc, "final", False):  # e.g. a host that ignores Range: asking again changes nothing
        return False
    status = http_status(exc)
    return status is None or not (400 <= status < 500) or status in (408, 429)


def retry_wait(exc: BaseException, delay: float) -> float:
    """How long to wait before the next try: the backoff ``delay``, or longer where the server said so in
    ``Retry-After`` (429 and 503 answers), capped at :data:`RETRY_AFTER_CAP`."""
    after = _retry_after(exc)
    return delay if after is None else max(delay, min(float(after), RETRY_AFTER_CAP))


def _retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked to wait (``Retry-After``, read by this library or from a client's response)."""
    after = getattr(exc, "retry_after", None)
    if after is not None:
        return float(after)
    headers: Any = _headers(exc)
    try:
        return parse_retry_after(headers.get("Retry-After")) if headers is not None else None
    except AttributeError:
        return None


def retry(fn, *args, retries: int = 5, backoff: float = 0.2, on_retry=None, not_found_retries: int = 0,
          wait_budget: float | None = None):
    """``fn(*args)``, retried with exponential backoff on transient network errors.

    A missing file is retried only ``not_found_retries`` times: fsspec's HTTP filesystem reports a server
    error while it looks up a file's size as ``FileNotFoundError``, so opens give it a second chance. HTTP 4xx
    answers other than 408 and 429 are raised at once; a ``Retry-After`` answer is waited for
    (:func:`retry_wait`), and such waits do not use up ``retries``: they go on, with a log line each, until
    ``wait_budget`` seconds (default :data:`WAIT_BUDGET`) were spent waiting.
    """
    transient = _transient_errors()
    budget = WAIT_BUDGET if wait_budget is None else wait_budget
    delay = backoff
    attempt = 0
    waited = 0.0
    while True:
        try:
            return fn(*args)
        except FileNotFoundError:
            if attempt >= min(not_found_retries, retries):
                raise
            time.sleep(delay)
            delay *= 2
            attempt += 1
            continue
        except (IsADirectoryError, PermissionError):
            raise
        except transient as exc:
            if not is_transient(exc):
                raise
            asked = _retry_after(exc) is not None
            wait = retry_wait(exc, delay)
            if asked:  # the host rations us: wait as it says while the budget lasts
                if waited + wait > budget:
                    raise
                log.warning("%s; waiting %.0f s as the host asks (%.0f of %.0f s waited so far)",
                            _short(exc), wait, waited, budget)
                waited += wait
                delay = min(delay * 2, RETRY_AFTER_CAP)
            else:
                if attempt >= retries:
                    raise
                attempt += 1
                delay *= 2
            time.sleep(wait)
            if on_retry is not None:
                try:
                    on_retry()
                except Exception:  # noqa: BLE001 - the next attempt reports the real error
                    pass


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


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

    @property
    def size(self) -> int | None:
        """The file's size in bytes where it is known without a request of its own (else ``None``)."""
        return self._size if self._size is not None else getattr(self._f, "size", None)

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


