"""xarray's own entry point: engine="ssl4eo" for chunk files, shards, split folders and roots."""

import numpy as np
import pytest
import xarray as xr

import ssl4eo_zarr as sz
from ssl4eo_zarr import schema

from .helpers import chunk_path


def _registered() -> bool:
    return "ssl4eo" in xr.backends.list_engines()


pytestmark = pytest.mark.skipif(not _registered(), reason="the package is not installed (entry points come from "
                                                          "its metadata: pip install -e .)")


def test_a_chunk_file_through_xarray_is_the_librarys_view(root):
    path = chunk_path(root, "S2L1C", 2)
    via_engine = xr.open_dataset(path, engine="ssl4eo")
    xr.testing.assert_identical(via_engine.load(), sz.open_dataset(path).load())
    guessed = xr.open_dataset(path)  # guess_can_open picks the engine for *.zarr.zip
    xr.testing.assert_identical(guessed.load(), via_engine.load())
    dropped = xr.open_dataset(path, engine="ssl4eo", drop_variables=["cloud_mask"])
    assert "cloud_mask" not in dropped and "bands" in dropped


def test_roots_split_folders_and_options(root):
    ds = xr.open_dataset(root, engine="ssl4eo", split="val", modalities=["S2L2A", "S1GRD"], s2_offset=False)
    ref = sz.open_dataset(root, split="val", modalities=["S2L2A", "S1GRD"])
    assert ds.sizes["sample"] == 42 and not ds["S2L2A"].variable._in_memory  # lazy until asked
    np.testing.assert_array_equal(ds["S2L2A"].values, ref["S2L2A"].values - 1000)
    chunked = xr.open_dataset(root, engine="ssl4eo", split="val", modalities=["S2L2A"], chunks={})
    assert chunked["S2L2A"].chunks is not None


def test_open_mfdataset_over_one_modality(root):
    files = [chunk_path(root, "S1GRD", i) for i in (1, 2, 3)]
    ds = xr.open_mfdataset(files, engine="ssl4eo", combine="nested", concat_dim="sample")
    ref = sz.open_dataset(root, split="val", modalities=["S1GRD"])
    np.testing.assert_array_equal(ds["bands"].values, ref["S1GRD"].values)
    assert list(ds["band"].values) == list(schema.S1GRD.bands)


def test_shards_through_xarray(tmp_path):
    from ssl4eo_zarr import synthetic

    synthetic.make_shards(str(tmp_path), 10, per_shard=4, size=16, seed=1, modalities=("S2L2A", "DEM"))
    shard = tmp_path / "val" / "S2L2A" / schema.shard_name(1)
    assert xr.backends.plugins.guess_engine(str(shard)) == "ssl4eo"
    ds = xr.open_dataset(str(tmp_path), engine="ssl4eo", split="val")
    assert ds.sizes["sample"] == 10 and ds["DEM"].dims == ("sample", "band_DEM", "y", "x")


def test_xarray_owns_the_chunking(root):
    """As with the zarr engine: chunks=None indexes lazily (no dask), chunks={} gives one dask chunk per stored
    chunk, any other chunks= rechunks; all give the library's values."""
    import dask.array as da

    path = chunk_path(root, "S2L2A", 1)
    ref = sz.open_dataset(path).load()
    lazy = xr.open_dataset(path, engine="ssl4eo")
    assert not lazy["bands"].variable._in_memory
    assert lazy["bands"].chunks is None and not isinstance(lazy["bands"].variable._data, da.Array)
    np.testing.assert_array_equal(lazy["bands"].isel(time=2, band=slice(1, 4)).values,
                                  ref["bands"].isel(time=2, band=slice(1, 4)).values)
    assert lazy["bands"].encoding["preferred_chunks"] == {"sample": 16, "time": 1, "band": 12, "y": 32, "x": 32}
    stored = xr.open_dataset(path, engine="ssl4eo", chunks={})
    assert stored["bands"].chunks == ((16,), (1, 1, 1, 1), (12,), (32,), (32,))
    xr.testing.assert_identical(stored.load(), ref)
    other = xr.open_dataset(path, engine="ssl4eo", chunks={"time": 2})
    assert other["bands"].chunks[:2] == ((16,), (2, 2))
    np.testing.assert_array_equal(other["bands"].values, ref["bands"].values)


def test_lazy_indexing_reads_only_the_chunk_it_needs(root):
    """Over HTTP, one timestamp of one location through chunks=None moves that stored chunk, not the file."""
    import os
    import zipfile

    from ssl4eo_zarr.testing import RangeHTTPServer

    path = chunk_path(root, "S2L1C", 1)
    with zipfile.ZipFile(path) as zf:
        chunk = zf.getinfo("bands/0.3.0.0.0").compress_size
    with RangeHTTPServer(root) as server:
        ds = xr.open_dataset(server.url + "/" + os.path.relpath(path, root), engine="ssl4eo")
        server.reset_counts()
        got = ds["bands"].isel(sample=5, time=3).values
        assert chunk <= server.bytes_served <= chunk + 200, (server.bytes_served, chunk)
    np.testing.assert_array_equal(got, sz.open_dataset(path)["bands"].isel(sample=5, time=3).values)
