"""fetch: a subset of the dataset, fetched from a static HTTP host (no folder listing, Range) into a dataset root
of its own; selection by ids and by the metadata table, resume after a kill, reruns, and every bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ssl4eo_zarr as sz
from ssl4eo_zarr import DatasetNotFoundError, schema, synthetic
from ssl4eo_zarr.fetching import MANIFEST, STAGING, FetchPlan, SelectionError, fetch, verify
from ssl4eo_zarr.testing import RangeHTTPServer

gpd = pytest.importorskip("geopandas")

MODS = ["S2L2A", "S1GRD"]
N = 24


def _write_table(root: str) -> None:
    """A 2026-release-style metadata table at the root, one row per location (the assumed column names)."""
    from shapely.geometry import box

    view = sz.open_dataset(root, split="val")
    n = view.sizes["sample"]
    rng = np.random.default_rng(4)
    data = {"sample_id": [str(s) for s in view["sample"].values], "split": ["val"] * n,
            "tar": [str(f) for f in view["file"].values], "zarr": [f"{s}.zarr.zip" for s in view["sample"].values],
            "center_lon": view["center_lon"].values, "center_lat": view["center_lat"].values,
            "crs": view["crs"].values}
    for t in range(4):
        data[f"S2_time_{t}"] = view["time_S2L2A"].values[:, t]
        data[f"S1_time_{t}"] = view["time_S1GRD"].values[:, t]
        data[f"cloud_cover_{t}"] = rng.uniform(0, 0.4, n)
    geometry = [box(lo - 0.01, la - 0.01, lo + 0.01, la + 0.01) for lo, la in zip(data["center_lon"], data["center_lat"])]
    gpd.GeoDataFrame(data, geometry=geometry, crs="EPSG:4326").to_parquet(os.path.join(root, "val_metadata.parquet"))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fetch_source"))
    synthetic.make_shards(root, N, per_shard=8, size=16, seed=12, modalities=("S2L2A", "S1GRD", "DEM"))
    _write_table(root)
    return root


@pytest.fixture()
def host(source):
    with RangeHTTPServer(source) as server:
        yield server


def _ids(source, k):
    return [str(s) for s in sz.open_dataset(source, split="val")["sample"].values[k]]


def _member_bytes(source, ids, mods=MODS):
    from ssl4eo_zarr.shardfile import scan_shard

    total = 0
    for m in mods:
        for name in sorted(os.listdir(os.path.join(source, "val", m))):
            total += sum(x.size for x in scan_shard(os.path.join(source, "val", m, name)) if x.key in ids)
    return total


def test_fetch_by_ids_moves_only_those_members(source, host, tmp_path):
    ids = _ids(source, [1, 9, 10, 20, 23])
    plan = fetch(host.url, str(tmp_path / "dry"), split="val", modalities=MODS, locations=ids, dry_run=True)
    assert isinstance(plan, FetchPlan) and not os.path.exists(tmp_path / "dry")
    assert "selected: 5 locations, 10 members" in plan.summary()
    host.reset_counts()
    dest = str(tmp_path / "sub")
    result = fetch(host.url, dest, split="val", modalities=MODS, locations=ids, workers=4)
    members = _member_bytes(source, set(ids))
    table_bytes = os.path.getsize(os.path.join(source, "val_metadata.parquet"))
    # what moved beyond the members: the table (it says which shard holds each id) and version requests
    assert members <= host.bytes_served <= 1.05 * members + table_bytes + 20_000, (host.bytes_served, members)
    assert result.nbytes == members and result.locations == 5
    got = sz.open_dataset(dest, split="val")
    assert sorted(got["sample"].values.tolist()) == sorted(ids)
    want = sz.open_dataset(source, split="val").sel(sample=got["sample"].values)
    for m in MODS:
        np.testing.assert_array_equal(got[m].values, want[m].values)
    for m in MODS:  # the same keys in the same order in every modality, renumbered from 000001
        assert os.listdir(os.path.join(dest, "val", m)) == [schema.shard_name(1)]
    doc = json.load(open(os.path.join(dest, MANIFEST)))
    assert doc["source_files"] and all(v["version"] for v in doc["source_files"].values())
    shard = doc["files"][os.path.join("val", "S2L2A", schema.shard_name(1))]
    assert [e["key"] for e in shard["members"]] == got["sample"].values.tolist()
    assert verify(dest) == [] and not os.path.exists(os.path.join(dest, STAGING))
    table = sz.read_metadata(os.path.join(dest, "val_metadata.parquet"))
    assert sorted(table.index) == sorted(ids), "the subset's rows of the published table, beside it"


def test_only_the_shards_holding_the_ids_are_indexed(source, tmp_path, monkeypatch):
    """The table's tar column says which shard holds each id: the others' headers are never read."""
    monkeypatch.setenv("SSL4EO_ZARR_CACHE", str(tmp_path / "cold"))  # no kept index
    ids = _ids(source, [0, 3, 7])  # all in the first shard (8 locations per shard)
    with RangeHTTPServer(source) as server:
        plan = fetch(server.url, str(tmp_path / "d"), split="val", modalities=MODS, locations=ids, dry_run=True)
        ranged = {p for _t, m, p, h in server.seen if m == "GET" and "Range" in h and p.endswith(".tar")}
    assert plan.steps[0][0].startswith("val in the 1 of 3 shards") and len(plan.selected) == 3
    assert ranged and all(p.endswith(schema.shard_name(1)) for p in ranged), ranged


def test_fetch_by_region_months_and_cloud_with_the_published_table(source, host, tmp_path):
    table = sz.read_metadata(os.path.join(source, "val_metadata.parquet"))
    lon, lat = float(table["center_lon"].median()), float(table["center_lat"].median())
    bbox = (lon - 40, lat - 30, lon + 40, lat + 30)
    expect = sz.metadata.select(table, bbox=bbox, max_cloud=0.3)
    assert 0 < len(expect) < N
    dest = str(tmp_path / "region")
    result = fetch(host.url, dest, split="val", modalities=["S2L2A"], bbox=bbox, max_cloud=0.3, per_shard=3)
    assert result.locations == len(expect)
    got = sz.open_dataset(dest, split="val")
    assert set(got["sample"].values.tolist()) == set(expect.index)
    assert len(os.listdir(os.path.join(dest, "val", "S2L2A"))) == -(-len(expect) // 3)
    sub = sz.read_metadata(os.path.join(dest, "val_metadata.parquet"))
    assert set(sub.index) == set(expect.index), "the subset's rows of the table, beside it"
    months = sorted({int(m) for m in table["s2_time_0"].dt.month})[:1]
    plan = fetch(host.url, str(tmp_path / "m"), split="val", modalities=["S2L2A"], months=months, dry_run=True)
    assert 0 < len(plan.selected) <= N and any("--months" in name for name, _n in plan.steps)


def test_limit_and_seed_draw_the_same_locations(source, host, tmp_path):
    a = fetch(host.url, str(tmp_path / "a"), split="val", modalities=["S2L2A"], limit=5, seed=3, dry_run=True)
    b = fetch(host.url, str(tmp_path / "b"), split="val", modalities=["S2L2A"], limit=5, seed=3, dry_run=True)
    c = fetch(host.url, str(tmp_path / "c"), split="val", modalities=["S2L2A"], limit=5, seed=4, dry_run=True)
    assert [s.key for s in a.selected] == [s.key for s in b.selected] != [s.key for s in c.selected]
    assert len(a.selected) == 5


def test_bad_input_is_named_and_nothing_is_written(source, host, tmp_path):
    dest = tmp_path / "bad"
    with pytest.raises(SelectionError, match="9999999"):
        fetch(host.url, str(dest), split="val", modalities=MODS, locations=[_ids(source, [0])[0], "9999999"])
    assert not dest.exists()
    with pytest.raises(SelectionError, match="--bbox .* left no location"):
        fetch(host.url, str(dest), split="val", modalities=MODS, bbox=(0.0, 0.0, 0.001, 0.001))
    with pytest.raises(SelectionError, match="--max-cloud .* left no location"):
        fetch(host.url, str(dest), split="val", modalities=MODS, max_cloud=0.0)
    with pytest.raises(SelectionError, match="not a location id"):
        fetch(host.url, str(dest), split="val", modalities=MODS, locations=["S2A_thing"])
    with pytest.raises(SelectionError, match="shards only"):
        fetch(host.url, str(dest), split="val", modalities=["DEM"], locations=_ids(source, [0]), to="chunks")
    assert not dest.exists()


def test_a_rerun_on_a_complete_dest_moves_no_member(source, host, tmp_path):
    ids = _ids(source, [2, 3, 17])
    dest = str(tmp_path / "again")
    fetch(host.url, dest, split="val", modalities=MODS, locations=ids)
    before = {p: os.path.getmtime(os.path.join(dest, "val", m, p)) for m in MODS
              for p in os.listdir(os.path.join(dest, "val", m))}
    host.reset_counts()
    result = fetch(host.url, dest, split="val", modalities=MODS, locations=ids)
    table_bytes = os.path.getsize(os.path.join(source, "val_metadata.parquet"))
    # the table (which shard holds each id) and version checks; no member, no tar header
    assert result.nbytes == 0 and host.bytes_served < table_bytes + 5_000, host.bytes_served
    after = {p: os.path.getmtime(os.path.join(dest, "val", m, p)) for m in MODS
             for p in os.listdir(os.path.join(dest, "val", m))}
    assert after == before
    with pytest.raises(SelectionError, match="holds another fetch"):
        fetch(host.url, dest, split="val", modalities=MODS, locations=ids[:2])


def test_a_vanished_source_file_is_named_and_completed_work_kept(source, tmp_path):
    ids = _ids(source, [0, 1, 20, 21])  # shards 1 and 3 of the source
    dest = str(tmp_path / "vanish")
    with RangeHTTPServer(source) as server:
        fetch(server.url, str(tmp_path / "warm"), split="val", modalities=MODS, locations=ids, dry_run=True)

        class Bar:  # the host loses the source's third shard once the first output shard is written
            def __init__(self, **kw):
                self.n = 0

            def update(self, n):
                self.n += n
                if self.n >= _member_bytes(source, set(ids[:2])):
                    server.vanish(f"/val/S1GRD/{schema.shard_name(3)}")

            def close(self):
                pass

        with pytest.raises(DatasetNotFoundError, match=schema.shard_name(3)):
            fetch(server.url, dest, split="val", modalities=MODS, locations=ids, per_shard=2, workers=1,
                  progress=Bar)
    assert os.path.exists(os.path.join(dest, "val", "S2L2A", schema.shard_name(1)))
    assert os.path.exists(os.path.join(dest, "val", "S1GRD", schema.shard_name(1)))
    assert not os.path.exists(os.path.join(dest, "val", "S1GRD", schema.shard_name(2)))
    with RangeHTTPServer(source) as server:  # the host has it again: the rerun completes the rest only
        result = fetch(server.url, dest, split="val", modalities=MODS, locations=ids, per_shard=2)
    assert result.nbytes <= _member_bytes(source, set(ids[2:])) and verify(dest) == []


_KILLED = """
import sys
from ssl4eo_zarr.fetching import fetch
fetch(sys.argv[1], sys.argv[2], split="val", modalities=["S2L2A", "S1GRD"], per_shard=8, workers=1)
"""


def test_kill_and_resume(source, tmp_path):
    """SIGKILL mid-fetch: nothing half-written is visible, and the rerun fetches only what was not staged."""
    dest = str(tmp_path / "killed")
    with RangeHTTPServer(source, latency=0.05) as server:
        fetch(server.url, str(tmp_path / "warm"), split="val", modalities=MODS, dry_run=True)  # indexes kept
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILLED), server.url, dest])
        staging = os.path.join(dest, STAGING, "bytes")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            staged = sum(len(f) for _d, _s, f in os.walk(staging)) if os.path.isdir(staging) else 0
            if staged >= 12 or proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        for folder, _dirs, names in os.walk(os.path.join(dest, "val")):
            for name in names:  # every visible shard is whole
                assert not name.endswith(".tar") or sz.shardfile.scan_shard(os.path.join(folder, name))
        server.reset_counts()
        result = fetch(server.url, dest, split="val", modalities=MODS, per_shard=8, workers=4)
    assert result.reused >= 6, result.reused
    assert result.nbytes <= _member_bytes(source, set(_ids(source, slice(None)))) - 1
    got = sz.open_dataset(dest, split="val")
    want = sz.open_dataset(source, split="val")
    assert got["sample"].values.tolist() == want["sample"].values.tolist()
    for m in MODS:
        np.testing.assert_array_equal(got[m].values, want[m].values)
    assert verify(dest) == []


def test_chunk_files_to_chunk_files_and_to_shards(root, tmp_path):
    view = sz.open_dataset(root, split="val")
    ids = [str(s) for s in view["sample"].values[[0, 5, 17, 30, 41]]]
    with RangeHTTPServer(root) as server:
        chunks = str(tmp_path / "chunks")
        fetch(server.url, chunks, split="val", modalities=["S2L1C", "S1GRD"], locations=ids)
        shards = str(tmp_path / "shards")
        fetch(server.url, shards, split="val", modalities=["S2L1C", "S1GRD"], locations=ids, to="shards")
    for dest in (chunks, shards):
        got = sz.open_dataset(dest, split="val")
        assert got["sample"].values.tolist() == ids
        for m in ("S2L1C", "S1GRD"):
            np.testing.assert_array_equal(got[m].values, view[m].sel(sample=ids).values)
    assert os.path.exists(os.path.join(chunks, schema.split_list_name("val")))


def test_hf_source(source, tmp_path):
    pytest.importorskip("huggingface_hub")
    ids = _ids(source, [4, 5])
    with RangeHTTPServer(source, hub_repo="org/SSL4EO-S12-v1.1") as hub:
        dest = str(tmp_path / "hf")
        fetch("hf://datasets/org/SSL4EO-S12-v1.1", dest, split="val", modalities=["S2L2A"], locations=ids,
              storage_options={"endpoint": hub.url, "token": False})
    assert sorted(sz.open_dataset(dest, split="val")["sample"].values.tolist()) == sorted(ids)


def test_cli_dry_run_and_fetch(source, host, tmp_path, capsys):
    from ssl4eo_zarr.cli import main

    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(_ids(source, [6, 7])) + "\n# a comment\n")
    assert main(["fetch", host.url, str(tmp_path / "d"), "--split", "val", "--modalities", "S2L2A,S1GRD",
                 "--locations", str(ids), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "selected: 2 locations, 4 members" in out and not (tmp_path / "d").exists()
    assert main(["fetch", host.url, str(tmp_path / "d"), "--split", "val", "--modalities", "S2L2A,S1GRD",
                 "--locations", str(ids)]) == 0
    assert "wrote 2 locations" in capsys.readouterr().out
    assert main(["fetch", host.url, str(tmp_path / "e"), "--split", "val", "--modalities", "S2L2A",
                 "--bbox", "0,0,0.001,0.001"]) != 0


@pytest.fixture()
def small_disk(tmp_path):
    """A 256 kB file system (tmpfs; needs root, as CI and this machine run)."""
    folder = tmp_path / "small"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"needs permission to mount a small tmpfs ({done.stderr.decode().strip()})")
    yield str(folder)
    subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_is_a_clear_error_with_nothing_partial_left(source, host, small_disk):
    assert _member_bytes(source, set(_ids(source, slice(None)))) > 256_000
    dest = os.path.join(small_disk, "dest")
    with pytest.raises(OSError, match="disk is full") as info:
        fetch(host.url, dest, split="val", modalities=MODS, per_shard=8)
    assert info.value.errno == 28
    for folder, _dirs, names in os.walk(os.path.join(dest, "val")):
        for name in names:
            path = os.path.join(folder, name)
            assert not name.startswith("."), f"a temporary was left: {path}"
            assert sz.shardfile.scan_shard(path), f"{path} is not whole"


def test_a_fetch_dealt_to_a_dask_cluster(source, host, tmp_path):
    """Output shards are made by a LocalCluster's 2 worker processes (one task each); this process keeps the one
    manifest; a rerun resumes (nothing moved), and the CLI takes the scheduler's address."""
    distributed = pytest.importorskip("distributed")
    ids = _ids(source, list(range(0, 24, 2)))
    dest = str(tmp_path / "dealt")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        with distributed.get_task_stream(client) as stream:
            result = fetch(host.url, dest, split="val", modalities=MODS, locations=ids, per_shard=3, client=client)
        tasks = [t for t in stream.data if str(t["key"]).startswith("fetch-") or "fetch-" in str(t["key"])]
        assert len(tasks) == 4 and len({t["worker"] for t in tasks}) == 2, [(t["key"], t["worker"]) for t in tasks]
        assert result.nbytes == _member_bytes(source, set(ids)) and verify(dest) == []
        got, want = sz.open_dataset(dest, split="val"), sz.open_dataset(source, split="val")
        order = [want["sample"].values.tolist().index(k) for k in got["sample"].values.tolist()]
        assert sorted(got["sample"].values.tolist()) == sorted(ids)
        for m in MODS:
            np.testing.assert_array_equal(got[m].values, want[m].values[order])
        again = fetch(host.url, dest, split="val", modalities=MODS, locations=ids, per_shard=3, client=client)
        assert again.nbytes == 0
        from ssl4eo_zarr.cli import main

        assert main(["fetch", host.url, str(tmp_path / "cli"), "--split", "val", "--modalities", "S2L2A",
                     "--locations", str(_write_ids(tmp_path, ids[:4])),
                     "--scheduler", cluster.scheduler_address]) == 0
        assert verify(str(tmp_path / "cli")) == []


def _write_ids(tmp_path, ids):
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(ids) + "\n")
    return path
