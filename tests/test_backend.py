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
    np.testing.assert_array_equal(ds["S2L2A"].values, ref["S2L2A"].values - 1000)
    assert ds.sizes["sample"] == 42 and not ds["S2L2A"].variable._in_memory  # lazy until asked
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
