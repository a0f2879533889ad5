import os
import pickle
import shutil

import numpy as np
import pytest
import xarray as xr

import ssl4eo_zarr as sz
from ssl4eo_zarr import DatasetNotFoundError, ModalityMismatchError, schema, synthetic
from ssl4eo_zarr.storage import ZipArchive

from .helpers import chunk_path, xr_open_zarr


@pytest.mark.parametrize("mod", list(schema.CHUNK_MODALITIES))
def test_single_file_is_exactly_xr_open_zarr(root, mod):
    path = chunk_path(root, mod)
    mine = sz.open_dataset(path)
    ref = xr_open_zarr(path)
    assert all(hasattr(mine[v].data, "dask") for v in mine.data_vars), "data variables must be lazy"
    mine, ref = mine.load(), ref.load()
    xr.testing.assert_identical(mine, ref)
    for name in ref.variables:
        assert mine[name].dtype == ref[name].dtype, name
    xr.testing.assert_identical(sz.open_dataset(path, engine="zarr").load(), ref)


@pytest.mark.parametrize("mod", list(schema.CHUNK_MODALITIES))
def test_files_written_by_zarr_2_18_and_xarray_open_unchanged(reference_files, mod):
    ds = sz.open_dataset(reference_files[mod]).load()
    xr.testing.assert_identical(xr_open_zarr(reference_files[mod]).load(), ds)
    assert ds["bands"].dtype == schema.MODALITIES[mod].dtype and ds.sizes["sample"] == 6
    assert ds["time_"].dtype == np.dtype("datetime64[ns]")


def test_multimodal_root_split_and_file_list_agree(root):
    ds = sz.open_dataset(root)
    assert ds.sizes["sample"] == 42  # 16 + 16 + 10
    assert set(ds.attrs["modalities"]) == set(schema.CHUNK_MODALITIES)
    for mod in (schema.MODALITIES[m] for m in schema.CHUNK_MODALITIES):
        var = ds[mod.name]
        assert var.dims == ("sample", "time", f"band_{mod.name}", "y", "x")
        assert var.dtype == mod.dtype
        assert list(ds[f"band_{mod.name}"].values) == list(mod.bands)
        assert hasattr(var.data, "dask")
    assert list(np.unique(ds["file"].values)) == [schema.chunk_file_name("val", i) for i in (1, 2, 3)]
    assert set(ds["split"].values) == {"val"}
    # the third file's samples, in order, at the end
    last = sz.open_dataset(chunk_path(root, "S2L2A", 3))
    np.testing.assert_array_equal(ds["sample"].values[-10:], last["sample"].values)
    np.testing.assert_array_equal(ds["S2L2A"].isel(sample=slice(-10, None)).values, last["bands"].values)
    s1 = sz.open_dataset(chunk_path(root, "S1GRD", 3))
    np.testing.assert_array_equal(ds["time_S1GRD"].values[-10:], s1["time_"].values)
    xr.testing.assert_identical(sz.open_dataset(os.path.join(root, "val")).load(), ds.load())
    files = [chunk_path(root, "S2L1C", i) for i in (1, 2, 3)]
    listed = sz.open_dataset(files, modalities=list(schema.CHUNK_MODALITIES))
    xr.testing.assert_identical(listed.load(), ds.load())


def test_opening_a_split_reads_no_array_data(root, monkeypatch):
    reads = []
    original = ZipArchive.read

    def counting(self, name, **kw):
        reads.append((self.path, name))
        return original(self, name, **kw)

    monkeypatch.setattr(ZipArchive, "read", counting)
    ds = sz.open_dataset(root)
    assert not [n for _, n in reads if n.startswith(("bands/", "cloud_mask/"))]
    # Index coordinates; and of S1 files file_id and time_ (a few kB), to find files with the pre-fix S1 order.
    assert set(n.split("/")[0] for p, n in reads if "/S1GRD/" not in p) <= {".zmetadata", "sample", "band", "time",
                                                                              "x", "y"}
    assert set(n.split("/")[0] for p, n in reads if "/S1GRD/" in p) <= {".zmetadata", "sample", "band", "time", "x",
                                                                          "y", "file_id", "time_"}

    del reads[:]
    monkeypatch.setattr(ZipArchive, "read", lambda self, name, **kw: reads.append(name) or original(self, name, **kw))
    ds["S2L2A"].isel(sample=0, time=2).load()
    data_reads = [n for n in reads if n.startswith("bands/")]
    assert data_reads == ["bands/0.2.0.0.0"], "one timestamp of one file reads exactly that chunk"


def test_modalities_that_disagree_are_named(root_copy):
    other = synthetic.make_chunk(synthetic.sample_locations(16, seed=99), size=32, seed=99)["S1GRD"]
    bad = chunk_path(root_copy, "S1GRD", 2)
    sz.write_chunk(other, bad, size=32)
    with pytest.raises(ModalityMismatchError, match="seasonal_data_000002"):
        sz.open_dataset(root_copy)


def test_grid_disagreement_found_with_verify_grid(root_copy):
    ds = sz.open_dataset(chunk_path(root_copy, "S2RGB", 1)).load()
    ds["x_"] = ds["x_"] + 10.0
    sz.write_chunk(ds, chunk_path(root_copy, "S2RGB", 1), size=32)
    sz.open_dataset(root_copy)  # ids agree: the cheap default open succeeds
    with pytest.raises(ModalityMismatchError, match="pixel grid"):
        sz.open_dataset(root_copy, verify_grid=True)


def test_missing_things_are_named(root_copy, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="nothing-here"):
        sz.open_dataset(str(tmp_path / "nothing-here"))
    os.remove(chunk_path(root_copy, "S2L1C", 3))
    with pytest.raises(DatasetNotFoundError, match="seasonal_data_000003"):
        sz.open_dataset(root_copy)
    shutil.rmtree(os.path.join(root_copy, "val", "S1GRD"))
    with pytest.raises(DatasetNotFoundError, match="S1GRD"):
        sz.open_dataset(root_copy, modalities=["S1GRD", "S2L2A"])


def test_archives_pickle_and_reopen(root):
    archive = ZipArchive(chunk_path(root, "S2L2A"))
    first = archive.read(".zmetadata")
    clone = pickle.loads(pickle.dumps(archive))
    assert clone.read(".zmetadata") == first
    ds = sz.open_dataset(root)
    again = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(again["S1GRD"].isel(sample=3).values, ds["S1GRD"].isel(sample=3).values)


def test_compute_on_a_real_distributed_cluster(root):
    distributed = pytest.importorskip("distributed")
    ds = sz.open_dataset(root)
    expected = float(ds["S2L2A"].astype("float64").mean().compute(scheduler="sync"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster):
            got = float(ds["S2L2A"].astype("float64").mean().compute())
    assert got == pytest.approx(expected)
