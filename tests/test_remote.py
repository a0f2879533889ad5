"""Remote reading against real servers on 127.0.0.1: an HTTP server that honours Range, and moto's S3 server."""

import os
import socket
import zipfile

import numpy as np
import pytest
import xarray as xr
from torch.utils.data import DataLoader

import ssl4eo_zarr as sz
from ssl4eo_zarr import DatasetNotFoundError
from ssl4eo_zarr.testing import RangeHTTPServer

from .helpers import chunk_path

pytest.importorskip("aiohttp")


@pytest.fixture()
def http(root):
    with RangeHTTPServer(root) as server:
        yield server


def _url(server, root, path):
    return server.url + "/" + os.path.relpath(path, root).replace(os.sep, "/")


def test_one_file_over_http_is_the_local_file(http, root):
    path = chunk_path(root, "S2L1C", 2)
    remote = sz.open_dataset(_url(http, root, path))
    xr.testing.assert_identical(remote.load(), sz.open_dataset(path).load())


def test_reading_one_timestamp_moves_that_chunk_and_the_directory(http, root):
    path = chunk_path(root, "S2L2A", 1)
    ds = sz.open_dataset(_url(http, root, path))
    with zipfile.ZipFile(path) as zf:
        chunk = zf.getinfo("bands/0.2.0.0.0").compress_size
        directory = os.path.getsize(path) - max(i.header_offset + i.compress_size for i in zf.infolist())
    opened = http.bytes_served
    # the last 32 KiB (directory and .zmetadata in one request) and the sample ids
    assert opened < directory + 40_000, "opening reads the directory, .zmetadata and sample ids only"
    http.reset_counts()
    ds["bands"].isel(time=2).load()
    assert chunk <= http.bytes_served <= chunk + 200, (http.bytes_served, chunk)
    assert os.path.getsize(path) > 4 * chunk


def test_split_over_http_and_loader_with_workers(http, root):
    remote = sz.open_dataset(http.url, split="val")
    local = sz.open_dataset(root, split="val")
    xr.testing.assert_identical(remote.drop_vars("file").load(), local.drop_vars("file").load())
    ds = sz.ChunkDataset(http.url, split="val", return_metadata=True, seed=1, batch_size=10)
    ref = sz.ChunkDataset(root, split="val", return_metadata=True, seed=1, batch_size=10)
    got = list(DataLoader(ds, batch_size=None, num_workers=2))
    want = list(DataLoader(ref, batch_size=None, num_workers=2))
    assert [b["sample"] for b in got] == [b["sample"] for b in want]
    for a, b in zip(got, want):
        for key in ("S2L1C", "S2L2A", "S1GRD", "cloud_mask"):
            assert (a[key] == b[key]).all()


@pytest.mark.parametrize("timestamps", ["all", [3, 1]])
def test_prefetch_delivers_each_location_once_moving_the_same_bytes(http, root, timestamps):
    def run(**kwargs):
        http.reset_counts()
        ds = sz.ChunkDataset(http.url, split="val", return_metadata=True, timestamps=timestamps, seed=3, **kwargs)
        batches = list(DataLoader(ds, batch_size=None, num_workers=2))
        return batches, http.bytes_served, http.requests

    ahead, moved_ahead, requests_ahead = run()
    on_demand, moved, requests = run(prefetch=0)
    local = list(DataLoader(sz.ChunkDataset(root, split="val", return_metadata=True, timestamps=timestamps, seed=3),
                            batch_size=None, num_workers=2))
    samples = [s for b in ahead for s in b["sample"]]
    assert len(samples) == len(set(samples)) == 42
    for a, b, c in zip(ahead, on_demand, local):
        assert a["sample"] == b["sample"] == c["sample"]
        for key in ("S2L1C", "S2L2A", "S1GRD", "cloud_mask"):
            assert (a[key] == b[key]).all() and (a[key] == c[key]).all()
    # Each member is fetched once, header and data in one request (two on demand): the same bytes, fewer requests.
    assert abs(moved_ahead - moved) <= 0.01 * moved, (moved_ahead, moved)
    assert requests_ahead < requests


def test_redirects_are_followed_once_per_file(root):
    """A hub answers its resolve/main URLs with a redirect to its CDN; reads follow it and remember where it led."""
    with RangeHTTPServer(root, redirect=True) as server:
        path = chunk_path(root, "S2L2A", 2)
        url = server.url + "/r/" + os.path.relpath(path, root).replace(os.sep, "/")
        xr.testing.assert_identical(sz.open_dataset(url).load(), sz.open_dataset(path).load())
        assert 1 <= server.redirects <= 2, server.redirects  # the first request (and fsspec's size check), not every read
        ds = sz.ChunkDataset(server.url + "/r", split="val", timestamps=[2, 0], seed=1)
        ref = sz.ChunkDataset(root, split="val", timestamps=[2, 0], seed=1)
        for a, b in zip(DataLoader(ds, batch_size=None, num_workers=2), DataLoader(ref, batch_size=None, num_workers=2)):
            assert all((a[k] == b[k]).all() for k in ("S2L1C", "S2L2A", "S1GRD"))


def test_a_server_that_ignores_range_is_still_read_correctly(root):
    with RangeHTTPServer(root, ranges=False) as server:
        path = chunk_path(root, "S1GRD", 3)
        url = _url(server, root, path)
        xr.testing.assert_identical(sz.open_dataset(url).load(), sz.open_dataset(path).load())
        assert server.bytes_served > os.path.getsize(path)  # whole files came: the reader skipped to each range


def test_credentials_in_headers_reach_the_server_and_refusals_are_named(root):
    seen = []
    with RangeHTTPServer(root) as server:
        handler = server._httpd.RequestHandlerClass

        def guard(method):
            def guarded(self):
                seen.append((self.command, self.headers.get("Authorization")))
                if self.headers.get("Authorization") != "Bearer token":
                    self.send_error(403, "no token")
                    return None
                return method(self)
            return guarded

        handler.do_GET, handler.do_HEAD = guard(handler.do_GET), guard(handler.do_HEAD)
        path = chunk_path(root, "S2L1C", 1)
        url = _url(server, root, path)
        with pytest.raises(PermissionError, match="403"):
            sz.open_dataset(url, retries=0)
        got = sz.open_dataset(url, storage_options={"headers": {"Authorization": "Bearer token"}}).load()
        xr.testing.assert_identical(got, sz.open_dataset(path).load())
        assert ("GET", "Bearer token") in seen and all(auth == "Bearer token" for _, auth in seen[1:])


def test_dropped_connections_mid_body_are_retried(root):
    """A connection cut off after half a response (Content-Length not reached) is retried, never a hang or
    a short read; fetching ahead drops such a fetch and the read itself retries."""
    with RangeHTTPServer(root, drop_every=5) as server:
        ds = sz.ChunkDataset(server.url, split="val", timestamps=[1, 3], return_metadata=True, retry_backoff=0.01)
        ref = sz.ChunkDataset(root, split="val", timestamps=[1, 3], return_metadata=True)
        got = list(DataLoader(ds, batch_size=None, num_workers=2))
        want = list(DataLoader(ref, batch_size=None, num_workers=2))
        for a, b in zip(got, want):
            assert a["sample"] == b["sample"]
            assert all((a[k] == b[k]).all() for k in ("S2L1C", "S2L2A", "S1GRD", "cloud_mask"))
        assert server.drops > 3
        path = chunk_path(root, "S2L1C", 2)
        xr.testing.assert_identical(sz.open_dataset(_url(server, root, path), backoff=0.01).load(),
                                    sz.open_dataset(path).load())


def test_transient_failures_are_retried(root):
    with RangeHTTPServer(root, fail_every=3) as server:
        ds = sz.ChunkDataset(server.url, split="val", timestamps=0, return_metadata=True, retry_backoff=0.01)
        batches = list(DataLoader(ds, batch_size=None, num_workers=2))
        assert sum(len(b["sample"]) for b in batches) == 42
        assert server.failures > 5


def test_missing_remote_file_is_named(http):
    with pytest.raises(DatasetNotFoundError, match="nope"):
        sz.open_dataset(http.url + "/val/S2L2A/nope.zarr.zip")


def test_local_cache_serves_later_epochs(http, root, tmp_path):
    url = _url(http, root, chunk_path(root, "S1GRD", 1))
    first = sz.open_dataset(url, cache_dir=str(tmp_path / "cache")).load()
    served = http.bytes_served
    second = sz.open_dataset(url, cache_dir=str(tmp_path / "cache")).load()
    xr.testing.assert_identical(first, second)
    # the directory is asked for again (one tail request: it tells whether the file changed), no chunk is
    from ssl4eo_zarr.storage import TAIL_BYTES

    assert http.bytes_served - served <= TAIL_BYTES
    assert os.listdir(tmp_path / "cache")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_through_a_real_s3_api_server(root):
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}",
                                                                           "region_name": "us-east-1"}}
        boto3 = pytest.importorskip("boto3")
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="ssl4eo")
        fs = s3fs.S3FileSystem(**options)
        fs.put(root + "/", "ssl4eo/root/", recursive=True)
        remote = sz.open_dataset("s3://ssl4eo/root", split="val", storage_options=options)
        local = sz.open_dataset(root, split="val")
        xr.testing.assert_identical(remote.drop_vars("file").load(), local.drop_vars("file").load())
        batches = list(DataLoader(sz.ChunkDataset("s3://ssl4eo/root", split="val", storage_options=options,
                                                  timestamps=3), batch_size=None, num_workers=2))
        assert sum(b["S2L2A"].shape[0] for b in batches) == 42
        np.testing.assert_array_equal(np.sort(np.concatenate([b["S1GRD"][:, 0, 0, 0].numpy() for b in batches])),
                                      np.sort(local["S1GRD"].values[:, 3, 0, 0, 0]))
    finally:
        server.stop()


class _CatchAll:
    """An HTML site that answers 200 for every path (a catch-all rule), GET and HEAD, counting requests."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler

        from ssl4eo_zarr.testing import Served

        site = self
        self.requests = 0
        page = b"<html><body>Welcome</body></html>"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self, body):
                site.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                if body:
                    self.wfile.write(page)

            def do_GET(self):
                self._answer(True)

            def do_HEAD(self):
                self._answer(False)

        self.served = Served(Handler)
        self.url = self.served.url

    def close(self):
        self.served.close()


def test_a_catch_all_html_host_is_named_after_one_probe():
    from ssl4eo_zarr.layout import MAX_PROBED, count_by_probing

    site = _CatchAll()
    try:
        for opener in (lambda: sz.open_dataset(site.url, split="val"),
                       lambda: sz.ChunkDataset(site.url, split="val", modalities=["S2L2A"])):
            site.requests = 0
            with pytest.raises(sz.DatasetNotFoundError, match="catch-all or HTML site"):
                opener()
            assert site.requests <= 2, site.requests
    finally:
        site.close()
    calls = []
    with pytest.raises(sz.DatasetNotFoundError, match="answers for file number"):
        count_by_probing(lambda i: calls.append(i) or True, where="a host")
    assert len(calls) <= MAX_PROBED.bit_length() + 2
