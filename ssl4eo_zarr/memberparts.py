"""Reading only the parts of a remote shard's ``*.zarr.zip`` members that a batch uses.

A shard streamed for training is one open-ended GET: every member's bytes come, used or not. With one timestamp
per location (``timestamps=0`` or ``"random"``, the usual pre-training recipe) three of an SSL4EO-S12 member's
four band chunks are never decoded: three quarters of what the host sends. They lie together in the member
(zarr writes an array's chunks in order) and can be stepped over, but not inside an open-ended response: a
response dropped early has already sent about a round trip's worth of bytes, and its connection is lost.

So a shard read by parts is read in bounded windows on kept-alive connections (:class:`WindowFile`). The
member's front is read entry by entry (zip local headers give each entry's name and size); at the first band
chunk not wanted, when the chunks left out are worth more than a round trip, one request takes the member's
tail (the small arrays, ``.zmetadata`` and the central directory, which zarr writes last) *and* the next tar
header and the next member's front up to its first band chunk, as far as the previous members taught. One
request per member, about a quarter of its bytes. The central directory then says whether a wanted entry lay in
the gap (a later timestamp, an array written between the chunks): those come by one more range request. The
guess of which chunk holds a timestamp (one timestep per chunk) is checked against the member's own metadata,
never trusted: a member chunked otherwise, or holding one timestep, gets the chunks it needs by range.

The member comes back at full size with the unread gaps zeroed, so every reader of member bytes works unchanged
and reads only entries that are there. Whether it pays is the caller's call (:func:`first_chunk_bytes` and
:class:`~ssl4eo_zarr.costmodel.Link`); a byte cache keeps whole members instead (later epochs pick other
timestamps).
"""

from __future__ import annotations

import json
import re
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, cast

from .errors import CorruptFileError
from .storage import PositionedFile
from .storage.zip import MemoryFile, _scan_central_directory

_LOCAL = struct.Struct("<4s5H3L2H")
#: ``bands/2.0.0.0`` or ``bands/2/0/0/0`` (and the same under a group prefix): the time chunk index of a chunk.
_CHUNK = re.compile(r"(?:^|/)([A-Za-z_]\w*)/(\d+)(?:[./]\d+)*$")
#: The tail read at a stream's first member, before any member taught the tail's length (bytes).
FIRST_TAIL = 256 << 10
#: The next member's front read with a tail before any member taught its length (bytes).
FIRST_HEAD = 64 << 10
#: Bytes a read that misses the window asks for at least (a tar header and a few local headers).
MIN_WINDOW = 16 << 10


class WindowFile(PositionedFile):
    """A remote file read in bounded windows: a read inside the last window costs nothing, any other one asks
    for ``[pos, pos + max(n, ahead))`` in one range request (connections are kept alive: a bounded response is
    read to its end). :attr:`ahead` is a hint for the next miss, used once; :attr:`reach` a byte a miss before
    it reads up to (a stream's warm-up: the members of its first batch in one request).

    ``fh``: the file; or ``None`` and ``streamer``, a function of ``(start, end)`` giving a file that reads that
    span as it arrives (one bounded GET): then every request is one of those, and a span up to :attr:`reach` is
    read as the reads get to it, not waited for whole (members decode while the rest of the span comes)."""

    def __init__(self, fh: Any, streamer: Any = None):
        if fh is None and streamer is None:
            raise ValueError("a WindowFile needs a file or a streamer")
        self._fh = fh
        self._streamer = streamer
        self._stream: Any = None
        self._span = (0, 0)  # the stream's place and end
        self._size: int | None = None
        self._at = 0
        self._window = b""
        self.ahead = 0
        self.reach = 0
        self.requests = 0

    def _end(self) -> int:
        if self._fh is not None:
            return self._fh.seek(0, 2)
        if self._size is None:
            self._get(0, 1)  # the size comes with any response
        if self._size is None:
            raise OSError("the host did not tell the file's size")
        return self._size

    def _open_span(self, start: int, end: int) -> Any:
        self.requests += 1
        f = self._streamer(start, end)
        f.seek(start)
        return f

    def _get(self, start: int, n: int) -> bytes:
        """``n`` bytes at ``start`` in one request (fewer at the end of the file)."""
        if self._fh is not None:
            self.requests += 1  # a streamer's requests are counted where each is opened
            self._fh.seek(start)
            return self._fh.read(n)
        f = self._open_span(start, start + n)
        try:
            buf = bytearray(n)
            got = f.readinto(buf)  # not read(): a stream's read asks the size first, a request of its own
            self._size = f.size if f.size is not None else self._size
            return bytes(memoryview(buf)[:got])
        finally:
            f.close()

    def fetch(self, start: int, n: int) -> bytes:
        """``n`` bytes at ``start``: from the window where it holds them, else in one request, the window left as
        it is."""
        off = start - self._at
        if 0 <= off and off + n <= len(self._window):
            return bytes(memoryview(self._window)[off: off + n])
        return self._get(start, n)

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _from_stream(self, n: int) -> memoryview | None:
        """Up to ``n`` bytes at the position from the streamed span, when it reaches there (a skip forward reads
        through; a read past its end goes on as any other)."""
        at, end = self._span
        if self._stream is None or not at <= self._pos < end:
            return None
        if self._pos > at:
            self._stream.seek(self._pos)  # reads through: the stream's file skips forward within its response
        k = min(n, end - self._pos, (self._size if self._size is not None else end) - self._pos)
        data = bytearray(max(k, 0))
        got = self._stream.readinto(data)
        self._size = self._stream.size if self._stream.size is not None else self._size
        if got < k:
            raise OSError(f"a streamed span ended at byte {self._pos + got} of {end}")
        k = max(k, 0)
        # Its last bytes stay as the window: a reader that looks back (tar reads the end-of-archive block
        # again) finds them without a request.
        keep = min(k, MIN_WINDOW)
        self._window, self._at = bytes(data[k - keep: k]), self._pos + k - keep
        self._span = (self._pos + k, end)
        self._pos += k
        at_end = self._size is not None and self._pos >= self._size
        if self._pos >= end or at_end:
            self._drop_stream()
        if k < n and not at_end:  # past the span: the rest as any other read
            data += self._view(n - k)
        return memoryview(data)

    def _view(self, n: int) -> memoryview:
        """Up to ``n`` bytes at the position, from the window (fetched anew on a miss), not copied."""
        off = self._pos - self._at
        if self._stream is not None and 0 <= off < len(self._window) < off + n \
                and self._at + len(self._window) == self._span[0]:  # the window, then the stream on from it
            head = bytes(memoryview(self._window)[off:])
            self._pos += len(head)
            return memoryview(head + bytes(self._view(n - len(head))))
        if not (0 <= off and off + n <= len(self._window)):
            streamed = self._from_stream(n)
            if streamed is not None:
                return streamed
            want = max(n, self.ahead, MIN_WINDOW, self.reach - self._pos)
            self.ahead = 0
            if self._streamer is not None and want > max(n, MIN_WINDOW) and want == self.reach - self._pos:
                self._drop_stream()
                self._stream, self._span = self._open_span(self._pos, self.reach), (self._pos, self.reach)
                return cast(memoryview, self._from_stream(n))
            self._window, self._at, off = self._get(self._pos, want), self._pos, 0
        view = memoryview(self._window)[off: off + n]
        self._pos += len(view)
        return view

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(self._end() - self._pos, 0)
        return bytes(self._view(n))

    def readinto(self, b) -> int:
        view = self._view(len(b))
        b[: len(view)] = view
        return len(view)

    def close(self) -> None:
        self._drop_stream()
        if self._fh is not None:
            self._fh.close()
        super().close()


@dataclass(frozen=True)
class TimeSelect:
    """The time chunks of a member's arrays a reader needs: ``keep[var]`` holds the indices along time of the
    chunks of ``var`` to read (assuming chunks of one timestep; checked against the member's metadata), arrays
    not named are read whole. ``n_time``: timestamps a member is expected to hold (sizes the gap estimate)."""

    keep: Mapping[str, frozenset[int]]
    n_time: int

    def unwanted(self, name: str) -> str | None:
        """The array of entry ``name`` when it is a chunk this selection leaves out, else ``None``."""
        m = _CHUNK.search(name)
        if m is None or m.group(1) not in self.keep or int(m.group(2)) in self.keep[m.group(1)]:
            return None
        return m.group(1)

    @cached_property
    def first_out(self) -> tuple[tuple[str, int], ...]:
        """The first chunk index each array leaves out (where a member's front ends)."""
        return tuple((v, next((k for k in range(self.n_time) if k not in ks), self.n_time))
                     for v, ks in sorted(self.keep.items()))

    def gap(self, var: str, chunk_bytes: int) -> int:
        """Bytes the chunks of ``var`` left out are expected to take, from one of them."""
        return chunk_bytes * max(self.n_time - len(self.keep[var]), 1)


@dataclass
class PartsReader:
    """Reads the members of one shard by parts through ``window`` (the :class:`WindowFile` the tar headers are
    read through too). ``jump``: the fewest bytes worth a request of their own (a round trip's worth at the
    link's rate). ``tail`` is learned from each member (how far from its end the entries after its left-out chunks
    begin), as is how far into a member its first left-out chunk starts (per first chunk left out)."""

    path: str
    window: WindowFile
    jump: int
    tail: int = FIRST_TAIL
    #: Bytes of members left unread (tests, benchmarks).
    skipped: int = 0
    _fronts: dict[tuple[tuple[str, int], ...], list[int]] = field(default_factory=dict)

    def read(self, name: str, offset: int, size: int, select: TimeSelect, then: TimeSelect | None = None
             ) -> bytearray:
        """The member ``name`` at ``offset`` (``size`` bytes) of the shard, with the chunks ``select`` leaves out
        zeroed when stepping over them pays. ``then``: what the next member is read with (``None``: it is not
        read), so its front comes with this member's last request."""
        buf = bytearray(size)
        view = memoryview(buf)
        wf = self.window
        # Where the window does not hold this member's front (a member read by range, the first of a shard), the
        # first read brings the front as far as earlier members taught.
        wf.ahead = self._front(select) - 2 * tarfile.BLOCKSIZE

        def fill(a: int, b: int) -> None:
            if b <= a:
                return
            wf.seek(offset + a)
            got = wf.readinto(view[a:b])
            if got != b - a:
                raise CorruptFileError(self.path, f"member at byte {offset} ends after {a + got} of {size} "
                                                  f"bytes: the file is cut at byte {offset + a + got} "
                                                  "(truncated shard)", member=name)

        pos = 0
        while pos + _LOCAL.size <= size:
            fill(pos, pos + _LOCAL.size)
            sig, _v, flags, _m, _t, _d, _crc, csize, _u, n_len, x_len = _LOCAL.unpack_from(buf, pos)
            # Sizes after the data (flag 8), zip64 or no local header: nothing to step by; read the rest.
            if sig != b"PK\x03\x04" or flags & 0x08 or csize == 0xFFFFFFFF:
                break
            data_at = pos + _LOCAL.size + n_len + x_len
            if data_at + csize > size:
                break
            fill(pos + _LOCAL.size, data_at)
            var = select.unwanted(bytes(buf[pos + _LOCAL.size: pos + _LOCAL.size + n_len]).decode("utf-8", "replace"))
            if var is not None and select.gap(var, csize) > self.jump:
                self._learn_front(select, data_at)
                self._finish(buf, fill, name, pos, select, offset, then)
                return buf
            wf.ahead = csize + MIN_WINDOW  # the next local header with it, should this entry not be in the window
            fill(data_at, data_at + csize)
            pos = data_at + csize
        # Read whole from here, and the next tar header and member front with it.
        wf.ahead = size - pos + self._front(then)
        fill(pos, size)
        return buf

    def _learn_front(self, select: TimeSelect, first_gap: int) -> None:
        # Fronts differ with the first chunk left out (t = 0 wanted: the front holds that chunk). The largest of
        # the last few, with room: an entry name or an array a little longer costs no request.
        key = select.first_out
        seen = self._fronts.setdefault(key, [])
        seen.append(first_gap)
        del seen[:-8]

    def _front(self, then: TimeSelect | None) -> int:
        """Bytes to read past a member's end for the next one: its tar header(s) and, when it is read by parts,
        its front up to the first chunk left out."""
        if then is None:
            return 2 * tarfile.BLOCKSIZE
        seen = self._fronts.get(then.first_out)
        return 2 * tarfile.BLOCKSIZE + (max(seen) + 4096 if seen else FIRST_HEAD)

    def _finish(self, buf: bytearray, fill, name: str, pos: int, select: TimeSelect, offset: int,
                then: TimeSelect | None) -> None:
        """From the first left-out chunk at ``pos``: the member's tail (and the next member's front) in one
        request, then what the central directory says is still needed by one range."""
        size = len(buf)
        start = max(pos, size - self.tail)
        self.window.ahead = size - start + self._front(then)
        fill(start, size)
        filled = [(0, pos), (start, size)]

        def side(a: int, b: int) -> None:
            if b <= a:
                return
            data = self.window.fetch(offset + a, b - a)
            if len(data) != b - a:
                raise CorruptFileError(self.path, f"member at byte {offset} ends after {a + len(data)} of {size} "
                                                  "bytes (truncated shard)", member=name)
            buf[a:b] = data
            filled.append((a, b))

        def missing(a: int, b: int) -> bool:
            return not any(x <= a and b <= y for x, y in filled)

        try:
            eocd = buf.rfind(b"PK\x05\x06", start)
            cd_offset = struct.unpack_from("<L", buf, eocd + 16)[0] if eocd >= 0 and eocd + 22 <= size else -1
            if not pos <= cd_offset <= eocd:
                raise zipfile.BadZipFile("no central directory where expected")
            if cd_offset < start:  # a directory longer than the tail read: its front by range
                side(cd_offset, start)
            entries, _at, _tail = _scan_central_directory(MemoryFile(buf))
            if entries is None:
                raise zipfile.BadZipFile("an archive the fast path does not read")
            spans = sorted((e.header_offset, n) for n, e in entries)
            ends = {n: (spans[k + 1][0] if k + 1 < len(spans) else cd_offset) for k, (_o, n) in enumerate(spans)}
            # Entries not left out that lay in the gap (a later timestamp, an array written between the chunks):
            # one range from the first to the last; then the chunks the member's metadata says hold a timestamp
            # after all (read after that range: the metadata may have been in it).
            for keep in (lambda n: select.unwanted(n) is None, self._needed(buf, entries, select)):
                want = [(e.header_offset, ends[n]) for n, e in entries
                        if keep(n) and missing(e.header_offset, ends[n])]
                if want:
                    side(min(a for a, _ in want), max(b for _, b in want))
            gaps = [(e.header_offset, ends[n]) for n, e in entries if missing(e.header_offset, ends[n])]
            if gaps:
                self.skipped += sum(b - a for a, b in gaps)
                # The next member's tail: from the end of its last left-out chunk, with room to spare.
                self.tail = max(int((size - max(b for _a, b in gaps)) * 1.25) + 4096, 32 << 10)
        except CorruptFileError:
            raise
        except (zipfile.BadZipFile, ValueError, KeyError, struct.error):
            side(pos, start)  # read whole: the zip reader names whatever is wrong with the member

    @staticmethod
    def _needed(buf: bytearray, entries, select: TimeSelect):
        """A test for the left-out entries that must be read after all: the selection guessed one timestep per
        chunk; the member's metadata says how its arrays are chunked (a one-timestep member's chunk 0 holds any
        timestamp; a chunk of several timestamps holds the wanted one at ``t // chunks[0]``). Each array's
        ``.zarray`` entry is read (its CRC keys a cache: members of a shard share them), else ``.zmetadata``."""
        found = dict(entries)

        def needed(n: str) -> bool:
            m = _CHUNK.search(n)
            if m is None or select.unwanted(n) is None:
                return False
            var, k = m.group(1), int(m.group(2))
            prefix = n[: m.start(1)]
            try:
                first, per = _time_chunking(buf, found, prefix, var)
            except (ValueError, KeyError, IndexError, TypeError, zlib.error, struct.error):
                return True  # unreadable metadata: read the chunk, the zip reader names what is wrong
            if first == 1 or per != 1:
                return k in ({0} if first == 1 else {t // max(per, 1) for t in select.keep[var]})
            return False

        return needed


#: ``(crc, size)`` of a ``.zarray`` entry -> (length along time, chunk length along time).
_CHUNKINGS: dict[tuple[int, int], tuple[int, int]] = {}


def _entry_bytes(buf: bytearray, entry: Any) -> bytes:
    """An entry's (inflated) bytes from the member's buffer, where it was read."""
    n_len, x_len = struct.unpack_from("<HH", buf, entry.header_offset + 26)
    start = entry.header_offset + _LOCAL.size + n_len + x_len
    raw = bytes(buf[start: start + entry.compress_size])
    return zlib.decompress(raw, -15) if entry.compress_type == zipfile.ZIP_DEFLATED else raw


def _time_chunking(buf: bytearray, found: Mapping[str, Any], prefix: str, var: str) -> tuple[int, int]:
    """(length, chunk length) along time of array ``var`` of a member, from its ``.zarray`` or ``.zmetadata``."""
    entry = found.get(f"{prefix}{var}/.zarray")
    if entry is not None:
        key = (entry.crc, entry.file_size)
        if key not in _CHUNKINGS:
            meta = json.loads(_entry_bytes(buf, entry))
            if len(_CHUNKINGS) > 1024:
                _CHUNKINGS.clear()
            _CHUNKINGS[key] = (int(meta["shape"][0]), int(meta["chunks"][0]))
        return _CHUNKINGS[key]
    meta = json.loads(_entry_bytes(buf, found[f"{prefix}.zmetadata"]))["metadata"][f"{var}/.zarray"]
    return int(meta["shape"][0]), int(meta["chunks"][0])


def _trips(n_time: int, wanted: Sequence[int], random: bool) -> float:
    """Round trips a member read by parts costs: one for its tail and the next front, and one more when a wanted
    chunk lies after one left out (3 times in 4 for a random season)."""
    wanted = sorted(set(wanted))
    return 1 + (n_time - 1) / n_time if random else 1 if wanted == list(range(len(wanted))) else 2


def parts_jump(link: Any, chunk: int | None, n_time: int, wanted: Sequence[int], *, random: bool) -> int | None:
    """The ``jump`` of a :class:`PartsReader` when reading members by parts is faster on ``link`` (a
    :class:`~ssl4eo_zarr.costmodel.Link`), else ``None``. ``chunk``: bytes of one band chunk (from
    :func:`first_chunk_bytes`); members hold ``n_time`` timestamps, ``wanted`` are read (``random``: one drawn per
    location). A member by parts costs its round trips (:func:`_trips`); it saves the chunks left out at the rate
    of one response."""
    if chunk is None or link.local:
        return None
    jump = int(_trips(n_time, wanted, random) * link.rtt * link.per_connection)
    return jump if chunk * (n_time - len(set(wanted))) > jump else None


#: A stream read by parts takes its first batch's members whole in one request while that costs at most this many
#: times the time of reading them by parts: it saves a request per member (the first batch then costs one request
#: per shard and modality) for the left-out chunks crossing too. At 50 ms and 50 MB/s per response the span costs
#: ~1.2 x and took the same time as parts in a DataLoader (`docs/benchmarks.md`, eleventh run); where the host caps
#: what all responses get together (a home link), the left-out chunks cost 2.5-4 x and the span is not taken.
WARM_SLACK = 1.5


def warm_span(link: Any, chunk: int | None, member_bytes: int, n_time: int, wanted: Sequence[int], *,
              random: bool) -> bool:
    """Whether streams read by parts (see :func:`parts_jump`) should read their first batch's members whole, in one
    request per shard, on ``link``: a member then moves ``member_bytes`` at one response's rate, by parts it costs
    its round trips and its bytes less the ``n_time - len(wanted)`` chunks of ``chunk`` bytes left out. Unknown
    sizes keep the span (one request per shard, as before sizes were told)."""
    if chunk is None or member_bytes <= 0:
        return True
    rate = link.per_connection
    kept = max(member_bytes - chunk * (n_time - len(set(wanted))), 0)
    by_parts = _trips(n_time, wanted, random) * link.rtt + kept / rate
    return member_bytes / rate <= WARM_SLACK * by_parts


def first_member_bytes(fh: Any) -> int | None:
    """Bytes of the first member of the tar shard open as ``fh`` (from its first header), or ``None``."""
    fh.seek(0)
    try:
        return int(tarfile.TarInfo.frombuf(fh.read(tarfile.BLOCKSIZE), "utf-8", "surrogateescape").size)
    except tarfile.TarError:
        return None


def first_chunk_bytes(fh: Any, var: str = "bands") -> int | None:
    """Compressed bytes of the first chunk of ``var`` in the first member of the tar shard open as ``fh`` (read
    from the first few kB: a tar header and the member's first local headers), or ``None`` where that cannot be
    told (no such entry near the front, sizes after the data)."""
    fh.seek(0)
    front = fh.read(FIRST_HEAD)
    try:
        info = tarfile.TarInfo.frombuf(front[:tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
    except tarfile.TarError:
        return None
    pos = tarfile.BLOCKSIZE if info.type in tarfile.REGULAR_TYPES else -1
    while 0 <= pos and pos + _LOCAL.size <= len(front):
        sig, _v, flags, _m, _t, _d, _crc, csize, _u, n_len, x_len = _LOCAL.unpack_from(front, pos)
        if sig != b"PK\x03\x04" or flags & 0x08:
            return None
        entry = front[pos + _LOCAL.size: pos + _LOCAL.size + n_len].decode("utf-8", "replace")
        m = _CHUNK.search(entry)
        if m is not None and m.group(1) == var:
            return int(csize)
        pos += _LOCAL.size + n_len + x_len + csize
    return None


__all__ = ["FIRST_HEAD", "FIRST_TAIL", "PartsReader", "TimeSelect", "WindowFile", "first_chunk_bytes",
           "first_member_bytes", "parts_jump"]
