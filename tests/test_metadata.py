"""The published metadata tables of both generations: read, filter, join, select locations for the loader,
draw the location map; and reindex_seasonal."""

import os

import numpy as np
import pandas as pd
import pytest
import torch

import ssl4eo_zarr as sz
from ssl4eo_zarr import schema
from ssl4eo_zarr.metadata import COLUMNS, match_time_columns, select
from ssl4eo_zarr.timeorder import seasonal_order

gpd = pytest.importorskip("geopandas")
from shapely.geometry import box  # noqa: E402


@pytest.fixture(scope="module")
def view(root):
    return sz.open_dataset(root, split="val").load()


def _first_release(view, path):
    """One row per location and timestamp, as the first release publishes it."""
    rows = []
    for i, s in enumerate(view["sample"].values):
        lon, lat = float(view["center_lon"][i]), float(view["center_lat"][i])
        for t in range(4):
            rows.append({"sample_id": str(s), "time_id": t, "time": view["time_S2L2A"].values[i, t],
                         "tile_id": str(view["file_id_S2L2A"].values[i, t]).rsplit("_", 1)[-1],
                         "geometry": box(lon - 0.01, lat - 0.01, lon + 0.01, lat + 0.01),
                         "tile_crs": int(view["crs"][i]), "file": str(view["file"].values[i])})
    table = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")
    table.index = [f"{r['sample_id']}_{r['time_id']}" for r in rows]
    table.to_parquet(path)
    return path


def _second_release(view, path, clouds):
    """One row per location, as the 2026 release publishes it (times and cloud cover as users report them)."""
    n = view.sizes["sample"]
    data = {"tar": ["ssl4eos12_shard_000001.tar"] * n, "zarr": [f"{s}.zarr.zip" for s in view["sample"].values],
            "sample_id": [str(s) for s in view["sample"].values], "split": ["val"] * n,
            "center_lon": view["center_lon"].values, "center_lat": view["center_lat"].values, "crs": view["crs"].values,
            "bounds": ["..."] * n}
    for t in range(4):
        data[f"S2_time_{t}"] = view["time_S2L2A"].values[:, t]
        data[f"S1_time_{t}"] = view["time_S1GRD"].values[:, t]
        data[f"cloud_cover_{t}"] = clouds[:, t]
    geometry = [box(lo - 0.01, la - 0.01, lo + 0.01, la + 0.01) for lo, la in zip(data["center_lon"], data["center_lat"])]
    gpd.GeoDataFrame(data, geometry=geometry, crs="EPSG:4326").to_parquet(path)
    return path


def test_time_columns_are_matched_by_meaning():
    names = ["S2_time_0", "S2_time_1", "S2_time_2", "S2_time_3", "s1_date_1", "s1_date_2", "s1_date_3", "s1_date_4",
             "cloud_fraction_t0", "cloud_fraction_t1", "cc_winter", "sample_id", "time_id", "center_lat"]
    got = match_time_columns(names)
    assert got["s2_time_0"] == "S2_time_0" and got["s2_time_3"] == "S2_time_3"
    assert got["s1_time_0"] == "s1_date_1" and got["s1_time_3"] == "s1_date_4"  # numbered 1..4
    assert got["cloud_0"] == "cloud_fraction_t0" and got["cloud_winter"] == "cc_winter"  # placed by date later
    assert "cloud_3" not in got, "a season is no fixed index"
    assert "center_lat" not in got.values() and "time_id" not in got.values()


def test_both_generations_read_into_one_layout(view, tmp_path):
    rng = np.random.default_rng(0)
    clouds = rng.uniform(0, 0.3, (view.sizes["sample"], 4))
    first = sz.read_metadata(_first_release(view, str(tmp_path / "val_metadata_v1.parquet")))
    second = sz.read_metadata(_second_release(view, str(tmp_path / "val_metadata.parquet"), clouds))
    for table in (first, second):
        assert list(table.columns) == list(COLUMNS) and table.index.name == "sample"
        assert list(table.index) == [str(s) for s in view["sample"].values]
        np.testing.assert_allclose(table["center_lat"], view["center_lat"].values, atol=1e-6)
        assert (table["crs"].to_numpy() == view["crs"].values).all()
        assert (table["s2_time_2"].to_numpy() == view["time_S2L2A"].values[:, 2]).all()
        assert table.crs.to_epsg() == 4326
    assert first["file"].iloc[0] == schema.chunk_file_name("val", 1) and first["split"].iloc[0] == "val"
    assert first["cloud_0"].isna().all() and first["s1_time_0"].isna().all()
    np.testing.assert_allclose(second[[f"cloud_{t}" for t in range(4)]].to_numpy(), clouds)
    assert (second["s1_time_3"].to_numpy() == view["time_S1GRD"].values[:, 3]).all()


def test_select_join_and_load_only_the_chosen_locations(view, root, tmp_path):
    n = view.sizes["sample"]
    clouds = np.zeros((n, 4))
    clouds[::3, 1] = 0.5  # every third location cloudy in summer
    table = sz.read_metadata(_second_release(view, str(tmp_path / "m.parquet"), clouds))
    clear = select(table, max_cloud=0.1)
    assert len(clear) == n - len(range(0, n, 3))
    lat = view["center_lat"].values
    north = select(table, bbox=(-180, 0, 180, 90))
    assert set(north.index) == {str(s) for s, la in zip(view["sample"].values, lat) if la >= 0}
    late = select(table, start=pd.Timestamp("2021-01-01"), end=pd.Timestamp("2022-01-31"))
    assert len(late) == n
    assert len(select(table, end="2021-02-01")) == 0
    joined = view.ssl4eo.join_metadata(table)
    np.testing.assert_allclose(joined["cloud_cover"].values, clouds)
    assert (joined["s1_time"].values == view["time_S1GRD"].values).all()
    # The loader reads only the chosen locations, nothing decoded to choose them.
    ds = sz.ChunkDataset(root, split="val", samples=clear, batch_size=5, timestamps=1, return_metadata=True)
    got = [s for b in ds for s in b["sample"]]
    assert sorted(got) == sorted(clear.index)
    assert len(ds) == -(-len(clear) // 5)


def test_location_map_from_a_table(view, tmp_path):
    pytest.importorskip("matplotlib")
    from ssl4eo_zarr.plot import plot_locations

    table = sz.read_metadata(_first_release(view, str(tmp_path / "m.parquet")))
    fig = plot_locations(table)
    fig.savefig(tmp_path / "map.png")
    assert os.path.getsize(tmp_path / "map.png") > 10_000
    assert "val (42)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_seasonal_order_follows_months():
    times = np.array([["2020-12-20", "2021-03-20", "2021-06-21", "2021-09-22"],
                      ["2021-03-01", "2021-06-01", "2021-09-01", "2021-12-01"]], dtype="datetime64[ns]").astype(np.int64)
    assert seasonal_order(times).tolist() == [[1, 2, 3, 0], [0, 1, 2, 3]]


def test_reindex_seasonal_in_the_view_and_the_loader(root, tmp_path):
    # A location whose winter was acquired the December before its spring.
    path = os.path.join(root, "val", "S2L2A", schema.chunk_file_name("val", 1))
    ds = sz.open_dataset(path).load()
    times = ds["time_"].values.copy()
    times[0, 3] = times[0, 0] - np.timedelta64(90, "D")
    order = seasonal_order(times.astype(np.int64))
    src = ds.assign(time_=(("sample", "time"), times))
    work = str(tmp_path / "root")
    for mod in ("S2L2A",):
        os.makedirs(os.path.join(work, "val", mod))
    sz.write_chunk(src, os.path.join(work, "val", "S2L2A", schema.chunk_file_name("val", 1)), size=32)
    view = sz.open_dataset(work, split="val", reindex_seasonal=True)
    expected = np.take_along_axis(src["bands"].values, order[:, :, None, None, None], axis=1)
    np.testing.assert_array_equal(view["S2L2A"].values, expected)
    assert (np.diff(view["time_S2L2A"].values.astype("datetime64[M]").astype(int) % 12, axis=1) >= 0).all()
    loader = sz.ChunkDataset(work, split="val", modalities=["S2L2A"], reindex_seasonal=True, shuffle=False,
                             return_metadata=True)
    batch = next(iter(loader))
    np.testing.assert_array_equal(batch["S2L2A"].numpy(), expected[: len(batch["sample"])])
    one = next(iter(sz.ChunkDataset(work, split="val", modalities=["S2L2A"], reindex_seasonal=True, shuffle=False,
                                    timestamps=0)))
    assert torch.equal(one["S2L2A"][0], torch.from_numpy(expected[0, 0]))  # season 0 of location 0: its December


def test_season_columns_are_placed_by_date_not_by_a_fixed_index(view, tmp_path):
    """Timestamp 0 can be any season: a location whose first timestamp is its winter (the December before)
    gets its winter columns at timestamp 0."""
    import pandas as pd

    n = view.sizes["sample"]
    rng = np.random.default_rng(3)
    base = {"spring": "2021-03-20", "summer": "2021-06-21", "autumn": "2021-09-22", "winter": "2021-12-21"}
    early_winter = np.arange(n) % 2 == 0  # these locations' winter is December 2020: their timestamp 0
    data = {"sample_id": [str(s) for s in view["sample"].values], "split": ["val"] * n,
            "center_lon": view["center_lon"].values, "center_lat": view["center_lat"].values, "crs": view["crs"].values}
    clouds = {}
    for season, day in base.items():
        times = np.full(n, np.datetime64(day), "datetime64[ns]")
        if season == "winter":
            times[early_winter] = np.datetime64("2020-12-21")
        data[f"s2_time_{season}"] = times
        clouds[season] = rng.uniform(0, 1, n)
        data[f"cloud_{season}"] = clouds[season]
    geometry = [box(lo - 0.01, la - 0.01, lo + 0.01, la + 0.01) for lo, la in zip(data["center_lon"], data["center_lat"])]
    path = str(tmp_path / "val_metadata.parquet")
    gpd.GeoDataFrame(data, geometry=geometry, crs="EPSG:4326").to_parquet(path)
    table = sz.read_metadata(path)
    winter_first = early_winter
    np.testing.assert_allclose(table["cloud_0"].to_numpy()[winter_first], clouds["winter"][winter_first])
    np.testing.assert_allclose(table["cloud_1"].to_numpy()[winter_first], clouds["spring"][winter_first])
    np.testing.assert_allclose(table["cloud_0"].to_numpy()[~winter_first], clouds["spring"][~winter_first])
    np.testing.assert_allclose(table["cloud_3"].to_numpy()[~winter_first], clouds["winter"][~winter_first])
    assert (table["s2_time_0"][winter_first] == pd.Timestamp("2020-12-21")).all()
    times = table[[f"s2_time_{t}" for t in range(4)]].to_numpy()
    assert (np.diff(times.astype("datetime64[ns]").astype(np.int64), axis=1) > 0).all(), "by date, as stored"


def test_season_cloud_columns_beside_numbered_times_follow_each_timestamps_date(view, tmp_path):
    n = view.sizes["sample"]
    data = {"sample_id": [str(s) for s in view["sample"].values], "center_lon": view["center_lon"].values,
            "center_lat": view["center_lat"].values}
    days = ["2020-12-28", "2021-03-18", "2021-06-25", "2021-09-20"]  # timestamp 0 is winter
    for t, day in enumerate(days):
        data[f"S2_time_{t}"] = np.full(n, np.datetime64(day), "datetime64[ns]")
    for k, season in enumerate(("spring", "summer", "autumn", "winter")):
        data[f"cloud_{season}"] = np.full(n, 0.1 * (k + 1))
    path = str(tmp_path / "val_metadata.parquet")
    gpd.GeoDataFrame(data, geometry=[box(0, 0, 1, 1)] * n, crs="EPSG:4326").to_parquet(path)
    table = sz.read_metadata(path)
    assert [round(float(table[f"cloud_{t}"].iloc[0]), 3) for t in range(4)] == [0.4, 0.1, 0.2, 0.3]


def test_cloud_percentages_become_fractions_and_nonsense_is_named(view, tmp_path):
    from ssl4eo_zarr.errors import SchemaError

    clouds = np.random.default_rng(1).uniform(0, 0.3, (view.sizes["sample"], 4))
    percent = sz.read_metadata(_second_release(view, str(tmp_path / "p.parquet"), clouds * 100))
    np.testing.assert_allclose(percent[[f"cloud_{t}" for t in range(4)]].to_numpy(), clouds)
    bad = clouds.copy()
    bad[0, 2] = 250.0
    with pytest.raises(SchemaError, match="cloud_cover_2"):
        sz.read_metadata(_second_release(view, str(tmp_path / "b.parquet"), bad))
    bad[0, 2] = -0.5
    with pytest.raises(SchemaError, match="cloud_cover_2"):
        sz.read_metadata(_second_release(view, str(tmp_path / "n.parquet"), bad))


def test_crs_strings_and_floats_are_read_and_nonsense_is_named(view, tmp_path):
    import pandas as pd

    from ssl4eo_zarr.errors import SchemaError

    clouds = np.zeros((view.sizes["sample"], 4))
    path = _second_release(view, str(tmp_path / "c.parquet"), clouds)
    table = gpd.read_parquet(path)
    table["crs"] = [f"EPSG:{c}" for c in view["crs"].values]
    table.to_parquet(path)
    assert (sz.read_metadata(path)["crs"].to_numpy() == view["crs"].values).all()
    table["crs"] = pd.array([float(c) for c in view["crs"].values[:-1]] + [np.nan])
    table.to_parquet(path)
    got = sz.read_metadata(path)["crs"].to_numpy()
    assert (got[:-1] == view["crs"].values[:-1]).all() and got[-1] == 0
    table["crs"] = ["UTM 33N"] * len(table)
    table.to_parquet(path)
    with pytest.raises(SchemaError, match="'crs' row 0 holds 'UTM 33N'"):
        sz.read_metadata(path)
