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


def test_a_block_read_goes_to_the_source_not_through_the_graph(root, monkeypatch):
    """xarray's lazy indexing of a split reads the view's source directly (no dask graph sliced per block:
    constant cost however many blocks the split has), integers dropping their axes as xarray expects."""
    import dask.array as da
    from xarray.core import indexing

    from ssl4eo_zarr.backend import LazyArray

    view = sz.open_dataset(root, split="val")
    ref = view["S2L2A"].values
    lazy = LazyArray(view["S2L2A"].data)

    def no_graph(*args, **kwargs):
        raise AssertionError("the dask graph was sliced")

    monkeypatch.setattr(da.Array, "__getitem__", no_graph)
    got = lazy[indexing.BasicIndexer((20, 3, slice(1, 4), slice(None), slice(5, 9)))]
    np.testing.assert_array_equal(got, ref[20, 3, 1:4, :, 5:9])
    ds = xr.open_dataset(root, engine="ssl4eo", split="val")
    np.testing.assert_array_equal(ds["S2L2A"].isel(sample=40, time=1).values, ref[40, 1])
    monkeypatch.undo()
    derived = LazyArray(view["S2L2A"].data + 1)  # not a source's own array: read through the graph
    np.testing.assert_array_equal(derived[indexing.BasicIndexer((1, 0, 0, slice(None), slice(None)))],
                                  ref[1, 0, 0] + 1)


def test_preferred_chunks_keep_irregular_stored_chunks(root):
    """Files of 10 then 16 locations: the stored sample chunks are irregular, and chunks={} keeps them."""
    from ssl4eo_zarr.backend import LazyArray, as_backend_variables

    files = [chunk_path(root, "S2L2A", 3), chunk_path(root, "S2L2A", 1)]
    view = sz.open_dataset(files)
    assert view["S2L2A"].chunks[0] == (10, 16)
    assert LazyArray(view["S2L2A"].data).preferred_chunks[0] == (10, 16)
    backend = as_backend_variables(view)
    assert backend["S2L2A"].encoding["preferred_chunks"]["sample"] == (10, 16)
    regular = LazyArray(sz.open_dataset(root, split="val")["S2L2A"].data)
    assert regular.preferred_chunks[0] == 16  # 16, 16, 10: regular, the last shorter
