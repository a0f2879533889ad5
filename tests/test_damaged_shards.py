"""A damaged shard never shrinks silently: every member of a shard is accounted for, a bad tar header is an error
naming the shard and the byte, and shards of one set that end at different lengths are an error."""

import os
import tarfile
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

import ssl4eo_zarr as sz
from ssl4eo_zarr import DamagedShardError, ModalityMismatchError, schema, synthetic
from ssl4eo_zarr.shardfile import scan_shard, write_shard

N, SIZE, BAD = 20, 8, 5  # 20 locations, the header of the 6th damaged


@pytest.fixture()
def shards(tmp_path):
    """One shard set of 20 locations (S2L2A, S1GRD) whose S2L2A shard has the 6th member's header damaged;
    and, named so they are counted, not taken from the published table."""
    synthetic.make_shards(str(tmp_path), N, per_shard=N, size=SIZE, seed=8, modalities=("S2L2A", "S1GRD"))
    path = os.path.join(str(tmp_path), "val", "S2L2A", schema.shard_name(1))
    header = scan_shard(path)[BAD].offset - tarfile.BLOCKSIZE
    with open(path, "r+b") as f:
        f.seek(header + 3)  # inside the member name: the header's checksum no longer holds
        f.write(b"#")
    return str(tmp_path), path, header


def test_scan_names_the_shard_and_the_byte(shards):
    _root, path, header = shards
    with pytest.raises(DamagedShardError, match=f"byte {header}") as info:
        scan_shard(path)
    assert info.value.path == path and info.value.offset == header and info.value.readable == BAD
    assert len(info.value.members) == BAD


def test_raise_is_an_error_at_construction(shards):
    root, path, header = shards
    with pytest.raises(DamagedShardError, match=f"{path}.*byte {header}"):
        sz.ChunkDataset(root, split="val", modalities=["S2L2A", "S1GRD"], batch_size=4)


def test_skip_keeps_what_precedes_the_damage_and_says_how_many_were_lost(shards):
    root, path, _header = shards
    with pytest.warns(RuntimeWarning, match=f"skipping the rest of {path}.*{N - BAD} locations lost"):
        ds = sz.ChunkDataset(root, split="val", modalities=["S2L2A", "S1GRD"], batch_size=4, on_error="skip",
                             return_metadata=True)
    samples = [s for b in DataLoader(ds, batch_size=None, num_workers=2) for s in b["sample"]]
    assert len(samples) == len(set(samples)) == BAD


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_streaming_past_a_damaged_header(shards, on_error):
    """Counts given (as for the published shards, whose sizes come from the table): the damage is met while
    streaming; raise names shard and byte, skip drops the rest of the shard with one warning."""
    root, path, header = shards
    ds = sz.ChunkDataset(root, split="val", modalities=["S2L2A", "S1GRD"], batch_size=4, on_error=on_error,
                         samples_per_file=[N], return_metadata=True, shuffle=False)
    if on_error == "raise":
        with pytest.raises(DamagedShardError, match=f"byte {header}"):
            list(ds)
        return
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        batches = list(ds)
    said = [str(w.message) for w in record if "skipping the rest" in str(w.message)]
    assert len(said) == 1 and f"{N - BAD} locations" in said[0] and path in said[0], said
    samples = [s for b in batches for s in b["sample"]]
    assert len(samples) == BAD and all(b["S2L2A"].shape[0] == len(b["sample"]) for b in batches)
    assert all(isinstance(b["S1GRD"], torch.Tensor) for b in batches)


def test_the_xarray_view_names_the_damage(shards):
    root, path, header = shards
    with pytest.raises(DamagedShardError, match=f"byte {header}"):
        sz.open_dataset(root, split="val")


def test_a_truncated_shard_without_end_blocks_is_named(tmp_path):
    synthetic.make_shards(str(tmp_path), 6, per_shard=6, size=SIZE, seed=1, modalities=("S2L2A",))
    path = os.path.join(str(tmp_path), "val", "S2L2A", schema.shard_name(1))
    members = scan_shard(path)
    with open(path, "r+b") as f:  # cut exactly after the 4th member's data (a download stopped there)
        f.truncate(members[3].offset + -(-members[3].size // 512) * 512)
    with pytest.raises(DamagedShardError, match="without tar's end-of-archive blocks"):
        scan_shard(path)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_shards_of_one_set_that_end_at_different_lengths(tmp_path, on_error):
    synthetic.make_shards(str(tmp_path), N, per_shard=N, size=SIZE, seed=2, modalities=("S2L2A", "S1GRD"))
    s1 = os.path.join(str(tmp_path), "val", "S1GRD", schema.shard_name(1))
    with tarfile.open(s1) as tar:
        kept = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()[:N - 2]]
    write_shard(s1, kept)
    kw = {"split": "val", "modalities": ["S2L2A", "S1GRD"], "batch_size": 4, "on_error": on_error}
    if on_error == "raise":
        with pytest.raises(ModalityMismatchError, match="different lengths"):
            sz.ChunkDataset(str(tmp_path), **kw)
        return
    with pytest.warns(RuntimeWarning, match="2 lost"):
        ds = sz.ChunkDataset(str(tmp_path), return_metadata=True, **kw)
    assert sum(len(b["sample"]) for b in ds) == N - 2


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_longer_shard_of_another_modality_is_found_while_streaming(tmp_path, on_error):
    """Over HTTP only the first modality's headers are read at construction; the others are checked as they
    stream: at the end of a set every modality's shard must end too."""
    from ssl4eo_zarr.testing import RangeHTTPServer

    synthetic.make_shards(str(tmp_path), N, per_shard=N, size=SIZE, seed=2, modalities=("S2L2A", "S1GRD"))
    s2 = os.path.join(str(tmp_path), "val", "S2L2A", schema.shard_name(1))
    with tarfile.open(s2) as tar:
        kept = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()[:N - 3]]
    write_shard(s2, kept)
    with RangeHTTPServer(str(tmp_path)) as server:
        ds = sz.ChunkDataset(server.url, split="val", modalities=["S2L2A", "S1GRD"], batch_size=4, on_error=on_error,
                             shuffle=False, return_metadata=True)
        if on_error == "raise":
            with pytest.raises(ModalityMismatchError, match="S1GRD.*more than"):
                list(ds)
            return
        with pytest.warns(RuntimeWarning, match="more than"):
            got = [k for b in ds for k in b["sample"]]
    assert len(got) == N - 3


@pytest.fixture()
def zeroed(tmp_path):
    """The same set, but the 6th member's header zeroed whole (what a sparse partial download leaves): it reads
    as tar's end-of-archive marker, with 14 members after it."""
    synthetic.make_shards(str(tmp_path), N, per_shard=N, size=SIZE, seed=8, modalities=("S2L2A", "S1GRD"))
    path = os.path.join(str(tmp_path), "val", "S2L2A", schema.shard_name(1))
    header = scan_shard(path)[BAD].offset - tarfile.BLOCKSIZE
    with open(path, "r+b") as f:
        f.seek(header)
        f.write(bytes(tarfile.BLOCKSIZE))
    return str(tmp_path), path, header


def test_a_zeroed_header_is_no_end_of_archive(zeroed):
    root, path, header = zeroed
    with pytest.raises(DamagedShardError, match=f"seems to end at byte {header}.*more bytes follow") as info:
        scan_shard(path)
    assert info.value.offset == header and info.value.readable == BAD
    with pytest.raises(DamagedShardError, match=path):
        sz.ChunkDataset(root, split="val", modalities=["S2L2A"], batch_size=4)
    ds = sz.ChunkDataset(root, split="val", modalities=["S2L2A"], batch_size=4, samples_per_file=N)
    with pytest.raises(DamagedShardError, match=f"seems to end at byte {header}"):
        list(ds)  # streamed: the stream meets the zeroed header and the data after it
    with pytest.raises(DamagedShardError, match=path):
        sz.open_dataset(root, split="val", modalities=["S2L2A"])


def test_padding_after_the_end_of_archive_is_fine(tmp_path):
    """Zero padding of any record size after the end-of-archive marker is what tar writers leave: no error."""
    path = write_shard(str(tmp_path / "a.tar"), [(f"{k:07d}.zarr.zip", bytes(100)) for k in range(3)])
    with open(path, "ab") as f:
        f.write(bytes(3 * 10240))
    assert [m.key for m in scan_shard(path)] == ["0000000", "0000001", "0000002"]


def test_a_shard_cut_inside_a_members_data_names_the_byte(tmp_path):
    """A download stopped inside the 4th member's data: the error names the shard, the member and the byte."""
    synthetic.make_shards(str(tmp_path), 6, per_shard=6, size=SIZE, seed=1, modalities=("S2L2A",))
    path = os.path.join(str(tmp_path), "val", "S2L2A", schema.shard_name(1))
    members = scan_shard(path)
    cut = members[3].offset + members[3].size // 2
    with open(path, "r+b") as f:
        f.truncate(cut)
    with pytest.raises(sz.CorruptFileError) as info:
        list(sz.ChunkDataset(str(tmp_path), split="val", modalities=["S2L2A"], batch_size=2, shuffle=False))
    message = str(info.value)
    assert path in message and (f"byte {cut}" in message or f"byte {members[3].offset - 512}" in message), message


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_streaming_past_a_damaged_header_from_a_url(shards, on_error):
    """The same from a static host: remote shards are read on read-ahead threads, whose errors surface where the
    damaged location is asked for, in the DataLoader's workers."""
    from ssl4eo_zarr.testing import RangeHTTPServer

    root, _path, header = shards
    with RangeHTTPServer(root) as server:
        ds = sz.ChunkDataset(server.url, split="val", modalities=["S2L2A", "S1GRD"], batch_size=4,
                             on_error=on_error, samples_per_file=[N], return_metadata=True, shuffle=False)
        url = f"{server.url}/val/S2L2A/{schema.shard_name(1)}"
        if on_error == "raise":
            with pytest.raises(DamagedShardError, match=f"byte {header}"):
                list(DataLoader(ds, batch_size=None, num_workers=1))
            return
        with pytest.warns(RuntimeWarning, match="skipping the rest of " + url):
            batches = list(ds)
    samples = [s for b in batches for s in b["sample"]]
    assert len(samples) == BAD
