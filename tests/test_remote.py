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
    assert http.bytes_served == served
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
