"""One conformance suite run over every kind of archive (as zarr-python does for its stores): a local file, bytes
in memory, a member inside a tar shard, loopback HTTP and S3 (moto); and the mutation fuzzer over HTTP."""

import io
import os
import pickle
import socket
import tarfile
import zipfile

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ssl4eo_zarr as sz
from ssl4eo_zarr import CorruptFileError, SSL4EOError, synthetic
from ssl4eo_zarr.shardfile import MemberArchive, scan_shard, write_shard
from ssl4eo_zarr.storage import MemoryZipArchive, ScratchBuffer, ZipArchive
from ssl4eo_zarr.testing import RangeHTTPServer
from ssl4eo_zarr.zarrv2 import read_group


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small chunk file and a copy with one byte flipped inside a ``bands`` chunk."""
    folder = tmp_path_factory.mktemp("archives")
    ds = synthetic.make_chunk(synthetic.sample_locations(3, seed=2), size=8, seed=2)["S1GRD"]
    good = str(folder / "good.zarr.zip")
    sz.write_chunk(ds, good, size=8)
    blob = bytearray(open(good, "rb").read())
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("bands/0.1.0.0.0")
    blob[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0x5A
    bad = str(folder / "bad.zarr.zip")
    open(bad, "wb").write(bytes(blob))
    return {"good": good, "bad": bad, "folder": str(folder), "ds": ds}


class ArchiveConformance:
    """What every archive kind must do; subclasses say how to open a local file as their kind."""

    def open(self, path: str, files) -> ZipArchive:
        raise NotImplementedError

    def test_members_equal_zipfile(self, files):
        archive = self.open(files["good"], files)
        with zipfile.ZipFile(files["good"]) as zf:
            assert sorted(archive.names()) == sorted(zf.namelist())
            for name in zf.namelist():
                assert archive.read(name) == zf.read(name), name
                assert bytes(archive.read_into(name, ScratchBuffer())) == zf.read(name), name
        assert archive.duplicate_names() == []
        assert ".zmetadata" in archive and "nope" not in archive

    def test_metadata_and_chunks_decode(self, files):
        group = read_group(self.open(files["good"], files))
        assert group.consolidated and group.arrays["bands"].shape == (3, 4, 2, 8, 8)

    def test_missing_member_names_the_archive_and_member(self, files):
        archive = self.open(files["good"], files)
        with pytest.raises(CorruptFileError) as err:
            archive.read("bands/9.9.9.9.9")
        assert err.value.member == "bands/9.9.9.9.9" and archive.path in str(err.value)

    def test_a_damaged_member_fails_its_crc(self, files):
        archive = self.open(files["bad"], files)
        archive.read("bands/0.0.0.0.0")  # intact members still read
        with pytest.raises(CorruptFileError, match="CRC-32"):
            archive.read("bands/0.1.0.0.0")
        with pytest.raises(CorruptFileError, match="CRC-32"):
            archive.read_into("bands/0.1.0.0.0", ScratchBuffer())

    def test_survives_pickling_and_release(self, files):
        archive = self.open(files["good"], files)
        first = archive.read(".zmetadata")
        archive.release()
        again = pickle.loads(pickle.dumps(archive))
        assert again.read(".zmetadata") == first and archive.read(".zmetadata") == first
        archive.close()
        assert archive.read("bands/0.2.0.0.0") == again.read("bands/0.2.0.0.0")


class TestLocalFile(ArchiveConformance):
    def open(self, path, files):
        return ZipArchive(path)


class TestInMemory(ArchiveConformance):
    def open(self, path, files):
        return MemoryZipArchive(open(path, "rb").read(), path)


class TestTarMember(ArchiveConformance):
    def open(self, path, files):
        shard = os.path.join(files["folder"], os.path.basename(path) + ".tar")
        if not os.path.exists(shard):
            write_shard(shard, [("0000001.txt", b"not a zarr"), ("0000002.zarr.zip", open(path, "rb").read())])
        return MemberArchive(shard, scan_shard(shard)[0])


@pytest.fixture(scope="module")
def http(files):
    pytest.importorskip("aiohttp")
    with RangeHTTPServer(files["folder"]) as server:
        yield server


class TestHTTP(ArchiveConformance):
    @pytest.fixture(autouse=True)
    def _server(self, http):
        self.url = http.url

    def open(self, path, files):
        return ZipArchive(f"{self.url}/{os.path.basename(path)}", retries=1, backoff=0.01)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(files):
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint,
                                                                       "region_name": "us-east-1"}}
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket="conformance")
    fs = s3fs.S3FileSystem(**options)
    for name in ("good.zarr.zip", "bad.zarr.zip"):
        fs.put(os.path.join(files["folder"], name), f"conformance/{name}")
    yield options
    server.stop()


class TestS3(ArchiveConformance):
    @pytest.fixture(autouse=True)
    def _server(self, s3):
        self.options = s3

    def open(self, path, files):
        return ZipArchive(f"s3://conformance/{os.path.basename(path)}", storage_options=self.options, retries=1,
                          backoff=0.01)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_archives_over_http_give_identical_data_or_a_named_error(files, http, data):
    """The fuzzer of test_untrusted, through range requests instead of a local file."""
    blob = bytearray(open(files["good"], "rb").read())
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] ^= data.draw(st.integers(1, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    name = "mutated.zarr.zip"
    with open(os.path.join(files["folder"], name), "wb") as f:
        f.write(bytes(blob))
    url = f"{http.url}/{name}"
    try:
        got = sz.open_dataset(url, retries=0).load()
    except SSL4EOError as exc:
        assert url in str(exc)
        return
    xr.testing.assert_identical(got, files["ds"])


def test_a_chunk_renamed_in_the_directory_is_damage_not_an_empty_chunk(files, http):
    """A flipped bit in a central-directory name hides the chunk; it must not read as fill values (NaN)."""
    blob = open(files["good"], "rb").read()
    with zipfile.ZipFile(files["good"]) as zf:
        at = blob.index(b"bands/0.3.0.0.0", zf.start_dir)  # the directory's copy of the name, not the member's
    damaged = blob[:at] + b"c" + blob[at + 1:]
    with open(os.path.join(files["folder"], "renamed.zarr.zip"), "wb") as f:
        f.write(damaged)
    for path in (os.path.join(files["folder"], "renamed.zarr.zip"), f"{http.url}/renamed.zarr.zip"):
        with pytest.raises(CorruptFileError, match="cands/0.3.0.0.0.*damaged") as err:
            sz.open_dataset(path, retries=0).load()
        assert path in str(err.value)


def test_shard_members_in_memory_are_checked_like_files(files, tmp_path):
    """A member damaged inside a shard fails with the shard and member named, from the loader too."""
    from ssl4eo_zarr.convert import location_dataset, member_bytes

    good = member_bytes(location_dataset(files["ds"], 0, "S1GRD"))
    bad = bytearray(member_bytes(location_dataset(files["ds"], 1, "S1GRD")))
    info = zipfile.ZipFile(io.BytesIO(bytes(bad))).getinfo("bands/1.0.0.0")
    bad[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0x5A
    shard = str(tmp_path / "val" / "S1GRD" / "ssl4eos12_shard_000001.tar")
    write_shard(shard, [("0000001.zarr.zip", good), ("0000002.zarr.zip", bytes(bad))])
    with tarfile.open(shard) as tar:
        assert [m.name for m in tar] == ["0000001.zarr.zip", "0000002.zarr.zip"]
    ds = sz.ChunkDataset(shard, modalities=["S1GRD"], batch_size=2, shuffle=False)
    with pytest.raises(CorruptFileError) as err:
        list(ds)
    assert shard in str(err.value) and "0000002.zarr.zip" in str(err.value) and "CRC-32" in str(err.value)
    skipping = sz.ChunkDataset(shard, modalities=["S1GRD"], batch_size=2, shuffle=False, on_error="skip")
    with pytest.warns(RuntimeWarning, match="skipping"):
        batches = list(skipping)
    assert batches[0]["S1GRD"].shape[0] == 1
    np.testing.assert_array_equal(batches[0]["S1GRD"][0].numpy(), files["ds"]["bands"].values[0])


def test_the_read_buffer_is_kept_per_thread_across_readers_and_grows_with_room_to_spare():
    """Chunk readers come and go with every epoch; the buffer compressed chunks are read into stays, so its
    pages are not faulted in again, and a chunk a few kB larger than the last does not replace it."""
    import threading

    from ssl4eo_zarr.loader.decode import ArchiveCache
    from ssl4eo_zarr.storage import thread_scratch

    scratch = ArchiveCache().scratch
    assert ArchiveCache().scratch is scratch is thread_scratch()
    size = len(scratch._buf) + 1_000_000
    scratch.view(size)
    buf = scratch._buf
    assert len(scratch.view(size + 4096)) == size + 4096 and scratch._buf is buf
    other = []
    thread = threading.Thread(target=lambda: other.append(thread_scratch()))
    thread.start()
    thread.join()
    assert other[0] is not scratch, "a prefetching thread never reads into the decoding thread's buffer"
