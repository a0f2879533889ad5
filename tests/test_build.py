"""The builder on synthetic raw GeoTIFFs with analytic content: alignment, QA, masks, packing, scale, resume."""

import filecmp
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import ssl4eo_zarr as sz
from ssl4eo_zarr import BuildError, CloudClass, geo, schema, synthetic
from ssl4eo_zarr.builder import BuildLock, build_dataset
from ssl4eo_zarr.builder.cloud import scl_to_sensei
from ssl4eo_zarr.builder.qa import fill_nearest, to_s1_db, to_s2_dn
from ssl4eo_zarr.builder.sampling import City, overlapping_pairs, sample_locations
from ssl4eo_zarr.validate import validate

pytest.importorskip("rasterio")
pytest.importorskip("scipy")
SIZE = 24


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("raw") / "raw")
    truth = synthetic.make_raw(path, 6, size=SIZE, seed=0)
    return path, truth


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("built") / "out")
    manifest = build_dataset(raw[0], out, size=SIZE, workers=0, val_fraction=0.3, seed=7)
    return out, manifest


def _files(out):
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs
                  if f.endswith(".zarr.zip"))


def test_every_location_is_accounted_for(raw, built):
    out, manifest = built
    path, truth = raw
    assert set(manifest["locations"]) == set(truth)
    for name, info in truth.items():
        entry = manifest["locations"][name]
        if info["drop"]:
            assert entry["status"] == "dropped"
            assert "S2L1C timestamp 2 band B05" in entry["reason"] and "missing" in entry["reason"]
        else:
            assert entry["status"] == "written"
            ds = sz.open_dataset(os.path.join(out, entry["split"], "S2L2A", entry["file"]))
            assert str(ds["sample"].values[entry["index"]]) == info["sample"]
    assert manifest["summary"] == {"locations": 6, "written": 5, "dropped": 1, "files": {"train": 1, "val": 1}}
    report = validate(out, size=SIZE)
    assert report.ok, report.format()
    # The raw S1 products are S1B before S1A in time: ordered by name they would be misordered.
    assert not [w for f in report.files for w in f.warnings if "2026-02-19" in w]
    assert {s for s in ("train", "val")} == set(sz.open_dataset(out)["split"].values)


def test_pixels_match_the_analytic_field_within_half_a_source_pixel(raw, built):
    out, manifest = built
    _, truth = raw
    ds = sz.open_dataset(out).load()
    by_sample = {info["sample"]: info for info in truth.values()}
    checked = 0
    for i, sid in enumerate(ds["sample"].values):
        info = by_sample[str(sid)]
        gx, gy = np.meshgrid(ds["x_"].values[i], ds["y_"].values[i])
        lon, lat = geo.utm_to_lonlat(gx, gy, int(ds["crs"].values[i]))
        dx, dy = synthetic.local_offsets(lon, lat, info["lon"], info["lat"])
        for mod in ("S2L1C", "S2L2A", "S1GRD"):
            spec = schema.get_modality(mod)
            for t in range(4):
                for c, band in enumerate(spec.bands):
                    expected = synthetic.raw_field(mod, c, t, dx, dy)
                    got = ds[mod].values[i, t, c].astype(np.float64) - spec.offset
                    if mod == "S1GRD":  # bilinear on a linear field, float16 storage
                        tol = 0.02 + abs(expected).max() * 1e-3
                    else:
                        res = synthetic.S2_RESOLUTION[band]
                        tol = synthetic.raw_gradient(mod) * res * np.sqrt(2) / 2 + 1.0
                    err = np.abs(got - expected)
                    if str(sid) == by_sample[str(sid)]["sample"] and mod == "S2L2A" and t == 1 and band == "B04":
                        err = err[err < np.percentile(err, 97)]  # the filled hole is nearest-neighbour, not the field
                    assert err.max() <= tol, (sid, mod, t, band, err.max(), tol)
                    checked += 1
    assert checked == 5 * 4 * (13 + 12 + 2)


def test_majority_utm_zone_wins_across_a_zone_boundary(raw, built):
    out, _ = built
    _, truth = raw
    ds = sz.open_dataset(out)
    straddler = next(i for i in truth.values() if abs(i["lon"] - 12.0) < 0.01)
    idx = list(ds["sample"].values).index(straddler["sample"])
    assert geo.utm_epsg(straddler["lat"], straddler["lon"]) == 32633  # its centre lies in zone 33
    assert int(ds["crs"].values[idx]) == 32632  # three of its four S2 tiles are in zone 32


def test_cloud_masks_come_from_files_and_scl(raw, built):
    out, manifest = built
    ds = sz.open_dataset(out)
    cm = ds["cloud_mask"].values
    assert {CloudClass.THICK_CLOUD, CloudClass.WATER, CloudClass.LAND} <= set(np.unique(cm[:, 0]).tolist())
    assert {CloudClass.THIN_CLOUD, CloudClass.SNOW, CloudClass.LAND} <= set(np.unique(cm[:, 1]).tolist())
    assert all(e.get("cloud_source") == "file+scl" for e in manifest["locations"].values() if e["status"] == "written")
    np.testing.assert_array_equal(scl_to_sensei(np.array([0, 3, 4, 6, 8, 9, 10, 11])), [6, 5, 0, 1, 4, 4, 3, 2])


def test_without_a_mask_source_the_build_stops_unless_a_fallback_is_asked(tmp_path):
    raw = str(tmp_path / "raw")
    synthetic.make_raw(raw, 2, size=SIZE, seed=3, masks="none")
    with pytest.raises(BuildError, match="no cloud-mask source"):
        build_dataset(raw, str(tmp_path / "a"), size=SIZE, workers=0)
    manifest = build_dataset(raw, str(tmp_path / "b"), size=SIZE, workers=0, cloud_mask="fallback:land")
    assert manifest["settings"]["cloud_mask"] == "fallback:land"
    assert all(e["cloud_source"] == "fallback:land" for e in manifest["locations"].values() if e["status"] == "written")


def test_deterministic_and_the_same_on_a_dask_cluster(raw, built, tmp_path):
    pytest.importorskip("distributed")
    out, _ = built
    again = str(tmp_path / "again")
    build_dataset(raw[0], again, size=SIZE, workers=2, val_fraction=0.3, seed=7)
    assert _files(again) == _files(out)
    for rel in _files(out):
        assert filecmp.cmp(os.path.join(out, rel), os.path.join(again, rel), shallow=False), rel


def test_rerun_is_a_no_op_and_resumes_a_missing_file(raw, built, tmp_path, monkeypatch):
    import ssl4eo_zarr.builder.driver as driver

    out = str(tmp_path / "out")
    build_dataset(raw[0], out, size=SIZE, workers=0, val_fraction=0.3, seed=7)
    stamps = {rel: os.path.getmtime(os.path.join(out, rel)) for rel in _files(out)}
    processed, loaded = [], []
    real_process, real_load = driver.process_location, driver.load
    monkeypatch.setattr(driver, "process_location", lambda loc, **kw: processed.append(loc.location)
                        or real_process(loc, **kw))
    monkeypatch.setattr(driver, "load", lambda path: loaded.append(path) or real_load(path))
    build_dataset(raw[0], out, size=SIZE, workers=0, val_fraction=0.3, seed=7)
    assert {rel: os.path.getmtime(os.path.join(out, rel)) for rel in _files(out)} == stamps
    assert processed == [] and loaded == [], "resuming a finished build reads no image data"
    victim = _files(out)[0]
    os.remove(os.path.join(out, victim))
    build_dataset(raw[0], out, size=SIZE, workers=0, val_fraction=0.3, seed=7)
    assert filecmp.cmp(os.path.join(out, victim), os.path.join(built[0], victim), shallow=False)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    split, name = victim.split(os.sep)[0], victim.split(os.sep)[-1]
    in_file = sorted(manifest["files"][f"{split}/{name}"]["locations"])
    assert sorted(processed) == in_file, "only the missing file's locations are processed again"
    with pytest.raises(BuildError, match="other settings"):
        build_dataset(raw[0], out, size=SIZE, workers=0, val_fraction=0.3, seed=8)


def test_a_second_build_into_the_same_folder_is_refused(raw, tmp_path):
    out = str(tmp_path / "out")
    os.makedirs(out)
    with BuildLock(out):
        with pytest.raises(BuildError, match=f"pid {os.getpid()}"):
            build_dataset(raw[0], out, size=SIZE, workers=0)


def test_killed_builds_resume_to_the_uninterrupted_result(raw, built, tmp_path):
    out = str(tmp_path / "out")
    code = ("import sys; from ssl4eo_zarr.builder import build_dataset; "
            f"build_dataset({raw[0]!r}, {out!r}, size={SIZE}, workers=0, val_fraction=0.3, seed=7)")
    lock = os.path.join(out, ".ssl4eo-build.lock")
    interrupted = 0
    for delay in np.random.default_rng(0).uniform(0.05, 1.2, 4):
        proc = subprocess.Popen([sys.executable, "-c", code])
        deadline = time.monotonic() + 60
        while not os.path.exists(lock) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # kill only once the build has started (after the imports)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        interrupted += os.path.exists(lock)  # a killed build leaves its lock behind
        for rel in _files(out):  # whatever exists under a final name is complete
            sz.open_dataset(os.path.join(out, rel)).load()
    assert interrupted >= 2
    manifest = build_dataset(raw[0], out, size=SIZE, workers=0, val_fraction=0.3, seed=7)
    assert manifest["summary"] == built[1]["summary"]
    assert _files(out) == _files(built[0])
    for rel in _files(out):
        assert filecmp.cmp(os.path.join(out, rel), os.path.join(built[0], rel), shallow=False), rel
    leftovers = [f for d, _, fs in os.walk(out) for f in fs if f.endswith(".tmp") or f == ".ssl4eo-build.lock"]
    assert not leftovers
    written = [e for e in manifest["locations"].values() if e["status"] == "written"]
    assert len({(e["split"], e["file"], e["index"]) for e in written}) == len(written) == 5


def test_geoparquet_table_like_the_published_one(built):
    gpd = pytest.importorskip("geopandas")
    out, manifest = built
    table = gpd.read_parquet(os.path.join(out, "ssl4eos12_metadata.parquet"))
    assert list(table.columns) == ["sample_id", "time_id", "time", "tile_id", "geometry", "tile_crs", "file"]
    assert len(table) == 5 * 4 and table.crs.to_epsg() == 4326
    ds = sz.open_dataset(out)
    row = table[(table.sample_id == str(ds["sample"].values[0])) & (table.time_id == 0)].iloc[0]
    from shapely.geometry import Point

    assert row.geometry.contains(Point(float(ds["center_lon"][0]), float(ds["center_lat"][0])))
    assert row.file == str(ds["file"].values[0]) and row.tile_id.startswith("T")


def test_drop_remainder(raw, tmp_path):
    manifest = build_dataset(raw[0], str(tmp_path / "o"), size=SIZE, workers=0, val_fraction=0.0, seed=1,
                             drop_remainder=True, cloud_mask="auto")
    dropped = [e for e in manifest["locations"].values() if e["status"] == "dropped"]
    assert sum("remainder" in e["reason"] for e in dropped) == 5
    with pytest.raises(BuildError, match="raw input folder not found"):
        build_dataset(str(tmp_path / "nothing"), str(tmp_path / "p"), size=SIZE, workers=0)
    os.makedirs(tmp_path / "empty" / "s2a")
    with pytest.raises(BuildError, match="no location"):
        build_dataset(str(tmp_path / "empty"), str(tmp_path / "q"), size=SIZE, workers=0)


def test_qa_encoding_saturates_instead_of_overflowing():
    np.testing.assert_array_equal(to_s2_dn(np.array([-40000.0, 0.0, 31767.0, 90000.0])), [-32768, 1000, 32767, 32767])
    assert np.isfinite(to_s1_db(np.array([-1e6, 1e6]))).all()
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    img[1, 1] = np.nan
    filled = fill_nearest(img)
    assert not np.isnan(filled).any() and filled[1, 1] in (1.0, 4.0, 6.0, 9.0)


def test_exact_sampling_has_no_overlaps_across_cell_borders():
    corner = [City("dense", 35.0005, 139.0005)]  # right at a 1-degree cell corner
    published = sample_locations(corner, 60, seed=1, sigma_km=4.0, exact=False)
    exact = sample_locations(corner, 60, seed=1, sigma_km=4.0, exact=True)
    assert overlapping_pairs(published) > 0
    assert overlapping_pairs(exact) == 0


def test_cli_build_and_sample_locations(raw, tmp_path, capsys):
    from ssl4eo_zarr.cli import main

    cities = tmp_path / "cities.csv"
    cities.write_text("city,lat,lng\nBerlin,52.52,13.405\nLagos,6.52,3.38\n")
    assert main(["sample-locations", str(cities), "50", "--out", str(tmp_path / "l.csv")]) == 0
    assert "wrote 50 locations" in capsys.readouterr().out
    assert main(["build", raw[0], str(tmp_path / "o"), "--size", str(SIZE), "--workers", "0",
                 "--val-fraction", "0.3"]) == 0
    assert "6 locations: 5 written, 1 dropped" in capsys.readouterr().out
    with open(tmp_path / "o" / "manifest.json") as f:
        assert json.load(f)["summary"]["written"] == 5
