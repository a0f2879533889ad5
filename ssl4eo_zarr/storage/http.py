"""Range reads over plain HTTP(S) straight into the caller's memory.

fsspec's HTTP filesystem (aiohttp) hands every response over as new ``bytes`` assembled from many small
chunks: measured on a 2-core machine, that costs 1.4-2.4 CPU seconds per GB moved, more than decoding the
data. A Range request read with ``http.client`` into a buffer that is already mapped costs about 0.25 CPU
seconds per GB (one kernel copy), so plain ``http://``/``https://`` archives are read here; every other
protocol (and HTTP with fsspec options beyond ``headers``) still goes through fsspec.

Behaves as static hosts and hubs do: ``404`` is a missing file, redirects (a hub's ``resolve/main`` URL to its
CDN) are followed and remembered per process, ``5xx``/``408``/``429`` and dropped connections raise
``OSError`` for :func:`~ssl4eo_zarr.storage.retry.retry` to ride out (waiting as ``Retry-After`` says), other
``4xx`` answers are final, and a server that ignores ``Range`` is still read correctly (the bytes before the
range are skipped).

Credentials (``Authorization``, ``Cookie``, ``Proxy-Authorization``) go only to the host they were given for:
a redirect to another host (the hub's CDN) is followed without them, as curl and requests do. Only the
standard library is used, so ``https://`` works with the base install.
"""

from __future__ import annotations

import atexit
import functools
import http.client
import os
import re
import ssl
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, NoReturn
from urllib.parse import unquote, urljoin, urlsplit

from .retry import PositionedFile, parse_retry_after

#: storage_options this reader understands; anything else selects fsspec.
SUPPORTED_OPTIONS = frozenset({"headers"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_SKIP = 1 << 20
MAX_REDIRECTS = 10
#: Headers that carry credentials: never sent to a host other than the one the caller named.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


class HTTPStatusError(OSError):
    """An HTTP answer that is neither data nor a missing/forbidden file. ``status`` is the HTTP status;
    ``retry_after`` the seconds the server asked to wait (``Retry-After``), if any. 5xx, 408 and 429 are
    transient (retried); other 4xx are final (:func:`~ssl4eo_zarr.storage.retry.is_transient`)."""

    def __init__(self, message: str, status: int = 0, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:  # DataLoader workers pickle errors back to the consumer
        return (type(self), (str(self), self.status, self.retry_after))


def _origin(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


def _same_host(a: str, b: str) -> bool:
    """Whether credentials given for ``a`` may go to ``b``: the same scheme, host and port, or the same host
    moved from plain HTTP on port 80 to HTTPS on 443 (an upgrade, which requests allows too). Never from HTTPS
    down to HTTP, where they would cross the network in the clear."""
    (host_a, port_a), (host_b, port_b) = _origin(a), _origin(b)
    scheme_a, scheme_b = urlsplit(a).scheme, urlsplit(b).scheme
    if host_a != host_b:
        return False
    if scheme_a == scheme_b:
        return port_a == port_b
    return (scheme_a, port_a, scheme_b, port_b) == ("http", 80, "https", 443)


def _without_credentials(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}


def handles(url: str, storage_options: Mapping[str, Any] | None) -> bool:
    """Whether :class:`HTTPRangeFile` serves ``url`` with these fsspec options."""
    return url.startswith(("http://", "https://")) and set(storage_options or {}) <= SUPPORTED_OPTIONS


_Key = tuple[str, str, int, str]  # scheme, host, port, proxy ("" for a direct connection)


class _Pool:
    """Idle keep-alive connections per (scheme, host, port, proxy), shared by the threads of one process."""

    def __init__(self) -> None:
        self._idle: dict[_Key, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._context: ssl.SSLContext | None = None

    def get(self, key: _Key, *, fresh: bool = False) -> http.client.HTTPConnection:
        scheme, host, port, proxy = key
        with self._lock:
            if self._pid != os.getpid():  # never share a socket with the parent of a fork
                self._idle, self._pid = {}, os.getpid()
            idle = self._idle.get(key)
            if idle and not fresh:
                return idle.pop()
            if scheme == "https" and self._context is None:
                self._context = ssl.create_default_context()
        if proxy:
            parts = urlsplit(proxy)
            phost, pport = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
            auth = _proxy_auth(parts)
            if scheme == "https":  # a tunnel through the proxy (CONNECT), TLS end to end
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(phost, pport, timeout=60,
                                                                               context=self._context)
                conn.set_tunnel(host, port, headers=auth)
                return conn
            return http.client.HTTPConnection(phost, pport, timeout=60)
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=60, context=self._context)
        return http.client.HTTPConnection(host, port, timeout=60)

    def put(self, key: _Key, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._idle.setdefault(key, []).append(conn)
                return
        conn.close()

    def close_all(self) -> None:
        """Close the idle connections (at exit: no socket is left for the interpreter to warn about)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()


def _proxy_auth(parts: Any) -> dict[str, str]:
    if parts.username is None:
        return {}
    import base64

    token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(token).decode()}


def proxy_for(scheme: str, host: str) -> str:
    """The proxy URL the environment names for ``scheme`` (``HTTP_PROXY``/``HTTPS_PROXY``, lower case too),
    ``""`` for none or where ``NO_PROXY`` exempts ``host``; as curl and requests read them. This machine's own
    loopback is never proxied (a proxy elsewhere cannot reach it)."""
    if host in ("localhost", "127.0.0.1", "::1"):
        return ""
    # Reading the whole environment costs ~35 us, on every request: decide once per setting of the variables.
    return _proxy_for(scheme, host, tuple(os.environ.get(v) for v in _PROXY_VARIABLES))


_PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy",
                    "NO_PROXY")


@functools.lru_cache(maxsize=1024)
def _proxy_for(scheme: str, host: str, _environment: tuple[str | None, ...]) -> str:
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme, "")
    if not proxy or urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return ""
    return proxy if "://" in proxy else "http://" + proxy


def shown(url: str) -> str:
    """``url`` for messages: without its query (a signed CDN URL's signature is a credential)."""
    parts = urlsplit(url)
    return parts._replace(query="…" if parts.query else "", fragment="").geturl()


class RedirectError(HTTPStatusError):
    """Redirects that go nowhere: a loop, too many, or to another protocol (``ftp:``, ``file:``). Final."""

    final = True


_POOL = _Pool()
atexit.register(_POOL.close_all)


class _Redirects:
    """Where each URL's redirects led, for the credentials it was asked with (another token may be sent
    elsewhere), the most recent :data:`SIZE` kept (per process; signed CDN URLs expire)."""

    SIZE = 4096

    def __init__(self) -> None:
        self._map: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(url: str, headers: Mapping[str, str]) -> tuple[str, int]:
        return url, hash(tuple(sorted((k.lower(), v) for k, v in headers.items() if k.lower() in CREDENTIAL_HEADERS)))

    def get(self, url: str, headers: Mapping[str, str]) -> str:
        with self._lock:
            return self._map.get(self._key(url, headers), url)

    def put(self, url: str, headers: Mapping[str, str], final: str) -> None:
        key = self._key(url, headers)
        with self._lock:
            self._map[key] = final
            self._map.move_to_end(key)
            while len(self._map) > self.SIZE:
                self._map.popitem(last=False)

    def forget(self, url: str, headers: Mapping[str, str]) -> None:
        with self._lock:
            self._map.pop(self._key(url, headers), None)

    def __len__(self) -> int:
        return len(self._map)


_RESOLVED = _Redirects()


_Pooled = tuple[_Key, http.client.HTTPConnection]


def _request(method: str, url: str, headers: Mapping[str, str],
             origin: str | None = None) -> tuple[http.client.HTTPResponse, _Pooled, str]:
    """Send ``method`` to ``url`` following redirects (through the environment's proxy, if any); the response
    (body unread), its connection with the pool key, and the final URL. Credentials in ``headers`` belong to
    ``origin`` (default ``url``): every hop to another host, another port or from HTTPS down to HTTP goes
    without them."""
    target = url
    origin = url if origin is None else origin
    seen = set()
    for _ in range(MAX_REDIRECTS + 1):
        if not _same_host(origin, target):
            headers = _without_credentials(headers)
        parts = urlsplit(target)
        scheme = parts.scheme
        if scheme not in ("http", "https"):
            raise RedirectError(f"{shown(url)} redirects to {shown(target)}, which is not HTTP(S)", 0)
        port = parts.port or (443 if scheme == "https" else 80)
        host = parts.hostname or ""
        path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        proxy = proxy_for(scheme, host)
        sent = dict(headers)
        if proxy and scheme == "http":  # a forward proxy takes the whole URL
            path = target
            sent.update(_proxy_auth(urlsplit(proxy)))
        key: _Key = (scheme, host, port, proxy)
        for fresh in (False, True):
            # A kept-alive connection the server has since closed fails at once: try once more on a new one.
            conn = _POOL.get(key, fresh=fresh)
            try:
                conn.request(method, path, headers=sent)
                resp = conn.getresponse()
                break
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                if fresh:
                    raise ConnectionError(f"{method} {shown(target)}: {exc}") from None
        if resp.status in _REDIRECTS and resp.getheader("Location"):
            _read_all(resp, target)
            _POOL.put(key, conn)
            seen.add(target)
            target = urljoin(target, resp.getheader("Location", ""))
            if target in seen:
                raise RedirectError(f"{shown(url)}: the redirects loop (back to {shown(target)})", resp.status)
            continue
        return resp, (key, conn), target
    raise RedirectError(f"{shown(url)}: more than {MAX_REDIRECTS} redirects", 0)


def _fail(resp: http.client.HTTPResponse, url: str) -> NoReturn:
    if resp.status == 404 or resp.status == 410:
        raise FileNotFoundError(url)
    if resp.status in (401, 403):
        raise PermissionError(f"{url}: HTTP {resp.status} (pass credentials as storage_options={{'headers': ...}})")
    after = parse_retry_after(resp.getheader("Retry-After"))
    wait = f" (the server asks to wait {after:.0f} s)" if after is not None else ""
    raise HTTPStatusError(f"{url}: HTTP {resp.status} {resp.reason}{wait}", resp.status, after)


def _fill(resp: http.client.HTTPResponse, view: memoryview) -> int:
    """Read the body into ``view``; returns the bytes that arrived (fewer when the connection dropped)."""
    got = 0
    while got < len(view):
        try:
            n = resp.readinto(view[got:])
        except http.client.IncompleteRead:  # the connection dropped mid-body: the caller reports it as transient
            break
        except http.client.HTTPException as exc:
            raise ConnectionError(f"{exc!r}") from None
        if not n:
            break
        got += n
    return got


def _read_all(resp: http.client.HTTPResponse, url: str) -> bytes:
    """The whole (short) body; a connection dropped mid-body is a transient error."""
    try:
        return resp.read()
    except http.client.HTTPException as exc:
        raise ConnectionError(f"{url}: {exc!r}") from None


def _send(method: str, url: str, headers: Mapping[str, str]) -> tuple[http.client.HTTPResponse, _Pooled]:
    """:func:`_request` sent where ``url``'s redirects led last time; an expired redirect target (a signed CDN
    URL: 403/404/410) is resolved again from ``url`` once. Remembers where a successful request ended."""
    resolved = _RESOLVED.get(url, headers)
    resp, pooled, final = _request(method, resolved, headers, url)
    if resp.status in (403, 404, 410) and resolved != url:
        pooled[1].close()
        _RESOLVED.forget(url, headers)
        resp, pooled, final = _request(method, url, headers)
    if resp.status in (200, 206, 416) and final != url:
        _RESOLVED.put(url, headers, final)
    return resp, pooled


def _done(resp: http.client.HTTPResponse, pooled: _Pooled, reuse: bool) -> None:
    """Give the connection back when its response was read to the end, else close it."""
    key, conn = pooled
    if reuse and resp.isclosed():
        _POOL.put(key, conn)
    else:
        conn.close()


class RangeIgnoredError(HTTPStatusError):
    """A host that answers range requests with the whole file, far from its start: every random read would
    download the file up to that point again. Final (not retried)."""

    final = True


#: How far into a whole-file answer (a host that ignored ``Range``) a read may skip before it is refused: beyond
#: this, reading a shard's members one by one would move the file again for each (quadratic).
RANGE_SKIP_LIMIT = 16 << 20


def _skip_to(resp: http.client.HTTPResponse, url: str, start: int) -> None:
    """Read and drop the first ``start`` bytes of a whole-file answer (a host that ignored ``Range``)."""
    skip = bytearray(min(start, _SKIP) or 1)
    left = start
    while left:
        n = _fill(resp, memoryview(skip)[: min(left, len(skip))])
        if not n:
            raise OSError(f"{url}: the response ended before byte {start}")
        left -= n


def read_range(url: str, start: int, view: memoryview, headers: Mapping[str, str] | None = None) -> int:
    """Bytes ``start .. start + len(view)`` of ``url`` into ``view`` (one request); returns ``len(view)``.
    Raises ``FileNotFoundError`` (404), ``PermissionError`` (401/403) or ``OSError`` (transient)."""
    if not len(view):
        return 0
    end = start + len(view) - 1
    resp, pooled = _send("GET", url, {**(headers or {}), "Range": f"bytes={start}-{end}"})
    try:
        if resp.status == 206:
            match = _CONTENT_RANGE.match(resp.getheader("Content-Range", ""))
            if match is None or int(match.group(1)) != start or int(match.group(2)) != end:
                raise OSError(f"{url}: asked for bytes {start}-{end}, got {resp.getheader('Content-Range')}")
        elif resp.status == 200:  # Range ignored: the whole file comes; skip to the range if it is near
            if start > RANGE_SKIP_LIMIT:
                raise RangeIgnoredError(
                    f"{url}: the host ignores Range requests (asked for bytes {start}-{end}, it sent the whole "
                    f"{resp.getheader('Content-Length') or '?'} bytes): reading members from it would download the "
                    "file again for every read; download the files and read them locally, or use a host that "
                    "honours Range", 200)
            _skip_to(resp, url, start)
        else:
            _fail(resp, url)
        got = _fill(resp, view)
    except BaseException:
        pooled[1].close()
        raise
    _done(resp, pooled, resp.status == 206 and got == len(view))
    if got != len(view):
        raise ConnectionError(f"{url}: the response ended after {got} of {len(view)} bytes")
    return got


def read_tail(url: str, nbytes: int, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """``(size of the file, its last bytes)``: the last ``nbytes`` (fewer for a short file) in one suffix-range
    request, which tells the size too (a zip is read from its end, so this replaces a HEAD request). A server
    that ignores ``Range`` gives the size only, unless the whole file is no longer than ``nbytes``."""
    return _read_edge(url, nbytes, headers, tail=True)


def read_front(url: str, nbytes: int, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """``(size of the file, its first bytes)``: the first ``nbytes`` (fewer for a short file) in one range
    request, which tells the size too (a tar shard read from its start: this replaces a HEAD request and the
    first read). A server that ignores ``Range`` gives the size and the first bytes of its whole answer."""
    return _read_edge(url, nbytes, headers, tail=False)


def _read_edge(url: str, nbytes: int, headers: Mapping[str, str] | None, *, tail: bool) -> tuple[int, bytes]:
    want = f"bytes=-{nbytes}" if tail else f"bytes=0-{nbytes - 1}"
    resp, pooled = _send("GET", url, {**(headers or {}), "Range": want})
    reuse = True
    try:
        if resp.status == 206:
            match = _CONTENT_RANGE.match(resp.getheader("Content-Range", ""))
            if match is None or match.group(3) == "*" or (not tail and int(match.group(1)) != 0):
                raise OSError(f"{url}: asked for {want}, got Content-Range {resp.getheader('Content-Range')!r}")
            size = int(match.group(3))
            data = _read_all(resp, url)
            if len(data) != int(match.group(2)) - int(match.group(1)) + 1:
                raise ConnectionError(f"{url}: the response ended early")
        elif resp.status == 416:  # an empty file has no first or last bytes
            match = re.match(r"bytes \*/(\d+)", resp.getheader("Content-Range", ""))
            size, data = (int(match.group(1)) if match else 0), _read_all(resp, url)[:0]
        elif resp.status == 200:  # Range ignored: the whole file comes
            size = int(resp.getheader("Content-Length") or -1)
            if size < 0:
                raise OSError(f"{url}: the server gives no Content-Length")
            reuse = size <= nbytes  # a larger file is not downloaded: its connection is dropped
            if reuse:
                data = _read_all(resp, url)
            elif tail:
                data = b""
            else:
                view = memoryview(bytearray(nbytes))
                got = _fill(resp, view)
                if got != nbytes:
                    raise ConnectionError(f"{url}: the response ended after {got} of {size} bytes")
                data = bytes(view)
        else:
            _fail(resp, url)
    except BaseException:
        pooled[1].close()
        raise
    _done(resp, pooled, reuse)
    return size, data


#: The last answer of a HEAD per URL: (monotonic time, what :func:`head` returned).
_ANSWERS: dict[str, tuple[float, dict[str, Any]]] = {}


def head(url: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{"size": bytes, "etag": str | None, "last_modified": str | None}`` of ``url`` from a HEAD request.
    Raises ``FileNotFoundError`` (404; a static host's answer for a folder too), ``PermissionError``,
    :class:`HTTPStatusError`."""
    resp, pooled = _send("HEAD", url, dict(headers or {}))
    _read_all(resp, url)
    _done(resp, pooled, True)
    if resp.status != 200:
        _fail(resp, url)
    length = resp.getheader("Content-Length")
    if length is None:
        raise OSError(f"{url}: the server gives no Content-Length")
    info = {"size": int(length), "etag": resp.getheader("ETag"), "last_modified": resp.getheader("Last-Modified")}
    _ANSWERS[url] = (time.monotonic(), info)
    return info


def answered(url: str, max_age: float) -> dict[str, Any] | None:
    """What the last :func:`head` of ``url`` in this process said, if at most ``max_age`` seconds ago (a
    layer that takes a version as current for that long asks no second time: a dataset's resolution has just
    asked whether its first shards exist)."""
    found = _ANSWERS.get(url)
    return found[1] if found is not None and time.monotonic() - found[0] <= max_age else None


def head_size(url: str, headers: Mapping[str, str] | None = None) -> int:
    """The size of ``url`` from a HEAD request."""
    return int(head(url, headers)["size"])


def read_bytes(url: str, headers: Mapping[str, str] | None = None) -> bytes:
    """The whole body of a small file (a split list, a metadata table)."""
    resp, pooled = _send("GET", url, dict(headers or {}))
    try:
        if resp.status != 200:
            _fail(resp, url)
        data = _read_all(resp, url)
        length = resp.getheader("Content-Length")
        if length is not None and len(data) != int(length):
            raise ConnectionError(f"{url}: the response ended after {len(data)} of {length} bytes")
    except BaseException:
        pooled[1].close()
        raise
    _done(resp, pooled, True)
    return data


class HTTPRangeFile(PositionedFile):
    """A read-only, seekable remote file whose reads are Range requests read straight into the caller's buffer
    (``readinto``). Not buffered: each read is one request, as the zip reader asks for exact ranges. Opening
    fetches the last ``tail`` bytes (and so the size) in one request, reads inside them cost none; with
    ``tail=0`` (a tar shard, read from its start) opening is a HEAD request, or with ``front`` the first
    ``front`` bytes, reads inside them costing none until a read starts past them."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, *, tail: int = 32768, front: int = 0):
        self.url = url
        self.headers = dict(headers or {})
        self._pos = 0
        self._front = b""
        if tail > 0:
            self.size, self._tail = read_tail(url, tail, self.headers)
        elif front > 0:
            (self.size, self._front), self._tail = read_front(url, front, self.headers), b""
        else:
            self.size, self._tail = head_size(url, self.headers), b""
        self._tail_start = self.size - len(self._tail)

    def _end(self) -> int:
        return self.size

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        view = view[: max(min(len(view), self.size - self._pos), 0)]
        if self._tail and self._pos >= self._tail_start:
            at = self._pos - self._tail_start
            view[:] = self._tail[at: at + len(view)]
            n = len(view)
        elif self._front and self._pos + len(view) <= len(self._front):
            view[:] = self._front[self._pos: self._pos + len(view)]
            n = len(view)
        else:
            if self._pos >= len(self._front):
                self._front = b""  # read past: a shard is read forward
            n = read_range(self.url, self._pos, view, self.headers)
        self._pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        left = max(self.size - self._pos, 0)
        buf = bytearray(left if n is None or n < 0 else min(n, left))
        del buf[self.readinto(buf):]
        return bytes(buf)


class HTTPStreamFile(PositionedFile):
    """A remote file read front to back through one open-ended GET (``Range: bytes=POS-``): a shard streamed
    for training costs one request, not one per block. Reads that continue where the last one ended continue
    the same response; a forward skip of up to :attr:`SKIP` bytes reads through it; any other seek starts a new
    response there. The size comes from the first response (``Content-Range``), so opening costs nothing. A
    response that ends early gives what came and the next read starts a new one there; one that gives nothing
    raises ``ConnectionError`` (transient: :class:`RetryingFile` retries it)."""

    #: A forward skip up to this many bytes reads through the open response rather than paying a new round trip.
    SKIP = 4 << 20

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, *, end: int | None = None,
                 first_end: int | None = None):
        """``end``: responses ask for bytes up to it only (a bounded span read as it arrives; read to its end,
        the connection is kept), and reads stop there. ``first_end``: the first response alone stops there
        (what is known to be wanted soon: the host does not push more into the socket meanwhile); reads go on
        past it in a new response."""
        self.url = url
        self.headers = dict(headers or {})
        self.end = end
        self._first_end = first_end
        self._resp_end = end  # where the open response ends (None: the file's end)
        self._pos = 0
        self.size: int | None = None
        self._resp: http.client.HTTPResponse | None = None
        self._pooled: _Pooled | None = None
        self._at = 0  # the file position the open response has reached

    def _drop(self) -> None:
        if self._pooled is not None:
            self._pooled[1].close()  # the body was not read to its end: the connection cannot be reused
        self._resp = self._pooled = None

    def _open(self, start: int) -> bool:
        """A response from ``start``; False when ``start`` is at or past the end."""
        self._drop()
        stop = self.end
        if self._first_end is not None:
            stop = self._first_end if stop is None else min(stop, self._first_end)
            self._first_end = None
        self._resp_end = stop if stop is not None and stop > start else self.end
        last = f"{self._resp_end - 1}" if self._resp_end is not None else ""
        resp, pooled = _send("GET", self.url, {**self.headers, "Range": f"bytes={start}-{last}"})
        try:
            if resp.status == 206:
                match = _CONTENT_RANGE.match(resp.getheader("Content-Range", ""))
                if match is None or int(match.group(1)) != start or match.group(3) == "*":
                    raise OSError(f"{self.url}: asked for bytes {start}-, got {resp.getheader('Content-Range')}")
                self.size = int(match.group(3))
            elif resp.status == 416:
                match = re.match(r"bytes \*/(\d+)", resp.getheader("Content-Range", ""))
                if match:
                    self.size = int(match.group(1))
                _read_all(resp, self.url)
                _done(resp, pooled, True)
                return False
            elif resp.status == 200:  # Range ignored: the whole file comes; read up to the start
                self.size = int(resp.getheader("Content-Length", "-1"))
                _skip_to(resp, self.url, start)
            else:
                _fail(resp, self.url)
        except BaseException:
            pooled[1].close()
            raise
        self._resp, self._pooled, self._at = resp, pooled, start
        return True

    def _end(self) -> int:
        if self.size is None:
            self.size = head_size(self.url, self.headers)
        return self.size

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        if self.size is not None:
            view = view[: max(min(len(view), self.size - self._pos), 0)]
        if self.end is not None:
            view = view[: max(min(len(view), self.end - self._pos), 0)]
        if not len(view):
            return 0
        if self._resp is None or not self._at <= self._pos <= self._at + self.SKIP \
                or (self._resp_end is not None and self._pos >= self._resp_end):
            if not self._open(self._pos):
                return 0
        assert self._resp is not None
        while self._at < self._pos:  # a short skip forward: read through
            scratch = bytearray(min(self._pos - self._at, 1 << 20))
            n = _fill(self._resp, memoryview(scratch))
            if not n:
                self._drop()
                raise ConnectionError(f"{self.url}: the response ended at byte {self._at}")
            self._at += n
        if self.size is not None:
            view = view[: max(min(len(view), self.size - self._pos), 0)]
        n = _fill(self._resp, view)
        self._at += n
        self._pos += n
        if self._resp_end is not None and self._at >= self._resp_end and self._pooled is not None:  # read to its end
            _done(self._resp, self._pooled, True)
            self._resp = self._pooled = None
        elif n < len(view):  # the response ended early: keep what came, the next read starts a new one
            self._drop()
            if not n and (self.size is None or self._pos < self.size):
                raise ConnectionError(f"{self.url}: the response ended at byte {self._pos} of {self.size}")
        return n

    def read(self, n: int = -1) -> bytes:
        left = max(self._end() - self._pos, 0)
        buf = bytearray(left if n is None or n < 0 else min(n, left))
        del buf[self.readinto(buf):]
        return bytes(buf)

    def close(self) -> None:
        self._drop()
        super().close()
