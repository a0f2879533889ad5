"""The split index: reopening reads nothing it already knows, and never reads through a stale entry."""

import glob
import os
import shutil

import numpy as np
import pytest
import xarray as xr

import ssl4eo_zarr as sz
from ssl4eo_zarr import synthetic
from ssl4eo_zarr.storage import ZipArchive

from .helpers import chunk_path


@pytest.fixture()
def setup(root, tmp_path, monkeypatch):
    monkeypatch.setenv("SSL4EO_ZARR_CACHE", str(tmp_path / "cache"))
    work = str(tmp_path / "root")
    shutil.copytree(root, work)
    return work


def _reads(monkeypatch):
    seen = []
    original = ZipArchive.read

    def counting(self, name, **kw):
        seen.append((self.path, name))
        return original(self, name, **kw)

    monkeypatch.setattr(ZipArchive, "read", counting)
    return seen


def test_reopening_reads_no_metadata_and_gives_the_same_view(setup, monkeypatch):
    first = sz.open_dataset(setup, split="val").load()
    assert glob.glob(os.path.join(os.environ["SSL4EO_ZARR_CACHE"], "splits", "*.json"))
    seen = _reads(monkeypatch)
    again = sz.open_dataset(setup, split="val")
    # Directories, .zmetadata, sample ids and S1 orders came from the index: what is read is the small index
    # coordinates of one file per modality.
    assert {n.split("/")[0] for _, n in seen} <= {"band", "time", "x", "y"}
    assert len({p for p, _ in seen}) == 4
    xr.testing.assert_identical(again.load(), first)
    assert [n for _, n in seen if n.startswith("bands/")], "pixel values are still read from the files"


@pytest.mark.parametrize("change", ["replace", "truncate", "delete"])
def test_a_changed_file_is_never_read_through_a_stale_entry(setup, monkeypatch, change):
    sz.open_dataset(setup, split="val")
    path = chunk_path(setup, "S2L2A", 2)
    if change == "replace":
        other = synthetic.make_chunk(synthetic.sample_locations(16, seed=77), size=32, seed=77)["S2L2A"]
        other = other.assign_coords(sample=sz.open_dataset(path)["sample"].values)  # same ids, other pixels
        sz.write_chunk(other, path, size=32)
        view = sz.open_dataset(setup, split="val")
        np.testing.assert_array_equal(view["S2L2A"].isel(sample=slice(16, 32)).values, other["bands"].values)
    elif change == "truncate":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        with pytest.raises(sz.CorruptFileError, match="seasonal_data_000002"):
            sz.open_dataset(setup, split="val")
    else:
        os.remove(path)
        with pytest.raises(sz.DatasetNotFoundError, match="seasonal_data_000002"):
            sz.open_dataset(setup, split="val")


def test_a_damaged_index_is_rebuilt_silently(setup):
    want = sz.open_dataset(setup, split="val").load()
    for index in glob.glob(os.path.join(os.environ["SSL4EO_ZARR_CACHE"], "splits", "*.json")):
        with open(index, "w") as f:
            f.write('{"version": 1, "paths": [')
    xr.testing.assert_identical(sz.open_dataset(setup, split="val").load(), want)
    xr.testing.assert_identical(sz.open_dataset(setup, split="val").load(), want)
    assert sz.open_dataset(setup, split="val", use_index=False).sizes["sample"] == want.sizes["sample"]


def test_a_file_is_indexed_even_when_the_metadata_parse_cache_was_cleared_meanwhile(setup):
    """Files are opened on several threads and the parse cache of ``.zmetadata`` is cleared when it grows: a
    file whose group was parsed before such a clearing is still recorded (it once was skipped, and reopened
    from the files, whenever a test session had parsed 64 other groups by then)."""
    from ssl4eo_zarr import zarrv2
    from ssl4eo_zarr.chunkfile import open_chunk
    from ssl4eo_zarr.splitindex import SplitIndex

    path = chunk_path(setup, "S2L2A", 2)
    cf = open_chunk(path)
    zarrv2._GROUP_CACHE.clear()  # what another thread's 65th distinct parse does
    index = SplitIndex([path])
    index.put(cf)
    index.save()
    again = SplitIndex([path]).get(path)
    assert again is not None, "the file was left out of the index"
    assert dict(again.group.arrays) == dict(cf.group.arrays) and list(again.samples) == list(cf.samples)
