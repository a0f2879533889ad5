"""What a request costs on the link to a host, measured, and the cheapest way to learn a shard's members.

Beside :mod:`~ssl4eo_zarr.shardindex` (which asks it how to read tar headers) and used by
:func:`~ssl4eo_zarr.fetch` for the estimate a dry run prints before it walks anything.

Finding where the members of a tar shard lie costs either a **walk** (one small range request per tar header,
seeking past each member: a round trip per header) or a **read through** (the members' bytes streamed in long
windows, several headers per round trip). Which is cheaper depends on the link, not on a fixed member size:

* a walk costs ``rtt`` per header on one connection;
* a read through costs ``stride / rate`` per header (the member's bytes at the rate one response gets) plus a
  round trip per window;

both divided by the connections in flight, and the read through also bounded by what the host gives all
connections together (``total``). So members read through when they move faster than a round trip: at 50 ms
and 50 MB/s per response that is members under ~2.5 MB; at 50 ms and a host capped at 100 MB/s for 32
connections, members under ~150 kB. Where the bytes themselves count (a fetch promises to move little more
than it selects), a read through is allowed only when its bytes stay inside that budget.

:class:`Link` holds the measured figures; :func:`probe` measures them with a few requests (kept per
host for the process); :func:`LOCAL` is a local disk, where a seek is free and a walk always wins.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: Bytes one header request reads: tarfile reads the last byte before a header, then its 512 bytes; a little
#: more costs nothing on the wire and every walked header is bytes a fetch moves beyond its members.
HEADER_READ = 1024
#: Longest window a read through asks for in one request (bytes).
MAX_WINDOW = 64 << 20
#: Bytes the rate probe reads: enough that the transfer is measurable beside the round trip, little beside what
#: a fetch moves.
PROBE_BYTES = 1 << 20
#: Responses the probe of the host's total rate runs at once.
PARALLEL = 4


@dataclass(frozen=True)
class Link:
    """A link to one host: ``rtt`` seconds from request to first byte, ``rate`` bytes/s one response delivers,
    ``connections`` requests in flight at once, ``total`` bytes/s the host gives all of them together when
    known (``None``: ``connections x rate``)."""

    rtt: float
    rate: float
    connections: int = 32
    total: float | None = None

    def with_connections(self, n: int) -> Link:
        return Link(self.rtt, self.rate, max(1, int(n)), self.total)

    @property
    def per_connection(self) -> float:
        """Bytes/s one of ``connections`` busy responses gets."""
        if self.total is None:
            return self.rate
        return min(self.rate, self.total / max(1, self.connections))

    @property
    def local(self) -> bool:
        return self.rtt == 0.0

    def walk_seconds(self, headers: float) -> float:
        """Wall time to read ``headers`` tar headers one request each, ``connections`` at once."""
        return headers * (self.rtt + HEADER_READ / self.per_connection) / self.connections

    def read_seconds(self, nbytes: float, requests: float = 1.0) -> float:
        """Wall time to move ``nbytes`` in ``requests`` responses, ``connections`` at once."""
        return (requests * self.rtt + nbytes / self.per_connection) / self.connections

    def window(self, stride: int, *, budget: float | None = None) -> int:
        """Bytes to ask for per request while indexing a shard whose members lie ``stride`` bytes apart (header
        plus data): :data:`HEADER_READ` to walk (one request per header), or a window that reads through several
        headers at once when that is faster. ``budget``: the most bytes per header the caller may move for the
        index (``None``: no limit); a read through moves ``stride`` per header."""
        if self.local or stride <= 0:
            return HEADER_READ
        if budget is not None and stride > budget:
            return HEADER_READ
        if stride / self.per_connection >= self.rtt:  # moving a member takes longer than a round trip: walk
            return HEADER_READ
        # Long enough that round trips take at most a fifth of the window's time, and at least two members.
        wanted = max(5 * self.rtt * self.per_connection, 2 * stride)
        return int(min(wanted, MAX_WINDOW))

    def index_cost(self, headers: float, stride: int, *, budget: float | None = None) -> tuple[float, float, float]:
        """``(requests, bytes, seconds)`` to read ``headers`` headers of members ``stride`` bytes apart the way
        :meth:`window` chooses."""
        w = self.window(stride, budget=budget)
        if w == HEADER_READ:
            return headers, headers * HEADER_READ, self.walk_seconds(headers)
        nbytes = headers * stride
        requests = max(1.0, nbytes / w)
        return requests, nbytes, self.read_seconds(nbytes, requests)

    def transfer_connections(self, nbytes: float, *, least: int = 8, most: int = 64, share: float = 0.9) -> int:
        """Requests to keep in flight moving pieces of ``nbytes`` each. Against a host that caps all responses
        together (``total``), enough that round trips hide behind the others' transfers and the pieces arrive at
        ``share`` of the cap (``n >= share / (1 - share) x total x rtt / nbytes``); otherwise every connection adds
        its own rate and ``connections`` are used. Between ``least`` and ``most``; ``least`` for local files."""
        if self.local:
            return least
        if self.total is None:
            return max(least, min(most, self.connections))
        wanted = share / (1 - share) * self.total * self.rtt / max(nbytes, 1.0)
        return int(max(least, min(most, math.ceil(wanted))))

    def describe(self) -> str:
        if self.local:
            return "local files"
        total = f", {self.total / 1e6:.0f} MB/s in all" if self.total else ""
        return (f"{self.rtt * 1e3:.0f} ms round trip, {self.rate / 1e6:.0f} MB/s per response{total}, "
                f"{self.connections} connections")


#: A local disk: seeks are free.
LOCAL = Link(0.0, float("inf"), 1)

_LINKS: dict[str, Link] = {}
_LOCK = threading.Lock()


def _host(path: str) -> str:
    parts = urlsplit(path)
    return f"{parts.scheme}://{parts.netloc}"


def probe(path: str, storage_options: Mapping[str, Any] | None = None, *, connections: int = 32) -> Link:
    """The :class:`Link` to the host of ``path`` (a file there of at least a few MB), measured once per host and
    process: the fastest of two :data:`HEADER_READ` range requests is the round trip; one :data:`PROBE_BYTES` response gives
    the rate of one response; :data:`PARALLEL` of them at once tell whether the host caps all responses together
    (``total``, when they get less than ``PARALLEL x rate / 1.75``). A local path is :data:`LOCAL`. Costs at most
    ``4 + 3 x PARALLEL`` requests (each file opened asks its size once; the parallel reads run twice when the
    first looks capped) and ``(1 + 2 x PARALLEL) x PROBE_BYTES`` bytes."""
    from .storage import is_url

    if not is_url(path):
        return LOCAL
    host = _host(path)
    with _LOCK:
        known = _LINKS.get(host)
    if known is not None:
        return known.with_connections(connections)
    from concurrent.futures import ThreadPoolExecutor

    from .shardfile import open_binary

    def timed(fh: Any, offset: int, n: int) -> tuple[float, int]:
        fh.seek(min(offset, max(0, size - n)))
        began = time.perf_counter()
        got = len(fh.read(min(n, size)))
        return time.perf_counter() - began, got

    # The parallel reads are timed from when all of them have opened their files: opening (a size request, and
    # in a fresh process the first connections and imports) took long enough to pass for a host-wide cap.
    def one(fh: Any, offset: int, ready: threading.Barrier) -> tuple[float, float, int]:
        ready.wait(timeout=60)
        began = time.perf_counter()
        spent, got = timed(fh, offset, PROBE_BYTES)
        return began, began + spent, got

    def together(pool: Any, files: list[Any]) -> float:
        """Bytes/s the files' parallel reads got in all."""
        ready = threading.Barrier(len(files))
        reads = list(pool.map(one, files, [k * PROBE_BYTES for k in range(len(files))], [ready] * len(files)))
        moved = sum(got for _b, _e, got in reads)
        return moved / max(max(e for _b, e, _g in reads) - min(b for b, _e, _g in reads) - rtt, 1e-4)

    with open_binary(path, storage_options=storage_options) as fh:
        size = fh.seek(0, 2)
        rtt = min(timed(fh, 0, HEADER_READ)[0] for _ in range(2))
        spent, got = timed(fh, 0, PROBE_BYTES)
    rate = got / max(spent - rtt, 1e-4)
    with ThreadPoolExecutor(PARALLEL) as pool:
        opening = [pool.submit(open_binary, path, storage_options=storage_options) for _ in range(PARALLEL)]
        files = [f.result() for f in opening if f.exception() is None]
        try:
            for f in opening:  # an open that failed raises here, before any reader waits for it
                f.result()
            # Uncapped, the group ends ~one transfer after its round trip, give or take a few ms; at 50 ms and
            # 50 MB/s a transfer is ~20 ms, so one read a few ms late made the group look 1.4 x slower. A cap of
            # 2 x rate makes it 2 x slower: the line is drawn between. A group that looks capped is read once
            # more and the faster kept: a real cap repeats, a busy machine's late thread (seen in CI on two
            # loaded cores) seldom does twice.
            got_all = together(pool, files)
            if got_all < PARALLEL * rate / 1.75:
                got_all = max(got_all, together(pool, files))
        finally:
            for fh in files:
                fh.close()
    total = got_all if got_all < PARALLEL * rate / 1.75 else None
    link = Link(rtt, rate, connections, total)
    with _LOCK:
        _LINKS[host] = link
    return link


def forget() -> None:
    """Drop the measured links (a host whose link changed, tests)."""
    with _LOCK:
        _LINKS.clear()


def expected_last(count: int, wanted: int) -> float:
    """Headers a walk reads to reach the last of ``wanted`` members placed at random among ``count`` (the order
    statistic ``(count + 1) * wanted / (wanted + 1)``, at most ``count``)."""
    if wanted <= 0:
        return 0.0
    return min(float(count), (count + 1) * wanted / (wanted + 1))


def fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


__all__ = ["HEADER_READ", "LOCAL", "Link", "expected_last", "fmt_seconds", "forget", "probe"]
