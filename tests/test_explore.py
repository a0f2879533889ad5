import filecmp
import os

import numpy as np
import pytest
import xarray as xr

import ssl4eo_zarr as sz
from ssl4eo_zarr import CloudClass, convert, schema
from ssl4eo_zarr.cli import main
from ssl4eo_zarr.stats import band_stats

from .helpers import chunk_path


def test_sample_exports_a_correct_geotiff(root, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    ds = sz.open_dataset(root)
    da = ds.ssl4eo.sample(5, time=1)
    assert da.dims == ("band", "y", "x") and da.rio.crs.to_epsg() == int(ds["crs"][5])
    path = str(tmp_path / "patch.tif")
    da.rio.to_raster(path)
    with rasterio.open(path) as src:
        assert src.crs.to_epsg() == int(ds["crs"][5])
        assert src.count == 12 and src.res == (10.0, 10.0)
        np.testing.assert_array_equal(src.read(), ds["S2L2A"].values[5, 1])
        from pyproj import Transformer

        to_utm = Transformer.from_crs(4326, src.crs.to_epsg(), always_xy=True)
        cx, cy = to_utm.transform(float(ds["center_lon"][5]), float(ds["center_lat"][5]))
        row, col = src.index(cx, cy)
        assert abs(row - 16) <= 1 and abs(col - 16) <= 1, "the centre falls in the middle pixel"
        left, bottom, right, top = src.bounds
        assert right - left == top - bottom == 320.0


def test_unit_conversions_and_clouds(root):
    ds = sz.open_dataset(root)
    refl = ds.ssl4eo.reflectance()
    np.testing.assert_allclose(refl.values, (ds["S2L2A"].values.astype(np.float32) - 1000) / 10000, rtol=1e-6)
    assert ds.ssl4eo.db().dtype == np.float32
    frac = ds.ssl4eo.cloud_fraction().compute()
    assert frac.dims == ("sample", "time")
    mask = ds["cloud_mask"].values
    expected = np.isin(mask, [CloudClass.THIN_CLOUD, CloudClass.THICK_CLOUD]).mean(axis=(2, 3))
    np.testing.assert_allclose(frac.values, expected)
    clear = ds.ssl4eo.select(max_cloud=0.05)
    assert 0 < clear.sizes["sample"] < ds.sizes["sample"]
    assert float(clear.ssl4eo.cloud_fraction().max()) <= 0.05


def test_rgb_from_l2a_matches_the_stored_s2rgb(root):
    ds = sz.open_dataset(root)
    stored = ds.ssl4eo.rgb()
    made = ds.drop_vars("S2RGB").ssl4eo.rgb()
    assert made.dtype == np.uint8 and made.dims == stored.dims
    np.testing.assert_array_equal(made.values, stored.values)


def test_single_file_accessor(root):
    one = sz.open_dataset(chunk_path(root, "S1GRD"))
    assert one.ssl4eo.modalities == ["S1GRD"]
    assert one.ssl4eo.sample(str(one["sample"].values[2])).dims == ("time", "band", "y", "x")


def test_band_stats_match_numpy_and_run_on_a_cluster(root):
    ds = sz.open_dataset(root)
    stats = band_stats(ds, ["S2L2A", "S1GRD"])
    values = ds["S2L2A"].values.astype(np.float64)
    np.testing.assert_allclose(stats["S2L2A"].mean, values.mean(axis=(0, 1, 3, 4)))
    np.testing.assert_allclose(stats["S2L2A"].std, values.std(axis=(0, 1, 3, 4)), rtol=1e-9)
    total = stats["S2L2A"].counts.sum(axis=1) + stats["S2L2A"].below + stats["S2L2A"].above
    assert (total == stats["S2L2A"].n).all()
    assert "published" in stats["S1GRD"].compare()
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        with distributed.Client(cluster):
            on_cluster = band_stats(ds, ["S2L2A"], progress=True)
    np.testing.assert_allclose(on_cluster["S2L2A"].mean, stats["S2L2A"].mean)


def test_chunk_files_to_shards_and_back_are_identical(root, tmp_path):
    shards = convert.chunks_to_shards(root, str(tmp_path / "wds"), split="val", per_shard=20)
    assert [os.path.basename(p) for p in shards["S2L2A"]] == [convert.shard_name(i) for i in (1, 2, 3)]
    first = next(convert.iter_shard(shards["S2L2A"][0]))
    original = sz.open_dataset(chunk_path(root, "S2L2A")).isel(sample=0)
    np.testing.assert_array_equal(first["bands"].values, original["bands"].values - 1000)  # offset removed
    assert first["bands"].dims == ("time", "band", "y", "x")
    np.testing.assert_array_equal(first["time"].values, original["time_"].values.astype(np.int64))
    names = convert.shards_to_chunks(str(tmp_path / "wds"), str(tmp_path / "back"), split="val")
    assert names == [schema.chunk_file_name("val", 1)]  # 42 locations fit in one chunk file
    for mod in schema.CHUNK_MODALITIES:
        back = sz.open_dataset(os.path.join(tmp_path, "back", "val", mod, names[0])).load()
        orig = sz.open_dataset(root, modalities=[mod])
        assert back.sizes["sample"] == 42 and orig.sizes["sample"] == 42
        np.testing.assert_array_equal(back["bands"].values, orig[mod].values)
    opened = sz.open_dataset(str(tmp_path / "back"), split="val")
    loader = sz.ChunkDataset(str(tmp_path / "back"), split="val")
    assert sum(b["S2L2A"].shape[0] for b in loader) == opened.sizes["sample"]


def test_one_chunk_file_round_trips_byte_identically(root, tmp_path):
    src = tmp_path / "one"
    for mod in schema.CHUNK_MODALITIES:
        os.makedirs(src / "val" / mod)
        os.link(chunk_path(root, mod, 3), chunk_path(str(src), mod, 1))
    convert.chunks_to_shards(str(src), str(tmp_path / "wds"), split="val")
    convert.shards_to_chunks(str(tmp_path / "wds"), str(tmp_path / "back"), split="val")
    for mod in schema.CHUNK_MODALITIES:
        assert filecmp.cmp(chunk_path(str(src), mod, 1), chunk_path(str(tmp_path / "back"), mod, 1), shallow=False)


def test_cli_stats_and_convert(root, tmp_path, capsys):
    assert main(["stats", root, "--modality", "S1GRD"]) == 0
    assert "S1GRD" in capsys.readouterr().out
    assert main(["convert", root, str(tmp_path / "w"), "--to", "shards", "--split", "val"]) == 0
    assert main(["convert", str(tmp_path / "w"), str(tmp_path / "c"), "--to", "chunks", "--split", "val"]) == 0
    back = sz.open_dataset(str(tmp_path / "c"))
    orig = sz.open_dataset(root)
    xr.testing.assert_identical(back.drop_vars(["file"]).load(), orig.drop_vars(["file"]).load())
