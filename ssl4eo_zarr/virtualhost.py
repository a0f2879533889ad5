"""A static host of the published size that stores almost nothing: every published shard name and member count
of SSL4EO-S12 and TerraMesh, each tar made up on request from one real member per modality, behind a slow link.

For tests and ``benchmarks/scale.py``: what the library does against 2.3 TB (17 TB for TerraMesh) on a distant
host, counted in requests, bytes and seconds, without storing any of it. Like a static host it serves files
only: GET and HEAD with ``Range``, an ``ETag`` per file, 404 for folders and unknown names, no listing.
``latency`` seconds pass before each response; each response is sent at ``rate`` bytes/s at most (a per-
connection cap, as hosts and CDNs give); ``requests`` and ``bytes_sent`` count what went out (shared memory,
so they are read while the host runs in its own process, as it should to leave the client's cores alone).

Members of a shard are the real member of its modality repeated under each key: SSL4EO-S12 keys are 7-digit
location ids numbered through the split (train from 0000001, val from 0300001), TerraMesh keys are
``{subset}_{split}_{NNNNNNN}``. The SSL4EO-S12 roots also hold the 2026 metadata table (``{split}_metadata.parquet``:
``sample_id``, ``split``, ``tar``, ``zarr``, centres, times, cloud cover) whose ``tar`` column names each
location's shard.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import re
import tarfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import schema

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
#: First location id of each SSL4EO-S12 split (disjoint, as the real splits are).
ID_BASE = {"train": 1, "val": 300_001}


@dataclass(frozen=True)
class VirtualShard:
    """One made-up tar: ``count`` members of ``member_size`` bytes, keys ``keys(k)``."""

    corpus: str
    split: str
    prefix: str
    number: int
    first: int  # global index of the shard's first member in its subset and split
    count: int
    member_size: int

    @property
    def stride(self) -> int:
        return tarfile.BLOCKSIZE + -(-self.member_size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE

    @property
    def size(self) -> int:
        body = self.count * self.stride + 2 * tarfile.BLOCKSIZE
        return -(-body // tarfile.RECORDSIZE) * tarfile.RECORDSIZE

    def key(self, k: int) -> str:
        g = self.first + k
        if self.corpus == schema.SSL4EO_S12.name:
            return f"{ID_BASE[self.split] + g:07d}"
        return f"{self.prefix}_{self.split}_{g:07d}"

    def header(self, k: int) -> bytes:
        info = tarfile.TarInfo(self.key(k) + ".zarr.zip")
        info.size, info.mtime, info.mode = self.member_size, 1_771_286_400, 0o644
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def published_shards(member_sizes: Mapping[str, Mapping[str, int]]) -> dict[str, tuple[VirtualShard, str]]:
    """``{url path: (shard, modality)}`` of every published shard of each corpus in ``member_sizes`` (corpus ->
    modality -> bytes of its member) for those modalities (where a subset holds them), at the published names
    and counts."""
    out: dict[str, tuple[VirtualShard, str]] = {}
    for name, sizes in member_sizes.items():
        corpus = schema.get_corpus(name)
        base = f"/{name}"
        for split in ("train", "val"):
            for sub in corpus.subsets:
                counts = sub.counts(split)
                if counts is None:
                    continue
                first_number = sub.ranges[split][0]
                start = 0
                for j, n in enumerate(counts):
                    for m, size in sizes.items():
                        if m not in sub.modalities:
                            continue
                        shard = VirtualShard(name, split, sub.prefix, first_number + j, start, n, size)
                        out[f"{base}/{split}/{m}/{schema.shard_name(first_number + j, sub.prefix)}"] = (shard, m)
                    start += n
    return out


def metadata_table(split: str) -> bytes:
    """The SSL4EO-S12 2026 metadata table of ``split`` as Parquet bytes: a row per location with its shard."""
    import geopandas as gpd
    import numpy as np
    import pandas as pd

    counts = schema.SSL4EO_S12.subsets[0].counts(split) or []
    n = sum(counts)
    shard = np.repeat(np.arange(1, len(counts) + 1), counts)
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(-180, 180, n), rng.uniform(-60, 70, n)
    ids = np.char.zfill((ID_BASE[split] + np.arange(n)).astype(str), schema.SAMPLE_ID_WIDTH)
    data: dict[str, Any] = {"sample_id": ids, "split": np.full(n, split),
                            "tar": np.char.add(np.char.add("ssl4eos12_shard_", np.char.zfill(shard.astype(str), 6)),
                                               ".tar"),
                            "zarr": np.char.add(ids, ".zarr.zip"), "center_lon": lon, "center_lat": lat,
                            "crs": np.where(lat >= 0, 32600, 32700) + (((lon + 180) // 6).astype(int) % 60) + 1}
    for t, month in enumerate((3, 6, 9, 12)):
        data[f"S2_time_{t}"] = pd.Timestamp(f"2021-{month:02d}-15")
        data[f"S1_time_{t}"] = pd.Timestamp(f"2021-{month:02d}-17")
        data[f"cloud_cover_{t}"] = rng.uniform(0, 0.1, n)
    frame = gpd.GeoDataFrame(data, geometry=gpd.points_from_xy(lon, lat), crs="EPSG:4326")
    buf = io.BytesIO()
    frame.to_parquet(buf)
    return buf.getvalue()


class _Host:
    def __init__(self, members: Mapping[str, Mapping[str, bytes]], latency: float, rate: float | None,
                 tables: bool, counters: Any):
        self.members = {c: dict(v) for c, v in members.items()}
        self.shards = published_shards({c: {m: len(b) for m, b in v.items()} for c, v in members.items()})
        self.files: dict[str, bytes] = {}
        if tables and schema.SSL4EO_S12.name in members:
            for split in ("train", "val"):
                self.files[f"/{schema.SSL4EO_S12.name}/{split}_metadata.parquet"] = metadata_table(split)
        self.latency, self.rate, self.counters = latency, rate, counters
        self.log: str | None = None

    def size(self, path: str) -> int | None:
        if path in self.files:
            return len(self.files[path])
        found = self.shards.get(path)
        return found[0].size if found is not None else None

    def read(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a file."""
        if path in self.files:
            return self.files[path][start:end]
        shard, m = self.shards[path]
        data, stride = self.members[shard.corpus][m], shard.stride
        out = bytearray()
        pos = start
        while pos < end:
            k, at = divmod(pos, stride)
            if k >= shard.count:  # end-of-archive blocks and record padding
                out += bytes(end - pos)
                break
            want = end - pos
            piece: bytes | memoryview
            if at < tarfile.BLOCKSIZE:  # the header, made for this key
                piece = shard.header(k)[at: at + want]
            elif at - tarfile.BLOCKSIZE < len(data):  # the member's bytes, sliced without a copy of the member
                piece = memoryview(data)[at - tarfile.BLOCKSIZE: at - tarfile.BLOCKSIZE + want]
            else:  # zero padding to the next block
                piece = bytes(min(want, stride - at))
            out += piece
            pos += len(piece)
        return bytes(out)


#: A path the host answers with its counts so far (``{"requests": N, "bytes": B}``), at no latency and uncounted:
#: a benchmark's client reads them at the moment it cares about (its first batch), not when its process has ended.
COUNTS_PATH = "/.counts"


def _serve(members: Mapping[str, Mapping[str, bytes]], latency: float, rate: float | None, tables: bool,
           counters: Any, port: Any, ready: Any, log: str | None, total: float | None = None) -> None:
    host = _Host(members, latency, rate, tables, counters)
    host.log = log
    # The host's uplink: every response's bytes pass one queue drained at ``total`` bytes/s (first come, first
    # served), on top of each response's own ``rate``.
    uplink = threading.Lock()
    free_at = [0.0]

    def wait_uplink(n: int) -> None:
        if not total:
            return
        with uplink:
            now = time.monotonic()
            start = max(now, free_at[0])
            free_at[0] = start + n / total
        if start + n / total > now:
            time.sleep(start + n / total - now)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == COUNTS_PATH:  # the counts so far, for a client to read at its own moment; not counted
                text = json.dumps({"requests": int(counters[0]), "bytes": int(counters[1])}).encode()
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                if body:
                    self.wfile.write(text)
                return
            if host.latency:
                time.sleep(host.latency)
            with counters.get_lock():
                counters[0] += 1
                if host.log is not None:
                    with open(host.log, "a") as f:
                        f.write(f"{self.command} {path} {self.headers.get('Range', '')}\n")
            size = host.size(path)
            if size is None:
                self.send_response(HTTPStatus.NOT_FOUND)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end, status = 0, size, HTTPStatus.OK
            wanted = self.headers.get("Range")
            match = _RANGE.match(wanted.strip()) if wanted else None
            if match and (match[1] or match[2]):
                if match[1]:
                    start = int(match[1])
                    end = min(size, int(match[2]) + 1) if match[2] else size
                else:
                    start = max(0, size - int(match[2]))
                if start >= size:
                    self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = HTTPStatus.PARTIAL_CONTENT
            self.send_response(status)
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{size:x}-{abs(hash(path)) % 10**8:x}"')
            if status == HTTPStatus.PARTIAL_CONTENT:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if not body:
                return
            step = 1 << 20
            began = time.monotonic()
            sent = 0
            try:
                for pos in range(start, end, step):
                    chunk = host.read(path, pos, min(end, pos + step))
                    wait_uplink(len(chunk))
                    sent += len(chunk)
                    if host.rate:  # pace this response to the per-connection rate: a chunk leaves when it is due
                        ahead = sent / host.rate - (time.monotonic() - began)
                        if ahead > 0:
                            time.sleep(ahead)
                    self.wfile.write(chunk)
                    with counters.get_lock():
                        counters[1] += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client stopped reading (a stream it no longer needs)

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            import sys

            if not isinstance(sys.exc_info()[1], ConnectionError):  # a client gone (a stopped row) is no error
                super().handle_error(request, client_address)

    server = Server(("127.0.0.1", 0), Handler)
    port.value = server.server_address[1]
    ready.set()
    server.serve_forever(poll_interval=0.05)


class VirtualHost:
    """The published layout of each corpus in ``members`` (``"ssl4eo-s12"``, ``"terramesh"``, each mapping a
    modality to one real member's bytes, see :func:`sample_members`) served from a child process on
    ``http://127.0.0.1:<port>/<corpus>``. ``root(corpus)`` is the dataset root URL. Use as a context manager;
    the process ends on exit. (Spawned: a script that makes one needs ``if __name__ == "__main__":``.)
    ``latency``: seconds before each response; ``rate``: bytes/s of each response; ``total``: bytes/s of all
    responses together (the host's uplink). ``log``: a file that gets a line per request, ``METHOD PATH RANGE``."""

    def __init__(self, members: Mapping[str, Mapping[str, bytes]], *, latency: float = 0.0,
                 rate: float | None = None, tables: bool = True, log: str | None = None, total: float | None = None):
        ctx = mp.get_context("spawn")  # a clean process: no inherited threads or torch state
        self._counters = ctx.Array("q", 2)
        self._port = ctx.Value("i", 0)
        ready = ctx.Event()
        self._proc = ctx.Process(target=_serve, args=({c: dict(v) for c, v in members.items()}, latency, rate, tables,
                                                      self._counters, self._port, ready, log, total), daemon=True)
        self._proc.start()
        deadline = time.monotonic() + 120
        while not ready.wait(0.2):
            if not self._proc.is_alive() or time.monotonic() > deadline:
                self._proc.kill()
                raise RuntimeError(f"the virtual host did not start (exit code {self._proc.exitcode})")
        self.url = f"http://127.0.0.1:{self._port.value}"
        self._log = log
        self._lock = threading.Lock()

    def root(self, corpus: str = "ssl4eo-s12") -> str:
        return f"{self.url}/{corpus}"

    @property
    def requests(self) -> int:
        return int(self._counters[0])

    @property
    def bytes_sent(self) -> int:
        return int(self._counters[1])

    def log(self) -> list[tuple[str, str, str]]:
        """``(method, path, Range header)`` of each request so far (needs ``log``)."""
        if self._log is None or not os.path.exists(self._log):
            return []
        with open(self._log) as f:
            return [tuple(line.rstrip("\n").split(" ", 2)) for line in f if line.strip()]  # type: ignore[misc]

    def paths(self, method: str | None = None) -> list[str]:
        """Paths requested so far (needs ``log``), by ``method`` (``"GET"``, ``"HEAD"``) when given."""
        return [p for m, p, _r in self.log() if method is None or m == method]

    def reset_counts(self) -> None:
        with self._counters.get_lock():
            self._counters[0] = self._counters[1] = 0
            if self._log is not None and os.path.exists(self._log):
                os.unlink(self._log)

    def close(self) -> None:
        self._proc.kill()
        self._proc.join(10)

    def __enter__(self) -> VirtualHost:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def sample_members(size: int = schema.PATCH_SIZE, modalities: Sequence[str] = ("S2L2A", "S1GRD", "DEM"),
                   corpus: str = "ssl4eo-s12", seed: int = 0) -> dict[str, bytes]:
    """One real member per modality (synthetic values, the published layout) as bytes, ``size`` px square;
    ``corpus="terramesh"`` gives one-timestamp members."""
    import tempfile

    from . import synthetic
    from .shardfile import scan_shard

    with tempfile.TemporaryDirectory() as tmp:
        if corpus == schema.SSL4EO_S12.name:
            synthetic.make_shards(tmp, 1, per_shard=1, size=size, seed=seed, modalities=tuple(modalities))
        else:
            synthetic.make_terramesh(tmp, 1, 1, per_shard=1, size=size, seed=seed, modalities=modalities)
        out = {}
        for m in modalities:
            folder = os.path.join(tmp, "val", m)
            name = sorted(os.listdir(folder))[0]
            path = os.path.join(folder, name)
            member = scan_shard(path)[0]
            with open(path, "rb") as f:
                f.seek(member.offset)
                out[m] = f.read(member.size)
        return out


__all__ = ["ID_BASE", "VirtualHost", "VirtualShard", "metadata_table", "published_shards", "sample_members"]
